package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
)

// parseWeightValues reads --weigh-layers: comma-separated values a layer weight may take (eval.CheckLayerValues).
func parseWeightValues(s string) ([]float64, error) {
	var vs []float64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil {
			return nil, fmt.Errorf("--weigh-layers %q: %q is not a number", s, f)
		}
		vs = append(vs, v)
	}
	if err := eval.CheckLayerValues(vs); err != nil {
		return nil, fmt.Errorf("--weigh-layers %q: %w", s, err)
	}
	return vs, nil
}

// runWeighLayers is `vlmdiff eval --weigh-layers spec [--pixel-factors pspec] --val-data valData`: the painted
// set's test images of the classes, the references' training normals from items.
func runWeighLayers(ctx context.Context, sf scoreFlags, df dataFlags, items []dataset.Item, classes []string, spec, pspec, valData string, refPer int, stdout, stderr io.Writer) error {
	values, err := parseWeightValues(spec)
	if err != nil {
		return err
	}
	var factors []float64
	if pspec != "" {
		if factors, err = parsePixelFactors(pspec); err != nil {
			return err
		}
	}
	vf := df
	vf.data, vf.layout, vf.valFraction = valData, dataset.LayoutAuto, 0
	vitems, _, err := vf.items()
	if err != nil {
		return fmt.Errorf("--val-data: %w", err)
	}
	val := eval.Select(vitems, dataset.SplitTest, classes, false)
	if len(val) == 0 {
		return fmt.Errorf("--val-data %s: no test images (classes %v)", valData, classes)
	}
	train := eval.ReferenceItems(eval.Select(items, dataset.SplitTrain, classes, true), refPer)
	return weighLayers(ctx, sf.Options(), sf.Bundle, values, factors, train, val, df.batch, stdout, stderr)
}

// parsePixelFactors reads --pixel-factors a,b,...: increasing mean-frame term factors in 0..eval.MaxPixelFactor.
func parsePixelFactors(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		a, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || eval.CheckPixelFactor(a) != nil || (len(out) > 0 && a <= out[len(out)-1]) {
			return nil, fmt.Errorf("--pixel-factors %q: want increasing factors in 0..%d (e.g. 0,0.25,0.5,1)", s, eval.MaxPixelFactor)
		}
		out = append(out, a)
	}
	return out, nil
}

// weighLayers prints how every weighting of the bundle's feature layers (each with every mean-frame term factor
// of factors, when given) scores on the validation items (each with its own map reference measured on
// reference, when the bundle has one), the bundle's own recipe marked. It writes nothing to the bundle: the
// term is weighed on a temporary copy holding the training normals' mean frames; `vlmdiff calibrate
// --feature-weights` and `--pixel-factor` write a choice with its reference and thresholds.
func weighLayers(ctx context.Context, opt pipeline.Options, bundle string, values, factors []float64, train, val []dataset.Item, batch int, stdout, stderr io.Writer) error {
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return err
	}
	ownFactor, hasRef := 0.0, m.Map.Reference != nil // the copy below may drop its reference: it is measured anew here
	if m.Map.Pixel != nil {
		ownFactor = m.Map.Pixel.Factor
	}
	if len(factors) > 0 {
		if m.Map.Reference == nil || len(train) == 0 {
			return fmt.Errorf("--pixel-factors: the mean-frame term is sized and centred on the training normals with the map reference: " +
				"the bundle needs a map reference (vlmdiff calibrate --reference train) and --data training normals")
		}
		tmp, err := os.MkdirTemp("", "vlmdiff-weigh-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		cp := filepath.Join(tmp, "bundle")
		if err := models.CopyBundle(bundle, cp); err != nil {
			return err
		}
		mf, err := eval.BuildMeanFrames(ctx, m, train, "training normals")
		if err != nil {
			return err
		}
		if err := eval.WritePixel(cp, mf, 0, nil); err != nil {
			return err
		}
		bundle = cp
	} else {
		factors = []float64{ownFactor}
		if ownFactor > 0 {
			return fmt.Errorf("--weigh-layers: the bundle has the mean-frame term (factor %g): give --pixel-factors (e.g. %g) to weigh the layers with it", ownFactor, ownFactor)
		}
	}
	opt.LayerMaps = true
	s, err := pipeline.Open(bundle, opt)
	if err != nil {
		return err
	}
	defer s.Close()
	m = s.Manifest()
	if len(m.Features.Layers) < 2 && len(factors) < 2 {
		return fmt.Errorf("--weigh-layers: the bundle has one feature layer (%s): nothing to weigh", m.Features.Layers[0].Name)
	}
	own := make([]float64, len(m.Features.Layers))
	names := make([]string, len(m.Features.Layers))
	for i, l := range m.Features.Layers {
		own[i], names[i] = float64(l.Weight), l.Name
	}
	switch {
	case !hasRef:
		train = nil // the bundle scores raw maps: so does each weighting
	case len(train) == 0:
		return fmt.Errorf("--weigh-layers: the bundle subtracts a map reference, and --data has no training normals to measure each weighting's")
	}
	weightings := [][]float64{own}
	if len(own) > 1 {
		weightings = eval.LayerCandidates(own, values)
	}
	var cands []eval.MapCandidate
	for _, w := range weightings {
		for _, a := range factors {
			cands = append(cands, eval.MapCandidate{Weights: w, Pixel: a})
		}
	}
	fmt.Fprintf(stderr, "weighing %s: %d weightings of %v x mean-frame term factors %v on %d validation images, references of %d training normals\n",
		strings.Join(names, ", "), len(weightings), values, factors, len(val), len(train))
	mets, err := eval.WeighMaps(ctx, s, train, val, cands, eval.Options{BatchSize: batch, Progress: stderr})
	if err != nil {
		return err
	}
	order := make([]int, len(cands))
	for i := range order {
		order[i] = i
	}
	score := func(i int) float64 { return (mets[i].ImageAUROC + mets[i].PixelAUROC + mets[i].AUPRO) / 3 }
	sort.SliceStable(order, func(a, b int) bool { return score(order[a]) > score(order[b]) })
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\tI-AUROC\tP-AUROC\tAU-PRO\tP-AP\tmean3\t\t\n", strings.Join(names, " / "))
	for _, i := range order {
		mark := ""
		if i < len(factors) && cands[i].Pixel == ownFactor { // the bundle's own weights come first
			mark = "<- the bundle's"
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%s\t\n", cands[i].Name(), 100*mets[i].ImageAUROC, 100*mets[i].PixelAUROC,
			100*mets[i].AUPRO, 100*mets[i].PixelAP, 100*score(i), mark)
	}
	return tw.Flush()
}

// parseFeatureWeights reads --feature-weights name=w,...: the layers the bundle scores with from now on, in
// the order given; each must be an output of the bundle's feature graph, and a weight 0 leaves a layer out.
func parseFeatureWeights(s string, m *models.Manifest) ([]models.FeatureLayer, error) {
	outs := map[string]bool{}
	if g, ok := m.Graphs[models.RoleFeatures]; ok {
		for _, o := range g.Outputs {
			outs[o.Name] = true
		}
	}
	var layers []models.FeatureLayer
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(f), "=")
		w, err := strconv.ParseFloat(val, 32)
		switch {
		case !ok || name == "" || err != nil || w < 0:
			return nil, fmt.Errorf("--feature-weights %q: want name=weight,... with weights >= 0 (e.g. stage1=1,stage2=0.5,stage3=1)", s)
		case !outs[name]:
			return nil, fmt.Errorf("--feature-weights: %q is not an output of the bundle's feature graph", name)
		case seen[name]:
			return nil, fmt.Errorf("--feature-weights: %q appears twice", name)
		}
		seen[name] = true
		if w > 0 {
			ly := models.FeatureLayer{Name: name, Weight: float32(w)}
			for _, old := range m.Features.Layers {
				if old.Name == name {
					ly.Match = old.Match // a new weight keeps the layer's match radius
				}
			}
			layers = append(layers, ly)
		}
	}
	if len(layers) == 0 {
		return nil, fmt.Errorf("--feature-weights %q: no layer with a weight above 0", s)
	}
	return layers, nil
}

// applyFeatureMatch reads --feature-match name=r,... into layers: each name must be one of them (the layers the
// bundle scores with, after --feature-weights), r a radius of 0..models.MaxMatch cells. Whether the bundle's
// features can take one (map features, not ViT tokens) is the manifest's own check, run before the write.
func applyFeatureMatch(s string, layers []models.FeatureLayer) error {
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(f), "=")
		r, err := strconv.Atoi(val)
		if !ok || name == "" || err != nil || r < 0 || r > models.MaxMatch {
			return fmt.Errorf("--feature-match %q: want name=radius,... with radii of 0..%d cells (e.g. stage1=1)", s, models.MaxMatch)
		}
		if seen[name] {
			return fmt.Errorf("--feature-match: %q appears twice", name)
		}
		seen[name] = true
		i := slices.IndexFunc(layers, func(l models.FeatureLayer) bool { return l.Name == name })
		if i < 0 {
			return fmt.Errorf("--feature-match: %q is not one of the bundle's scoring layers (%s)", name, describeLayers(layers))
		}
		layers[i].Match = r
	}
	return nil
}
