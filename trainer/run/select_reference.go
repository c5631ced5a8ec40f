package run

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
)

// ReferenceDir is where the select stage leaves the map reference of the recipe it chose (RUN/select/reference:
// eval.SaveReference's files and RecipeFile), computed from its layer weighing's pass of the reference normals;
// the calibrate stage writes it into the exported bundle instead of scoring those normals again when the bundle
// is that recipe (referenceRecipe.mismatch).
const (
	ReferenceDir = "reference"
	RecipeFile   = "recipe.json"
)

// referenceRecipe is what a saved reference was measured for: everything that changes a reference normal's map
// or the terms' weights. The calibrate stage compares it with the bundle it calibrates.
type referenceRecipe struct {
	Noises    int                   `json:"noises"`
	Layers    []models.FeatureLayer `json:"layers"`
	StartStep int                   `json:"start_step"`
	Sigma     float64               `json:"sigma"`
	Truncate  float64               `json:"truncate"`
	// Guided is the map's guided filter (models.Map.Guided; absent without one).
	Guided *models.GuidedFilter `json:"guided,omitempty"`
	Pixel  float64              `json:"pixel_factor"`
	// PixelSigma is the mean-frame term's smoothing (with the term; models.PixelTerm.SmoothingSigma).
	PixelSigma float64 `json:"pixel_sigma,omitempty"`
	Knn        float64 `json:"knn_factor"`
	// KnnSigma is the nearest-normal term's smoothing (with the term; models.KnnTerm.SmoothingSigma).
	KnnSigma float64 `json:"knn_sigma,omitempty"`
	// KnnBanks is the sha256 of the term's bank and sources files (empty without the term): the calibrate
	// stage builds its own banks and takes the reference only when they are the same.
	KnnBanks string `json:"knn_banks,omitempty"`
	// KnnKs is the count of nearest vectors each of the term's classes averages (models.KnnTerm.Ks, aligned with
	// its classes), empty when every class takes the nearest alone: the graph's k_max alone changes no map.
	KnnKs []int `json:"knn_ks,omitempty"`
	// Normals is the sha256 of the reference normals' paths and classes, in order.
	Normals string `json:"normals"`
}

// normalsDigest names a list of reference normals (referenceRecipe.Normals).
func normalsDigest(items []dataset.Item) string {
	h := sha256.New()
	for _, it := range items {
		fmt.Fprintf(h, "%s\x00%s\n", it.Class, it.Path)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// knnBanksDigest is referenceRecipe.KnnBanks of a manifest: its term's bank and sources checksums, "" without
// the term.
func knnBanksDigest(m *models.Manifest) string {
	k := m.Map.Knn
	if k == nil {
		return ""
	}
	return m.Files[k.Bank].SHA256 + "+" + m.Files[k.Sources].SHA256
}

// recipeOf is the referenceRecipe of a bundle's manifest with the terms t (a nil sigma: the map's), on normals.
func recipeOf(m *models.Manifest, t eval.Terms, normals []dataset.Item) referenceRecipe {
	r := referenceRecipe{Noises: m.Diffusion.Noises(), Layers: m.Features.Layers, StartStep: m.Diffusion.StartStep,
		Sigma: m.Map.Sigma, Truncate: m.Map.Truncate, Guided: m.Map.Guided, Pixel: t.Pixel, Knn: t.Knn, Normals: normalsDigest(normals)}
	if t.Pixel > 0 {
		r.PixelSigma = (&models.PixelTerm{Sigma: t.PixelSigma}).SmoothingSigma(m.Map.Sigma)
	}
	if t.Knn > 0 {
		r.KnnBanks = knnBanksDigest(m)
		if k := m.Map.Knn; k != nil && slices.ContainsFunc(k.Ks, func(v int) bool { return v > 1 }) {
			r.KnnKs = k.Ks
		}
		r.KnnSigma = (&models.KnnTerm{Sigma: t.KnnSigma}).SmoothingSigma(m.Map.Sigma)
	}
	return r
}

// mismatch says how the bundle's recipe b differs from the saved one r ("" when it does not): the reference of
// r is the one b would measure only when nothing differs.
func (r referenceRecipe) mismatch(b referenceRecipe) string {
	switch {
	case r.Noises != b.Noises:
		return fmt.Sprintf("measured with %d start noises, the bundle has %d", r.Noises, b.Noises)
	case !sameLayers(r.Layers, b.Layers):
		return fmt.Sprintf("measured with feature layers %v, the bundle has %v", r.Layers, b.Layers)
	case r.StartStep != b.StartStep:
		return fmt.Sprintf("measured from start step %d, the bundle starts at %d", r.StartStep, b.StartStep)
	case r.Sigma != b.Sigma || r.Truncate != b.Truncate:
		return fmt.Sprintf("measured with map sigma %g (truncate %g), the bundle has %g (%g)", r.Sigma, r.Truncate, b.Sigma, b.Truncate)
	case !models.SameGuided(r.Guided, b.Guided):
		return fmt.Sprintf("measured with %s, the bundle has %s", r.Guided, b.Guided)
	case r.Pixel != b.Pixel:
		return fmt.Sprintf("measured with the mean-frame term at factor %g, calibrating %g", r.Pixel, b.Pixel)
	case r.PixelSigma != b.PixelSigma:
		return fmt.Sprintf("measured with the mean-frame term smoothed at sigma %g, calibrating %g", r.PixelSigma, b.PixelSigma)
	case r.Knn != b.Knn:
		return fmt.Sprintf("measured with the nearest-normal term at factor %g, calibrating %g", r.Knn, b.Knn)
	case r.KnnSigma != b.KnnSigma:
		return fmt.Sprintf("measured with the nearest-normal term smoothed at sigma %g, calibrating %g", r.KnnSigma, b.KnnSigma)
	case r.KnnBanks != b.KnnBanks:
		return "measured with other nearest-normal banks"
	case !slices.Equal(r.KnnKs, b.KnnKs):
		return fmt.Sprintf("measured with the nearest-normal term's counts of nearest vectors %v, the bundle has %v", r.KnnKs, b.KnnKs)
	case r.Normals != b.Normals:
		return "measured on other reference normals"
	}
	return ""
}

func sameLayers(a, b []models.FeatureLayer) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].Weight != b[i].Weight {
			return false
		}
	}
	return true
}

// saveReference writes the map reference of the chosen recipe r (its layers and mean-frame term as the layer
// weighing r.from weighed them, the nearest-normal term at r.Knn) into dir/ReferenceDir with its recipe, and
// returns that directory; "" when the weighing cannot give it (the term chosen with other banks than the
// weighing's, or the weighing had no reference normals).
func (t *Training) saveReference(sc *StageContext, dir string, r mapRecipe) (string, error) {
	w := r.from
	if w == nil || w.w.maps == nil || w.w.manifest == nil || len(w.w.train) == 0 {
		return "", nil // no layer weighing, or no map reference (calibrate.reference: none)
	}
	left := "[select] the chosen recipe's map reference is left to the calibrate stage: "
	switch {
	case r.Knn > 0 && w.w.knnIsolated < 0:
		fmt.Fprintf(sc.Progress, "%sthe layer weighing scored no nearest-normal term (calibrate.knn_factor %g without select.knn_factors)\n", left, r.Knn)
		return "", nil
	case r.Knn > 0 && r.KnnKs != nil:
		fmt.Fprintf(sc.Progress, "%sthe nearest-normal term averages more than the nearest for some classes (select.knn_ks), the layer weighing's maps the nearest alone\n", left)
		return "", nil
	case r.Knn > 0 && r.KnnIsolated >= 0 && r.KnnIsolated != w.w.knnIsolated:
		fmt.Fprintf(sc.Progress, "%sthe nearest-normal term was chosen with isolated fraction %g, the layer weighing's banks had %g\n", left, r.KnnIsolated, w.w.knnIsolated)
		return "", nil
	}
	knnAt := 0 // the term's smoothing: its own, or the chosen one of select.knn_sigmas
	if r.Knn > 0 && r.KnnSigma != nil {
		if knnAt = slices.Index(w.w.maps.KnnSigmas(), *r.KnnSigma); knnAt < 1 {
			fmt.Fprintf(sc.Progress, "%sthe layer weighing did not smooth the nearest-normal term at sigma %g\n", left, *r.KnnSigma)
			return "", nil
		}
	}
	mc := w.w.cands[w.cand]
	ref, err := w.w.maps.Reference(w.view, mc, r.Knn, knnAt, "train split of "+sc.Output("index", "index"))
	if err != nil {
		return "", fmt.Errorf("the chosen recipe's map reference: %w", err)
	}
	m := *w.w.manifest // the weighing's bundle, with the chosen count and layers
	m.Diffusion.Ensemble = ref.Noises
	m.Features.Layers = nil
	for l, v := range mc.Weights {
		if v > 0 {
			m.Features.Layers = append(m.Features.Layers, models.FeatureLayer{Name: w.w.names[l], Weight: float32(v)})
		}
	}
	var sigma *float64 // the term's smoothing: the weighing bundle's own, or the recipe's of select.pixel_sigmas
	if t := m.Map.Pixel; t != nil {
		sigma = t.Sigma
	}
	if mc.PixelAt > 0 {
		sigma = &mc.PixelSigma
	}
	rec := recipeOf(&m, eval.Terms{Pixel: mc.Pixel, PixelSigma: sigma, Knn: r.Knn, KnnSigma: r.KnnSigma}, w.w.train)
	out := filepath.Join(dir, ReferenceDir)
	if err := os.RemoveAll(out); err != nil {
		return "", err
	}
	if err := eval.SaveReference(out, ref); err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(out, RecipeFile), append(b, '\n'), 0o644); err != nil {
		return "", err
	}
	fmt.Fprintf(sc.Progress, "[select] the chosen recipe's map reference (%d training normals, from the layer weighing's pass): %s\n", len(w.w.train), out)
	return out, nil
}

// selectReference writes the select stage's map reference (saveReference) into the bundle with the terms, as
// measureReference would measure it, when the bundle is the recipe it was measured for;
// it reports false (and why, in the log) when it is not, and the caller measures the reference itself. The
// nearest-normal banks are built here as measureReference builds them, and must come out as the select stage's.
func (t *Training) selectReference(ctx context.Context, sc *StageContext, items []dataset.Item, bundle string, terms eval.Terms, prefix string) (bool, error) {
	c := t.Config
	dir := sc.Output("select", "reference")
	if dir == "" || c.Calibrate.Reference == eval.ReferenceNone {
		return false, nil
	}
	b, err := os.ReadFile(filepath.Join(dir, RecipeFile))
	if err != nil {
		return false, fmt.Errorf("the select stage's map reference: %w", err)
	}
	var saved referenceRecipe
	if err := json.Unmarshal(b, &saved); err != nil {
		return false, fmt.Errorf("the select stage's map reference %s: %w", filepath.Join(dir, RecipeFile), err)
	}
	train := eval.ReferenceItems(eval.Select(items, dataset.SplitTrain, c.Data.Classes, true), c.Calibrate.ReferencePerClass)
	if terms.Knn > 0 {
		if err := t.ensureKnn(ctx, sc, items, bundle, prefix); err != nil {
			return false, err
		}
	}
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return false, err
	}
	if why := saved.mismatch(recipeOf(m, terms, train)); why != "" {
		fmt.Fprintf(sc.Progress, "%sthe select stage's map reference does not fit this bundle (%s): measuring it\n", prefix, why)
		return false, nil
	}
	ref, err := eval.LoadReference(dir)
	if err != nil {
		return false, err
	}
	// as MeasureReference: the terms, then the reference with their weights
	if err := eval.ApplyTerms(ctx, bundle, train, ref.Source, terms); err != nil {
		return false, err
	}
	if err := eval.WriteReference(bundle, ref); err != nil {
		return false, err
	}
	fmt.Fprintf(sc.Progress, "%smap reference: the select stage's, from its pass of the same %d training normals with this recipe (no scoring pass here)\n", prefix, len(train))
	if terms.Pixel > 0 {
		fmt.Fprintf(sc.Progress, "%smean-frame term: %s, smoothed at sigma %g\n", prefix, eval.DescribePixel(terms.Pixel, ref.PixelWeight), ref.PixelSigma)
	}
	if terms.Knn > 0 {
		fmt.Fprintf(sc.Progress, "%snearest-normal term: %s, smoothed at sigma %g\n", prefix, eval.DescribeKnn(terms.Knn, ref.KnnWeight), ref.KnnSigma)
	}
	return true, nil
}
