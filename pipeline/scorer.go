package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/vlmdiff/edge/models"
)

// Scorer scores frames with one bundle. Its ONNX Runtime sessions are created once, in Open, and reused for
// every frame; Score is safe for concurrent use (ONNX Runtime sessions are).
type Scorer struct {
	bundle   *models.Bundle
	m        *models.Manifest
	opt      Options
	provider string

	enc, hint, den, dec, feat *graph
	knn                       *graph           // the nearest-normal term's graph (map.knn), nil without the term
	denStatic                 *staticDenoisers // static-shape denoisers by batch rows, opened on first use
	// denMu guards den, which a bundle with static-shape denoisers opens only when a batch needs it
	// (guidance, or a batch size without a static graph): a batch-1 daemon then holds one denoiser, not two.
	denMu sync.Mutex

	abar       []float64  // the noise schedule's cumulative alphas, by timestep
	steps      []ddimStep // the DDIM steps in the order they run
	noiseStep  int        // the step the latent is forward-noised to (samplerPlan)
	lc, lh, lw int        // latent channels and size
	ens        int        // start noises per frame (diffusion.ensemble, or Options.Ensemble)
	// fixedNoise is every frame's noises under the "fixed" seed policy, drawn once (read-only): drawing the K
	// streams again for every frame would repeat the same work on the hot path.
	fixedNoise *Noise

	closed atomic.Bool
}

type graph struct {
	name string
	sess *ort.DynamicAdvancedSession
	in   []string
	out  []string
}

var cudaFallbackOnce sync.Once

// Open verifies the bundle in dir and builds its sessions.
func Open(dir string, opt Options) (*Scorer, error) {
	if err := InitRuntime(opt.Library); err != nil {
		return nil, err
	}
	b, err := models.Load(dir)
	if err != nil {
		return nil, err
	}
	return NewScorer(b, opt)
}

// NewScorer builds sessions for an already verified bundle.
func NewScorer(b *models.Bundle, opt Options) (*Scorer, error) {
	if err := InitRuntime(opt.Library); err != nil {
		return nil, err
	}
	m := b.Manifest
	s := &Scorer{bundle: b, m: m, opt: opt}
	s.abar = AlphasCumprod(m.Diffusion.LinearStart, m.Diffusion.LinearEnd, m.Diffusion.TrainSteps)
	ts, noiseStep := samplerPlan(m.Diffusion)
	s.steps, s.noiseStep = ddimSchedule(s.abar, ts), noiseStep
	s.lc = m.Latent.Channels
	s.lh, s.lw = m.Input.Height/m.Latent.Downsample, m.Input.Width/m.Latent.Downsample
	s.ens = m.Diffusion.Noises()
	if opt.Ensemble > 0 {
		if opt.Ensemble > models.MaxEnsemble {
			return nil, fmt.Errorf("ensemble %d: at most %d start noises per frame", opt.Ensemble, models.MaxEnsemble)
		}
		s.ens = opt.Ensemble
	}
	if err := checkPrefixes(opt, s.ens); err != nil {
		return nil, err
	}
	if err := checkPixelSigmas(opt, m); err != nil {
		return nil, err
	}
	if err := checkKnnSigmas(opt, m); err != nil {
		return nil, err
	}
	if err := checkKnnKs(opt, m); err != nil {
		return nil, err
	}
	if m.Diffusion.SeedPolicy == "fixed" {
		s.fixedNoise = s.drawNoise(0)
	}

	mk := func(role string, in, out []string) (*graph, error) {
		g, ok := m.Graphs[role]
		if !ok {
			return nil, nil
		}
		return s.newGraph(role, g.File, in, out)
	}
	var err error
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.enc, err = mk(models.RoleVAEEncoder, []string{models.TensorImage}, []string{models.TensorMoments}); err != nil {
		return nil, err
	}
	if s.hint, err = mk(models.RoleHint, []string{models.TensorImage}, []string{models.TensorHint}); err != nil {
		return nil, err
	}
	s.denStatic = s.staticSet()
	if len(s.denStatic.files) == 0 {
		if s.den, err = s.dynamicDenoiser(); err != nil {
			return nil, err
		}
	}
	if s.dec, err = mk(models.RoleVAEDecoder, []string{models.TensorLatent}, []string{models.TensorImage}); err != nil {
		return nil, err
	}
	layers := make([]string, len(m.Features.Layers))
	for i, l := range m.Features.Layers {
		layers[i] = l.Name
	}
	layers = append(layers, models.KnnOnlyLayers(m)...) // fed to the knn term only, after the map's
	if s.feat, err = mk(models.RoleFeatures, []string{m.Features.Input}, layers); err != nil {
		return nil, err
	}
	if w := Int8Warning(m, s.provider); w != "" {
		slog.Warn(w, "bundle", m.Name, "version", m.Version)
	}
	if t := m.Map.Knn; t != nil {
		file, in := t.Graph, []string{models.KnnImage, models.KnnBank}
		if t.LayersGraph != "" { // fed the frames' layers from the feature graph (models.KnnTerm.LayersGraph)
			file, in = t.LayersGraph, append(slices.Clone(t.Layers), models.KnnBank)
		}
		if s.knn, err = s.newGraph("knn", file, in, []string{models.KnnFeatures, models.KnnDistance}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// newGraph creates the session of one graph file of the bundle.
func (s *Scorer) newGraph(name, file string, in, out []string) (*graph, error) {
	return s.newGraphAt(name, file, in, out, false)
}

// newGraphAt is newGraph, optionally without ONNX Runtime's layout pass (staticNoLayout).
func (s *Scorer) newGraphAt(name, file string, in, out []string, noLayout bool) (*graph, error) {
	o := s.opt
	if o.DenoiserThreads > 0 && strings.HasPrefix(name, models.RoleDenoiser) {
		o.Threads = o.DenoiserThreads
	}
	if o.DenoiserSpin && strings.HasPrefix(name, models.RoleDenoiser) {
		o.Spin = true // only the denoiser's sessions (Options.DenoiserSpin)
	}
	so, provider, err := newSessionOptions(o, &cudaFallbackOnce)
	if err != nil {
		return nil, err
	}
	defer so.Destroy()
	if noLayout {
		if err := so.SetGraphOptimizationLevel(ort.GraphOptimizationLevelEnableExtended); err != nil {
			return nil, fmt.Errorf("%s graph %s: optimisation level: %w", name, file, err)
		}
	}
	if s.provider == "" { // set by the graphs opened in NewScorer; graphs opened later only read it
		s.provider = provider
	}
	sess, err := ort.NewDynamicAdvancedSession(filepath.Join(s.bundle.Dir, file), in, out, so)
	if err != nil {
		return nil, fmt.Errorf("%s graph %s: create session: %w", name, file, err)
	}
	return &graph{name: name, sess: sess, in: in, out: out}, nil
}

// checkPrefixes checks Options.NoisePrefixes against the ensemble of ens start noises.
func checkPrefixes(opt Options, ens int) error {
	ps := opt.NoisePrefixes
	if len(ps) == 0 {
		return nil
	}
	if !opt.LayerMaps {
		return fmt.Errorf("noise prefixes %v: they are layer maps, and the scorer has no Options.LayerMaps", ps)
	}
	for i, n := range ps {
		if n < 1 || n > ens || (i > 0 && n <= ps[i-1]) {
			return fmt.Errorf("noise prefixes %v: want increasing counts in 1..%d, the scorer's start noises per frame", ps, ens)
		}
	}
	return nil
}

// checkPixelSigmas checks Options.PixelSigmas against the bundle: they need its mean-frame term and a map.
func checkPixelSigmas(opt Options, m *models.Manifest) error {
	return checkTermSigmas(opt.PixelSigmas, "mean-frame", "PixelMap", "map.pixel", opt.PixelMap || opt.LayerMaps, m.Map.Pixel != nil, m)
}

// checkTermSigmas checks the sigmas at which a term's map is also smoothed (Options.PixelSigmas, KnnSigmas):
// they are the term's maps (mapOpt, or LayerMaps, on: wanted), of a term the bundle has (has, its section
// named field), each in 0..models.MaxPixelSigma, above 0 only with map.truncate.
func checkTermSigmas(ss []float64, term, mapOpt, field string, wanted, has bool, m *models.Manifest) error {
	if len(ss) == 0 {
		return nil
	}
	if !wanted {
		return fmt.Errorf("%s term sigmas %v: they are the term's maps, and the scorer has neither Options.%s nor LayerMaps", term, ss, mapOpt)
	}
	if !has {
		return fmt.Errorf("%s term sigmas %v: the bundle has no %s term (%s)", term, ss, term, field)
	}
	for _, v := range ss {
		if !(v >= 0 && v <= models.MaxPixelSigma) || (v > 0 && !(m.Map.Truncate > 0)) {
			return fmt.Errorf("%s term sigmas %v: want each in 0..%d (and map.truncate > 0)", term, ss, models.MaxPixelSigma)
		}
	}
	return nil
}

// PixelSigmas is Options.PixelSigmas: the sigmas at which every result also carries the mean-frame term's map.
func (s *Scorer) PixelSigmas() []float64 { return s.opt.PixelSigmas }

// checkKnnSigmas checks Options.KnnSigmas against the bundle: they need its nearest-normal term and a map.
func checkKnnSigmas(opt Options, m *models.Manifest) error {
	return checkTermSigmas(opt.KnnSigmas, "nearest-normal", "KnnMap", "map.knn", opt.KnnMap || opt.LayerMaps, m.Map.Knn != nil, m)
}

// checkKnnKs checks Options.KnnKs against the bundle: they need KnnMap and the term, each in 1..map.knn.k_max.
func checkKnnKs(opt Options, m *models.Manifest) error {
	if len(opt.KnnKs) == 0 {
		return nil
	}
	t := m.Map.Knn
	switch {
	case !opt.KnnMap:
		return fmt.Errorf("nearest-normal term counts %v: they are the term's maps, and the scorer has no Options.KnnMap", opt.KnnKs)
	case t == nil:
		return fmt.Errorf("nearest-normal term counts %v: the bundle has no nearest-normal term (map.knn)", opt.KnnKs)
	}
	for _, k := range opt.KnnKs {
		if k < 1 || k > t.KMaxOrOne() {
			return fmt.Errorf("nearest-normal term counts %v: want each in 1..%d (map.knn.k_max: the knn graph's nearest distances)", opt.KnnKs, t.KMaxOrOne())
		}
	}
	return nil
}

// KnnSigmas is Options.KnnSigmas: the sigmas at which every result also carries the nearest-normal term's map.
func (s *Scorer) KnnSigmas() []float64 { return s.opt.KnnSigmas }

// NoisePrefixes is Options.NoisePrefixes: the start-noise counts whose layer maps every result also carries.
func (s *Scorer) NoisePrefixes() []int { return s.opt.NoisePrefixes }

// Ensemble is how many start noises each frame is reconstructed from.
func (s *Scorer) Ensemble() int { return s.ens }

// DenoiseSteps is how many denoiser runs each reconstruction takes: diffusion.ddim_steps, or those at or below
// the start step with diffusion.sampler_from_start_step.
func (s *Scorer) DenoiseSteps() int { return len(s.steps) }

// Manifest returns the bundle's manifest.
func (s *Scorer) Manifest() *models.Manifest { return s.m }

// Bundle returns the bundle.
func (s *Scorer) Bundle() *models.Bundle { return s.bundle }

// Provider says which execution provider the sessions use ("cuda" or "cpu").
func (s *Scorer) Provider() string { return s.provider }

// Close releases the sessions. Frames still being scored must have finished (the agent reference-counts).
func (s *Scorer) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	var errs []error
	s.denMu.Lock()
	all := []*graph{s.enc, s.hint, s.den, s.dec, s.feat, s.knn}
	s.denMu.Unlock()
	all = append(all, s.denStatic.graphs()...)
	for _, g := range all {
		if g != nil && g.sess != nil {
			errs = append(errs, g.sess.Destroy())
		}
	}
	s.denStatic.release()
	return errors.Join(errs...)
}

// run executes a graph on float32/int64 inputs and returns its float32 outputs with their shapes.
func (g *graph) run(inputs ...ort.Value) ([][]float32, []ort.Shape, error) {
	outs := make([]ort.Value, len(g.out))
	if err := g.sess.Run(inputs, outs); err != nil {
		return nil, nil, fmt.Errorf("%s graph: %w", g.name, err)
	}
	data := make([][]float32, len(outs))
	shapes := make([]ort.Shape, len(outs))
	for i, o := range outs {
		t, ok := o.(*ort.Tensor[float32])
		if !ok {
			for _, v := range outs {
				if v != nil {
					v.Destroy()
				}
			}
			return nil, nil, fmt.Errorf("%s graph: output %s is not float32", g.name, g.out[i])
		}
		d := t.GetData()
		data[i] = append([]float32(nil), d...)
		shapes[i] = t.GetShape().Clone()
		t.Destroy()
	}
	return data, shapes, nil
}

func tensor(shape ort.Shape, data []float32) (*ort.Tensor[float32], error) {
	return ort.NewTensor(shape, data)
}

// Score scores a batch of frames. Frames that cannot be scored carry Result.Err; an error is returned only
// when the whole batch failed (a session error, a closed scorer, a cancelled context).
func (s *Scorer) Score(ctx context.Context, reqs []Request) ([]Result, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	results := make([]Result, len(reqs))
	var idx []int
	for i, r := range reqs {
		if err := r.Image.Validate(); err != nil {
			results[i].Err = err
			continue
		}
		if n := s.ens * s.lc * s.lh * s.lw; r.Noise != nil && (len(r.Noise.Start) != n || (s.m.Latent.Posterior == "sample" && len(r.Noise.Posterior) != n)) {
			results[i].Err = fmt.Errorf("noise override has the wrong size (want %d start noise(s) of %d values per draw)", s.ens, s.lc*s.lh*s.lw)
			continue
		}
		idx = append(idx, i)
	}
	if len(idx) == 0 {
		return results, nil
	}
	batch := make([]Request, len(idx))
	for j, i := range idx {
		batch[j] = reqs[i]
	}
	out, err := s.scoreBatch(ctx, batch)
	if err != nil {
		return nil, err
	}
	for j, i := range idx {
		results[i] = out[j]
	}
	return results, nil
}

// scoreBatch runs the scoring recipe (docs/algorithm.md §1) on a batch of valid frames. Each step is one stage
// method below, in the order of the flow; the stage names are those of Result.LatencyMS.
func (s *Scorer) scoreBatch(ctx context.Context, reqs []Request) ([]Result, error) {
	lat := latencies{}
	tAll := time.Now()

	var early *frameFeatures
	defer func() {
		if early != nil {
			<-early.done // x stays alive until the goroutine is done with it
		}
	}()
	x, rec, err := s.reconstructBatch(ctx, reqs, lat, func(x []float32) {
		if s.overlapFeatures() {
			early = s.startFrameFeatures(x, len(reqs))
		}
	})
	if err != nil {
		return nil, err
	}

	t0 := time.Now()
	var feats []layerOutput
	if early != nil {
		feats, err = s.recFeatures(early, rec, len(reqs))
	} else {
		feats, err = s.features(x, rec, len(reqs))
	}
	if err != nil {
		return nil, err
	}
	lat.add(StageFeatures, t0) // with early features: the reconstructions' features and the wait for the frames'

	t0 = time.Now()
	knn, err := s.knnDistances(x, feats, reqs)
	if err != nil {
		return nil, err
	}
	if knn != nil {
		lat.add(StageKnn, t0)
	}

	t0 = time.Now()
	results, err := s.mapsAndScores(feats[:len(s.m.Features.Layers)], x, knn, reqs) // the map's layers alone
	if err != nil {
		return nil, err
	}
	lat.add(StageMap, t0)
	s.stamp(results, lat, tAll)
	return results, nil
}

// reconstructBatch runs the recipe from the frames to their reconstructions (docs/algorithm.md §1.1-1.8:
// preprocess, encode, hint, denoise, decode), adding each stage's time to lat. It returns the preprocessed
// frames x and the B*K decoded reconstructions. onFrames, when set, gets x as soon as it exists, before the
// encoder runs: the frames' own features can start there (overlapFeatures).
func (s *Scorer) reconstructBatch(ctx context.Context, reqs []Request, lat latencies, onFrames func(x []float32)) (x, rec []float32, err error) {
	t0 := time.Now()
	x, image, err := s.preprocess(reqs)
	if err != nil {
		return nil, nil, err
	}
	defer image.Destroy()
	lat.add(StagePreprocess, t0)
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if onFrames != nil {
		onFrames(x)
	}

	t0 = time.Now()
	z, startNoise, err := s.encode(image, reqs)
	if err != nil {
		return nil, nil, err
	}
	lat.add(StageEncode, t0)

	t0 = time.Now()
	cond, err := s.denoiserInputs(reqs, image)
	if err != nil {
		return nil, nil, err
	}
	defer cond.release()
	if s.hint != nil {
		lat.add(StageHint, t0)
	}

	t0 = time.Now()
	zRec, err := s.reconstruct(ctx, z, startNoise, cond)
	if err != nil {
		return nil, nil, err
	}
	lat.add(StageDenoise, t0)

	t0 = time.Now()
	rec, err = s.decode(zRec, len(reqs)*s.ens)
	if err != nil {
		return nil, nil, err
	}
	lat.add(StageDecode, t0)
	return x, rec, nil
}

// FeatureInputs returns the tensor the feature graph receives when the frames are scored: the frames, then
// their reconstructions (B + B*K images of [3,H,W], K start noises each), in the feature backbone's
// normalisation. It runs the scoring recipe up to the decoder, as Score does (reconstructBatch). Why: a
// quantised copy of the feature graph (vlmdiff quantize) is calibrated on the activations it will really see,
// and half of its inputs are reconstructions, which no dataset holds.
func (s *Scorer) FeatureInputs(ctx context.Context, reqs []Request) ([]float32, []int64, error) {
	if s.closed.Load() {
		return nil, nil, errClosed
	}
	for i, r := range reqs {
		if err := r.Image.Validate(); err != nil {
			return nil, nil, fmt.Errorf("frame %d: %w", i, err)
		}
	}
	x, rec, err := s.reconstructBatch(ctx, reqs, latencies{}, nil)
	if err != nil {
		return nil, nil, err
	}
	H, W := s.m.Input.Height, s.m.Input.Width
	both := featureInput(x, rec, H*W, s.m.Input.Mean, s.m.Input.Std, s.m.Features.Mean, s.m.Features.Std)
	return both, []int64{int64(len(reqs) * (1 + s.ens)), 3, int64(H), int64(W)}, nil
}

// latencies accumulates the wall time of each stage of one batch, in milliseconds.
type latencies map[string]float64

func (l latencies) add(stage string, since time.Time) {
	l[stage] += float64(time.Since(since).Microseconds()) / 1000
}

// stamp gives every scored frame of a batch the model's name and its share of the batch's stage times, the
// batch having started at start.
func (s *Scorer) stamp(results []Result, lat latencies, start time.Time) {
	lat.add(StageTotal, start)
	ref := refOf(s.m)
	for i := range results {
		if results[i].Err != nil {
			continue
		}
		results[i].Model = ref
		results[i].LatencyMS = make(map[string]float64, len(lat))
		for k, v := range lat {
			results[i].LatencyMS[k] = v / float64(len(results))
		}
	}
}

// calibrate fills the calibrated score, verdict and anomaly area from the manifest's calibration.
func (s *Scorer) calibrate(r *Result, class string) {
	cc := s.m.CalibrationFor(class)
	if _, ok := s.m.Calibration.PerClass[class]; ok {
		r.Class = class
	}
	Calibrate(r, cc, cc.Threshold)
}

// Calibrate sets Score, Threshold, Verdict and AnomalyAreaPct of a result from a class calibration and a
// threshold (the calibration's, or a runtime override). The normalised score maps the threshold to 0.5 and
// the calibration set's score range to a width of 1, clamped to 0..1.
func Calibrate(r *Result, cc models.ClassCalib, threshold float64) {
	r.Threshold = threshold
	span := cc.Max - cc.Min
	if !(span > 0) {
		span = 1
	}
	r.Score = min(max((r.RawScore-threshold)/span+0.5, 0), 1)
	r.Verdict = VerdictOK
	if r.RawScore >= threshold {
		r.Verdict = VerdictNG
	}
	if cc.PixelThreshold > 0 && len(r.Map) > 0 {
		above := 0
		pt := float32(cc.PixelThreshold)
		for _, v := range r.Map {
			if v > pt {
				above++
			}
		}
		r.AnomalyAreaPct = 100 * float64(above) / float64(len(r.Map))
	}
}

// Warmup scores one grey probe frame, so the first real frame does not pay ONNX Runtime's lazy
// initialisation, and checks that the model's output is finite: a bundle that produces NaN is refused before
// it replaces a working one.
func (s *Scorer) Warmup(ctx context.Context) error {
	W, H := s.m.Input.Width, s.m.Input.Height
	pix := make([]byte, W*H*3)
	for i := range pix {
		pix[i] = byte(96 + (i/3)%64)
	}
	res, err := s.Score(ctx, []Request{{Image: Image{Width: W, Height: H, Pix: pix}}})
	if err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	if res[0].Err != nil {
		return fmt.Errorf("warm-up: %w", res[0].Err)
	}
	return nil
}
