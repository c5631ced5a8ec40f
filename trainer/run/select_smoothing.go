package run

import (
	"context"
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
)

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
// with the isolated fraction of its banks (-1: calibrate.knn's), the start step (0: the export's) and the map's
// sigma (0: the export's).
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
	from        *weighedRecipe // the layer weighing that chose Layers and Pixel at Ensemble, when it kept the term's maps
	starts      *startWeighing // the start steps weighed on this recipe while the counts competed, if they were
}

// terms is the recipe's terms as the reference measures them.
func (r mapRecipe) terms() eval.Terms {
	return eval.Terms{Pixel: r.Pixel, PixelSigma: r.PixelSigma, Knn: r.Knn, KnnSigma: r.KnnSigma}
}

// selectSmoothing weighs the map's Gaussian sigma (select.smoothing, multiples of the exported bundle's sigma,
// which the export scales with the input size) on the recipe chosen before it: for each scale it writes that
// sigma into one exported bundle, measures the map reference and the terms' weights as calibrate would, and
// scores the painted set. The smoothing merges a defect's scattered responses and suppresses pixel noise; too
// wide, it averages thin or small defects (hairs, specks) into their surroundings, too narrow it lets the
// texture's grain through, so the right width depends on the material and its defects. The export's own
// sigma stays unless another leads it by select.min_gain. It returns the chosen sigma and the table's path.
func (t *Training) selectSmoothing(ctx context.Context, sc *StageContext, items []dataset.Item, cand candidate, valData, dir string, r mapRecipe) (float64, string, error) {
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
		return 0, "", err
	}
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return 0, "", err
	}
	base := m.Map.Sigma
	if base <= 0 {
		return 0, "", fmt.Errorf("select.smoothing: the exported bundle does not smooth its maps (map.sigma %v); drop select.smoothing or set export.sigma", base)
	}
	fmt.Fprintf(sc.Progress, "[select] map smoothing: sigma %g x %v, ranked by %s on %s\n", base, scales, c.Select.Metric, valData)
	res := make([]candidateResult, len(scales))
	sigmas := make([]float64, len(scales))
	for i, s := range scales {
		sigmas[i] = math.Round(base*s*1e4) / 1e4
		name := "sigma-" + strconv.FormatFloat(sigmas[i], 'g', 4, 64)
		mets, err := t.scoreSmoothing(ctx, sc, items, bundle, valData, sigmas[i], r, "[select] "+name+" ")
		if err != nil {
			return 0, "", fmt.Errorf("select.smoothing %g: %w", s, err)
		}
		res[i] = candidateResult{candidate: candidate{Name: name, Model: cand.Model}, Mean: mets, Score: selectScore(c.Select.Metric, mets)}
	}
	best, why := bestOver(res, own, c.Select.MinGain, "the export's sigma")
	table, err := recordCandidates(sc.Progress, dir, SmoothingFile, res, best)
	if err != nil {
		return 0, "", err
	}
	fmt.Fprintf(sc.Progress, "[select] map smoothing: sigma %g (%s)\n", sigmas[best], why)
	fmt.Fprint(sc.Progress, gridEdgeNote("select.smoothing", scales, scales[topScore(res)], MaxSmoothingScale, true))
	return sigmas[best], table, nil
}

// scoreSmoothing writes sigma into the bundle's map, measures its reference (with the terms of r, sized on the
// maps at this sigma) and returns the painted set's mean metrics.
func (t *Training) scoreSmoothing(ctx context.Context, sc *StageContext, items []dataset.Item, bundle, valData string, sigma float64, r mapRecipe, prefix string) (metrics.Metrics, error) {
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return metrics.Metrics{}, err
	}
	m.Map.Sigma = sigma
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
