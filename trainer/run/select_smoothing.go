package run

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
	"github.com/vlmdiff/edge/trainer/metrics"
)

// SmoothingFile is the select stage's table of map smoothings (RUN/select/smoothing.csv), and SigmaChoiceFile
// holds the chosen sigma in map pixels (RUN/select/sigma.txt), which the export stage writes over export.sigma.
const (
	SmoothingFile   = "smoothing.csv"
	SigmaChoiceFile = "sigma.txt"
	// MaxSmoothingScale bounds select.smoothing: four times the paper's sigma already averages a defect of a
	// tenth of the frame into its surroundings.
	MaxSmoothingScale = 4
	// GuidedChoiceFile holds the guided filter chosen from select.guided (RUN/select/guided.json, a
	// models.GuidedFilter at the bundle's map size); absent when a Gaussian was chosen.
	GuidedChoiceFile = "guided.json"
)

// GuidedCandidate is one entry of select.guided: a guided filter's window radius in map pixels at a 256 px map
// (scaled with the map, as export.sigma is) and its regularisation in squared luminance units.
type GuidedCandidate struct {
	Radius float64 `yaml:"radius" json:"radius"`
	Eps    float64 `yaml:"eps" json:"eps"`
}

// at is the filter on a map of w x h: the radius scaled with the map's shorter side, at least 1 pixel.
func (g GuidedCandidate) at(w, h int) *models.GuidedFilter {
	r := int(math.Round(g.Radius * float64(min(w, h)) / 256))
	return &models.GuidedFilter{Radius: max(1, r), Eps: g.Eps}
}

// checkGuided checks select.guided: radii of 1..models.MaxGuidedRadius at 256 px, eps finite and above 0, no
// filter listed twice (the map's own bound, a quarter of its shorter side, is checked on the exported bundle).
func checkGuided(gs []GuidedCandidate) error {
	for i, g := range gs {
		if !(g.Radius >= 1 && g.Radius <= models.MaxGuidedRadius) || !(g.Eps > 0) || math.IsInf(g.Eps, 0) {
			return fmt.Errorf("{radius: %v, eps: %v}: want a radius of 1 to %d map pixels (at 256 px) and a finite eps above 0, e.g. [{radius: 8, eps: 1e-4}]",
				g.Radius, g.Eps, models.MaxGuidedRadius)
		}
		if slices.Contains(gs[:i], g) {
			return fmt.Errorf("{radius: %v, eps: %v} is listed twice", g.Radius, g.Eps)
		}
	}
	return nil
}

// smoothingChoice is what selectSmoothing chose: the map's Gaussian sigma (0 with a guided filter), the
// guided filter (nil: none) and the table of every candidate.
type smoothingChoice struct {
	Sigma  float64
	Guided *models.GuidedFilter
	Table  string
}

// selectedGuided is the guided filter the select stage chose (select.guided), nil when it chose none.
func selectedGuided(sc *StageContext) (*models.GuidedFilter, error) {
	var g models.GuidedFilter
	p, err := selectedJSON(sc, "guided", "choice of a guided filter", &g)
	if p == "" || err != nil {
		return nil, err
	}
	if g.Radius < 1 || !(g.Eps > 0) {
		return nil, fmt.Errorf("the select stage's choice of a guided filter %s: radius %d, eps %g is not a filter", p, g.Radius, g.Eps)
	}
	return &g, nil
}

// writeGuided writes the chosen guided filter into dir/GuidedChoiceFile and returns its path.
func writeGuided(dir string, g *models.GuidedFilter) (string, error) {
	b, err := json.Marshal(g)
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, GuidedChoiceFile)
	return p, os.WriteFile(p, append(b, '\n'), 0o644)
}

// checkSmoothing checks select.smoothing: increasing scales of the export's sigma in (0, MaxSmoothingScale].
func checkSmoothing(scales []float64) error {
	for i, s := range scales {
		if !(s > 0 && s <= MaxSmoothingScale) || (i > 0 && s <= scales[i-1]) {
			return fmt.Errorf("%v: want increasing multiples of the export's sigma in (0, %d], e.g. [0.5, 0.75, 1]", scales, MaxSmoothingScale)
		}
	}
	return nil
}

// selectedSigma is the map sigma the select stage chose (select.smoothing), -1 when it weighed none.
func selectedSigma(sc *StageContext) (float64, error) {
	return selectedNumber(sc, "sigma", "the map smoothing", "sigma", func(v float64) error {
		if !(v >= 0 && v <= 1e4) {
			return fmt.Errorf("%v: not a sigma", v)
		}
		return nil
	})
}

// mapRecipe is what the select stage chose before the pooling: start noises (0: the export config's),
// feature layers (nil: the export config's), the mean-frame term's factor, the nearest-normal term's factor
// with the isolated fraction of its banks (-1: calibrate.knn's), the start step (0: the export's), the map's
// sigma (0: the export's) and its guided filter (nil: none; with it the map has no Gaussian).
type mapRecipe struct {
	Ensemble    int
	Layers      [][2]any
	Pixel       float64
	PixelSigma  *float64 // the mean-frame term's smoothing (nil: the map's)
	Knn         float64
	KnnSigma    *float64 // the nearest-normal term's smoothing (nil: the map's)
	KnnIsolated float64
	KnnKs       map[string]int // each class's count of nearest vectors (select.knn_ks; nil: the nearest alone)
	Start       int
	Sigma       float64
	Guided      *models.GuidedFilter // chosen from select.guided, in place of the Gaussian
	from        *weighedRecipe       // the layer weighing that chose Layers and Pixel at Ensemble, when it kept the term's maps
	starts      *startWeighing       // the start steps weighed on this recipe while the counts competed, if they were
}

// terms is the recipe's terms as the reference measures them.
func (r mapRecipe) terms() eval.Terms {
	return eval.Terms{Pixel: r.Pixel, PixelSigma: r.PixelSigma, Knn: r.Knn, KnnSigma: r.KnnSigma}
}

// selectSmoothing weighs the map's smoothing on the recipe chosen before it: the Gaussian sigmas of
// select.smoothing (multiples of the exported bundle's sigma, which the export scales with the input size) and
// the guided filters of select.guided (each in place of the Gaussian). For each it writes the smoothing into one
// exported bundle, measures the map reference and the terms' weights as calibrate would, and scores the
// painted set. The smoothing merges a defect's scattered responses and suppresses pixel noise; too wide, it
// averages thin or small defects (hairs, specks) into their surroundings, too narrow it lets the texture's
// grain through, so the right width depends on the material and its defects. A guided filter smooths only
// where the frame is flat and keeps the map along the frame's edges (a hair keeps its shape). The export's own
// sigma stays unless another leads it by select.min_gain.
func (t *Training) selectSmoothing(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir string, r mapRecipe) (smoothingChoice, error) {
	c := t.Config
	scales := c.Select.Smoothing
	if !slices.Contains(scales, 1) { // the export's own sigma is the one to beat
		scales = append(slices.Clone(scales), 1)
		slices.Sort(scales)
	}
	own := slices.Index(scales, 1)
	work := filepath.Join(dir, "smoothing")
	bundle, err := t.recipeBundle(ctx, sc, items, cand, work, r, "[select] smoothing ")
	defer os.RemoveAll(work)
	if err != nil {
		return smoothingChoice{}, err
	}
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return smoothingChoice{}, err
	}
	base := m.Map.Sigma
	if base <= 0 && len(c.Select.Smoothing) > 0 { // no multiples of nothing; the guided filters can still compete with no smoothing
		return smoothingChoice{}, fmt.Errorf("select.smoothing: the exported bundle does not smooth its maps (map.sigma %v); drop select.smoothing or set export.sigma", base)
	}
	type option struct {
		sigma  float64
		guided *models.GuidedFilter
		name   string
	}
	var opts []option
	for _, s := range scales {
		sigma := math.Round(base*s*1e4) / 1e4
		opts = append(opts, option{sigma: sigma, name: "sigma-" + strconv.FormatFloat(sigma, 'g', 4, 64)})
	}
	for _, g := range c.Select.Guided {
		f := g.at(m.Input.Width, m.Input.Height)
		try := *m
		try.Map.Sigma, try.Map.Guided = 0, f
		if err := try.Validate(); err != nil { // the manifest check's rule, before any scoring
			return smoothingChoice{}, fmt.Errorf("select.guided {radius: %v, eps: %v} at the %dx%d map (radius %d): %w", g.Radius, g.Eps, m.Input.Width, m.Input.Height, f.Radius, err)
		}
		opts = append(opts, option{guided: f, name: fmt.Sprintf("guided-r%d-eps%s", f.Radius, strconv.FormatFloat(f.Eps, 'g', 4, 64))})
	}
	fmt.Fprintf(sc.Progress, "[select] map smoothing: sigma %g x %v", base, scales)
	if len(c.Select.Guided) > 0 {
		fmt.Fprintf(sc.Progress, " and %d guided filter(s)", len(c.Select.Guided))
	}
	fmt.Fprintf(sc.Progress, ", ranked by %s on %s\n", c.Select.Metric, valData)
	res := make([]candidateResult, len(opts))
	for i, o := range opts {
		mets, err := t.scoreSmoothing(ctx, sc, items, bundle, valData, o.sigma, o.guided, r, "[select] "+o.name+" ")
		if err != nil {
			return smoothingChoice{}, fmt.Errorf("select smoothing %s: %w", o.name, err)
		}
		res[i] = candidateResult{candidate: candidate{Name: o.name, Model: cand.Model}, Mean: mets, Score: selectScore(c.Select.Metric, mets)}
	}
	best, why := bestOver(res, own, c.Select.MinGain, "the export's sigma")
	table, err := recordCandidates(sc.Progress, dir, SmoothingFile, res, best)
	if err != nil {
		return smoothingChoice{}, err
	}
	fmt.Fprintf(sc.Progress, "[select] map smoothing: %s (%s)\n", opts[best].name, why)
	if top := topScore(res); top < len(scales) {
		fmt.Fprint(sc.Progress, gridEdgeNote("select.smoothing", scales, scales[top], MaxSmoothingScale, true))
	}
	return smoothingChoice{Sigma: opts[best].sigma, Guided: opts[best].guided, Table: table}, nil
}

// scoreSmoothing writes sigma and the guided filter (nil: none) into the bundle's map, measures its reference
// (with the terms of r, sized on the maps at this smoothing) and returns the painted set's mean metrics.
func (t *Training) scoreSmoothing(ctx context.Context, sc *StageContext, items []dataset.Item, bundle, valData string, sigma float64, guided *models.GuidedFilter, r mapRecipe, prefix string) (metrics.Metrics, error) {
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return metrics.Metrics{}, err
	}
	m.Map.Sigma, m.Map.Guided = sigma, guided
	if err := models.WriteManifest(bundle, m); err != nil {
		return metrics.Metrics{}, err
	}
	mm, err := t.scoreWithReference(ctx, sc, items, bundle, valData, r.terms(), prefix)
	if err != nil {
		return metrics.Metrics{}, err
	}
	fmt.Fprintf(sc.Progress, "%sI-AUROC %.2f P-AUROC %.2f AU-PRO %.2f P-AP %.2f\n", prefix, 100*mm.ImageAUROC, 100*mm.PixelAUROC, 100*mm.AUPRO, 100*mm.PixelAP)
	return mm, nil
}
