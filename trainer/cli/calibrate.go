package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline/roi"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
)

func init() {
	Register(Command{Name: "calibrate", Summary: "fix a bundle's thresholds from a dataset's normal validation images", Run: runCalibrate})
}

func runCalibrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("calibrate", "--bundle DIR --data DIR [--method quantile:0.99] [--reference keep|train|none] [--pixel-factor A] [--pixel-sigma S] [--knn-sigma S] [--knn-factor A --knn-backbone F --knn-layers a,b] [--ensemble K] [--feature-weights a=1,b=0.5] [--feature-match a=1] [--map-sigma S] [--map-guided R,EPS|none] [--start-step T] [--pool-repeat N] [--roi FILE | --agent-config FILE --camera NAME]", stderr)
	var sf scoreFlags
	sf.Register(fs)
	var df dataFlags
	df.register(fs)
	var rf roi.Flags
	rf.Register(fs)
	method := fs.String("method", eval.DefaultMethod, "threshold rule on normal scores: quantile:Q or meanstd:K")
	pixelQ := fs.Float64("pixel-quantile", eval.DefaultPixelQuantile, "quantile of normal anomaly-map values used as the pixel threshold")
	split := fs.String("split", dataset.SplitVal, "split whose normal images calibrate (val: held out of training; never test)")
	reference := fs.String("reference", eval.ReferenceKeep, "the bundle's map reference (the mean normal map per class, subtracted from every map): keep it as it is, "+
		"train (measure it on --data's training normals, whole frames), or none (remove it)")
	refPer := fs.Int("reference-per-class", eval.DefaultReferencePerClass, "training normals per class averaged into --reference train")
	shape := registerMapShape(fs)
	pool := fs.String("pool-repeat", "", "pool every map with this many passes of the bundle's k x k box average before the image score's maximum from now on (the paper's "+
		"8 at 256 px, a window about 57 px wide; 0: the map's largest pixel): fewer keep a small defect's peak, more average a texture's grain away. The map and its "+
		"reference are unchanged; the thresholds are measured anew. Compare on a painted set (docs/training.md, \"The image score's pooling\")")
	pixel := fs.String("pixel-factor", "", "with --reference train: the mean-frame term's size relative to the feature map's (0 removes it; 0.25 to 1 where parts sit still "+
		"on a plain background; absent: keep the bundle's). Adds each frame's pixel distance to its class's mean normal frame to the map (docs/algorithm.md §1.9)")
	pixelSigma := fs.String("pixel-sigma", "", "with --reference train: the Gaussian sigma, in map pixels, that smooths the mean-frame term's map (0: none; absent: keep the "+
		"bundle's, the map's sigma for a new term). The map's sigma suits feature maps of a few pixels a cell; the term is one value a pixel, and a smaller sigma keeps "+
		"specks and hairs of a few pixels (docs/algorithm.md §1.9, \"The term's own smoothing\")")
	var kf knnFlags
	kf.register(fs)
	dry := fs.Bool("dry-run", false, "print the calibration without writing it into the bundle")
	if err := Parse(fs, args); err != nil {
		return err
	}
	kf.parsed(fs)
	if sf.Bundle == "" || df.data == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "vlmdiff calibrate: --bundle and --data are required")
		fs.Usage()
		return ErrUsage
	}
	if _, err := eval.ParseMethod(*method); err != nil {
		return err
	}
	region, err := rf.Load(config.CameraROI)
	if err != nil {
		return err
	}
	if err := checkReference(*reference, region != nil, *dry); err != nil {
		return err
	}
	terms, err := termFlags(sf.Bundle, *pixel, *pixelSigma, &kf, *reference)
	if err != nil {
		return err
	}
	if err := checkEnsemble(sf.Bundle, sf.Ensemble, *reference); err != nil {
		return err
	}
	if f := shape(); f != (mapShape{}) {
		if err := setMapShape(sf.Bundle, f, *reference, *dry, stderr); err != nil {
			return err
		}
	}
	if *pool != "" {
		if err := setPoolRepeat(sf.Bundle, *pool, *dry, stderr); err != nil {
			return err
		}
	}
	items, classes, err := df.items()
	if err != nil {
		return err
	}
	switch {
	case *reference == eval.ReferenceNone && !*dry:
		if err := eval.WriteReference(sf.Bundle, nil); err != nil { // the mean-frame term goes with it
			return err
		}
	case *reference == eval.ReferenceTrain:
		if err := measureTrainReference(ctx, sf, df, &kf, items, classes, *refPer, terms, stderr); err != nil {
			return err
		}
	}
	normal := eval.Select(items, *split, classes, true)
	if len(normal) == 0 {
		return fmt.Errorf("no normal %s images in %s: give --val-fraction > 0 (or --split train, which the model has seen)", *split, df.data)
	}
	s, err := sf.Open()
	if err != nil {
		return err
	}
	cal, _, err := eval.Calibrate(ctx, s, normal, eval.CalibConfig{Method: *method, PixelQuantile: *pixelQ},
		eval.Options{BatchSize: df.batch, Progress: stderr, ROI: region})
	s.Close()
	if err != nil {
		return err
	}
	if region.Active() {
		// The bundle records the region its thresholds fit; cameras with another region need their own.
		cal.Method += "; roi: " + region.String()
		fmt.Fprintf(stderr, "calibrated for the region of interest (%s)\n", region)
	}
	fmt.Fprintf(stdout, "%-20s %12s %12s %12s %12s %6s\n", "class", "threshold", "min", "max", "pixel_thr", "n")
	fmt.Fprintf(stdout, "%-20s %12.6g %12.6g %12.6g %12.6g %6d\n", "(global)", cal.Global.Threshold, cal.Global.Min, cal.Global.Max, cal.Global.PixelThreshold, cal.Global.NormalN)
	for _, c := range dataset.Classes(normal) {
		if cc, ok := cal.PerClass[c]; ok {
			fmt.Fprintf(stdout, "%-20s %12.6g %12.6g %12.6g %12.6g %6d\n", c, cc.Threshold, cc.Min, cc.Max, cc.PixelThreshold, cc.NormalN)
		}
	}
	if *dry {
		return nil
	}
	if err := eval.WriteCalibration(sf.Bundle, cal, sf.Ensemble); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "calibration (%s) written to %s\n", cal.Method, filepath.Join(sf.Bundle, "bundle.json"))
	return nil
}

// checkReference checks --reference and what it cannot be combined with.
func checkReference(reference string, roi, dry bool) error {
	switch reference {
	case eval.ReferenceKeep, eval.ReferenceNone:
	case eval.ReferenceTrain:
		if roi {
			return fmt.Errorf("--reference train measures whole frames; it cannot be combined with --roi or --camera (measure it without the region first)")
		}
		if dry {
			return fmt.Errorf("--reference train writes the bundle; it cannot be combined with --dry-run")
		}
	default:
		return fmt.Errorf("--reference %q: want %s, %s or %s", reference, eval.ReferenceKeep, eval.ReferenceTrain, eval.ReferenceNone)
	}
	return nil
}

// measureTrainReference measures the map reference on the training normals (at most perClass a class) with the
// terms t (eval.Terms), building the nearest-normal term first when the bundle has none.
func measureTrainReference(ctx context.Context, sf scoreFlags, df dataFlags, kf *knnFlags, items []dataset.Item, classes []string, perClass int, t eval.Terms, stderr io.Writer) error {
	train := eval.ReferenceItems(eval.Select(items, dataset.SplitTrain, classes, true), perClass)
	if len(train) == 0 {
		return fmt.Errorf("--reference train: no normal training images in %s", df.data)
	}
	if t.Knn > 0 {
		if err := kf.ensure(ctx, sf.Bundle, items, classes, "train split of "+df.data, sf.Options(), stderr); err != nil {
			return err
		}
	}
	o := sf
	o.NoReference, o.PixelMap, o.KnnMap, o.KnnLeaveOneOut = true, true, true, true
	ref, err := eval.MeasureReference(ctx, sf.Bundle, o.Open, train, "train split of "+df.data, t, eval.Options{BatchSize: df.batch, Progress: stderr})
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "map reference: mean maps of %d training normals over %d classes written\n", len(train), len(ref.Classes)-1)
	if t.Pixel > 0 {
		fmt.Fprintf(stderr, "mean-frame term: %s, smoothed at sigma %g\n", eval.DescribePixel(t.Pixel, ref.PixelWeight), ref.PixelSigma)
	}
	if t.Knn > 0 {
		fmt.Fprintf(stderr, "nearest-normal term: %s, smoothed at sigma %g\n", eval.DescribeKnn(t.Knn, ref.KnnWeight), ref.KnnSigma)
	}
	return nil
}

// termFlags resolves the terms' flags into what the reference is measured with: --pixel-factor, --pixel-sigma,
// --knn-factor and --knn-sigma, each absent one the bundle's own.
func termFlags(bundle, pixel, pixelSigma string, kf *knnFlags, reference string) (eval.Terms, error) {
	var t eval.Terms
	var err error
	if t.Pixel, err = pixelFactorFlag(bundle, pixel, reference); err != nil {
		return t, err
	}
	if t.PixelSigma, err = sigmaFlag("--pixel-sigma", "mean-frame", pixelSigma, reference, eval.CheckPixelSigma); err != nil {
		return t, err
	}
	if t.KnnSigma, err = sigmaFlag("--knn-sigma", "nearest-normal", kf.sigma, reference, eval.CheckKnnSigma); err != nil {
		return t, err
	}
	t.Knn, err = kf.resolve(bundle, reference)
	return t, err
}

// sigmaFlag is a term's --pixel-sigma or --knn-sigma: nil when absent (the bundle's term keeps its smoothing),
// which needs --reference train when given (the term's weight and reference are measured at it).
func sigmaFlag(name, term, flag, reference string, check func(float64) error) (*float64, error) {
	if flag == "" {
		return nil, nil
	}
	if reference != eval.ReferenceTrain {
		return nil, fmt.Errorf("%s: the %s term's weight and reference are measured at its smoothing on the training normals; give --reference train", name, term)
	}
	v, err := strconv.ParseFloat(flag, 64)
	if err != nil {
		return nil, fmt.Errorf("%s %q: not a number", name, flag)
	}
	if err := check(v); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &v, nil
}

// pixelFactorFlag is the mean-frame term factor calibrate measures with: --pixel-factor when given (which needs
// --reference train), else the bundle's own (0 without the term).
func pixelFactorFlag(bundle, flag, reference string) (float64, error) {
	if flag == "" {
		return eval.PixelFactor(bundle)
	}
	if reference != eval.ReferenceTrain {
		return 0, fmt.Errorf("--pixel-factor: the mean-frame term is sized on the training normals with the map reference; give --reference train")
	}
	factor, err := strconv.ParseFloat(flag, 64)
	if err != nil {
		return 0, fmt.Errorf("--pixel-factor %q: not a number", flag)
	}
	if err := eval.CheckPixelFactor(factor); err != nil {
		return 0, fmt.Errorf("--pixel-factor: %w", err)
	}
	return factor, nil
}

// mapShape is what calibrate may change in how every map is made: --feature-weights, --feature-match,
// --map-sigma, --map-guided and --start-step as given ("": keep the bundle's).
type mapShape struct{ weights, match, sigma, guided, start string }

// registerMapShape registers --feature-weights, --feature-match, --map-sigma, --map-guided and --start-step on
// fs; the function it returns reads them once fs is parsed.
func registerMapShape(fs *flag.FlagSet) func() mapShape {
	weights := fs.String("feature-weights", "", "score with these feature layers from now on, name=weight,... (e.g. stage1=1,stage2=0.5,stage3=1; 0 leaves a layer out; "+
		"outputs of the bundle's feature graph): written into the bundle before the reference and thresholds are measured with them (`vlmdiff eval --weigh-layers` compares weightings)")
	match := fs.String("feature-match", "", "give feature layers a match radius in cells from now on, name=r,... (e.g. stage1=1; 0 compares the same position, as the paper): "+
		"each frame feature is compared with the reconstruction's best match within r cells, so a texture redrawn with another phase does not read as anomaly (docs/algorithm.md §1.9)")
	sigma := fs.String("map-sigma", "", "smooth every map with this Gaussian sigma in map pixels from now on (0: no smoothing; export's default is 5 at 256 px, scaled with "+
		"the input size): smaller keeps thin or small defects sharp, larger merges scattered responses; needs --reference train (or none). Compare sigmas on a painted set "+
		"(docs/training.md, \"Map smoothing\")")
	guided := fs.String("map-guided", "", "filter every map along the frame's own edges from now on: a guided filter with the frame's luminance as guide, window radius R map pixels, "+
		"regularisation EPS (e.g. 8,1e-4, usually with --map-sigma 0; none removes it): a response on a thin hair or scratch keeps its shape instead of a Gaussian blob; "+
		"needs --reference train (or none). Opt-in: compare on a painted set, or let the select stage weigh it (select.guided; docs/algorithm.md §1.9, \"Smoothing along the frame's edges\")")
	start := fs.String("start-step", "", "reconstruct every frame from this diffusion step from now on: the schedule's last (999) is the paper's, a lower one runs only the "+
		"DDIM steps at or below it on a frame noised less (SDEdit-style: it keeps more of a stochastic texture, and of a defect, and costs fewer steps); needs --reference train (or none). "+
		"Compare start steps on a painted set (docs/training.md, \"The start step\")")
	return func() mapShape { return mapShape{*weights, *match, *sigma, *guided, *start} }
}

// flags names the flags given, for messages.
func (f mapShape) flags() string {
	var given []string
	for _, g := range [][2]string{{"--feature-weights", f.weights}, {"--feature-match", f.match}, {"--map-sigma", f.sigma}, {"--map-guided", f.guided}, {"--start-step", f.start}} {
		if g[1] != "" {
			given = append(given, g[0]+" "+g[1])
		}
	}
	return strings.Join(given, " ")
}

// setMapShape writes --feature-weights, --feature-match, --map-sigma, --map-guided and --start-step into the bundle's manifest. Each
// changes every map, so a kept reference (measured with the old maps) and a dry run (which would calibrate maps
// the bundle does not score) are refused before anything is written.
func setMapShape(bundle string, f mapShape, reference string, dry bool, stderr io.Writer) error {
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return err
	}
	layers := slices.Clone(m.Features.Layers)
	if f.weights != "" {
		if layers, err = parseFeatureWeights(f.weights, m); err != nil {
			return err
		}
	}
	if f.match != "" {
		if err := applyFeatureMatch(f.match, layers); err != nil {
			return err
		}
	}
	sigma := m.Map.Sigma
	if f.sigma != "" {
		if sigma, err = parseMapSigma(f.sigma, m.Input.Width, m.Input.Height); err != nil {
			return err
		}
	}
	guided := m.Map.Guided
	if f.guided != "" {
		if guided, err = parseMapGuided(f.guided); err != nil {
			return err
		}
	}
	diff := m.Diffusion
	if f.start != "" {
		t, err := strconv.Atoi(f.start)
		if err != nil || t < 1 || t >= diff.TrainSteps {
			return fmt.Errorf("--start-step %q: want a diffusion step from 1 to %d (the schedule's last, the paper's)", f.start, diff.TrainSteps-1)
		}
		diff = diff.WithStart(t)
	}
	if slices.Equal(layers, m.Features.Layers) && sigma == m.Map.Sigma && models.SameGuided(guided, m.Map.Guided) && diff == m.Diffusion {
		return nil
	}
	flags := f.flags()
	switch {
	case dry:
		return fmt.Errorf("%s changes the bundle; it cannot be combined with --dry-run (compare weightings with vlmdiff eval --weigh-layers)", flags)
	case reference == eval.ReferenceKeep && m.Map.Reference != nil:
		return fmt.Errorf("%s changes every map, and the bundle's map reference was measured with its old maps: add --reference train (or none)", flags)
	}
	m.Features.Layers = layers
	var dropped string
	if m.Map.Knn != nil && len(models.MissingFeatureOutputs(m, m.Map.Knn.Layers)) > 0 { // the term's layers graph is fed from the feature graph's outputs
		dropped = models.DropKnnLayersGraph(m)
	}
	m.Map.Sigma = sigma
	m.Map.Guided = guided
	m.Diffusion = diff
	if sigma > 0 && !(m.Map.Truncate > 0) {
		m.Map.Truncate = 4 // the reference's; a bundle exported without smoothing may have none
	}
	if err := m.Validate(); err != nil { // refused before the write, so a refusal leaves the bundle as it was
		return fmt.Errorf("%s: %w", flags, err)
	}
	if err := models.WriteManifest(bundle, m); err != nil {
		return err
	}
	if dropped != "" {
		if err := os.Remove(filepath.Join(bundle, dropped)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if err := models.Verify(bundle); err != nil {
		return fmt.Errorf("the bundle with %s: %w", flags, err)
	}
	fmt.Fprintf(stderr, "map written: layers %s, sigma %g, %s, start step %s\n", describeLayers(layers), sigma, guided, diff.DescribeStart())
	return nil
}

// setPoolRepeat writes --pool-repeat into the bundle's score. The maps stay as they are, so the reference is
// kept; the raw scores change, so a dry run (which would print thresholds the bundle does not score with) is
// refused, and the thresholds that follow are measured with the new pooling.
func setPoolRepeat(bundle, s string, dry bool, stderr io.Writer) error {
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("--pool-repeat %q: want a number of pooling passes, 0 or more", s)
	}
	if n == m.Score.PoolRepeat {
		return nil
	}
	if dry {
		return fmt.Errorf("--pool-repeat %d changes the bundle; it cannot be combined with --dry-run", n)
	}
	if err := eval.SetPoolRepeat(bundle, n); err != nil { // refused before the write: passes that leave nothing of the map
		return fmt.Errorf("--pool-repeat: %w", err)
	}
	fmt.Fprintf(stderr, "score pooling written: %d passes of %d x %d, then the maximum\n", n, m.Score.PoolKernel, m.Score.PoolKernel)
	return nil
}

// parseMapSigma reads --map-sigma: a Gaussian sigma in map pixels, from 0 (no smoothing) to an eighth of the
// shorter side of a w x h map (32 px at 256 px, six times the paper's 5; a fixed bound would refuse a large
// bundle's own default, which the export scales with the input size).
func parseMapSigma(s string, w, h int) (float64, error) {
	top := float64(min(w, h)) / 8
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || !(v >= 0 && v <= top) {
		return 0, fmt.Errorf("--map-sigma %q: want a sigma in map pixels from 0 (no smoothing) to %g (an eighth of the %dx%d map's shorter side)", s, top, w, h)
	}
	return v, nil
}

// parseMapGuided reads --map-guided: "R,EPS" (a window radius in map pixels and the regularisation, checked
// against the map's size by the manifest's validation), or none (or 0) to remove the filter.
func parseMapGuided(s string) (*models.GuidedFilter, error) {
	if s == "none" || s == "0" {
		return nil, nil
	}
	rs, es, ok := strings.Cut(s, ",")
	r, err1 := strconv.Atoi(strings.TrimSpace(rs))
	eps, err2 := strconv.ParseFloat(strings.TrimSpace(es), 64)
	if !ok || err1 != nil || err2 != nil || r < 1 || !(eps > 0) || math.IsInf(eps, 0) {
		return nil, fmt.Errorf("--map-guided %q: want R,EPS (a window radius in map pixels from 1, a regularisation above 0; e.g. 8,1e-4) or none", s)
	}
	return &models.GuidedFilter{Radius: r, Eps: eps}, nil
}

// describeLayers is the layers as name=weight, with @r for a match radius.
func describeLayers(layers []models.FeatureLayer) string {
	parts := make([]string, len(layers))
	for i, l := range layers {
		parts[i] = fmt.Sprintf("%s=%g", l.Name, l.Weight)
		if l.Match > 0 {
			parts[i] += fmt.Sprintf("@%d", l.Match)
		}
	}
	return strings.Join(parts, ",")
}

// checkEnsemble refuses an --ensemble count that the bundle's kept reference was not measured with: thresholds
// fitted with K noises on top of a reference averaged over another count hold for neither.
func checkEnsemble(bundle string, k int, reference string) error {
	if k < 0 {
		return fmt.Errorf("--ensemble %d: want a count of start noises (0 keeps the bundle's)", k)
	}
	if k == 0 || reference != eval.ReferenceKeep {
		return nil
	}
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return err
	}
	if r := m.Map.Reference; r != nil && r.NoiseCount() != k {
		return fmt.Errorf("--ensemble %d: the bundle's map reference was measured with %d start noise(s); measure it again with --reference train (or drop it with --reference none)",
			k, r.NoiseCount())
	}
	return nil
}
