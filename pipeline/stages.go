package pipeline

// The stages of Scorer.scoreBatch, in the order they run. Each one that runs a graph is a method of Scorer; the
// arithmetic around the graphs is in plain functions (latent.go, sampler.go, anomaly.go) that the stage tests
// check against their twins in trainer/python/vlmdiff_train/reference.py.

import (
	"context"
	"errors"
	"fmt"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/vlmdiff/edge/models"
)

// preprocess resizes each frame to the bundle's input size and normalises it (docs/algorithm.md §1.1), into one
// [B,3,H,W] batch: as values, and as the tensor the graphs take.
func (s *Scorer) preprocess(reqs []Request) ([]float32, *ort.Tensor[float32], error) {
	in := s.m.Input
	H, W := in.Height, in.Width
	x := make([]float32, len(reqs)*3*H*W)
	for i, r := range reqs {
		if err := preprocessInto(in, r.Image, x[i*3*H*W:(i+1)*3*H*W]); err != nil {
			return nil, nil, err
		}
	}
	t, err := tensor(ort.NewShape(int64(len(reqs)), 3, int64(H), int64(W)), x)
	if err != nil {
		return nil, nil, err
	}
	return x, t, nil
}

// preprocessInto resizes one frame to the input size and writes it normalised into dst ([3*H*W]).
func preprocessInto(in models.Input, im Image, dst []float32) error {
	if im.Width != in.Width || im.Height != in.Height {
		if in.Resize == "bilinear" {
			var err error
			if im, err = resizeCV(im, in.Width, in.Height); err != nil {
				return fmt.Errorf("resize: %w", err)
			}
		} else {
			im = ResizePIL(im, in.Width, in.Height)
		}
	}
	normalize(im, in.Mean, in.Std, dst)
	return nil
}

// Preprocess returns a frame as a bundle's graphs receive it: resized to the input size and normalised,
// [3*H*W]. The calibrate stage averages these into the mean frames of the mean-frame term (models.PixelTerm).
func Preprocess(m *models.Manifest, im Image) ([]float32, error) {
	if err := im.Validate(); err != nil {
		return nil, err
	}
	x := make([]float32, 3*m.Input.Height*m.Input.Width)
	if err := preprocessInto(m.Input, im, x); err != nil {
		return nil, err
	}
	return x, nil
}

// encode runs the VAE encoder and turns its moments into the scaled posterior latents z (docs/algorithm.md §1.3),
// one row per start noise of each frame: row i*K+k is frame i with noise k (K = s.ens). It also returns each
// row's start noise for the forward noising, drawn together with the posterior noise. Both are [B*K,C,h,w]; the
// encoder runs once per frame.
func (s *Scorer) encode(image *ort.Tensor[float32], reqs []Request) (z, startNoise []float32, err error) {
	out, shapes, err := s.enc.run(image)
	if err != nil {
		return nil, nil, err
	}
	if sh := shapes[0]; len(sh) != 4 || sh[1] != int64(2*s.lc) || sh[2] != int64(s.lh) || sh[3] != int64(s.lw) {
		return nil, nil, fmt.Errorf("vae_encoder produced moments of shape %v, want [%d %d %d %d]", sh, len(reqs), 2*s.lc, s.lh, s.lw)
	}
	n, K := s.lc*s.lh*s.lw, s.ens
	moments := out[0]
	z = make([]float32, len(reqs)*K*n)
	startNoise = make([]float32, len(reqs)*K*n)
	lp := s.latentSpec()
	for i, r := range reqs {
		nz := s.noiseOf(r)
		copy(startNoise[i*K*n:], nz.Start)
		for k := range K {
			row := i*K + k
			posteriorLatent(z[row*n:(row+1)*n], moments[i*2*n:(i+1)*2*n], nz.posterior(k, n), lp)
		}
	}
	return z, startNoise, nil
}

// noiseOf returns a frame's Gaussian draws for every start noise of the ensemble: the request's override, or
// the seeded streams of the bundle's seed policy, noise k from seed Seed+k (so noise 0 is the single-noise
// bundle's, and a count of K adds draws without changing the first ones).
func (s *Scorer) noiseOf(r Request) *Noise {
	if r.Noise != nil {
		return r.Noise
	}
	if s.fixedNoise != nil {
		return s.fixedNoise
	}
	return s.drawNoise(r.Seq)
}

// drawNoise draws a frame's noises from the bundle's seeded streams (see noiseOf).
func (s *Scorer) drawNoise(seq uint64) *Noise {
	d := s.m.Diffusion
	n := s.lc * s.lh * s.lw
	nz := &Noise{Posterior: make([]float32, 0, s.ens*n), Start: make([]float32, 0, s.ens*n)}
	for k := range s.ens {
		post, start := noiseFor(d.Seed+int64(k), seq, d.SeedPolicy == "per_frame", n)
		nz.Posterior = append(nz.Posterior, post...)
		nz.Start = append(nz.Start, start...)
	}
	return nz
}

func (s *Scorer) latentSpec() latentSpec {
	l := s.m.Latent
	return latentSpec{Scale: l.ScaleFactor, Sample: l.Posterior == "sample", ClampLo: l.LogvarClampLo, ClampHi: l.LogvarClampHi}
}

// ownedTensor is a tensor that a stage may or may not have created: release destroys it only in the first case.
type ownedTensor struct {
	t     *ort.Tensor[float32]
	owned bool
}

func (o ownedTensor) release() {
	if o.owned && o.t != nil {
		o.t.Destroy()
	}
}

// hintFeatures runs the semantic-guidance branch's hint graph once per frame (it does not depend on the
// timestep; docs/algorithm.md §1.7). Without a hint graph the denoiser takes the preprocessed image itself.
func (s *Scorer) hintFeatures(image *ort.Tensor[float32]) (ownedTensor, error) {
	if s.hint == nil {
		return ownedTensor{t: image}, nil
	}
	out, shapes, err := s.hint.run(image)
	if err != nil {
		return ownedTensor{}, err
	}
	t, err := tensor(shapes[0], out[0])
	if err != nil {
		return ownedTensor{}, err
	}
	return ownedTensor{t: t, owned: true}, nil
}

// denoiserInputs is what the denoiser takes besides the latent and the timestep, laid out for its batch: with
// classifier-free guidance the batch is [frames against the unconditional context; frames against their
// conditional one], 2B rows; without, B rows.
type denoiserInputs struct {
	cfg      bool
	rows     int
	context  *ort.Tensor[float32]
	hintFeat ownedTensor // one row per frame
	hint     ownedTensor // one row per denoiser row
}

func (d *denoiserInputs) release() {
	if d.context != nil {
		d.context.Destroy()
	}
	d.hint.release()
	d.hintFeat.release()
}

// denoiserInputs runs the hint graph and builds the contexts for the frames (docs/algorithm.md §1.2, §1.6,
// §1.7).
func (s *Scorer) denoiserInputs(reqs []Request, image *ort.Tensor[float32]) (_ *denoiserInputs, err error) {
	d := &denoiserInputs{}
	defer func() {
		if err != nil {
			d.release()
		}
	}()
	if d.hintFeat, err = s.hintFeatures(image); err != nil {
		return nil, err
	}
	// one denoiser row per start noise of each frame: frame i's rows are i*K..i*K+K-1
	rows := reqs
	if s.ens > 1 {
		rows = make([]Request, 0, len(reqs)*s.ens)
		for _, r := range reqs {
			for range s.ens {
				rows = append(rows, r)
			}
		}
	}
	ctxData, cfg := s.contexts(rows)
	d.cfg, d.rows, d.hint = cfg, len(rows), ownedTensor{t: d.hintFeat.t}
	copies := 1
	if cfg {
		copies = 2 // [rows against the unconditional context; rows against their conditional one]
	}
	if copies > 1 || s.ens > 1 {
		// every row of a frame sees the frame's hint; with guidance both halves of the batch do
		d.rows = copies * len(rows)
		shape := d.hintFeat.t.GetShape().Clone()
		shape[0] = int64(d.rows)
		t, err := tensor(shape, repeatBatch(repeatEach(d.hintFeat.t.GetData(), len(reqs), s.ens), copies))
		if err != nil {
			return nil, err
		}
		d.hint = ownedTensor{t: t, owned: true}
	}
	cond := s.m.Conditioning
	if d.context, err = tensor(ort.NewShape(int64(d.rows), int64(cond.Tokens), int64(cond.Dim)), ctxData); err != nil {
		return nil, err
	}
	return d, nil
}

// contexts returns the text contexts of the denoiser batch and whether classifier-free guidance applies. Each
// frame is conditioned on the bundle's default context, or on its class's when class conditioning is on and the
// bundle has one. Guidance runs only when some frame's context differs from the unconditional one: with the
// paper's empty test prompt it would be the identity at twice the cost.
func (s *Scorer) contexts(reqs []Request) (data []float32, cfg bool) {
	cond := s.m.Conditioning
	keys := make([]string, len(reqs))
	for i, r := range reqs {
		keys[i] = cond.Default
		if s.opt.ClassConditioning && r.Class != "" {
			if _, ok := s.bundle.ConditioningFor(r.Class); ok {
				keys[i] = r.Class
			}
		}
		cfg = cfg || keys[i] != cond.Unconditional
	}
	per := cond.Tokens * cond.Dim
	B := len(reqs)
	if cfg {
		data = make([]float32, 2*B*per)
	} else {
		data = make([]float32, B*per)
	}
	uncond, _ := s.bundle.ConditioningFor(cond.Unconditional)
	for i, k := range keys {
		c, _ := s.bundle.ConditioningFor(k)
		if cfg {
			copy(data[i*per:], uncond)
			copy(data[(B+i)*per:], c)
		} else {
			copy(data[i*per:], c)
		}
	}
	return data, cfg
}

// reconstruct noises the latents forward to the start step and runs deterministic DDIM back to a clean latent
// (docs/algorithm.md §1.4-1.6), with guidance when the contexts call for it.
func (s *Scorer) reconstruct(ctx context.Context, z, startNoise []float32, in *denoiserInputs) ([]float32, error) {
	x := qSample(z, startNoise, s.abar[s.noiseStep])
	eps := guidedEps(s.runDenoiser(in), in.cfg, float32(s.m.Diffusion.GuidanceScale))
	if err := sampleDDIM(ctx, x, s.steps, eps); err != nil {
		return nil, err
	}
	return x, nil
}

// staticDenoiser returns the static-shape denoiser for a batch, or nil when the dynamic one must run: with
// guidance (two contexts) or when the bundle has none of this size. Without guidance every row is conditioned
// on the unconditional context, the one built into the static graphs (staticSet).
func (s *Scorer) staticDenoiser(in *denoiserInputs) *graph {
	if in.cfg {
		return nil
	}
	return s.staticGraph(in.rows)
}

// runDenoiser returns the denoiser graph as a function of the latent batch and the timestep: the batch's
// static-shape graph when there is one (its context is built in; with time inputs, it takes the time graph's
// outputs for t, computed once per timestep, in place of t), else the dynamic graph.
func (s *Scorer) runDenoiser(in *denoiserInputs) func(x []float32, t int) ([]float32, error) {
	shape := ort.NewShape(int64(in.rows), int64(s.lc), int64(s.lh), int64(s.lw))
	ts := make([]int64, in.rows)
	g := s.staticDenoiser(in)
	timeIn := g != nil && s.denStatic.timeIn[in.rows] // set before the graph opened; read-only since
	return func(x []float32, t int) ([]float32, error) {
		for i := range ts {
			ts[i] = int64(t)
		}
		xT, err := tensor(shape, x)
		if err != nil {
			return nil, err
		}
		defer xT.Destroy()
		tT, err := ort.NewTensor(ort.NewShape(int64(in.rows)), ts)
		if err != nil {
			return nil, err
		}
		defer tT.Destroy()
		var out [][]float32
		var shapes []ort.Shape
		if g != nil && timeIn {
			var temb []ort.Value
			if temb, err = s.denStatic.time.at(t); err != nil {
				return nil, err
			}
			out, shapes, err = g.run(append([]ort.Value{xT, in.hint.t}, temb...)...)
		} else if g != nil {
			out, shapes, err = g.run(xT, tT, in.hint.t)
		} else {
			var d *graph
			if d, err = s.dynamicDenoiser(); err != nil {
				return nil, err
			}
			out, shapes, err = d.run(xT, tT, in.context, in.hint.t)
		}
		if err != nil {
			return nil, err
		}
		if len(out[0]) != len(x) {
			return nil, fmt.Errorf("denoiser produced eps of shape %v, want %v", shapes[0], shape)
		}
		return out[0], nil
	}
}

// decode unscales the reconstructed latents and runs the VAE decoder (docs/algorithm.md §1.8): the
// reconstructions, in the bundle's normalised input space, one per row of z. z is unscaled in place.
func (s *Scorer) decode(z []float32, rows int) ([]float32, error) {
	unscaleLatent(z, s.m.Latent.ScaleFactor)
	zT, err := tensor(ort.NewShape(int64(rows), int64(s.lc), int64(s.lh), int64(s.lw)), z)
	if err != nil {
		return nil, err
	}
	defer zT.Destroy()
	out, shapes, err := s.dec.run(zT)
	if err != nil {
		return nil, err
	}
	H, W := s.m.Input.Height, s.m.Input.Width
	if len(out[0]) != rows*3*H*W {
		return nil, fmt.Errorf("vae_decoder produced an image of shape %v, want [%d 3 %d %d]", shapes[0], rows, H, W)
	}
	return out[0], nil
}

// features runs the feature graph on the frames and their reconstructions in one batch of B+B*K, frames first,
// then the K reconstructions of each frame in turn (docs/algorithm.md §1.9), renormalised into the backbone's
// input space when the bundle says so. A frame's own features are computed once, whatever K.
func (s *Scorer) features(x, rec []float32, frames int) ([]layerOutput, error) {
	return s.runFeatures(x, rec, frames*(1+s.ens))
}

// runFeatures runs the feature graph on n images: x then rec (either may be empty), in the bundle's input space.
func (s *Scorer) runFeatures(x, rec []float32, n int) ([]layerOutput, error) {
	H, W := s.m.Input.Height, s.m.Input.Width
	both := featureInput(x, rec, H*W, s.m.Input.Mean, s.m.Input.Std, s.m.Features.Mean, s.m.Features.Std)
	bt, err := tensor(ort.NewShape(int64(n), 3, int64(H), int64(W)), both)
	if err != nil {
		return nil, err
	}
	defer bt.Destroy()
	out, shapes, err := s.feat.run(bt)
	if err != nil {
		return nil, err
	}
	// the map's layers, then the knn term's others (weight 0: the map does not weigh them), as s.feat fetches them
	layers := make([]layerOutput, len(s.feat.out))
	for l, name := range s.feat.out {
		layers[l] = layerOutput{Name: name, Data: out[l], Shape: shapes[l]}
		if l < len(s.m.Features.Layers) {
			spec := s.m.Features.Layers[l]
			layers[l].Weight, layers[l].Match = float64(spec.Weight), spec.Match
		}
	}
	return layers, nil
}

// overlapFeatures says whether the frames' own features run beside the reconstruction: when the denoiser runs
// on fewer threads than the other graphs (Options.DenoiserThreads), the threads it leaves idle for most of a
// frame's time compute the frames' features, which need only the frames. Otherwise they run with the
// reconstructions' in one batch, as the features of B+B*K images (docs/algorithm.md §1.9).
func (s *Scorer) overlapFeatures() bool {
	o := s.opt
	return o.DenoiserThreads > 0 && (o.Threads == 0 || o.DenoiserThreads < o.Threads) && s.provider != "cuda"
}

// frameFeatures is the frames' features computed beside the reconstruction (overlapFeatures).
type frameFeatures struct {
	done   chan struct{}
	layers []layerOutput
	err    error
}

// startFrameFeatures runs the feature graph on the frames x in a goroutine; x is not changed meanwhile.
func (s *Scorer) startFrameFeatures(x []float32, frames int) *frameFeatures {
	f := &frameFeatures{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		f.layers, f.err = s.runFeatures(x, nil, frames)
	}()
	return f
}

// recFeatures runs the feature graph on the reconstructions and joins the frames' features from f: each
// layer then reads as the one batch of B+B*K items that features returns.
func (s *Scorer) recFeatures(f *frameFeatures, rec []float32, frames int) ([]layerOutput, error) {
	rl, err := s.runFeatures(nil, rec, frames*s.ens)
	<-f.done
	if err != nil {
		return nil, err
	}
	if f.err != nil {
		return nil, f.err
	}
	out := make([]layerOutput, len(rl))
	for l := range rl {
		fl := f.layers[l]
		if len(fl.Shape) == 0 || len(rl[l].Shape) != len(fl.Shape) {
			return nil, fmt.Errorf("feature %s has shape %v for the frames and %v for the reconstructions", fl.Name, fl.Shape, rl[l].Shape)
		}
		sh := append([]int64{fl.Shape[0] + rl[l].Shape[0]}, fl.Shape[1:]...)
		out[l] = layerOutput{Name: fl.Name, Weight: fl.Weight, Match: fl.Match, Data: fl.Data, Rec: rl[l].Data, Shape: sh}
	}
	return out, nil
}

// mapsAndScores turns the features into each frame's smoothed anomaly map (the mean over its K reconstructions,
// plus the mean-frame term when the bundle has one, guided-filtered along the frame's edges with map.guided),
// pooled score and calibrated verdict (docs/algorithm.md §1.9-1.11). x is the preprocessed frames. A malformed
// feature output fails the batch; a non-finite map fails its frame.
func (s *Scorer) mapsAndScores(feats []layerOutput, x []float32, knn *knnMaps, reqs []Request) ([]Result, error) {
	H, W := s.m.Input.Height, s.m.Input.Width
	sc := mapScratchPool.Get().(*mapScratch)
	defer mapScratchPool.Put(sc)
	defer func() { sc.guide = nil }()
	if n := 3 * H * W; s.m.Map.Guided != nil && len(x) < len(reqs)*n {
		return nil, fmt.Errorf("map.guided: %d preprocessed values for %d frames of %dx%d", len(x), len(reqs), W, H)
	}
	results := make([]Result, len(reqs))
	for i, r := range reqs {
		if g := s.m.Map.Guided; g != nil {
			n := 3 * H * W
			sc.gi.setGuide(x[i*n:(i+1)*n], s.m.Input, g)
			sc.guide = &sc.gi
		}
		pix := s.pixelInput(x, i, r.Class, s.pixelWeight())
		amap, err := smoothedMapWith(feats, pix, knn.frame(i, s.knnWeight()), i, len(reqs), s.ens, s.ens, s.m.Features.Tokens, H, W, s.m.Map.Sigma, s.m.Map.Truncate, sc, s.mapWorkers())
		if err != nil {
			return nil, err
		}
		if !s.opt.NoReference {
			subtractReference(amap, s.bundle.ReferenceFor(r.Class))
		}
		results[i] = s.frameResult(amap, r.Class, &sc.pool)
		if results[i].Err != nil {
			continue
		}
		// after frameResult: the layer and term maps reuse sc's map buffer, which frameResult has copied
		if s.opt.LayerMaps {
			lm, err := s.layerMaps(feats, i, len(reqs), sc)
			if err != nil {
				return nil, err
			}
			results[i].LayerMaps = lm
			if results[i].PrefixLayerMaps, err = s.prefixLayerMaps(feats, i, len(reqs), lm, sc); err != nil {
				return nil, err
			}
		}
		if pix := s.pixelInput(x, i, r.Class, 1); pix != nil && (s.opt.PixelMap || s.opt.LayerMaps) {
			m, err := smoothedMapWith(nil, pix, nil, i, len(reqs), s.ens, s.ens, s.m.Features.Tokens, H, W, s.m.Map.Sigma, s.m.Map.Truncate, sc, s.mapWorkers())
			if err != nil {
				return nil, err
			}
			results[i].PixelMap, _ = finiteFloat32(m) // finite: the frame and the mean frame are
			for _, sigma := range s.opt.PixelSigmas {
				pix.sigma = sigma
				m, err := smoothedMapWith(nil, pix, nil, i, len(reqs), s.ens, s.ens, s.m.Features.Tokens, H, W, s.m.Map.Sigma, s.m.Map.Truncate, sc, s.mapWorkers())
				if err != nil {
					return nil, err
				}
				f, _ := finiteFloat32(m)
				results[i].PixelMaps = append(results[i].PixelMaps, f)
			}
		}
		if k := knn.frame(i, 1); k != nil && (s.opt.KnnMap || s.opt.LayerMaps) {
			m, err := smoothedMapWith(nil, nil, k, i, len(reqs), s.ens, s.ens, s.m.Features.Tokens, H, W, s.m.Map.Sigma, s.m.Map.Truncate, sc, s.mapWorkers())
			if err != nil {
				return nil, err
			}
			f, ok := finiteFloat32(m)
			if !ok {
				return nil, fmt.Errorf("the knn graph produced non-finite distances (NaN/Inf)")
			}
			results[i].KnnMap = f
			for _, sigma := range s.opt.KnnSigmas {
				k.sigma = sigma
				m, err := smoothedMapWith(nil, nil, k, i, len(reqs), s.ens, s.ens, s.m.Features.Tokens, H, W, s.m.Map.Sigma, s.m.Map.Truncate, sc, s.mapWorkers())
				if err != nil {
					return nil, err
				}
				f, _ := finiteFloat32(m) // finite: the unsmoothed map was
				results[i].KnnMaps = append(results[i].KnnMaps, f)
			}
			for _, kk := range s.opt.KnnKs { // Options.KnnKs comes with KnnMap (checkKnnKs)
				m, err := smoothedMapWith(nil, nil, knn.frameAtK(i, kk), i, len(reqs), s.ens, s.ens, s.m.Features.Tokens, H, W, s.m.Map.Sigma, s.m.Map.Truncate, sc, s.mapWorkers())
				if err != nil {
					return nil, err
				}
				f, _ := finiteFloat32(m) // finite: the nearest distances were
				results[i].KnnKMaps = append(results[i].KnnKMaps, f)
			}
		}
	}
	return results, nil
}

// pixelWeight is the weight of the mean-frame term in the map: map.pixel.weight, 0 without the term.
func (s *Scorer) pixelWeight() float64 {
	if t := s.m.Map.Pixel; t != nil {
		return t.Weight
	}
	return 0
}

// pixelInput is frame i's mean-frame term with the given weight, nil when the bundle has none or the weight
// is 0 (the map then skips it).
func (s *Scorer) pixelInput(x []float32, i int, class string, weight float64) *pixelInput {
	mean := s.bundle.MeanFrameFor(class)
	if mean == nil || weight == 0 {
		return nil
	}
	n := len(mean)
	return &pixelInput{x: x[i*n : (i+1)*n], mean: mean, weight: weight, sigma: s.m.Map.Pixel.SmoothingSigma(s.m.Map.Sigma)}
}

// layerMaps returns frame i's smoothed map of each feature layer alone, with weight 1 and no reference
// (Result.LayerMaps). A non-finite layer map is an error of the batch: the frame's own map was finite, so
// this cannot happen without a bug, and the select stage must not rank on it.
func (s *Scorer) layerMaps(feats []layerOutput, i, frames int, sc *mapScratch) ([][]float32, error) {
	H, W := s.m.Input.Height, s.m.Input.Width
	out := make([][]float32, len(feats))
	for l := range feats {
		one := []layerOutput{feats[l]}
		one[0].Weight = 1
		m, err := smoothedAnomalyMap(one, i, frames, s.ens, s.m.Features.Tokens, H, W, s.m.Map.Sigma, s.m.Map.Truncate, sc, s.mapWorkers())
		if err != nil {
			return nil, err
		}
		f, ok := finiteFloat32(m)
		if !ok {
			return nil, fmt.Errorf("feature %s: the model produced non-finite values (NaN/Inf) in its map", feats[l].Name)
		}
		out[l] = f
	}
	return out, nil
}

// prefixLayerMaps returns frame i's layer maps for each of Options.NoisePrefixes (Result.PrefixLayerMaps): as
// layerMaps, each over the first n reconstructions; all is the maps over every one, which the whole ensemble's
// prefix shares.
func (s *Scorer) prefixLayerMaps(feats []layerOutput, i, frames int, all [][]float32, sc *mapScratch) ([][][]float32, error) {
	if len(s.opt.NoisePrefixes) == 0 {
		return nil, nil
	}
	H, W := s.m.Input.Height, s.m.Input.Width
	out := make([][][]float32, len(s.opt.NoisePrefixes))
	for j, n := range s.opt.NoisePrefixes {
		if n == s.ens {
			out[j] = all
			continue
		}
		out[j] = make([][]float32, len(feats))
		for l := range feats {
			one := []layerOutput{feats[l]}
			one[0].Weight = 1
			m, err := smoothedMapWith(one, nil, nil, i, frames, s.ens, n, s.m.Features.Tokens, H, W, s.m.Map.Sigma, s.m.Map.Truncate, sc, s.mapWorkers())
			if err != nil {
				return nil, err
			}
			f, ok := finiteFloat32(m)
			if !ok {
				return nil, fmt.Errorf("feature %s: the model produced non-finite values (NaN/Inf) in its map of %d start noises", feats[l].Name, n)
			}
			out[j][l] = f
		}
	}
	return out, nil
}

// frameResult scores one smoothed map and applies the calibration of the frame's class; ps holds the pooling's
// buffers.
func (s *Scorer) frameResult(amap []float64, class string, ps *poolScratch) Result {
	m, ok := finiteFloat32(amap)
	if !ok {
		return Result{Err: errors.New("the model produced non-finite values (NaN/Inf) in the anomaly map")}
	}
	r := Result{Map: m, MapWidth: s.m.Input.Width, MapHeight: s.m.Input.Height}
	r.RawScore = pooledMaxWith(amap, r.MapHeight, r.MapWidth, s.m.Score.PoolKernel, s.m.Score.PoolRepeat, ps, s.mapWorkers())
	s.calibrate(&r, class)
	return r
}

// finiteFloat32 converts a map to float32, or reports false when it holds NaN or Inf (v - v is 0 for every
// finite v, NaN for both).
func finiteFloat32(m []float64) ([]float32, bool) {
	out := make([]float32, len(m))
	for i, v := range m {
		if v-v != 0 {
			return nil, false
		}
		out[i] = float32(v)
	}
	return out, true
}
