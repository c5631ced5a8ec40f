package pipeline

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
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

	abar       []float64
	timesteps  []int
	lc, lh, lw int // latent channels and size

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
	s.timesteps = DDIMTimesteps(m.Diffusion.TrainSteps, m.Diffusion.DDIMSteps)
	s.lc = m.Latent.Channels
	s.lh, s.lw = m.Input.Height/m.Latent.Downsample, m.Input.Width/m.Latent.Downsample

	mk := func(role string, in, out []string) (*graph, error) {
		g, ok := m.Graphs[role]
		if !ok {
			return nil, nil
		}
		so, provider, err := newSessionOptions(opt, &cudaFallbackOnce)
		if err != nil {
			return nil, err
		}
		defer so.Destroy()
		s.provider = provider
		sess, err := ort.NewDynamicAdvancedSession(filepath.Join(b.Dir, g.File), in, out, so)
		if err != nil {
			return nil, fmt.Errorf("%s graph %s: create session: %w", role, g.File, err)
		}
		return &graph{name: role, sess: sess, in: in, out: out}, nil
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
	if s.den, err = mk(models.RoleDenoiser, []string{models.TensorX, models.TensorT, models.TensorContext, models.TensorHint},
		[]string{models.TensorEps}); err != nil {
		return nil, err
	}
	if s.dec, err = mk(models.RoleVAEDecoder, []string{models.TensorLatent}, []string{models.TensorImage}); err != nil {
		return nil, err
	}
	layers := make([]string, len(m.Features.Layers))
	for i, l := range m.Features.Layers {
		layers[i] = l.Name
	}
	if s.feat, err = mk(models.RoleFeatures, []string{m.Features.Input}, layers); err != nil {
		return nil, err
	}
	return s, nil
}

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
	for _, g := range []*graph{s.enc, s.hint, s.den, s.dec, s.feat} {
		if g != nil && g.sess != nil {
			errs = append(errs, g.sess.Destroy())
		}
	}
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
		if r.Noise != nil && (len(r.Noise.Start) != s.lc*s.lh*s.lw || (s.m.Latent.Posterior == "sample" && len(r.Noise.Posterior) != s.lc*s.lh*s.lw)) {
			results[i].Err = fmt.Errorf("noise override has the wrong size (want %d per draw)", s.lc*s.lh*s.lw)
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

func (s *Scorer) scoreBatch(ctx context.Context, reqs []Request) ([]Result, error) {
	m := s.m
	B := len(reqs)
	H, W := m.Input.Height, m.Input.Width
	lat := map[string]float64{}
	stage := func(name string, t0 time.Time) { lat[name] += float64(time.Since(t0).Microseconds()) / 1000 }
	tAll := time.Now()

	// 1. preprocess
	t0 := time.Now()
	x := make([]float32, B*3*H*W)
	for i, r := range reqs {
		im := r.Image
		if im.Width != W || im.Height != H {
			if m.Input.Resize == "bilinear" {
				var err error
				if im, err = resizeCV(im, W, H); err != nil {
					return nil, fmt.Errorf("resize: %w", err)
				}
			} else {
				im = ResizePIL(im, W, H)
			}
		}
		normalize(im, m.Input.Mean, m.Input.Std, x[i*3*H*W:(i+1)*3*H*W])
	}
	stage(StagePreprocess, t0)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	imgShape := ort.NewShape(int64(B), 3, int64(H), int64(W))
	xt, err := tensor(imgShape, x)
	if err != nil {
		return nil, err
	}
	defer xt.Destroy()

	// 2. encode: z = scale * (mean [+ std * n])
	t0 = time.Now()
	mo, msh, err := s.enc.run(xt)
	if err != nil {
		return nil, err
	}
	n := s.lc * s.lh * s.lw
	if len(msh[0]) != 4 || msh[0][1] != int64(2*s.lc) || msh[0][2] != int64(s.lh) || msh[0][3] != int64(s.lw) {
		return nil, fmt.Errorf("vae_encoder produced moments of shape %v, want [%d %d %d %d]", msh[0], B, 2*s.lc, s.lh, s.lw)
	}
	z := make([]float32, B*n)
	noise := make([]float32, B*n)
	scale := m.Latent.ScaleFactor
	for i, r := range reqs {
		nz := r.Noise
		if nz == nil {
			p, st := noiseFor(m.Diffusion.Seed, r.Seq, m.Diffusion.SeedPolicy == "per_frame", n)
			nz = &Noise{Posterior: p, Start: st}
		}
		copy(noise[i*n:], nz.Start)
		mean := mo[0][i*2*n : i*2*n+n]
		logv := mo[0][i*2*n+n : (i+1)*2*n]
		for j := 0; j < n; j++ {
			v := mean[j]
			if m.Latent.Posterior == "sample" {
				lv := min(max(logv[j], m.Latent.LogvarClampLo), m.Latent.LogvarClampHi)
				v += float32(math.Exp(0.5*float64(lv))) * nz.Posterior[j]
			}
			z[i*n+j] = scale * v
		}
	}
	stage(StageEncode, t0)

	// 3. hint features, once per frame
	hintT := xt
	if s.hint != nil {
		t0 = time.Now()
		hd, hsh, err := s.hint.run(xt)
		if err != nil {
			return nil, err
		}
		ht, err := tensor(hsh[0], hd[0])
		if err != nil {
			return nil, err
		}
		defer ht.Destroy()
		hintT = ht
		stage(StageHint, t0)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// 4. contexts; classifier-free guidance only where the conditional context differs from the
	// unconditional one (never for the paper's empty test prompt)
	cond := m.Conditioning
	uncond, _ := s.bundle.ConditioningFor(cond.Unconditional)
	ctxLen := cond.Tokens * cond.Dim
	condKeys := make([]string, B)
	cfg := false
	for i, r := range reqs {
		k := cond.Default
		if s.opt.ClassConditioning && r.Class != "" {
			if _, ok := s.bundle.ConditioningFor(r.Class); ok {
				k = r.Class
			}
		}
		condKeys[i] = k
		if k != cond.Unconditional {
			cfg = true
		}
	}
	nb := B
	if cfg {
		nb = 2 * B
	}
	ctxData := make([]float32, nb*ctxLen)
	for i := 0; i < B; i++ {
		c, _ := s.bundle.ConditioningFor(condKeys[i])
		if cfg {
			copy(ctxData[i*ctxLen:], uncond)
			copy(ctxData[(B+i)*ctxLen:], c)
		} else {
			copy(ctxData[i*ctxLen:], c)
		}
	}
	ctxT, err := tensor(ort.NewShape(int64(nb), int64(cond.Tokens), int64(cond.Dim)), ctxData)
	if err != nil {
		return nil, err
	}
	defer ctxT.Destroy()
	denHint := hintT
	if cfg {
		hs := hintT.GetShape()
		hd := hintT.GetData()
		dup := make([]float32, 2*len(hd))
		copy(dup, hd)
		copy(dup[len(hd):], hd)
		shape := hs.Clone()
		shape[0] *= 2
		dt, err := tensor(shape, dup)
		if err != nil {
			return nil, err
		}
		defer dt.Destroy()
		denHint = dt
	}

	// 5. forward noising to the start step, then deterministic DDIM (eta 0)
	t0 = time.Now()
	st := m.Diffusion.StartStep
	sa, sb := float32(math.Sqrt(s.abar[st])), float32(math.Sqrt(1-s.abar[st]))
	xs := make([]float32, B*n)
	for j := range xs {
		xs[j] = sa*z[j] + sb*noise[j]
	}
	xin := make([]float32, nb*n)
	tt := make([]int64, nb)
	latShape := ort.NewShape(int64(nb), int64(s.lc), int64(s.lh), int64(s.lw))
	gs := float32(m.Diffusion.GuidanceScale)
	for k := len(s.timesteps) - 1; k >= 0; k-- {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t := s.timesteps[k]
		copy(xin, xs)
		if cfg {
			copy(xin[B*n:], xs)
		}
		for i := range tt {
			tt[i] = int64(t)
		}
		xT, err := tensor(latShape, xin)
		if err != nil {
			return nil, err
		}
		tT, err := ort.NewTensor(ort.NewShape(int64(nb)), tt)
		if err != nil {
			xT.Destroy()
			return nil, err
		}
		eo, esh, err := s.den.run(xT, tT, ctxT, denHint)
		xT.Destroy()
		tT.Destroy()
		if err != nil {
			return nil, err
		}
		if len(eo[0]) != nb*n {
			return nil, fmt.Errorf("denoiser produced eps of shape %v, want %v", esh[0], latShape)
		}
		e := eo[0]
		if cfg {
			for j := 0; j < B*n; j++ {
				eu, ec := e[j], e[B*n+j]
				e[j] = eu + gs*(ec-eu)
			}
		}
		a := s.abar[t]
		ap := s.abar[0]
		if k > 0 {
			ap = s.abar[s.timesteps[k-1]]
		}
		sqa, sq1a := float32(math.Sqrt(a)), float32(math.Sqrt(1-a))
		sqap, sq1ap := float32(math.Sqrt(ap)), float32(math.Sqrt(1-ap))
		for j := 0; j < B*n; j++ {
			x0 := (xs[j] - sq1a*e[j]) / sqa
			xs[j] = sqap*x0 + sq1ap*e[j]
		}
	}
	stage(StageDenoise, t0)

	// 6. decode
	t0 = time.Now()
	for j := range xs {
		xs[j] /= scale
	}
	zT, err := tensor(ort.NewShape(int64(B), int64(s.lc), int64(s.lh), int64(s.lw)), xs)
	if err != nil {
		return nil, err
	}
	ro, rsh, err := s.dec.run(zT)
	zT.Destroy()
	if err != nil {
		return nil, err
	}
	if len(ro[0]) != B*3*H*W {
		return nil, fmt.Errorf("vae_decoder produced an image of shape %v, want [%d 3 %d %d]", rsh[0], B, H, W)
	}
	stage(StageDecode, t0)

	// 7. features of input and reconstruction in one batch
	t0 = time.Now()
	both := make([]float32, 2*B*3*H*W)
	copy(both, x)
	copy(both[B*3*H*W:], ro[0])
	if f := m.Features; len(f.Mean) == 3 {
		renormalize(both, H*W, m.Input.Mean, m.Input.Std, f.Mean, f.Std)
	}
	bt, err := tensor(ort.NewShape(int64(2*B), 3, int64(H), int64(W)), both)
	if err != nil {
		return nil, err
	}
	fo, fsh, err := s.feat.run(bt)
	bt.Destroy()
	if err != nil {
		return nil, err
	}
	stage(StageFeatures, t0)

	// 8. anomaly maps and scores
	t0 = time.Now()
	results := make([]Result, B)
	for i := range reqs {
		amap := make([]float64, H*W)
		for l, layer := range m.Features.Layers {
			sh := fsh[l]
			var c, h, w int
			var a, b []float32
			if m.Features.Tokens {
				if len(sh) != 3 {
					return nil, fmt.Errorf("feature %s has shape %v, want [2B, 1+N, D]", layer.Name, sh)
				}
				ntok, d := int(sh[1])-1, int(sh[2])
				side := int(math.Round(math.Sqrt(float64(ntok))))
				if side*side != ntok {
					return nil, fmt.Errorf("feature %s has %d patch tokens, not a square grid", layer.Name, ntok)
				}
				per := (ntok + 1) * d
				a = tokensToPlanes(fo[l][i*per:(i+1)*per], ntok, d)
				b = tokensToPlanes(fo[l][(B+i)*per:(B+i+1)*per], ntok, d)
				c, h, w = d, side, side
			} else {
				if len(sh) != 4 {
					return nil, fmt.Errorf("feature %s has shape %v, want [2B, C, h, w]", layer.Name, sh)
				}
				c, h, w = int(sh[1]), int(sh[2]), int(sh[3])
				per := c * h * w
				a = fo[l][i*per : (i+1)*per]
				b = fo[l][(B+i)*per : (B+i+1)*per]
			}
			d := make([]float64, h*w)
			cosineDistance(a, b, c, h*w, d)
			upsampleAlignCorners(d, h, w, amap, H, W, float64(layer.Weight))
		}
		gaussianFilter(amap, H, W, m.Map.Sigma, m.Map.Truncate)
		r := &results[i]
		finite := true
		r.Map = make([]float32, H*W)
		for j, v := range amap {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				finite = false
				break
			}
			r.Map[j] = float32(v)
		}
		if !finite {
			results[i] = Result{Err: errors.New("the model produced non-finite values (NaN/Inf) in the anomaly map")}
			continue
		}
		r.MapWidth, r.MapHeight = W, H
		r.RawScore = pooledMax(amap, H, W, m.Score.PoolKernel, m.Score.PoolRepeat)
		s.calibrate(r, reqs[i].Class)
	}
	stage(StageMap, t0)
	lat[StageTotal] = float64(time.Since(tAll).Microseconds()) / 1000
	ref := refOf(m)
	for i := range results {
		if results[i].Err != nil {
			continue
		}
		results[i].Model = ref
		results[i].LatencyMS = make(map[string]float64, len(lat))
		for k, v := range lat {
			results[i].LatencyMS[k] = v / float64(B)
		}
	}
	return results, nil
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

// renormalize converts [N,3,hw] tensors from the bundle's input normalisation to the feature backbone's.
func renormalize(t []float32, hw int, inMean, inStd [3]float32, mean, std []float32) {
	n := len(t) / (3 * hw)
	for i := 0; i < n; i++ {
		for c := 0; c < 3; c++ {
			p := t[(i*3+c)*hw : (i*3+c+1)*hw]
			for j := range p {
				p[j] = ((p[j]*inStd[c] + inMean[c]) - mean[c]) / std[c]
			}
		}
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
