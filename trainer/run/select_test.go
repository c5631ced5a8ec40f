package run

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/trainer/metrics"
)

func TestSnapshotCandidatesInEpochOrderThenFinal(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"epoch-0020.pt", "epoch-0005.pt", "epoch-0100.pt", "epoch-0010.pt.tmp", "notes.txt"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "epoch-0007.pt"), 0o755); err != nil { // not a file
		t.Fatal(err)
	}
	got, err := snapshotCandidates(dir, "/run/train/model-trained.pt")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range got {
		names = append(names, c.Name)
	}
	if want := "epoch-0005 epoch-0020 epoch-0100 final"; strings.Join(names, " ") != want {
		t.Fatalf("candidates %v, want %s", names, want)
	}
	if got[0].Model != filepath.Join(dir, "epoch-0005.pt") || got[3].Model != "/run/train/model-trained.pt" {
		t.Fatalf("models %+v", got)
	}
	if _, err := snapshotCandidates(filepath.Join(dir, "missing"), "x"); err == nil {
		t.Fatal("a missing snapshot directory was accepted")
	}
}

// scored is a candidate whose score and detection (image and pixel AUROC) are s, as under select.metric mean
// where the three metrics move together.
func scored(name string, s float64) candidateResult {
	r := candidateResult{candidate: candidate{Name: name}, Score: s}
	r.Mean.ImageAUROC, r.Mean.PixelAUROC = s, s
	return r
}

func TestBestCandidate(t *testing.T) {
	res := func(scores ...float64) []candidateResult {
		out := make([]candidateResult, len(scores))
		for i, s := range scores {
			out[i] = scored(string(rune('a'+i)), s)
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		scores []float64
		gain   float64
		want   int
		reason string
	}{
		{"a clear lead wins", []float64{0.70, 0.80, 0.72}, 0.01, 1, "leads the final weights by 8.00"},
		{"the final scores highest", []float64{0.70, 0.71, 0.75}, 0.01, 2, "final weights score highest"},
		{"a lead within min_gain keeps the final", []float64{0.70, 0.755, 0.75}, 0.01, 2, "less than select.min_gain"},
		{"a larger min_gain keeps the final", []float64{0.70, 0.80, 0.75}, 0.10, 2, "less than select.min_gain"},
		{"a set at chance cannot choose", []float64{0.47, 0.53, 0.46}, 0.01, 2, "cannot tell them apart"},
		{"a tie goes to the less trained", []float64{0.62, 0.80, 0.80, 0.70}, 0.01, 1, "b leads"},
		{"the final alone", []float64{0.60}, 0.01, 0, "final weights score highest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := bestCandidate(res(tc.scores...), tc.gain)
			if got != tc.want || !strings.Contains(why, tc.reason) {
				t.Fatalf("bestCandidate(%v, %v) = %d (%s), want %d (%q)", tc.scores, tc.gain, got, why, tc.want, tc.reason)
			}
		})
	}
}

// TestInformativeWhateverTheMetric: the guard reads the candidates' image and pixel AUROC (chance 0.5), not the
// ranking score, so a set ranked by P-AP (chance: the share of defect pixels) or AU-PRO chooses when its best
// P-AP is under 0.55, and a set whose AUROCs sit at chance does not choose however the ranking reads.
func TestInformativeWhateverTheMetric(t *testing.T) {
	rank := func(metric string, rows ...metrics.Metrics) []candidateResult {
		out := make([]candidateResult, len(rows))
		for i, m := range rows {
			out[i] = candidateResult{candidate: candidate{Name: fmt.Sprintf("c%d", i)}, Mean: m, Score: selectScore(metric, m)}
		}
		return out
	}
	// session 57's PIPED painted set: sigma 5, then the guided filter r 8, eps 1e-4
	gauss := metrics.Metrics{ImageAUROC: 0.8803, PixelAUROC: 0.9285, AUPRO: 0.8245, PixelAP: 0.3358}
	guided := metrics.Metrics{ImageAUROC: 0.8766, PixelAUROC: 0.9292, AUPRO: 0.8180, PixelAP: 0.3832}
	chance := metrics.Metrics{ImageAUROC: 0.50, PixelAUROC: 0.52, AUPRO: 0.60, PixelAP: 0.30}
	chanceBetter := metrics.Metrics{ImageAUROC: 0.50, PixelAUROC: 0.52, AUPRO: 0.70, PixelAP: 0.30}
	noPixel := metrics.Metrics{ImageAUROC: 0.50, PixelAUROC: math.NaN(), AUPRO: 0.20, PixelAP: 0.05}
	noPixelBetter := metrics.Metrics{ImageAUROC: 0.50, PixelAUROC: math.NaN(), AUPRO: 0.30, PixelAP: 0.05}
	for _, tc := range []struct {
		name   string
		rs     []candidateResult
		want   int
		reason string
	}{
		{"p_ap under 0.55 on a set that detects", rank("p_ap", gauss, guided), 1, "c1 leads the export's sigma by 4.74"},
		{"the mean of three on the same set", rank("mean", gauss, guided), 0, "the export's sigma score highest"},
		{"au_pro at chance AUROCs", rank("au_pro", chance, chanceBetter), 0, "cannot tell them apart"},
		{"an undefined pixel AUROC: the image's alone, at chance", rank("au_pro", noPixel, noPixelBetter), 0, "(mean 50.00) do not reach 55.00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, why := bestOver(tc.rs, 0, 0.01, "the export's sigma"); got != tc.want || !strings.Contains(why, tc.reason) {
				t.Fatalf("bestOver = %d (%s), want %d (%q)", got, why, tc.want, tc.reason)
			}
		})
	}
}

// TestCheapestEnsemble: a larger start-noise count costs its count in denoiser time on every frame, so it is
// chosen only when it leads the best smaller count by min_gain.
func TestCheapestEnsemble(t *testing.T) {
	ks := []int{1, 2, 4}
	for _, tc := range []struct {
		name   string
		scores []float64
		want   int
		reason string
	}{
		{"each count earns its cost", []float64{0.70, 0.72, 0.74}, 2, "leads every smaller count"},
		{"only the middle one earns it", []float64{0.70, 0.72, 0.725}, 1, "leads every smaller count"},
		{"gains within min_gain keep one", []float64{0.70, 0.705, 0.709}, 0, "no larger count leads 1"},
		{"a larger count that loses keeps one", []float64{0.70, 0.65, 0.60}, 0, "no larger count leads 1"},
		{"four against one though two lost", []float64{0.70, 0.69, 0.72}, 2, "leads every smaller count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := make([]candidateResult, len(tc.scores))
			for i, s := range tc.scores {
				rs[i] = scored("", s)
			}
			got, why := cheapestEnsemble(ks, rs, 0.01)
			if got != tc.want || !strings.Contains(why, tc.reason) {
				t.Fatalf("cheapestEnsemble(%v) = %d (%s), want %d (%q)", tc.scores, got, why, tc.want, tc.reason)
			}
		})
	}
}

// TestCheaperNoWorse: a rule's pick moves only to a cheaper candidate that scores at least as high, the cheapest
// of those; an uninformative set moves nothing.
func TestCheaperNoWorse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		scores []float64
		costs  []int
		pick   int
		want   int
		reason string
	}{
		// the noisy-background part of session 45: steps 999 / 501 / 301 / 101, 1 noise; 999 kept by min_gain
		{"a lower step that scores higher and runs fewer steps", []float64{0.8244, 0.8190, 0.8301, 0.8328}, []int{10, 6, 4, 2}, 0, 3, "with 2 denoiser runs a frame instead of 10"},
		{"the cheapest of those no worse", []float64{0.80, 0.81, 0.80, 0.79}, []int{10, 6, 4, 2}, 0, 2, "with 4 denoiser runs a frame instead of 10"},
		{"equal cost: the higher score", []float64{0.80, 0.81, 0.82}, []int{10, 4, 4}, 0, 2, "c2 scores 82.00"},
		{"a cheaper one that scores lower stays out", []float64{0.80, 0.79, 0.78}, []int{10, 6, 2}, 0, 0, ""},
		{"the pick is already the cheapest", []float64{0.80, 0.85}, []int{1, 2}, 0, 0, ""},
		{"equal cost and score higher: not a cost reason", []float64{0.80, 0.805}, []int{10, 10}, 0, 0, ""},
		{"a set that cannot tell them apart", []float64{0.50, 0.52}, []int{10, 2}, 0, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := make([]candidateResult, len(tc.scores))
			for i, s := range tc.scores {
				rs[i] = scored(fmt.Sprintf("c%d", i), s)
			}
			got, why := cheaperNoWorse(rs, tc.costs, tc.pick)
			if got != tc.want || (tc.reason == "") != (why == "") || !strings.Contains(why, tc.reason) {
				t.Fatalf("cheaperNoWorse(%v, %v, %d) = %d (%q), want %d (%q)", tc.scores, tc.costs, tc.pick, got, why, tc.want, tc.reason)
			}
		})
	}
}

// TestChooseCount: without start steps the count ladder stands; with them a larger count at a lower step that
// costs less and scores no less than the ladder's pick is taken.
func TestChooseCount(t *testing.T) {
	ks := []int{1, 2}
	w := func(runs ...int) []*startWeighing {
		ws := make([]*startWeighing, len(runs))
		for i, r := range runs {
			ws[i] = &startWeighing{runs: r}
		}
		return ws
	}
	for _, tc := range []struct {
		name   string
		scores []float64
		starts []*startWeighing
		want   int
		reason string
	}{
		{"no start steps: the ladder", []float64{0.83, 0.835}, nil, 0, "no larger count leads 1"},
		{"both at one step: the ladder", []float64{0.83, 0.835}, w(10, 10), 0, "no larger count leads 1"},
		{"two noises from 101 against one from 999", []float64{0.8244, 0.8300}, w(10, 2), 1, "with 4 denoiser runs a frame instead of 10"},
		{"two noises cheaper but lower", []float64{0.8244, 0.82}, w(10, 2), 0, "no larger count leads 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := make([]candidateResult, len(tc.scores))
			for i, s := range tc.scores {
				rs[i] = scored(fmt.Sprintf("noises-%d", ks[i]), s)
			}
			got, why := chooseCount(ks, rs, tc.starts, 0.01)
			if got != tc.want || !strings.Contains(why, tc.reason) {
				t.Fatalf("chooseCount(%v) = %d (%q), want %d (%q)", tc.scores, got, why, tc.want, tc.reason)
			}
		})
	}
}

// TestGridEdgeNote: the note names the list and its end only when the best score sits there and the key
// accepts a value past it.
func TestGridEdgeNote(t *testing.T) {
	knn := []float64{0, 0.5, 1, 2}
	for _, tc := range []struct {
		name   string
		values []float64
		top    float64
		limit  float64
		low    bool
		want   string // "" : no note
	}{
		{"inside the list", knn, 1, 4, false, ""},
		{"at the largest value", knn, 2, 4, false, "select.x scored best at its largest value 2, so a larger one might score higher: add one to the list ([0, 0.5, 1, 2], up to 4)"},
		{"at the largest value the key accepts", []float64{0, 2, 4}, 4, 4, false, ""},
		{"no limit", []float64{1, 2, 4, 8}, 8, 0, false, "largest value 8, so a larger one might score higher: add one to the list ([1, 2, 4, 8]) to see"},
		{"at the smallest value, low end ignored", knn, 0, 4, false, ""},
		{"at the smallest value, low end counts", []float64{0.5, 1, 2}, 0.5, 4, true, "smallest value 0.5, so a smaller one might score higher"},
		{"one value: nothing weighed", []float64{1}, 1, 4, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := gridEdgeNote("select.x", tc.values, tc.top, tc.limit, tc.low)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("gridEdgeNote(%v, top %g, limit %g, low %v) = %q, want %q", tc.values, tc.top, tc.limit, tc.low, got, tc.want)
			}
		})
	}
}

func TestSelectScore(t *testing.T) {
	m := metrics.Metrics{ImageAUROC: 0.9, PixelAUROC: 0.6, AUPRO: 0.3, PixelAP: 0.2}
	for metric, want := range map[string]float64{"mean": 0.6, "i_auroc": 0.9, "p_auroc": 0.6, "au_pro": 0.3, "p_ap": 0.2} {
		if got := selectScore(metric, m); got < want-1e-12 || got > want+1e-12 {
			t.Errorf("selectScore(%s) = %v, want %v", metric, got, want)
		}
	}
}

func TestSelectConfigChecked(t *testing.T) {
	const knnYAML = "calibrate:\n  knn:\n    backbone_onnx: m.onnx\n    layers: [a]\n"
	base := "preset: tiny\ndata:\n  root: /data\nfinetune_ae:\n  max_steps: 1\ntrain:\n  max_steps: 1\n"
	c, err := ParseConfig([]byte(base), "/")
	if err != nil {
		t.Fatal(err)
	}
	if c.Select.Metric != "mean" || c.Select.PerImage != 2 || *c.Select.MinVisibility != 1 || c.Select.ReferencePerClass != c.Calibrate.ReferencePerClass || c.Select.MinGain != 0.01 || c.Train.SnapshotEvery != 0 {
		t.Fatalf("defaults: %+v, snapshot_every %d", c.Select, c.Train.SnapshotEvery)
	}
	ok, err := ParseConfig([]byte(base+"select:\n  layer_weights: [0, 1]\n  pixel_factors: [0, 0.5]\n  pixel_sigmas: [0, 1]\ncalibrate:\n  pixel_sigma: 2\n"), "/")
	if err != nil || !slices.Equal(ok.Select.PixelSigmas, []float64{0, 1}) || ok.Calibrate.PixelSigma == nil || *ok.Calibrate.PixelSigma != 2 {
		t.Fatalf("the mean-frame term's smoothings: %v (select %+v, calibrate %+v)", err, ok.Select, ok.Calibrate)
	}
	ok, err = ParseConfig([]byte(base+"select:\n  knn_factors: [0, 1]\n  knn_sigmas: [0, 2]\n"+knnYAML+"  knn_sigma: 3\n"), "/")
	if err != nil || !slices.Equal(ok.Select.KnnSigmas, []float64{0, 2}) || ok.Calibrate.KnnSigma == nil || *ok.Calibrate.KnnSigma != 3 {
		t.Fatalf("the nearest-normal term's smoothings: %v (select %+v, calibrate %+v)", err, ok.Select, ok.Calibrate)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"select:\n  metric: f1\n", "select.metric"},
		{"select:\n  min_gain: 2\n", "select.min_gain"},
		{"select:\n  per_image: -1\n", "select.per_image"},
		{"select:\n  min_visibility: -0.5\n", "select.min_visibility"},
		{"select:\n  reference_per_class: -3\n", "select.reference_per_class"},
		{"select:\n  ensembles: [2, 1]\n", "select.ensembles"},
		{"select:\n  ensembles: [1, 1]\n", "select.ensembles"},
		{"select:\n  ensembles: [0, 2]\n", "select.ensembles"},
		{"select:\n  ensembles: [1, 17]\n", "select.ensembles"},
		{"select:\n  layer_weights: [1]\n", "select.layer_weights"},
		{"select:\n  layer_weights: [1, 0.5]\n", "select.layer_weights"},
		{"select:\n  layer_weights: [-1, 1]\n", "select.layer_weights"},
		{"select:\n  layer_weights: [0, 0]\n", "select.layer_weights"},
		{"select:\n  layer_weights: [0, 0.2, 0.4, 0.6, 0.8, 1]\n", "select.layer_weights"},
		{"select:\n  pixel_factors: [0, 1]\n", "select.pixel_factors: are weighed with the feature layers"},
		{"select:\n  layer_weights: [0, 1]\n  pixel_factors: [0.5, 0.25]\n", "select.pixel_factors"},
		{"select:\n  layer_weights: [0, 1]\n  pixel_factors: [0, 8]\n", "select.pixel_factors"},
		{"select:\n  knn_factors: [0, 1]\n", "calibrate.knn.backbone_onnx: is required"},
		{"select:\n  knn_factors: [1, 0]\n" + knnYAML, "select.knn_factors"},
		{"select:\n  knn_factors: [0, 4, 32]\n" + knnYAML, "select.knn_factors: [0 4 32]: want increasing factors in 0..16"},
		{"select:\n  knn_isolated: [0, 0.1]\n" + knnYAML, "select.knn_isolated: is weighed with the nearest-normal term's factors"},
		{"select:\n  knn_factors: [0, 1]\n  knn_isolated: [0.1, 0]\n" + knnYAML, "select.knn_isolated"},
		{"select:\n  knn_factors: [0, 1]\n  knn_isolated: [0, 0.7]\n" + knnYAML, "select.knn_isolated"},
		{"select:\n  knn_factors: [0, 1]\n" + knnYAML + "    isolated: 0.9\n", "calibrate.knn.isolated"},
		{"select:\n  knn_sigmas: [1]\n" + knnYAML, "select.knn_sigmas: are the nearest-normal term's smoothings"},
		{"select:\n  knn_factors: [0]\n  knn_sigmas: [1]\n" + knnYAML, "select.knn_sigmas: are the nearest-normal term's smoothings"},
		{"select:\n  knn_factors: [0, 1]\n  knn_sigmas: [2, 1]\n" + knnYAML, "select.knn_sigmas: [2 1]: want increasing"},
		{"select:\n  knn_factors: [0, 1]\n  knn_sigmas: [65]\n" + knnYAML, "select.knn_sigmas"},
		{"calibrate:\n  knn_sigma: -1\n", "calibrate.knn_sigma"},
		{"select:\n  knn_ks: [1, 4]\n" + knnYAML, "select.knn_ks: is chosen once the nearest-normal term's factor is"},
		{"select:\n  knn_factors: [0, 1]\n  knn_ks: [4, 2]\n" + knnYAML, "select.knn_ks: [4 2]: want increasing"},
		{"select:\n  knn_factors: [0, 1]\n  knn_ks: [0, 2]\n" + knnYAML, "select.knn_ks"},
		{"select:\n  knn_factors: [0, 1]\n  knn_ks: [1, 65]\n" + knnYAML, "select.knn_ks: [1 65]: want increasing counts of nearest vectors in 1..64"},
		{"select:\n  knn_factors: [0, 1]\n  knn_ks: [1, 16]\n" + knnYAML + "    bank: 8\n", "select.knn_ks: [1 16]: a count above calibrate.knn.bank (8"},
		{"select:\n  knn_factors: [0, 1]\n" + knnYAML + "    sampling: densest\n", "calibrate.knn.sampling"},
		{"select:\n  smoothing: [1, 0.5]\n", "select.smoothing"},
		{"select:\n  smoothing: [0, 1]\n", "select.smoothing"},
		{"select:\n  smoothing: [0.5, 5]\n", "select.smoothing"},
		{"select:\n  guided: [{radius: 0.5, eps: 1e-3}]\n", "select.guided: {radius: 0.5, eps: 0.001}: want a radius of 1 to 64"},
		{"select:\n  guided: [{radius: 65, eps: 1e-3}]\n", "select.guided: {radius: 65"},
		{"select:\n  guided: [{radius: 8, eps: 0}]\n", "select.guided: {radius: 8, eps: 0}: want"},
		{"select:\n  guided: [{radius: 8}]\n", "select.guided: {radius: 8, eps: 0}: want"},
		{"select:\n  guided: [{radius: 8, eps: -1e-3}]\n", "a finite eps above 0"},
		{"select:\n  guided: [{radius: 8, eps: .inf}]\n", "a finite eps above 0"},
		{"select:\n  guided: [{radius: 4, eps: 1e-3}, {radius: 4, eps: 1e-3}]\n", "select.guided: {radius: 4, eps: 0.001} is listed twice"},
		{"select:\n  guided: [{radius: 4, epsilon: 1e-3}]\n", "epsilon"},
		{"select:\n  start_steps: [301, 999]\n", "select.start_steps"},
		{"select:\n  start_steps: [999, 999]\n", "select.start_steps"},
		{"select:\n  start_steps: [1000, 501]\n", "select.start_steps"},
		{"select:\n  start_steps: [999, 0]\n", "select.start_steps"},
		{"select:\n  pool_repeats: [4, 2]\n", "select.pool_repeats: [4 2]: want increasing"},
		{"select:\n  pool_repeats: [-1, 8]\n", "select.pool_repeats"},
		{"select:\n  pool_repeats: [8, 17]\n", "select.pool_repeats"},
		{"calibrate:\n  pixel_factor: -1\n", "calibrate.pixel_factor"},
		{"calibrate:\n  pixel_sigma: -1\n", "calibrate.pixel_sigma"},
		{"select:\n  layer_weights: [0, 1]\n  pixel_sigmas: [1]\n", "select.pixel_sigmas: are the mean-frame term's smoothings"},
		{"select:\n  layer_weights: [0, 1]\n  pixel_factors: [0]\n  pixel_sigmas: [1]\n", "select.pixel_sigmas: are the mean-frame term's smoothings"},
		{"select:\n  layer_weights: [0, 1]\n  pixel_factors: [0, 1]\n  pixel_sigmas: [2, 1]\n", "select.pixel_sigmas: [2 1]: want increasing"},
		{"select:\n  layer_weights: [0, 1]\n  pixel_factors: [0, 1]\n  pixel_sigmas: [100]\n", "select.pixel_sigmas"},
		{"calibrate:\n  pixel_factor: 0.5\n  reference: none\n", "calibrate.pixel_factor: the mean-frame term is sized"},
		{"train:\n  max_steps: 1\n  snapshot_every: -2\n", "train.snapshot_every"},
		{"evaluate:\n  baseline: patchcore\n", `evaluate.baseline: "patchcore": want mean-diff or none`},
		{"export:\n  feature_match: {layer1: 4}\n", "export.feature_match.layer1: 4: want a radius of 0..3"},
		{"export:\n  feature_match: {layer1: -1}\n", "export.feature_match.layer1"},
		{"export:\n  feature_layers: [[layer1, 1]]\n  feature_match: {layer2: 1}\n", "export.feature_match.layer2: is not one of export.feature_layers"},
	} {
		raw := base + tc.yaml
		if strings.HasPrefix(tc.yaml, "train:") {
			raw = strings.Replace(base, "train:\n  max_steps: 1\n", tc.yaml, 1)
		}
		if _, err := ParseConfig([]byte(raw), "/"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one naming %s", tc.yaml, err, tc.want)
		}
	}
}

// TestMapRecipeSame: the start-step step reuses a weighing only for the recipe it was weighed on, whatever
// pointers its smoothings sit behind, and never across the weighings' maps or start step.
func TestMapRecipeSame(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	base := mapRecipe{Ensemble: 2, Layers: [][2]any{{"block2", 1.0}, {"block5", 0.5}}, Pixel: 0.5, PixelSigma: f(1), Knn: 8, KnnSigma: f(2), KnnIsolated: -1}
	cases := []struct {
		name string
		edit func(r *mapRecipe)
		same bool
	}{
		{"itself, sigmas at other addresses", func(r *mapRecipe) { r.PixelSigma, r.KnnSigma = f(1), f(2) }, true},
		{"another start step and weighing", func(r *mapRecipe) { r.Start, r.from, r.starts = 101, &weighedRecipe{}, &startWeighing{} }, true},
		{"another count", func(r *mapRecipe) { r.Ensemble = 1 }, false},
		{"another layer weight", func(r *mapRecipe) { r.Layers = [][2]any{{"block2", 1.0}, {"block5", 1.0}} }, false},
		{"another mean-frame factor", func(r *mapRecipe) { r.Pixel = 0.25 }, false},
		{"the mean-frame term at the map's sigma", func(r *mapRecipe) { r.PixelSigma = nil }, false},
		{"another knn factor", func(r *mapRecipe) { r.Knn = 4 }, false},
		{"another knn sigma", func(r *mapRecipe) { r.KnnSigma = f(3) }, false},
		{"another isolated fraction", func(r *mapRecipe) { r.KnnIsolated = 0.1 }, false},
		{"a class with more than the nearest", func(r *mapRecipe) { r.KnnKs = map[string]int{"": 1, "waves": 4} }, false},
		{"empty counts", func(r *mapRecipe) { r.KnnKs = map[string]int{} }, true},
		{"another map sigma", func(r *mapRecipe) { r.Sigma = 2.5 }, false},
		{"a guided filter", func(r *mapRecipe) { r.Guided = &models.GuidedFilter{Radius: 8, Eps: 1e-4} }, false},
	}
	// a guided filter compares by value: the same radius and eps at another address is the same recipe
	g, o := base, base
	g.Guided, o.Guided = &models.GuidedFilter{Radius: 8, Eps: 1e-4}, &models.GuidedFilter{Radius: 8, Eps: 1e-4}
	if !g.same(o) {
		t.Error("the same guided filter at another address is another recipe")
	}
	if o.Guided.Radius = 4; g.same(o) {
		t.Error("another guided radius is the same recipe")
	}
	// the counts alone: another recipe, the same terms
	k := base
	k.KnnKs = map[string]int{"waves": 4}
	if base.same(k) || !base.sameTerms(k) {
		t.Errorf("counts %v: same %v, sameTerms %v; want false, true", k.KnnKs, base.same(k), base.sameTerms(k))
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := base
			c.edit(&r)
			if got := base.same(r); got != c.same {
				t.Errorf("same = %v, want %v (%+v against %+v)", got, c.same, r, base)
			}
		})
	}
}

// TestGuidedCandidateAt: select.guided's radius is given at 256 px and scales with the map's shorter side as
// export.sigma does, never below one pixel; eps is the guide's (luminance in [0, 1]) and does not scale.
func TestGuidedCandidateAt(t *testing.T) {
	for _, c := range []struct {
		g    GuidedCandidate
		w, h int
		want models.GuidedFilter
	}{
		{GuidedCandidate{8, 1e-4}, 256, 256, models.GuidedFilter{Radius: 8, Eps: 1e-4}},
		{GuidedCandidate{8, 1e-4}, 64, 64, models.GuidedFilter{Radius: 2, Eps: 1e-4}},
		{GuidedCandidate{8, 1e-3}, 800, 600, models.GuidedFilter{Radius: 19, Eps: 1e-3}}, // 8 x 600 / 256 = 18.75
		{GuidedCandidate{4, 1e-3}, 32, 48, models.GuidedFilter{Radius: 1, Eps: 1e-3}},    // 0.5 rounds to 1
		{GuidedCandidate{1, 1e-3}, 64, 64, models.GuidedFilter{Radius: 1, Eps: 1e-3}},    // 0.25: at least 1
	} {
		if got := c.g.at(c.w, c.h); *got != c.want {
			t.Errorf("%+v at %dx%d: %+v, want %+v", c.g, c.w, c.h, *got, c.want)
		}
	}
}
