package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vlmdiff/edge/internal/testpython"
	"github.com/vlmdiff/edge/models"
)

// The stage tests check each stage of the scorer against its twin in the PyTorch reference
// (trainer/python/vlmdiff_train/reference.py) on fixed inputs, without ONNX Runtime: where the end-to-end parity
// test says that the chain agrees, these say which piece does. testdata/stage_refs.py runs the reference pieces;
// it runs once per test binary, on the inputs of stageInputs.

// stageIn is what the Go test hands to stage_refs.py.
type stageIn struct {
	Normalize struct {
		Pix    []int      `json:"pix"` // RGB bytes (as ints: []byte would marshal as base64)
		Width  int        `json:"width"`
		Height int        `json:"height"`
		Mean   [3]float32 `json:"mean"`
		Std    [3]float32 `json:"std"`
	} `json:"normalize"`
	Posterior struct {
		Moments    []float32 `json:"moments"`
		Shape      []int     `json:"shape"`
		Noise      []float32 `json:"noise"`
		NoiseShape []int     `json:"noise_shape"`
		Channels   int       `json:"channels"`
		Scale      float32   `json:"scale"`
		Lo         float32   `json:"lo"`
		Hi         float32   `json:"hi"`
	} `json:"posterior"`
	Schedule []scheduleCase `json:"schedule"`
	Recon    struct {
		Bundle       string    `json:"bundle"`
		Posterior    string    `json:"posterior"`
		Moments      []float32 `json:"moments"`
		MomentsShape []int     `json:"moments_shape"`
		Image        []float32 `json:"image"`
		ImageShape   []int     `json:"image_shape"`
		PostNoise    []float32 `json:"post_noise"`
		StartNoise   []float32 `json:"start_noise"`
		NoiseShape   []int     `json:"noise_shape"`
		Keys         []string  `json:"keys"`
	} `json:"reconstruct"`
	FeatureInput struct {
		X      []float32 `json:"x"`
		Shape  []int     `json:"shape"`
		InMean []float32 `json:"in_mean"`
		InStd  []float32 `json:"in_std"`
		Mean   []float32 `json:"mean"`
		Std    []float32 `json:"std"`
	} `json:"feature_input"`
	Anomaly []anomalyCase `json:"anomaly"`
}

type scheduleCase struct {
	LinearStart float64 `json:"linear_start"`
	LinearEnd   float64 `json:"linear_end"`
	TrainSteps  int     `json:"train_steps"`
	DDIMSteps   int     `json:"ddim_steps"`
}

type anomalyCase struct {
	Layers []struct {
		Name   string    `json:"name"`
		Weight float64   `json:"weight"`
		Data   []float32 `json:"data"`
		Shape  []int     `json:"shape"`
	} `json:"layers"`
	Tokens   bool    `json:"tokens"`
	Height   int     `json:"height"`
	Width    int     `json:"width"`
	Sigma    float64 `json:"sigma"`
	Truncate float64 `json:"truncate"`
	Kernel   int     `json:"kernel"`
	Repeat   int     `json:"repeat"`
}

// stageOut is what stage_refs.py computes.
type stageOut struct {
	Normalize []float64            `json:"normalize"`
	Posterior map[string][]float64 `json:"posterior"`
	Schedule  [][]struct {
		T        int     `json:"t"`
		Abar     float64 `json:"abar"`
		AbarPrev float64 `json:"abar_prev"`
	} `json:"schedule"`
	Recon map[string]struct {
		Latent []float64 `json:"latent"`
		Cond   []float64 `json:"cond"`
		Uncond []float64 `json:"uncond"`
		CFG    bool      `json:"cfg"`
	} `json:"reconstruct"`
	FeatureInput []float64 `json:"feature_input"`
	Anomaly      [][]struct {
		Map    []float64 `json:"map"`
		Smooth []float64 `json:"smooth"`
		Score  float64   `json:"score"`
	} `json:"anomaly"`
}

func randn(r *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(scale * r.NormFloat64())
	}
	return v
}

func prod(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// stageInputs builds the fixed inputs of every stage test (seeded, so Go and Python see the same numbers).
func stageInputs() *stageIn {
	r := rand.New(rand.NewPCG(10, 1))
	in := &stageIn{}

	nz := &in.Normalize
	nz.Width, nz.Height = 7, 5
	nz.Mean, nz.Std = [3]float32{0.485, 0.456, 0.406}, [3]float32{0.229, 0.224, 0.225}
	for i := 0; i < nz.Width*nz.Height*3; i++ {
		nz.Pix = append(nz.Pix, r.IntN(256))
	}
	nz.Pix[0], nz.Pix[1] = 0, 255

	p := &in.Posterior
	p.Shape, p.NoiseShape, p.Channels = []int{2, 8, 3, 3}, []int{2, 4, 3, 3}, 4
	p.Moments = randn(r, prod(p.Shape), 1)
	for b := 0; b < 2; b++ { // log-variances from -45 to 30, past both clamps
		lv := p.Moments[b*72+36 : b*72+72]
		for j := range lv {
			lv[j] = -45 + 75*float32(j)/float32(len(lv)-1)
		}
	}
	clear(p.Moments[72 : 72+36]) // frame 1 has mean 0, so the sample is the clamped spread alone
	p.Noise, p.Scale, p.Lo, p.Hi = randn(r, prod(p.NoiseShape), 1), 0.18215, -30, 20

	in.Schedule = []scheduleCase{{0.00085, 0.012, 1000, 10}, {0.00085, 0.012, 1000, 50}, {0.0001, 0.02, 100, 7}}

	rc := &in.Recon
	rc.Bundle, rc.Posterior, rc.Keys = fixtureBundle, "sample", []string{"", "widget"}
	rc.MomentsShape, rc.NoiseShape, rc.ImageShape = []int{2, 8, 4, 4}, []int{2, 4, 4, 4}, []int{2, 3, 8, 8}
	rc.Moments = randn(r, prod(rc.MomentsShape), 0.7)
	rc.Image = randn(r, prod(rc.ImageShape), 1)
	rc.PostNoise, rc.StartNoise = randn(r, prod(rc.NoiseShape), 1), randn(r, prod(rc.NoiseShape), 1)

	f := &in.FeatureInput
	f.Shape = []int{4, 3, 4, 4}
	f.X = randn(r, prod(f.Shape), 1.5)
	f.InMean, f.InStd = []float32{0.485, 0.456, 0.406}, []float32{0.229, 0.224, 0.225}
	f.Mean, f.Std = []float32{0.481, 0.458, 0.408}, []float32{0.269, 0.261, 0.276}

	conv := anomalyCase{Height: 32, Width: 32, Sigma: 1.25, Truncate: 4, Kernel: 3, Repeat: 4}
	tok := anomalyCase{Height: 24, Width: 24, Sigma: 2, Truncate: 3, Kernel: 2, Repeat: 3, Tokens: true}
	for _, l := range []struct {
		c     *anomalyCase
		name  string
		w     float64
		shape []int
	}{{&conv, "layer1", 1, []int{4, 6, 8, 8}}, {&conv, "layer2", 0.5, []int{4, 5, 4, 4}}, {&tok, "blocks", 1, []int{4, 17, 6}}} {
		data := randn(r, prod(l.shape), 1)
		// reconstructions near the inputs, as a good model's are, so the distances are small but not zero
		half := len(data) / 2
		for j := half; j < len(data); j++ {
			data[j] = data[j-half] + 0.3*data[j]
		}
		l.c.Layers = append(l.c.Layers, struct {
			Name   string    `json:"name"`
			Weight float64   `json:"weight"`
			Data   []float32 `json:"data"`
			Shape  []int     `json:"shape"`
		}{l.name, l.w, data, l.shape})
	}
	in.Anomaly = []anomalyCase{conv, tok}
	return in
}

var (
	errNoTorch   = errors.New("no PyTorch")
	stageRefOnce sync.Once
	stageRef     *stageOut
	stageRefErr  error
)

// pythonStages runs testdata/stage_refs.py once per test binary and returns the reference's stage outputs.
func pythonStages(t *testing.T) (*stageIn, *stageOut) {
	t.Helper()
	in := stageInputs()
	stageRefOnce.Do(func() {
		if err := exec.Command(testpython.Path(), "-c", "import torch, scipy, PIL").Run(); err != nil {
			stageRefErr = fmt.Errorf("%w: %s cannot import torch/scipy/PIL: %v", errNoTorch, testpython.Path(), err)
			return
		}
		dir, err := os.MkdirTemp("", "stage-refs")
		if err != nil {
			stageRefErr = err
			return
		}
		defer os.RemoveAll(dir)
		b, _ := json.Marshal(in)
		inPath, outPath := filepath.Join(dir, "in.json"), filepath.Join(dir, "out.json")
		if stageRefErr = os.WriteFile(inPath, b, 0o644); stageRefErr != nil {
			return
		}
		cmd := exec.Command(testpython.Path(), "testdata/stage_refs.py", inPath, outPath)
		cmd.Env = append(os.Environ(), "PYTHONPATH=../trainer/python")
		if out, err := cmd.CombinedOutput(); err != nil {
			stageRefErr = fmt.Errorf("stage_refs.py: %v\n%s", err, out)
			return
		}
		if b, stageRefErr = os.ReadFile(outPath); stageRefErr != nil {
			return
		}
		stageRef = &stageOut{}
		stageRefErr = json.Unmarshal(b, stageRef)
	})
	if errors.Is(stageRefErr, errNoTorch) && os.Getenv("CI") == "" {
		t.Skip(stageRefErr) // as needTorch: in CI the test command installs torch, and its absence fails
	}
	if stageRefErr != nil {
		t.Fatal(stageRefErr)
	}
	return in, stageRef
}

// relL2 is |got - want| / |want| over all values.
func relL2[T float32 | float64](got []T, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range got {
		d := float64(got[i]) - want[i]
		num += d * d
		den += want[i] * want[i]
	}
	return math.Sqrt(num / math.Max(den, 1e-30))
}

// TestStageNormalize: the preprocessed tensor is bit-identical to reference.normalize_uint8 (torchvision's
// ToTensor + Normalize in float32). The resize before it is checked against Pillow in TestResizePIL.
func TestStageNormalize(t *testing.T) {
	in, ref := pythonStages(t)
	nz := in.Normalize
	im := Image{Width: nz.Width, Height: nz.Height}
	for _, v := range nz.Pix {
		im.Pix = append(im.Pix, byte(v))
	}
	got := make([]float32, 3*nz.Width*nz.Height)
	normalize(im, nz.Mean, nz.Std, got)
	if len(ref.Normalize) != len(got) {
		t.Fatalf("%d values, reference %d", len(got), len(ref.Normalize))
	}
	for i, w := range ref.Normalize {
		if float64(got[i]) != w {
			t.Fatalf("value %d (channel %d) is %.9g, reference.normalize_uint8 %.9g", i, i/(nz.Width*nz.Height), got[i], w)
		}
	}
}

func TestStagePosteriorLatent(t *testing.T) {
	in, ref := pythonStages(t)
	p := in.Posterior
	n := p.Channels * 9
	for _, mode := range []string{"sample", "mean"} {
		got := make([]float32, 2*n)
		for b := 0; b < 2; b++ {
			posteriorLatent(got[b*n:(b+1)*n], p.Moments[b*2*n:(b+1)*2*n], p.Noise[b*n:(b+1)*n],
				latentSpec{Scale: p.Scale, Sample: mode == "sample", ClampLo: p.Lo, ClampHi: p.Hi})
		}
		// element by element: the clamped spreads span twenty orders of magnitude
		for j, w := range ref.Posterior[mode] {
			if d := math.Abs(float64(got[j]) - w); !(d <= 1e-6*math.Abs(w)+1e-30) {
				t.Fatalf("posterior %s: value %d is %g, reference.posterior_latent %g", mode, j, got[j], w)
			}
		}
	}
}

func TestStageDDIMSchedule(t *testing.T) {
	in, ref := pythonStages(t)
	for i, c := range in.Schedule {
		got := ddimSchedule(AlphasCumprod(c.LinearStart, c.LinearEnd, c.TrainSteps), DDIMTimesteps(c.TrainSteps, c.DDIMSteps))
		want := ref.Schedule[i]
		if len(got) != len(want) {
			t.Fatalf("%+v: %d steps, reference %d", c, len(got), len(want))
		}
		for k := range got {
			w := want[k]
			if got[k].T != w.T || math.Abs(got[k].Abar-w.Abar) > 1e-14 || math.Abs(got[k].AbarPrev-w.AbarPrev) > 1e-14 {
				t.Errorf("%+v step %d: got %+v, reference t %d abar %.17g abar_prev %.17g", c, k, got[k], w.T, w.Abar, w.AbarPrev)
			}
		}
	}
}

// toyDenoiser is stage_refs.py's ToyDenoiser for a denoiser batch laid out as the scorer lays it out: row r sees
// context row r and hint row r.
func toyDenoiser(ctxData, hint []float32, n int) func(x []float32, t int) ([]float32, error) {
	return func(x []float32, t int) ([]float32, error) {
		rows := len(x) / n
		perCtx, perHint := len(ctxData)/rows, len(hint)/rows
		e := make([]float32, len(x))
		for r := 0; r < rows; r++ {
			cm, hm := float32(mean32(ctxData[r*perCtx:(r+1)*perCtx])), float32(mean32(hint[r*perHint:(r+1)*perHint]))
			for j := r * n; j < (r+1)*n; j++ {
				e[j] = 0.5*float32(math.Tanh(float64(x[j]))) + 0.1*cm + 0.05*hm + 1e-4*float32(t)
			}
		}
		return e, nil
	}
}

func mean32(v []float32) float64 {
	s := 0.0
	for _, x := range v {
		s += float64(x)
	}
	return s / float64(len(v))
}

// TestStageReconstruct runs posterior latent, contexts, forward noising, guidance and the DDIM loop on fixed
// moments and noise with a toy denoiser, against reference.Scorer.reconstruct with the same toy networks: once
// with the empty prompt (no guidance) and once with a class prompt (guidance scale 9).
func TestStageReconstruct(t *testing.T) {
	in, ref := pythonStages(t)
	rc := in.Recon
	b, err := models.Load(fixtureBundle)
	if err != nil {
		t.Fatal(err)
	}
	m := b.Manifest
	s := &Scorer{bundle: b, m: m, opt: Options{ClassConditioning: true}, ens: 1}
	abar := AlphasCumprod(m.Diffusion.LinearStart, m.Diffusion.LinearEnd, m.Diffusion.TrainSteps)
	steps := ddimSchedule(abar, DDIMTimesteps(m.Diffusion.TrainSteps, m.Diffusion.DDIMSteps))
	lp := s.latentSpec()
	lp.Sample = rc.Posterior == "sample"
	n := prod(rc.NoiseShape[1:])
	for _, key := range rc.Keys {
		want := ref.Recon[key]
		reqs := []Request{{Class: key}, {Class: key}}
		ctxData, cfg := s.contexts(reqs)
		wantCtx := append(append([]float64(nil), want.Cond...), want.Cond...)
		if cfg {
			wantCtx = append(append(append([]float64(nil), want.Uncond...), want.Uncond...), wantCtx...)
		}
		if cfg != want.CFG || relL2(ctxData, wantCtx) != 0 {
			t.Errorf("key %q: contexts (cfg %v) differ from reference.Scorer.contexts (cfg %v)", key, cfg, want.CFG)
		}
		z := make([]float32, 2*n)
		for i := 0; i < 2; i++ {
			posteriorLatent(z[i*n:(i+1)*n], rc.Moments[i*2*n:(i+1)*2*n], rc.PostNoise[i*n:(i+1)*n], lp)
		}
		x := qSample(z, rc.StartNoise, abar[m.Diffusion.StartStep])
		hint := rc.Image
		if cfg {
			hint = repeatBatch(rc.Image, 2)
		}
		eps := guidedEps(toyDenoiser(ctxData, hint, n), cfg, float32(m.Diffusion.GuidanceScale))
		if err := sampleDDIM(context.Background(), x, steps, eps); err != nil {
			t.Fatal(err)
		}
		unscaleLatent(x, m.Latent.ScaleFactor)
		if e := relL2(x, want.Latent); !(e <= 1e-5) {
			t.Errorf("key %q: reconstructed latent differs from reference.Scorer.reconstruct by %.2e relative L2 (limit 1e-5)", key, e)
		} else {
			t.Logf("key %q (cfg %v): reconstructed latent rel L2 %.2e", key, cfg, e)
		}
	}
}

func TestStageFeatureInput(t *testing.T) {
	in, ref := pythonStages(t)
	f := in.FeatureInput
	half := len(f.X) / 2
	got := featureInput(f.X[:half], f.X[half:], 16, [3]float32(f.InMean), [3]float32(f.InStd), f.Mean, f.Std)
	if e := relL2(got, ref.FeatureInput); !(e <= 1e-6) {
		t.Errorf("feature input differs from reference.Scorer.feature_input by %.2e relative L2 (limit 1e-6)", e)
	}
	same := featureInput(f.X[:half], f.X[half:], 16, [3]float32(f.InMean), [3]float32(f.InStd), nil, nil)
	if relL2(same, float64s(f.X)) != 0 {
		t.Error("without a backbone normalisation the feature input must be the frames and reconstructions as they are")
	}
}

func float64s(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// TestStageAnomalyMapAndScore checks the map (1-cos per layer, upsampling, weighted sum), its smoothing and the
// pooled score against reference.anomaly_map, smooth and pooled_score, for conv maps and for ViT tokens.
func TestStageAnomalyMapAndScore(t *testing.T) {
	in, ref := pythonStages(t)
	for c, ac := range in.Anomaly {
		var layers []layerOutput
		for _, l := range ac.Layers {
			sh := make([]int64, len(l.Shape))
			for i, d := range l.Shape {
				sh[i] = int64(d)
			}
			layers = append(layers, layerOutput{Name: l.Name, Weight: l.Weight, Data: l.Data, Shape: sh})
		}
		frames := ac.Layers[0].Shape[0] / 2
		for i := 0; i < frames; i++ {
			want := ref.Anomaly[c][i]
			amap, err := anomalyMap(layers, i, frames, ac.Tokens, ac.Height, ac.Width)
			if err != nil {
				t.Fatal(err)
			}
			// the reference computes in float32, this pipeline in float64
			if e := relL2(amap, want.Map); !(e <= 1e-5) {
				t.Errorf("case %d frame %d: map differs from reference.anomaly_map by %.2e relative L2 (limit 1e-5)", c, i, e)
			}
			gaussianFilter(amap, ac.Height, ac.Width, ac.Sigma, ac.Truncate)
			if e := relL2(amap, want.Smooth); !(e <= 1e-5) {
				t.Errorf("case %d frame %d: smoothed map differs from reference.smooth by %.2e relative L2 (limit 1e-5)", c, i, e)
			}
			// the scorer's path: distance, upsampling and smoothing as one banded product
			fast, err := smoothedAnomalyMap(layers, i, frames, 1, ac.Tokens, ac.Height, ac.Width, ac.Sigma, ac.Truncate, &mapScratch{}, 2)
			if err != nil {
				t.Fatal(err)
			}
			if e := relL2(fast, want.Smooth); !(e <= 1e-5) {
				t.Errorf("case %d frame %d: smoothedAnomalyMap differs from reference.smooth by %.2e relative L2 (limit 1e-5)", c, i, e)
			}
			score := pooledMax(fast, ac.Height, ac.Width, ac.Kernel, ac.Repeat)
			if d := math.Abs(score - want.Score); !(d <= 1e-5) {
				t.Errorf("case %d frame %d: score %.8f, reference.pooled_score %.8f", c, i, score, want.Score)
			}
		}
	}
}
