package pipeline

import (
	"fmt"
	"slices"
	"sync"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/vlmdiff/edge/models"
)

// The nearest-normal term (models.KnnTerm, docs/algorithm.md §1.9): the knn graph runs once per batch on the
// preprocessed frames, each with its class's memory bank, and returns each position's distance to the nearest
// normal vector at the first layer's resolution. That map is one more layer of the map plan: upsampled,
// weighted and smoothed with the others in the same banded product, so the term costs the graph and a
// low-resolution pass.

// knnInput is one frame's nearest-normal distances ([h*w]) and their weight in the map.
type knnInput struct {
	dist   []float32
	h, w   int
	weight float64
	sigma  float64 // the Gaussian that smooths it in the map (map.knn.sigma, else the map's)
}

// knnMaps is a batch's distances: frame i's are dist[i*h*w : (i+1)*h*w], each position's mean distance to the
// k nearest bank vectors of its class (map.knn.ks).
type knnMaps struct {
	dist  []float32
	h, w  int
	sigma float64 // map.knn's smoothing sigma (models.KnnTerm.SmoothingSigma)
	// nearest is the graph's output [B, kmax, h, w] (the kmax nearest distances, nearest first), kept only
	// for Options.KnnKs; nil otherwise.
	nearest []float32
	kmax    int
}

// frameAtK returns frame i's term as the mean of its k nearest distances (Options.KnnKs), at weight 1; with a
// graph of the nearest alone (k_max 1, no nearest kept) its one distance.
func (k *knnMaps) frameAtK(i, kk int) *knnInput {
	if k.nearest == nil {
		return k.frame(i, 1)
	}
	n := k.h * k.w
	d := make([]float32, n)
	meanNearest(d, k.nearest[i*k.kmax*n:(i+1)*k.kmax*n], n, kk)
	return &knnInput{dist: d, h: k.h, w: k.w, weight: 1, sigma: k.sigma}
}

// meanNearest writes into dst ([n]) the mean of the first k of the planes of src ([kmax, n], the nearest
// distances of each position, nearest first). dst may be src's first plane: each position is read before it is
// written, and no later position's read goes below it.
func meanNearest(dst, src []float32, n, k int) {
	if k == 1 {
		copy(dst, src[:n])
		return
	}
	inv := 1 / float32(k)
	for p := range n {
		var sum float32
		for j := range k {
			sum += src[j*n+p]
		}
		dst[p] = sum * inv
	}
}

// frame returns frame i's term with the given weight; nil without distances or at weight 0.
func (k *knnMaps) frame(i int, weight float64) *knnInput {
	if k == nil || weight == 0 {
		return nil
	}
	n := k.h * k.w
	return &knnInput{dist: k.dist[i*n : (i+1)*n], h: k.h, w: k.w, weight: weight, sigma: k.sigma}
}

// knnWeight is the weight of the nearest-normal term in the map: map.knn.weight, 0 without the term.
func (s *Scorer) knnWeight() float64 {
	if t := s.m.Map.Knn; t != nil {
		return t.Weight
	}
	return 0
}

// wantKnn says whether a batch needs the knn graph: the term is in the map, or a caller asked for its own map.
func (s *Scorer) wantKnn() bool {
	return s.knn != nil && (s.knnWeight() > 0 || s.opt.KnnMap || s.opt.LayerMaps)
}

var knnBankPool = sync.Pool{New: func() any { return new([]float32) }}

// knnDistances runs the knn graph on the batch's preprocessed frames x ([B*3*H*W]), or, with the term's layers
// graph, on the frames' layers among the feature graph's outputs feats, each frame with its class's bank (the
// global one for a frame without a class), and averages each frame's k nearest distances, k its class's
// (models.KnnTerm.KFor). With Options.KnnLeaveOneOut a bank vector that came from the very frame being scored
// (models.SourceHash) is moved far from every feature vector (leaveOut), which leaves the k nearest those of
// the bank without the frame. nil when the batch does not need it.
func (s *Scorer) knnDistances(x []float32, feats []layerOutput, reqs []Request) (*knnMaps, error) {
	if !s.wantKnn() {
		return nil, nil
	}
	t := s.m.Map.Knn
	H, W := s.m.Input.Height, s.m.Input.Width
	n, B := 3*H*W, len(reqs)
	if len(x) != B*n {
		return nil, fmt.Errorf("knn: %d preprocessed values for %d frames of 3x%dx%d", len(x), B, H, W)
	}
	per := t.Size * t.Dims
	// the batch's banks ([B, N, D], 230 KB a frame with 1024 vectors of 56 values) in a buffer reused across
	// batches, not allocated on every frame's hot path
	buf := knnBankPool.Get().(*[]float32)
	defer knnBankPool.Put(buf)
	if cap(*buf) < B*per {
		*buf = make([]float32, B*per)
	}
	bank := (*buf)[:B*per]
	for i, r := range reqs {
		rows, src := s.bundle.KnnBankFor(r.Class)
		dst := bank[i*per : (i+1)*per]
		copy(dst, rows)
		if s.opt.KnnLeaveOneOut && src != nil {
			leaveOut(dst, src, models.SourceHash(x[i*n:(i+1)*n]), t.Dims)
		}
	}
	ins, err := s.knnInputs(x, feats, B)
	defer func() {
		for _, v := range ins {
			v.Destroy()
		}
	}()
	if err != nil {
		return nil, err
	}
	bt, err := tensor(ort.NewShape(int64(B), int64(t.Size), int64(t.Dims)), bank)
	if err != nil {
		return nil, err
	}
	defer bt.Destroy()
	out, shapes, err := s.knn.run(append(ins, bt)...)
	if err != nil {
		return nil, err
	}
	d, kmax, hw := out[1], t.KMaxOrOne(), t.Height*t.Width
	if len(d) != B*kmax*hw {
		return nil, fmt.Errorf("knn graph produced distances of shape %v, want [%d %d %d %d]", shapes[1], B, kmax, t.Height, t.Width)
	}
	km := &knnMaps{dist: d, h: t.Height, w: t.Width, sigma: t.SmoothingSigma(s.m.Map.Sigma), kmax: kmax}
	if kmax > 1 {
		if len(s.opt.KnnKs) > 0 {
			km.nearest, km.dist = d, make([]float32, B*hw)
		}
		// frame i's mean goes to dist[i*hw:], which in place lies at or below where its nearest start
		// (i*kmax*hw), so a frame is averaged before a later one overwrites it
		for i, r := range reqs {
			meanNearest(km.dist[i*hw:(i+1)*hw], d[i*kmax*hw:(i+1)*kmax*hw], hw, t.KFor(r.Class))
		}
		km.dist = km.dist[:B*hw]
	}
	return km, nil
}

// knnInputs is the knn graph's input before the bank: the frames x, or with the layers graph each of the term's
// layers for the B frames, the first B items of the feature graph's output (the frames come before their
// reconstructions), in the feature graph's own buffer.
func (s *Scorer) knnInputs(x []float32, feats []layerOutput, B int) ([]ort.Value, error) {
	t, H, W := s.m.Map.Knn, s.m.Input.Height, s.m.Input.Width
	if t.LayersGraph == "" {
		it, err := tensor(ort.NewShape(int64(B), 3, int64(H), int64(W)), x)
		if err != nil {
			return nil, err
		}
		return []ort.Value{it}, nil
	}
	var ins []ort.Value
	for _, name := range t.Layers {
		i := slices.IndexFunc(feats, func(l layerOutput) bool { return l.Name == name })
		if i < 0 {
			return ins, fmt.Errorf("knn: layer %s is not among the feature graph's outputs", name)
		}
		l := feats[i]
		if len(l.Shape) != 4 || l.Shape[0] < int64(B) {
			return ins, fmt.Errorf("knn: layer %s has shape %v, want [B, C, h, w] with the %d frames first", name, l.Shape, B)
		}
		per := int(l.Shape[1] * l.Shape[2] * l.Shape[3])
		if len(l.Data) < B*per {
			return ins, fmt.Errorf("knn: layer %s holds %d values, want the %d frames' %d", name, len(l.Data), B, B*per)
		}
		v, err := tensor(ort.NewShape(int64(B), l.Shape[1], l.Shape[2], l.Shape[3]), l.Data[:B*per])
		if err != nil {
			return ins, err
		}
		ins = append(ins, v)
	}
	return ins, nil
}

// leaveOutFar is the value of every component of a left-out bank vector: about 1e4*sqrt(dims) from any
// feature vector (the backbones' pooled features are of order 1-10), so it is never among a position's k
// nearest while the bank holds k vectors of other frames, and its squared norm (1e8*dims) stays finite in
// float32 for any dims the graph takes.
const leaveOutFar = 1e4

// leaveOut moves every vector of bank (dims values each) whose source is hash far from every feature vector
// (leaveOutFar): the bank then answers as one without the frame's own vectors, for the nearest and for the k
// nearest alike. (A copy of another vector, as before the mean of the k nearest, left the nearest right but
// counted that vector again among the k.) A bank made of one frame alone is left as it is (nothing else to
// compare with).
func leaveOut(bank []float32, src []uint64, hash uint64, dims int) {
	if !slices.ContainsFunc(src, func(h uint64) bool { return h != hash }) {
		return
	}
	for j, h := range src {
		if h == hash {
			for i := range bank[j*dims : (j+1)*dims] {
				bank[j*dims+i] = leaveOutFar
			}
		}
	}
}

// KnnGraph is a knn graph opened on its own (models.KnnTerm), for building the banks of a bundle that has none
// yet: the trainer runs the training normals through its features output.
type KnnGraph struct {
	g          *graph
	dims, H, W int
	kmax       int // the nearest distances it gives (its distance output [B, kmax, h, w]): the bank needs as many
}

// OpenKnnGraph opens the knn graph file at path for frames of H x W (the bundle's input size).
func OpenKnnGraph(path string, H, W int, opt Options) (*KnnGraph, error) {
	if err := InitRuntime(opt.Library); err != nil {
		return nil, err
	}
	gio, err := models.ReadGraphIO(path)
	if err != nil {
		return nil, fmt.Errorf("knn graph %s: %w", path, err)
	}
	dims := 0
	for _, in := range gio.Inputs {
		if in.Name == models.KnnBank && len(in.Shape) == 3 {
			dims = int(in.Shape[2])
		}
	}
	if dims < 1 {
		return nil, fmt.Errorf("knn graph %s: no input %s [B, N, D] with a fixed D", path, models.KnnBank)
	}
	kmax := 1
	for _, o := range gio.Outputs {
		if o.Name == models.KnnDistance && len(o.Shape) == 4 && o.Shape[1] > 1 {
			kmax = int(o.Shape[1])
		}
	}
	so, _, err := newSessionOptions(opt, &cudaFallbackOnce)
	if err != nil {
		return nil, err
	}
	defer so.Destroy()
	in, out := []string{models.KnnImage, models.KnnBank}, []string{models.KnnFeatures, models.KnnDistance}
	sess, err := ort.NewDynamicAdvancedSession(path, in, out, so)
	if err != nil {
		return nil, fmt.Errorf("knn graph %s: create session: %w", path, err)
	}
	return &KnnGraph{g: &graph{name: "knn", sess: sess, in: in, out: out}, dims: dims, H: H, W: W, kmax: kmax}, nil
}

// Close releases the session.
func (k *KnnGraph) Close() error { return k.g.sess.Destroy() }

// Features returns the pooled feature vectors of preprocessed frames x ([frames*3*H*W]): per frame
// [Dims*h*w], channel-major, and dims, h, w. The bank input is zero vectors, as many per frame as the graph
// gives nearest distances (TopK needs that many; the distances are not read).
func (k *KnnGraph) Features(x []float32, frames int) (out [][]float32, dims, h, w int, err error) {
	if len(x) != frames*3*k.H*k.W {
		return nil, 0, 0, 0, fmt.Errorf("knn features: %d values for %d frames of 3x%dx%d", len(x), frames, k.H, k.W)
	}
	it, err := tensor(ort.NewShape(int64(frames), 3, int64(k.H), int64(k.W)), x)
	if err != nil {
		return nil, 0, 0, 0, err
	}
	defer it.Destroy()
	bt, err := tensor(ort.NewShape(int64(frames), int64(k.kmax), int64(k.dims)), make([]float32, frames*k.kmax*k.dims))
	if err != nil {
		return nil, 0, 0, 0, err
	}
	defer bt.Destroy()
	res, shapes, err := k.g.run(it, bt)
	if err != nil {
		return nil, 0, 0, 0, err
	}
	sh := shapes[0]
	if len(sh) != 4 || int(sh[0]) != frames || int(sh[1]) != k.dims || int64(len(res[0])) != sh[0]*sh[1]*sh[2]*sh[3] {
		return nil, 0, 0, 0, fmt.Errorf("knn graph produced features of shape %v, want [%d %d h w]", sh, frames, k.dims)
	}
	per := int(sh[1] * sh[2] * sh[3])
	out = make([][]float32, frames)
	for i := range out {
		out[i] = res[0][i*per : (i+1)*per]
	}
	return out, k.dims, int(sh[2]), int(sh[3]), nil
}
