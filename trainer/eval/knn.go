package eval

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/vlmdiff/edge/internal/fsutil"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/metrics"
)

// The nearest-normal term's bundle files (models.KnnTerm).
const (
	KnnGraphFile       = "knn.onnx"
	KnnLayersGraphFile = "knn_layers.onnx"
	KnnBankFile        = "map_knn_bank.f32"
	KnnSourcesFile     = "map_knn_sources.u64"
)

// DefaultKnnBank is the vectors per class bank when none is given (KnnDraw.Size 0): about 3% of the positions
// of 33 training normals a class at 256 px, and 0.94 GMAC a frame with 56 values. Measured in session 34 on the
// noisy-background part (docs/algorithm.md §1.9, "Bank size"): on a painted set of 180 images 1024 / 2048 /
// 4096 / 8192 vectors scored 86.38 / 87.16 / 87.57 / 87.31 (mean of I-AUROC, P-AUROC and AU-PRO), so 4096 leads
// the old default of 1024 by more than select.min_gain and 8192 does not lead it; the knn stage costs about
// 16 ms more a frame than with 1024 on the 2-core AVX2 machine. Where a class has fewer positions than that
// (few or small normals), the default bank is the fewest any class has.
const DefaultKnnBank = 4096

// knnCandidatesPerVector bounds the vectors the greedy coreset chooses from: this many per bank vector, drawn
// at random from every position of the class's normals. The coreset's cost is bank x candidates x dims.
const knnCandidatesPerVector = 32

// MaxKnnFactor bounds the nearest-normal term's factor. It is wider than the mean-frame term's bound: where the
// reconstruction cannot redraw a material (a part placed anew on a stochastic background) the term is the
// map's only signal, and the select stage chose the old bound of 4 there, the top of its list (session 26). At
// 16 the term's spread is sixteen times the reconstruction's: nearly the term alone, PatchCore's map.
const MaxKnnFactor = 16

// CheckKnnFactor checks a nearest-normal term factor (calibrate.knn_factor, select.knn_factors).
func CheckKnnFactor(a float64) error {
	if !(a >= 0 && a <= MaxKnnFactor) {
		return fmt.Errorf("nearest-normal term factor %v: want 0 (off) to %d", a, MaxKnnFactor)
	}
	return nil
}

// KnnSpec says how to build the term: the backbone file and its layers (finest first), the values per vector
// (0: every channel), the backbone's input normalisation (empty: ImageNet's) and the bank size per class.
type KnnSpec struct {
	Backbone string
	Layers   []string
	Dims     int
	Mean     []float32
	Std      []float32
	Bank     int
	Sampling string // KnnCoreset (default) or KnnRandom
	// Isolated is the fraction of candidate vectors dropped before sampling as the most isolated from every
	// other normal image (0: none; see dropIsolated).
	Isolated float64
	// KMax is how many nearest distances the knn graph gives each position (models.KnnTerm.KMax; 0 or 1: the
	// nearest alone, the graph bundles had before the mean of the k nearest).
	KMax int
	// Ks is how many of them each class's frames average (models.KnnTerm.Ks), by class ("" the global bank);
	// a class absent takes 1. It changes neither the graph nor the banks, only map.knn.ks.
	Ks map[string]int
}

// WithKs gives spec the counts ks ({class: k}): k_max their largest, and the plain graph (k_max 1, no ks)
// when every class keeps the nearest alone.
func (spec KnnSpec) WithKs(ks map[string]int) (KnnSpec, error) {
	kmax := 1
	for _, k := range ks {
		kmax = max(kmax, k)
	}
	spec.KMax, spec.Ks = kmax, nil
	if kmax > 1 {
		spec.Ks = ks
	}
	return spec, spec.CheckKs()
}

// ParseKs reads counts of nearest vectors per class written CLASS=K[,CLASS=K...] ("=K" the global bank's).
func ParseKs(s string) (map[string]int, error) {
	ks := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		c, v, ok := strings.Cut(part, "=")
		k, err := strconv.Atoi(strings.TrimSpace(v))
		if !ok || err != nil {
			return nil, fmt.Errorf("%q: want CLASS=K, K a count of nearest vectors", part)
		}
		c = strings.TrimSpace(c)
		if _, dup := ks[c]; dup {
			return nil, fmt.Errorf("class %q given twice", c)
		}
		ks[c] = k
	}
	return ks, nil
}

// CheckKs checks spec.KMax and spec.Ks: each k in 1..KMax (1 without KMax), KMax at most models.MaxKnnK.
func (spec KnnSpec) CheckKs() error {
	if spec.KMax < 0 || spec.KMax > models.MaxKnnK {
		return fmt.Errorf("nearest-normal term: k_max %d: want 1..%d nearest distances", spec.KMax, models.MaxKnnK)
	}
	for c, k := range spec.Ks {
		if k < 1 || k > max(spec.KMax, 1) {
			return fmt.Errorf("nearest-normal term: class %q averages %d nearest distances: want 1..%d (k_max)", c, k, max(spec.KMax, 1))
		}
	}
	return nil
}

// draw returns how spec's banks are drawn.
func (spec KnnSpec) draw() KnnDraw {
	return KnnDraw{Size: spec.Bank, Sampling: spec.Sampling, Isolated: spec.Isolated}
}

// KnnDraw is how BuildKnnBanks draws each class's bank: Size vectors (0: DefaultKnnBank, or the fewest
// positions any class has when that is less), by Sampling, after dropping the Isolated fraction of candidates.
type KnnDraw struct {
	Size     int
	Sampling string
	Isolated float64
}

// MaxKnnIsolated bounds KnnSpec.Isolated: dropping more than half of the normal positions would no longer
// remove outliers but the normal variation itself.
const MaxKnnIsolated = 0.5

// CheckKnnIsolated checks KnnSpec.Isolated.
func CheckKnnIsolated(f float64) error {
	if !(f >= 0 && f <= MaxKnnIsolated) {
		return fmt.Errorf("isolated fraction %v: want 0 (keep every candidate) to %v", f, MaxKnnIsolated)
	}
	return nil
}

// How a bank's vectors are drawn from the candidates (KnnSpec.Sampling).
const (
	KnnCoreset = "coreset" // greedy k-center: covers the normal variation, rare patches included
	KnnRandom  = "random"  // a seeded uniform draw: follows the density of normal patches
)

// CheckKnnSampling checks KnnSpec.Sampling ("" is KnnCoreset).
func CheckKnnSampling(s string) error {
	if s != "" && s != KnnCoreset && s != KnnRandom {
		return fmt.Errorf("bank sampling %q: want %s or %s", s, KnnCoreset, KnnRandom)
	}
	return nil
}

// MakeKnnGraph writes the knn graph of spec for the bundle m at dst (the Python trainer's
// vlmdiff_train.knn_graph; trainer/run.Python.KnnGraph). With features "" it is the graph that takes the
// frame; with the path of the bundle's feature graph, the graph that takes the layers from it
// (models.KnnTerm.LayersGraph), written only when that feature graph gives the backbone's values for those
// layers, and otherwise an error that wraps ErrKnnNotShared.
type MakeKnnGraph func(ctx context.Context, spec KnnSpec, m *models.Manifest, features, dst string) error

// ErrKnnNotShared says that the bundle's feature graph does not give the knn backbone's layers (another
// network, other weights, a quantised copy, layers it lacks): the scorer then runs the knn graph on the frame.
var ErrKnnNotShared = errors.New("the feature graph does not share the knn layers")

// KnnBanks is a built term: per class ("" for every class) Size vectors of Dims values and their source hashes.
type KnnBanks struct {
	Classes       []string // sorted, "" first
	Rows          [][]float32
	Sources       [][]uint64
	Images        []int
	Size, Dims    int
	Height, Width int
	Source        string
	// LayersGraph, when set, is the graph that takes the layers from the bundle's feature graph (AddKnn), for
	// WriteKnn to store as models.KnnTerm.LayersGraph; NotShared says why there is none, for the log.
	LayersGraph string
	NotShared   string
	// Reused says the banks came from a KnnCache: built earlier in this process from the same normals.
	Reused bool
}

// knnPool holds a class's candidate vectors (row-major, dims each) and their source hashes.
type knnPool struct {
	vecs []float32
	src  []uint64
	n    int // images
}

// BuildKnnBanks runs every normal through the knn graph at graphPath (frames preprocessed exactly as the
// scorer does for the bundle m) and chooses each class's bank from its positions: a seeded random draw of
// knnCandidatesPerVector x size candidates, then a greedy k-center coreset of size of them (PatchCore's), so
// that the bank covers the normal variation rather than its most frequent patch (sampling KnnCoreset), or a
// seeded uniform draw of size of them (KnnRandom), which follows their density. With d.Isolated the most
// isolated candidates are dropped first (dropIsolated). The global bank "" is drawn the same way from every
// class's remaining candidates.
func BuildKnnBanks(ctx context.Context, graphPath string, m *models.Manifest, normal []dataset.Item, d KnnDraw, opt pipeline.Options, source string) (*KnnBanks, error) {
	size, sampling := d.Size, d.Sampling
	fit := size == 0 // the default: as large as DefaultKnnBank, as small as the smallest class needs
	if fit {
		size = DefaultKnnBank
	}
	if err := CheckKnnSampling(sampling); err != nil {
		return nil, err
	}
	if err := CheckKnnIsolated(d.Isolated); err != nil {
		return nil, fmt.Errorf("nearest-normal banks: %w", err)
	}
	if len(normal) == 0 {
		return nil, errors.New("nearest-normal banks: no normal images")
	}
	if size < 1 || size > models.MaxKnnBank {
		return nil, fmt.Errorf("nearest-normal banks: %d vectors a class: want 1..%d", size, models.MaxKnnBank)
	}
	g, err := pipeline.OpenKnnGraph(graphPath, m.Input.Height, m.Input.Width, opt)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	by := map[string][]dataset.Item{}
	for _, it := range normal {
		by[it.Class] = append(by[it.Class], it)
	}
	classes := slices.Sorted(func(yield func(string) bool) {
		for c := range by {
			if !yield(c) {
				return
			}
		}
	})
	kb := &KnnBanks{Size: size, Source: source}
	rng := rand.New(rand.NewPCG(1, 2))
	pools := map[string]*knnPool{}
	for _, c := range classes {
		p, dims, h, w, err := knnCandidates(ctx, g, m, by[c], size, rng)
		if err != nil {
			return nil, err
		}
		kb.Dims, kb.Height, kb.Width = dims, h, w
		if p, err = dropIsolated(ctx, p, dims, d.Isolated, size, rng); err != nil {
			return nil, err
		}
		pools[c] = p
	}
	all := &knnPool{}
	for _, c := range classes {
		p := pools[c]
		all.vecs, all.src, all.n = append(all.vecs, p.vecs...), append(all.src, p.src...), all.n+p.n
	}
	all = subsample(all, knnCandidatesPerVector*size, kb.Dims, rng)
	kb.Classes = append([]string{""}, classes...)
	if classes[0] == "" { // items without a class: their bank is the global one
		kb.Classes = classes
	}
	bankPools := make([]*knnPool, len(kb.Classes))
	for i, c := range kb.Classes {
		bankPools[i] = all
		if c != "" {
			bankPools[i] = pools[c]
		}
	}
	if size, err = bankSize(size, fit, kb.Classes, bankPools); err != nil {
		return nil, err
	}
	kb.Size = size
	for _, p := range bankPools {
		var idx []int
		if sampling == KnnRandom {
			idx = rng.Perm(len(p.src))[:size]
			sort.Ints(idx)
		} else if idx = coreset(ctx, p.vecs, kb.Dims, size); ctx.Err() != nil {
			return nil, ctx.Err()
		}
		row, src := make([]float32, 0, size*kb.Dims), make([]uint64, 0, size)
		for _, j := range idx {
			row = append(row, p.vecs[j*kb.Dims:(j+1)*kb.Dims]...)
			src = append(src, p.src[j])
		}
		kb.Rows, kb.Sources, kb.Images = append(kb.Rows, row), append(kb.Sources, src), append(kb.Images, p.n)
	}
	return kb, nil
}

// bankSize is the vectors each bank holds: size, or with fit (no size given) size but no more than the fewest
// positions any class's pool has, so that a class of few or small normals gets a smaller bank instead of an
// error. A size given that some class cannot fill is an error naming the class.
func bankSize(size int, fit bool, classes []string, pools []*knnPool) (int, error) {
	for i, c := range classes {
		n := len(pools[i].src)
		if fit {
			size = min(size, n)
		} else if n < size {
			return 0, fmt.Errorf("nearest-normal banks: class %q has %d positions, fewer than the bank's %d", c, n, size)
		}
	}
	if size < 1 {
		return 0, errors.New("nearest-normal banks: a class has no positions")
	}
	return size, nil
}

// knnCandidates runs a class's normals through the graph and keeps a random draw of their positions' vectors.
func knnCandidates(ctx context.Context, g *pipeline.KnnGraph, m *models.Manifest, items []dataset.Item, size int, rng *rand.Rand) (*knnPool, int, int, int, error) {
	const chunk = 4
	p := &knnPool{n: len(items)}
	var dims, h, w int
	for start := 0; start < len(items); start += chunk {
		if err := ctx.Err(); err != nil {
			return nil, 0, 0, 0, err
		}
		end := min(start+chunk, len(items))
		var x []float32
		var hashes []uint64
		for _, it := range items[start:end] {
			img, err := pipeline.ReadImage(it.Path)
			if err != nil {
				return nil, 0, 0, 0, fmt.Errorf("nearest-normal banks: reading image %s: %w", it.Path, err)
			}
			xi, err := pipeline.Preprocess(m, img)
			if err != nil {
				return nil, 0, 0, 0, fmt.Errorf("nearest-normal banks: %s: %w", it.Path, err)
			}
			x = append(x, xi...)
			hashes = append(hashes, models.SourceHash(xi))
		}
		feats, d, fh, fw, err := g.Features(x, end-start)
		if err != nil {
			return nil, 0, 0, 0, fmt.Errorf("nearest-normal banks: %w", err)
		}
		dims, h, w = d, fh, fw
		n := h * w
		for k, f := range feats {
			for pos := range n { // channel-major [dims][n] -> one vector per position
				for c := range dims {
					v := f[c*n+pos]
					if v-v != 0 {
						return nil, 0, 0, 0, fmt.Errorf("nearest-normal banks: %s: the knn graph produced non-finite features", items[start+k].Path)
					}
					p.vecs = append(p.vecs, v)
				}
				p.src = append(p.src, hashes[k])
			}
		}
		// keep the pool bounded as it grows: a class with thousands of normals must not hold every position
		if len(p.src) > 4*knnCandidatesPerVector*size {
			p = subsample(p, 2*knnCandidatesPerVector*size, dims, rng)
		}
	}
	return subsample(p, knnCandidatesPerVector*size, dims, rng), dims, h, w, nil
}

// subsample keeps a uniform random draw of at most n of the pool's vectors, in their order.
func subsample(p *knnPool, n, dims int, rng *rand.Rand) *knnPool {
	if len(p.src) <= n {
		return p
	}
	idx := rng.Perm(len(p.src))[:n]
	sort.Ints(idx)
	out := &knnPool{vecs: make([]float32, 0, n*dims), src: make([]uint64, 0, n), n: p.n}
	for _, j := range idx {
		out.vecs = append(out.vecs, p.vecs[j*dims:(j+1)*dims]...)
		out.src = append(out.src, p.src[j])
	}
	return out
}

// coreset returns the indices of k of the vectors (row-major, dims each) chosen greedily: first the one farthest
// from their mean, then each time the one farthest from every one chosen so far (k-center greedy, PatchCore's
// coreset). Deterministic: ties go to the lowest index. When ctx ends it stops early (the caller reports it).
//
// Three things make it several times faster than the plain loop (coresetPlain in the tests) without changing a
// choice, so that banks built before are built again byte for byte:
//   - distances that cannot lower a vector's nearest distance are skipped by the triangle inequality (as in
//     Elkan's k-means): a vector at distance r from its nearest choice c cannot come nearer to a new choice s
//     that lies at least 2r from c. The test keeps a margin (coresetSkipMargin) wider than float32 rounding;
//   - the rest are computed four vectors at a time, each still summed in order (sqDist4InOrder), so the
//     additions of four vectors overlap instead of waiting on each other;
//   - the vectors are split among the CPUs, each finding the farthest of its share.
func coreset(ctx context.Context, vecs []float32, dims, k int) []int {
	n := len(vecs) / dims
	first := farthestFromMean(vecs, dims)
	dist := make([]float64, n)
	for j := range dist {
		dist[j] = math.Inf(1)
	}
	near := make([]int32, n) // the index into out of each vector's nearest choice; -1 before the first
	for j := range near {
		near[j] = -1
	}
	workers := max(1, min(runtime.GOMAXPROCS(0), n/4096))
	shares := make([]coresetShare, workers)
	for w := range shares {
		shares[w] = coresetShare{lo: w * n / workers, hi: (w + 1) * n / workers}
	}
	out := make([]int, 0, k)
	apart := make([]float64, 0, k) // the new choice's squared distance to each earlier choice, over the margin
	margin := coresetSkipMargin(dims)
	next := first
	var wg sync.WaitGroup
	for len(out) < k {
		if len(out)%256 == 255 && ctx.Err() != nil {
			return out
		}
		sel := vecs[next*dims : (next+1)*dims]
		apart = apart[:0]
		for _, o := range out {
			apart = append(apart, float64(sqDist(vecs[o*dims:(o+1)*dims], sel))/margin)
		}
		cur := int32(len(out))
		out = append(out, next)
		for w := range shares {
			wg.Add(1)
			go func(sh *coresetShare) {
				defer wg.Done()
				sh.farthest(vecs, dims, sel, apart, cur, dist, near)
			}(&shares[w])
		}
		wg.Wait()
		best, bestD := -1, -1.0
		for _, sh := range shares { // in order: a tie goes to the lowest index, as in one pass
			if sh.bestD > bestD {
				best, bestD = sh.best, sh.bestD
			}
		}
		if best < 0 { // every vector chosen or a duplicate of one: repeat the last (no new coverage to add)
			best = next
		}
		dist[next] = 0
		next = best
	}
	return out
}

// farthestFromMean is coreset's first choice: the vector farthest from the vectors' mean (the lowest index on a
// tie), distances in float64.
func farthestFromMean(vecs []float32, dims int) int {
	n := len(vecs) / dims
	mean := make([]float64, dims)
	for j := range n {
		for c, v := range vecs[j*dims : (j+1)*dims] {
			mean[c] += float64(v)
		}
	}
	for c := range mean {
		mean[c] /= float64(n)
	}
	first, far := 0, 0.0
	for j := range n {
		var s float64
		for c, v := range vecs[j*dims : (j+1)*dims] {
			d := float64(v) - mean[c]
			s += d * d
		}
		if s > far {
			first, far = j, s
		}
	}
	return first
}

// coresetSkipMargin widens coreset's triangle-inequality test so that float32 rounding cannot turn a skip into
// a changed choice: a distance is skipped only when the bound holds with 1e-4 to spare beyond eight times the
// worst relative rounding of a squared distance summed over dims values (dims x 2^-24; 3e-6 at 56 values).
func coresetSkipMargin(dims int) float64 {
	return 1 + 1e-4 + 8*float64(dims)*0x1p-24
}

// coresetShare is one worker's contiguous share [lo, hi) of coreset's vectors, its scratch space, and the
// farthest vector it found in the last round.
type coresetShare struct {
	lo, hi  int
	best    int
	bestD   float64
	scratch []int  // a block's indices, those whose distance is needed first
	zero    []bool // a block's vectors at distance 0 before the round
}

// farthest lowers the share's nearest distances with the new choice sel (index cur into the choices), skipping
// those that apart proves cannot change, and finds the share's farthest vector. A vector already at distance 0
// (a choice, or a duplicate of one) is passed over, as in the plain loop.
func (sh *coresetShare) farthest(vecs []float32, dims int, sel []float32, apart []float64, cur int32, dist []float64, near []int32) {
	const block = 512
	if sh.zero == nil {
		sh.scratch, sh.zero = make([]int, block), make([]bool, block)
	}
	sh.best, sh.bestD = -1, -1.0
	for lo := sh.lo; lo < sh.hi; lo += block {
		hi := min(lo+block, sh.hi)
		all, zero := sh.scratch, sh.zero
		n := 0
		for j := lo; j < hi; j++ {
			dj := dist[j]
			zero[j-lo] = dj == 0
			// |v - s| >= |s - c| - |v - c| >= |v - c| when |s - c|^2 >= 4 |v - c|^2: s cannot lower dj. Written
			// without a branch: which vectors need their distance follows no pattern a CPU could predict.
			c := near[j]
			need := dj != 0 && (c < 0 || apart[max(c, 0)] < 4*dj)
			all[n] = j
			if need {
				n++
			}
		}
		todo := all[:n]
		update := func(j int, d float32) {
			if d := float64(d); d < dist[j] {
				dist[j], near[j] = d, cur
			}
		}
		i := 0
		for ; i+4 <= len(todo); i += 4 {
			a, b, c, e := todo[i], todo[i+1], todo[i+2], todo[i+3]
			da, db, dc, de := sqDist4InOrder(vecs[a*dims:(a+1)*dims], vecs[b*dims:(b+1)*dims], vecs[c*dims:(c+1)*dims], vecs[e*dims:(e+1)*dims], sel)
			update(a, da)
			update(b, db)
			update(c, dc)
			update(e, de)
		}
		for ; i < len(todo); i++ {
			update(todo[i], sqDistInOrder(vecs[todo[i]*dims:(todo[i]+1)*dims], sel))
		}
		for j := lo; j < hi; j++ {
			if !zero[j-lo] && dist[j] > sh.bestD {
				sh.best, sh.bestD = j, dist[j]
			}
		}
	}
}

// sqDistInOrder is the squared Euclidean distance of two vectors of the same length, summed in order in float32:
// the banks were always summed so, and coreset's choices stay the same.
func sqDistInOrder(a, b []float32) float32 {
	b = b[:len(a)]
	var s float32
	for c := range a {
		d := a[c] - b[c]
		s += d * d
	}
	return s
}

// sqDist4InOrder is sqDistInOrder of four vectors against one, the four sums interleaved.
func sqDist4InOrder(a, b, c, e, sel []float32) (float32, float32, float32, float32) {
	n := len(sel)
	a, b, c, e = a[:n], b[:n], c[:n], e[:n]
	var sa, sb, sc, se float32
	for i, s := range sel {
		da, db, dc, de := a[i]-s, b[i]-s, c[i]-s, e[i]-s
		sa += da * da
		sb += db * db
		sc += dc * dc
		se += de * de
	}
	return sa, sb, sc, se
}

// WriteKnn stores a built term in the bundle: the graph (copied from graphPath unless it is the bundle's own
// file), the banks, their sources and map.knn with the factor and weight 0 (and the earlier term's own smoothing,
// map.knn.sigma), or removes the term when kb is nil. A map reference measured with the term at another weight
// is removed in the same write (as WritePixel does).
func WriteKnn(bundleDir, graphPath string, kb *KnnBanks, spec KnnSpec, factor float64) error {
	if err := CheckKnnFactor(factor); err != nil {
		return err
	}
	if err := spec.CheckKs(); err != nil {
		return err
	}
	if kb == nil {
		m, err := models.ReadManifest(bundleDir)
		if err != nil {
			return fmt.Errorf("nearest-normal term: %w", err)
		}
		if m.Map.Knn == nil {
			return nil
		}
	}
	return updateManifest(bundleDir, "nearest-normal term", func(m *models.Manifest) error {
		var sigma *float64 // the term's own smoothing is a setting of the map, not of the banks: a rebuild keeps it
		if old := m.Map.Knn; old != nil {
			for _, f := range []string{old.Graph, old.Bank, old.Sources, old.LayersGraph} {
				delete(m.Files, f)
			}
			sigma = old.Sigma
		}
		m.Map.Knn = nil
		dropReference := func() error { return dropKnnReference(bundleDir, m) }
		// a layers graph of an earlier term goes: it is rewritten below only when this term has one
		if err := os.Remove(filepath.Join(bundleDir, KnnLayersGraphFile)); err != nil && !os.IsNotExist(err) {
			return err
		}
		if kb == nil {
			for _, f := range []string{KnnGraphFile, KnnBankFile, KnnSourcesFile} {
				if err := os.Remove(filepath.Join(bundleDir, f)); err != nil && !os.IsNotExist(err) {
					return err
				}
			}
			return dropReference()
		}
		dst := filepath.Join(bundleDir, KnnGraphFile)
		if filepath.Clean(graphPath) != filepath.Clean(dst) {
			data, err := os.ReadFile(graphPath)
			if err != nil {
				return fmt.Errorf("reading the knn graph: %w", err)
			}
			if err := fsutil.WriteFileAtomic(dst, data, 0o644); err != nil {
				return fmt.Errorf("copying the knn graph: %w", err)
			}
		}
		files := []string{KnnGraphFile, KnnBankFile, KnnSourcesFile}
		if kb.LayersGraph != "" {
			data, err := os.ReadFile(kb.LayersGraph)
			if err != nil {
				return fmt.Errorf("reading the knn layers graph: %w", err)
			}
			if err := fsutil.WriteFileAtomic(filepath.Join(bundleDir, KnnLayersGraphFile), data, 0o644); err != nil {
				return fmt.Errorf("copying the knn layers graph: %w", err)
			}
			files = append(files, KnnLayersGraphFile)
		}
		var bank, src []byte
		for i := range kb.Rows {
			for _, v := range kb.Rows[i] {
				bank = binary.LittleEndian.AppendUint32(bank, math.Float32bits(v))
			}
			for _, h := range kb.Sources[i] {
				src = binary.LittleEndian.AppendUint64(src, h)
			}
		}
		for name, data := range map[string][]byte{KnnBankFile: bank, KnnSourcesFile: src} {
			if err := fsutil.WriteFileAtomic(filepath.Join(bundleDir, name), data, 0o644); err != nil {
				return err
			}
		}
		for _, f := range files {
			p := filepath.Join(bundleDir, f)
			sum, err := models.FileSHA256(p)
			if err != nil {
				return err
			}
			st, err := os.Stat(p)
			if err != nil {
				return err
			}
			m.Files[f] = models.FileEntry{SHA256: sum, Size: st.Size()}
		}
		m.Map.Knn = &models.KnnTerm{Graph: KnnGraphFile, Bank: KnnBankFile, Sources: KnnSourcesFile, Classes: kb.Classes,
			Size: kb.Size, Dims: kb.Dims, Height: kb.Height, Width: kb.Width, Layers: spec.Layers,
			Backbone: filepath.Base(spec.Backbone), Sampling: spec.Sampling, Isolated: spec.Isolated, Images: kb.Images, Source: kb.Source, Factor: factor, Sigma: sigma}
		if kb.LayersGraph != "" {
			m.Map.Knn.LayersGraph = KnnLayersGraphFile
		}
		if spec.KMax > 1 {
			m.Map.Knn.KMax = spec.KMax
			m.Map.Knn.Ks = make([]int, len(kb.Classes))
			for i, c := range kb.Classes {
				m.Map.Knn.Ks[i] = max(spec.Ks[c], 1)
			}
			if kb.Size < spec.KMax {
				return fmt.Errorf("nearest-normal term: banks of %d vectors for the %d nearest (k_max)", kb.Size, spec.KMax)
			}
		}
		return dropReference()
	})
}

// AddKnn builds the term into a bundle: its graph (makeGraph), its banks from the normal items, and map.knn at
// factor with weight 0 (the calibrate stage measures the weight with the reference).
func AddKnn(ctx context.Context, bundleDir string, spec KnnSpec, makeGraph MakeKnnGraph, normal []dataset.Item, factor float64, opt pipeline.Options, source string) (*KnnBanks, error) {
	return addKnn(ctx, bundleDir, spec, makeGraph, normal, factor, opt, source, nil)
}

// addKnn is AddKnn through cache (nil: none).
func addKnn(ctx context.Context, bundleDir string, spec KnnSpec, makeGraph MakeKnnGraph, normal []dataset.Item, factor float64, opt pipeline.Options, source string, cache *KnnCache) (*KnnBanks, error) {
	m, err := models.ReadManifest(bundleDir)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(bundleDir, ".knn-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	var key string
	var e *knnCached
	if cache != nil {
		if key, err = knnCacheKey(m, spec, normal, source); err != nil {
			return nil, err
		}
		e = cache.lookup(key)
	}
	var kb *KnnBanks
	var graph string
	if e != nil {
		if kb, graph, err = e.restore(tmp, spec.KMax); err != nil {
			return nil, fmt.Errorf("nearest-normal term: %w", err)
		}
		if graph == "" { // the banks kept, the graph of this count of nearest distances not yet
			graph = filepath.Join(tmp, KnnGraphFile)
			if err := makeGraph(ctx, spec, m, "", graph); err != nil {
				return nil, fmt.Errorf("nearest-normal term: %w", err)
			}
			if err := e.keepGraph(graph, spec.KMax); err != nil {
				return nil, err
			}
		}
	} else {
		graph = filepath.Join(tmp, KnnGraphFile)
		if err := makeGraph(ctx, spec, m, "", graph); err != nil {
			return nil, fmt.Errorf("nearest-normal term: %w", err)
		}
		if kb, err = BuildKnnBanks(ctx, graph, m, normal, spec.draw(), opt, source); err != nil {
			return nil, err
		}
		if e, err = cache.keep(key, kb, graph, spec.KMax); err != nil {
			return nil, err
		}
	}
	// the same graph without its backbone, fed the frames' layers from the bundle's feature graph, when that
	// graph gives the backbone's values (the small preset's MobileNetV2 runs once on a frame, not twice)
	if why := knnNotShared(m, spec.Layers); why != "" {
		kb.NotShared = why
	} else {
		features := filepath.Join(bundleDir, m.Graphs[models.RoleFeatures].File)
		fed, ok, err := e.fed(features, spec.KMax)
		if err != nil {
			return nil, fmt.Errorf("nearest-normal term: %w", err)
		}
		lg := filepath.Join(tmp, KnnLayersGraphFile)
		if !ok {
			switch err := makeGraph(ctx, spec, m, features, lg); {
			case err == nil:
				fed.graph, err = os.ReadFile(lg)
				if err != nil {
					return nil, err
				}
			case errors.Is(err, ErrKnnNotShared):
				fed.notShared = err.Error()
			default:
				return nil, fmt.Errorf("nearest-normal term: %w", err)
			}
			e.keepFed(fed)
		} else if fed.graph != nil {
			if err := os.WriteFile(lg, fed.graph, 0o644); err != nil {
				return nil, err
			}
		}
		if kb.NotShared = fed.notShared; fed.graph != nil {
			kb.LayersGraph = lg
		}
	}
	if err := WriteKnn(bundleDir, graph, kb, spec, factor); err != nil {
		return nil, err
	}
	return kb, nil
}

// knnNotShared says why the bundle m's feature graph cannot feed the term's layers (it lacks one, or gives ViT
// tokens), or "" when AddKnn tries a layers graph.
func knnNotShared(m *models.Manifest, layers []string) string {
	if m.Features.Tokens {
		return "the feature graph gives ViT tokens"
	}
	if missing := models.MissingFeatureOutputs(m, layers); len(missing) > 0 {
		return fmt.Sprintf("the feature graph's outputs (graphs.features.outputs) lack %v", missing)
	}
	return ""
}

// Shared says, for the log, whether the scorer feeds the term from the feature graph's layers or runs the
// knn graph on the frame, and why.
func (kb *KnnBanks) Shared() string {
	if kb.LayersGraph != "" {
		return "the frame's layers come from the feature graph (" + KnnLayersGraphFile + ")"
	}
	return "the knn graph runs on the frame: " + kb.NotShared
}

// SetKnnFactor sets the factor of a bundle's term (its weight back to 0 until calibrate measures it, and a
// reference measured with the old weight removed); 0 removes the term.
func SetKnnFactor(bundleDir string, factor float64) error {
	if err := CheckKnnFactor(factor); err != nil {
		return err
	}
	if factor == 0 {
		return WriteKnn(bundleDir, "", nil, KnnSpec{}, 0)
	}
	return updateManifest(bundleDir, "nearest-normal term", func(m *models.Manifest) error {
		t := m.Map.Knn
		if t == nil {
			return fmt.Errorf("factor %g: the bundle has no nearest-normal term (build it with the calibrate stage's knn section)", factor)
		}
		t.Factor, t.Weight = factor, 0
		return dropKnnReference(bundleDir, m)
	})
}

// SetKnnSigma sets the smoothing sigma of the bundle's nearest-normal term (map.knn.sigma; nil: the map's). A map
// reference measured with the term at another sigma is removed in the same write and the term's weight set back
// to 0 (both were measured on the old smoothing), as SetPixelSigma does for the mean-frame term.
func SetKnnSigma(bundleDir string, sigma *float64) error {
	if sigma != nil {
		if err := CheckKnnSigma(*sigma); err != nil {
			return err
		}
	}
	return updateManifest(bundleDir, "nearest-normal term sigma", func(m *models.Manifest) error {
		t := m.Map.Knn
		if t == nil {
			return errors.New("the bundle has no nearest-normal term (map.knn)")
		}
		before := t.SmoothingSigma(m.Map.Sigma)
		t.Sigma = nil
		if sigma != nil {
			v := *sigma
			t.Sigma = &v
		}
		if t.SmoothingSigma(m.Map.Sigma) == before {
			return nil
		}
		t.Weight = 0
		return dropKnnReference(bundleDir, m)
	})
}

// CheckKnnSigma checks a nearest-normal term sigma (calibrate.knn_sigma, select.knn_sigmas, vlmdiff calibrate
// --knn-sigma): 0 (no smoothing) to models.MaxPixelSigma map pixels.
func CheckKnnSigma(v float64) error {
	if !(v >= 0 && v <= models.MaxPixelSigma) {
		return fmt.Errorf("nearest-normal term sigma %v: want 0 (no smoothing) to %d map pixels", v, models.MaxPixelSigma)
	}
	return nil
}

// dropKnnReference removes a map reference measured with the nearest-normal term at a weight: the term is
// changing, and the bundle scores raw maps until the reference is measured again.
func dropKnnReference(bundleDir string, m *models.Manifest) error {
	if r := m.Map.Reference; r != nil && r.KnnWeight != 0 {
		delete(m.Files, r.File)
		m.Map.Reference = nil
		if err := os.Remove(filepath.Join(bundleDir, r.File)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

// DescribeKnn says what the calibrate stage made of a nearest-normal term factor: its weight, or why it has none.
func DescribeKnn(factor, weight float64) string {
	if weight == 0 {
		return fmt.Sprintf("factor %g, weight 0: the training normals' distances to their banks do not vary, so the term cannot be sized and adds nothing", factor)
	}
	return fmt.Sprintf("factor %g, weight %.6g", factor, weight)
}

// KnnFactor is the nearest-normal term factor of a bundle on disk: map.knn.factor, 0 without the term.
func KnnFactor(bundleDir string) (float64, error) {
	m, err := models.ReadManifest(bundleDir)
	if err != nil {
		return 0, err
	}
	if m.Map.Knn == nil {
		return 0, nil
	}
	return m.Map.Knn.Factor, nil
}

// WeighKnn ranks the nearest-normal term's factors on a bundle with the term (any weight): the reference
// normals are scored once (s must be opened with NoReference, PixelMap, KnnMap and KnnLeaveOneOut), giving each
// class's mean map and term map and the spreads that size the term (as BuildReference measures them); then the
// validation items are scored once, and for each factor every map is the bundle's map minus its class's
// reference row plus weight x (the term's map minus its row), pooled as the scorer pools. It returns each
// factor's mean metrics over the classes at each of the term's smoothings: out[k][f] is factor f with the
// term's map at its own sigma (k = 0) or at the k-th of the scorer's pipeline.Options.KnnSigmas.
//
// A mean-frame term whose weight was never measured (its mean frames written by WriteMeanFrames, no reference
// yet) is sized from the same pass of the reference normals, as BuildReference would size it from its own: so
// the select stage needs no scoring pass of its own to measure it first.
func WeighKnn(ctx context.Context, s *pipeline.Scorer, reference, val []dataset.Item, factors []float64, opts Options) ([][]metrics.Metrics, error) {
	m := s.Manifest()
	if m.Map.Knn == nil {
		return nil, errors.New("nearest-normal term factors: the bundle has no term (map.knn)")
	}
	if len(reference) == 0 || len(val) == 0 {
		return nil, errors.New("nearest-normal term factors: need reference normals and validation images")
	}
	ref, err := ScoreItems(ctx, s, reference, opts)
	if err != nil {
		return nil, fmt.Errorf("nearest-normal term factors: %w", err)
	}
	kw, pw := m.Map.Knn.Weight, 0.0 // the terms' weights in the bundle's maps
	var size float64                // above 0: the mean-frame term's factor, its weight still to be measured here
	if t := m.Map.Pixel; t != nil {
		pw = t.Weight
		if pw == 0 {
			size = t.Factor
		}
	}
	nk := 1 + len(s.KnnSigmas())
	whole, feat, pix := newClassSums(false), newClassSums(true), newClassSums(true)
	terms := make([]*classSums, nk) // the term's maps at each sigma
	for k := range terms {
		terms[k] = newClassSums(true)
	}
	for _, r := range ref {
		f, k, err := splitMaps(r, pw, kw)
		if err != nil {
			return nil, err
		}
		whole.add(r.Item.Class, subtractScaled(r.Result.Map, k, kw))
		feat.add(r.Item.Class, f)
		if err := addKnnMaps(terms, r); err != nil {
			return nil, err
		}
		if size > 0 {
			if len(r.Result.PixelMap) != len(f) {
				return nil, fmt.Errorf("nearest-normal term factors: %s has no map of the mean-frame term (open the scorer with pipeline.Options.PixelMap)", r.Item.Path)
			}
			pix.add(r.Item.Class, r.Result.PixelMap)
		}
	}
	add := 0.0 // the mean-frame term's weight measured here, added to every map
	if size > 0 {
		add = pixelWeight(size, feat.std(), pix.std())
	}
	res, err := ScoreItems(ctx, s, val, opts)
	if err != nil {
		return nil, fmt.Errorf("nearest-normal term factors: %w", err)
	}
	for i := range res {
		r := &res[i]
		if len(r.Result.KnnMap) != len(r.Result.Map) || len(r.Result.KnnMaps) != nk-1 {
			return nil, fmt.Errorf("nearest-normal term factors: %s has no map of the term at each sigma (open the scorer with pipeline.Options.KnnMap)", r.Item.Path)
		}
		r.Result.Map = subtractScaled(r.Result.Map, r.Result.KnnMap, kw) // the map without the bundle's own term, once
		if add != 0 {
			if len(r.Result.PixelMap) != len(r.Result.Map) {
				return nil, fmt.Errorf("nearest-normal term factors: %s has no map of the mean-frame term (open the scorer with pipeline.Options.PixelMap)", r.Item.Path)
			}
			r.Result.Map = subtractScaled(r.Result.Map, r.Result.PixelMap, -add)
		}
		if r.Item.Mask != "" {
			if r.Mask, err = ReadMask(r.Item.Mask, r.Result.MapWidth, r.Result.MapHeight); err != nil {
				return nil, fmt.Errorf("nearest-normal term factors: %w", err)
			}
		}
	}
	rows := map[string][]float64{} // each class's reference row of the map without the term
	for _, c := range whole.classes() {
		row := whole.mean(c)
		if add != 0 {
			for i, v := range pix.mean(c) {
				row[i] += add * v
			}
		}
		rows[c] = row
	}
	fs := feat.std()
	out := make([][]metrics.Metrics, nk)
	for k := range out {
		out[k] = make([]metrics.Metrics, len(factors))
		ks := terms[k].std()
		trows := map[string][]float64{}
		for c := range rows {
			trows[c] = terms[k].mean(c)
		}
		for f, a := range factors {
			rep, err := Metrics(withKnnTerm(res, rows, trows, k, pixelWeight(a, fs, ks), m.Score))
			if err != nil {
				return nil, fmt.Errorf("nearest-normal term factor %g: %w", a, err)
			}
			out[k][f] = rep.Mean
		}
	}
	return out, nil
}

// addKnnMaps adds a reference normal's maps of the nearest-normal term at each sigma (its own, then
// Result.KnnMaps) to the sums of each.
func addKnnMaps(terms []*classSums, r ImageResult) error {
	if len(r.Result.KnnMaps) != len(terms)-1 {
		return fmt.Errorf("nearest-normal term factors: %s has no map of the term at each sigma (open the scorer with pipeline.Options.KnnSigmas)", r.Item.Path)
	}
	for k, km := range append([][]float32{r.Result.KnnMap}, r.Result.KnnMaps...) {
		terms[k].add(r.Item.Class, km)
	}
	return nil
}

// withKnnTerm gives each validation result the map without the term minus its class's row (rows; the global
// row for a class without one) plus w x (the term's map at its k-th sigma minus its class's row of that map,
// trows), and its pooled score.
func withKnnTerm(res []ImageResult, rows, trows map[string][]float64, k int, w float64, sc models.ScoreSpec) []ImageResult {
	scored := make([]ImageResult, len(res))
	for j, r := range res {
		c := r.Item.Class
		if _, ok := rows[c]; !ok {
			c = ""
		}
		row, trow := rows[c], trows[c]
		km := r.Result.KnnMap
		if k > 0 {
			km = r.Result.KnnMaps[k-1]
		}
		amap := make([]float32, len(r.Result.Map))
		for i, v := range r.Result.Map {
			amap[i] = float32(float64(v) - row[i] + w*(float64(km[i])-trow[i]))
		}
		scored[j] = r
		scored[j].Result.Map = amap
		scored[j].Result.RawScore = pipeline.PooledMax(amap, r.Result.MapHeight, r.Result.MapWidth, sc.PoolKernel, sc.PoolRepeat)
	}
	return scored
}

// splitMaps returns a reference normal's feature map (its map minus the mean-frame term at pixelWeight and the
// nearest-normal term at knnWeight) and its nearest-normal term map.
func splitMaps(r ImageResult, pixelWeight, knnWeight float64) ([]float32, []float32, error) {
	k := r.Result.KnnMap
	if len(k) != len(r.Result.Map) {
		return nil, nil, fmt.Errorf("%s has no map of the nearest-normal term (open the scorer with pipeline.Options.KnnMap)", r.Item.Path)
	}
	f := subtractScaled(r.Result.Map, k, knnWeight)
	if pixelWeight != 0 {
		d := r.Result.PixelMap
		if len(d) != len(f) {
			return nil, nil, fmt.Errorf("%s has no map of the mean-frame term (open the scorer with pipeline.Options.PixelMap)", r.Item.Path)
		}
		f = subtractScaled(f, d, pixelWeight)
	}
	return f, k, nil
}

// subtractScaled returns a - w*b (a itself when w is 0).
func subtractScaled(a, b []float32, w float64) []float32 {
	if w == 0 {
		return a
	}
	out := slices.Clone(a)
	for i, v := range b {
		out[i] -= float32(w) * v
	}
	return out
}

// WeighKnnKs measures the nearest-normal term's map alone, as the mean of each count of nearest bank vectors
// (the scorer's pipeline.Options.KnnKs; s opened with KnnMap and NoReference), on the validation items, class by
// class: out[class][j] is the metrics of the term's map at the j-th count, its image score pooled as the
// bundle pools. The select stage chooses each class's count from it (select.knn_ks). The term alone, not the
// whole map: the count changes only the term, and the term's own ranking of a class's painted defects is what
// the count decides (docs/algorithm.md §1.9, "Mean of the k nearest").
func WeighKnnKs(ctx context.Context, s *pipeline.Scorer, val []dataset.Item, ks []int, opts Options) (map[string][]metrics.Metrics, error) {
	m := s.Manifest()
	if m.Map.Knn == nil {
		return nil, errors.New("nearest-normal term counts: the bundle has no term (map.knn)")
	}
	if len(val) == 0 {
		return nil, errors.New("nearest-normal term counts: no validation images")
	}
	res, err := ScoreItems(ctx, s, val, opts)
	if err != nil {
		return nil, fmt.Errorf("nearest-normal term counts: %w", err)
	}
	for i := range res { // the masks once, not once a count
		if r := &res[i]; r.Item.Mask != "" {
			if r.Mask, err = ReadMask(r.Item.Mask, r.Result.MapWidth, r.Result.MapHeight); err != nil {
				return nil, fmt.Errorf("nearest-normal term counts: %w", err)
			}
		}
	}
	out := map[string][]metrics.Metrics{}
	for j, k := range ks {
		at := make([]ImageResult, len(res))
		for i, r := range res {
			if len(r.Result.KnnKMaps) != len(ks) {
				return nil, fmt.Errorf("nearest-normal term counts: %s has %d maps of the term, want one at each of %v (open the scorer with pipeline.Options.KnnKs)", r.Item.Path, len(r.Result.KnnKMaps), ks)
			}
			at[i] = r
			at[i].Result.Map = r.Result.KnnKMaps[j]
			at[i].Result.RawScore = pipeline.PooledMax(at[i].Result.Map, r.Result.MapHeight, r.Result.MapWidth, m.Score.PoolKernel, m.Score.PoolRepeat)
		}
		rep, err := Metrics(at)
		if err != nil {
			return nil, fmt.Errorf("nearest-normal term at the %d nearest: %w", k, err)
		}
		for _, c := range rep.Classes {
			if out[c.Class] == nil {
				out[c.Class] = make([]metrics.Metrics, len(ks))
			}
			out[c.Class][j] = c.Metrics
		}
	}
	return out, nil
}
