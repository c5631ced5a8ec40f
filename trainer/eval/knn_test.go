package eval

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// knnFixture is the fixture's knn graph (models/testdata/README.md): 56 values per position at 64 x 64.
const knnFixture = "../../models/testdata/knn/knn.onnx"

// greedyKCenter is the k-center greedy coreset by its definition, in float64 with every distance recomputed.
func greedyKCenter(vecs []float32, dims, k int) []int {
	n := len(vecs) / dims
	d2 := func(a []float32, b []float64) float64 {
		s := 0.0
		for c := range a {
			d := float64(a[c]) - b[c]
			s += d * d
		}
		return s
	}
	mean := make([]float64, dims)
	for j := range n {
		for c := range dims {
			mean[c] += float64(vecs[j*dims+c]) / float64(n)
		}
	}
	first, far := 0, -1.0
	for j := range n {
		if d := d2(vecs[j*dims:(j+1)*dims], mean); d > far {
			first, far = j, d
		}
	}
	out := []int{first}
	for len(out) < k {
		best, bestD := -1, 0.0
		for j := range n {
			near := math.Inf(1)
			for _, s := range out {
				sel := make([]float64, dims)
				for c := range dims {
					sel[c] = float64(vecs[s*dims+c])
				}
				near = math.Min(near, d2(vecs[j*dims:(j+1)*dims], sel))
			}
			if near > bestD {
				best, bestD = j, near
			}
		}
		if best < 0 {
			best = out[len(out)-1]
		}
		out = append(out, best)
	}
	return out
}

func TestCoresetIsGreedyKCenter(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	random := make([]float32, 300*5)
	for i := range random {
		random[i] = float32(rng.NormFloat64())
	}
	for _, c := range []struct {
		name string
		vecs []float32
		dims int
		k    int
		want []int
	}{
		// mean (5.2, 1.2): (0,0) is farthest; then (10,1); then (5,5), 41 from (10,1) and 50 from (0,0)
		{"by hand", []float32{0, 0, 1, 0, 10, 0, 10, 1, 5, 5}, 2, 3, []int{0, 3, 4}},
		// (3,3) is farthest from the mean; then the first (1,1); the other (1,1) adds nothing: the last repeats
		{"duplicates", []float32{1, 1, 1, 1, 3, 3}, 2, 3, []int{2, 0, 0}},
		{"random, against the definition", random, 5, 12, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			want := c.want
			if want == nil {
				want = greedyKCenter(c.vecs, c.dims, c.k)
			}
			if got := coreset(context.Background(), c.vecs, c.dims, c.k); !slices.Equal(got, want) {
				t.Errorf("coreset %v, want %v", got, want)
			}
		})
	}
}

// coresetPlain is coreset as it was before it skipped distances: every vector's distance to every new choice,
// summed in order in float32, one vector at a time on one CPU. The skips must not change a single choice.
func coresetPlain(vecs []float32, dims, k int) []int {
	n := len(vecs) / dims
	first := farthestFromMean(vecs, dims) // the first choice is not what the skips change
	dist := make([]float64, n)
	for j := range dist {
		dist[j] = math.Inf(1)
	}
	out := []int{}
	next := first
	for len(out) < k {
		out = append(out, next)
		sel := vecs[next*dims : (next+1)*dims]
		best, bestD := -1, -1.0
		for j := range n {
			if dist[j] == 0 {
				continue
			}
			var s float32
			for c, v := range vecs[j*dims : (j+1)*dims] {
				d := v - sel[c]
				s += d * d
			}
			if d := float64(s); d < dist[j] {
				dist[j] = d
			}
			if dist[j] > bestD {
				best, bestD = j, dist[j]
			}
		}
		if best < 0 {
			best = next
		}
		dist[next] = 0
		next = best
	}
	return out
}

func TestCoresetSkipsOnlyWhatCannotChange(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	gauss := func(n, dims int) []float32 {
		v := make([]float32, n*dims)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		return v
	}
	// clusters of very different spread, as the positions of a few textures: most distances get skipped
	clusters := func(n, dims, k int) []float32 {
		centres := gauss(k, dims)
		v := make([]float32, 0, n*dims)
		for range n {
			c := rng.IntN(k)
			spread := float32(math.Pow(10, -3*rng.Float64()))
			for d := range dims {
				v = append(v, 10*centres[c*dims+d]+spread*float32(rng.NormFloat64()))
			}
		}
		return v
	}
	// a small integer grid, repeated: many exact ties and duplicates, and more choices than distinct vectors
	grid := make([]float32, 0, 3*2*50)
	for range 3 {
		for i := range 50 {
			grid = append(grid, float32(i%7), float32(i/7))
		}
	}
	// features with a large offset: squared distances small against the values, where float32 rounds most
	offset := gauss(3000, 8)
	for i := range offset {
		offset[i] = 1000 + offset[i]/100
	}
	for _, c := range []struct {
		name    string
		vecs    []float32
		dims, k int
	}{
		{"gaussian", gauss(4000, 56), 56, 600},
		{"clusters", clusters(6000, 56, 40), 56, 900},
		{"grid with duplicates", grid, 2, 60},
		{"large offset", offset, 8, 500},
		{"one vector", []float32{1, 2, 3}, 3, 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			want := coresetPlain(c.vecs, c.dims, c.k)
			if got := coreset(context.Background(), c.vecs, c.dims, c.k); !slices.Equal(got, want) {
				i := 0
				for i < len(got) && i < len(want) && got[i] == want[i] {
					i++
				}
				t.Fatalf("coreset differs from the plain loop from choice %d of %d: %v against %v", i, c.k, got[i:min(i+5, len(got))], want[i:min(i+5, len(want))])
			}
		})
	}
}

// knnBundle copies the fixture bundle into dir and builds the term from the training normals at factor 0.
func knnBundle(t *testing.T, dir string, train []dataset.Item, size int) (string, *KnnBanks) {
	t.Helper()
	b := filepath.Join(dir, "bundle")
	copyDir(t, fixtureBundle, b)
	m, err := models.ReadManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	cpu := pipeline.Options{Providers: []string{"cpu"}, Threads: 2}
	kb, err := BuildKnnBanks(context.Background(), knnFixture, m, train, KnnDraw{Size: size}, cpu, "train")
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteKnn(b, knnFixture, kb, KnnSpec{Backbone: knnFixture, Layers: []string{"layer1", "layer2"}}, 0); err != nil {
		t.Fatal(err)
	}
	return b, kb
}

// knnFeatures is each item's preprocessed frame, its hash and its knn vectors ([positions][dims]).
func knnFeatures(t *testing.T, m *models.Manifest, g *pipeline.KnnGraph, it dataset.Item) (uint64, [][]float32) {
	t.Helper()
	img, err := pipeline.ReadImage(it.Path)
	if err != nil {
		t.Fatal(err)
	}
	x, err := pipeline.Preprocess(m, img)
	if err != nil {
		t.Fatal(err)
	}
	f, dims, h, w, err := g.Features(x, 1)
	if err != nil {
		t.Fatal(err)
	}
	vecs := make([][]float32, h*w)
	for p := range vecs {
		vecs[p] = make([]float32, dims)
		for c := range dims {
			vecs[p][c] = f[0][c*h*w+p]
		}
	}
	return models.SourceHash(x), vecs
}

// definedKnnMap is the term's smoothed map by its definition: each position's mean Euclidean distance to the k
// nearest bank vectors not from the frame skip (0: none skipped), in float64, upsampled bilinearly with aligned
// corners and smoothed with the bundle's Gaussian.
func definedKnnMap(m *models.Manifest, vecs [][]float32, bank []float32, src []uint64, skip uint64, k int) []float64 {
	t := m.Map.Knn
	d := make([]float64, t.Height*t.Width)
	for p, q := range vecs {
		var all []float64
		for j := range t.Size {
			if skip != 0 && src[j] == skip {
				continue
			}
			s := 0.0
			for c, v := range q {
				e := float64(v) - float64(bank[j*t.Dims+c])
				s += e * e
			}
			all = append(all, math.Sqrt(s))
		}
		slices.Sort(all)
		for _, v := range all[:k] {
			d[p] += v / float64(k)
		}
	}
	H, W := m.Input.Height, m.Input.Width
	up := make([]float64, H*W)
	at := func(o, n, N int) (int, int, float64) {
		pos := float64(o) * float64(n-1) / float64(N-1)
		i0 := min(int(pos), n-1)
		i1 := min(i0+1, n-1)
		return i0, i1, pos - float64(i0)
	}
	for Y := range H {
		y0, y1, fy := at(Y, t.Height, H)
		for X := range W {
			x0, x1, fx := at(X, t.Width, W)
			top := d[y0*t.Width+x0]*(1-fx) + d[y0*t.Width+x1]*fx
			bot := d[y1*t.Width+x0]*(1-fx) + d[y1*t.Width+x1]*fx
			up[Y*W+X] = top*(1-fy) + bot*fy
		}
	}
	pipeline.SmoothMap(up, H, W, m.Map.Sigma, m.Map.Truncate)
	return up
}

func maxDiff(a []float32, b []float64) (worst, scale float64) {
	for i, v := range a {
		worst = math.Max(worst, math.Abs(float64(v)-b[i]))
		scale = math.Max(scale, math.Abs(b[i]))
	}
	return worst, scale
}

// TestKnnTermMatchesDefinition: every bank vector is a vector of a training normal of its class (the global
// bank: of any), with that normal's hash as its source; the term's map is the nearest distance by definition,
// smoothed, for a new frame and, left one out, for a training normal; the bundle's map adds it at the weight
// MeasureReference measured, which is the factor times the features' spread over the term's.
func TestKnnTermMatchesDefinition(t *testing.T) {
	dir := t.TempDir()
	train := pixelTrain(t, dir)
	_, test := smallSet(t, dir, 0, 1)
	const size = 48
	b, kb := knnBundle(t, dir, train, size)
	ctx := context.Background()
	m, err := models.ReadManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(kb.Classes, ","); got != ",gadget,widget" || !slices.Equal(kb.Images, []int{5, 2, 3}) || kb.Dims != 56 || kb.Height != 64 {
		t.Fatalf("banks: classes %q images %v dims %d height %d", got, kb.Images, kb.Dims, kb.Height)
	}
	cpu := pipeline.Options{Providers: []string{"cpu"}, Threads: 2}
	g, err := pipeline.OpenKnnGraph(knnFixture, m.Input.Height, m.Input.Width, cpu)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	checkBankVectors(t, m, g, train, kb)

	opt := cpu
	opt.NoReference, opt.PixelMap, opt.KnnMap, opt.KnnLeaveOneOut = true, true, true, true
	open := func() (*pipeline.Scorer, error) { return pipeline.Open(b, opt) }
	ref, err := MeasureReference(ctx, b, open, train, "train", Terms{Knn: 1}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := pipeline.Open(b, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	w := s.Manifest().Map.Knn.Weight
	if !(w > 0) || w != ref.KnnWeight || s.Manifest().Map.Reference.KnnWeight != w {
		t.Fatalf("weight %g, reference %g / %g", w, ref.KnnWeight, s.Manifest().Map.Reference.KnnWeight)
	}

	items := append([]dataset.Item{test[1]}, train[0])
	res, err := ScoreItems(ctx, s, items, Options{})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := pipeline.Open(fixtureBundle, pipeline.Options{Providers: []string{"cpu"}, Threads: 2, NoReference: true})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	base, err := ScoreItems(ctx, plain, items, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for k, r := range res {
		h, vecs := knnFeatures(t, m, g, r.Item)
		bank, src := s.Bundle().KnnBankFor(r.Item.Class)
		skip := uint64(0)
		if k == 1 { // a training normal, scored against the bank without its own vectors
			skip = h
		}
		want := definedKnnMap(s.Manifest(), vecs, bank, src, skip, 1)
		if worst, scale := maxDiff(r.Result.KnnMap, want); !(scale > 0) || worst > 1e-4*scale {
			t.Errorf("%s: the term's map differs from its definition by %g (scale %g)", r.Item.Path, worst, scale)
		}
		// the bundle's map is the features' map (the fixture without the term) plus w x the term's
		for i, v := range r.Result.Map {
			if d := math.Abs(float64(v) - float64(base[k].Result.Map[i]) - w*float64(r.Result.KnnMap[i])); d > 1e-4 {
				t.Fatalf("%s: map - w x term differs from the map without the term by %g at %d", r.Item.Path, d, i)
			}
		}
	}
	// without leaving it out, a training normal meets its own vectors: its term is lower
	own := opt
	own.KnnLeaveOneOut = false
	so, err := pipeline.Open(b, own)
	if err != nil {
		t.Fatal(err)
	}
	defer so.Close()
	ro, err := ScoreItems(ctx, so, train[:1], Options{})
	if err != nil {
		t.Fatal(err)
	}
	var with, without float64
	for i := range ro[0].Result.KnnMap {
		with += float64(ro[0].Result.KnnMap[i])
		without += float64(res[1].Result.KnnMap[i])
	}
	if !(with < without) {
		t.Errorf("a training normal's term sums to %g against its own vectors, %g without them: want less", with, without)
	}
	definedWeight(t, b, opt, train, w)
}

// TestKnnKNearestMatchesDefinition: with the graph of the 4 nearest distances (models/testdata/knn/knn_k4.onnx)
// and a k per class (KnnSpec.KMax, Ks), the term's map is each class's mean of its k nearest by definition, for a
// new frame and, left one out, for a training normal (whose own vectors must be out of all k, not only the
// nearest); and with pipeline.Options.KnnKs each frame also carries the map at every k.
func TestKnnKNearestMatchesDefinition(t *testing.T) {
	dir := t.TempDir()
	train := pixelTrain(t, dir)
	_, test := smallSet(t, dir, 0, 1)
	b, kb := knnBundle(t, dir, train, 48)
	const k4 = "../../models/testdata/knn/knn_k4.onnx"
	m, err := models.ReadManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	// the graph of the 4 nearest builds the same banks (its features output is the same)
	cpu := pipeline.Options{Providers: []string{"cpu"}, Threads: 2}
	kb4, err := BuildKnnBanks(context.Background(), k4, m, train, KnnDraw{Size: 48}, cpu, "train")
	if err != nil {
		t.Fatalf("banks from the graph of the 4 nearest: %v", err)
	}
	if !reflect.DeepEqual(kb4.Rows, kb.Rows) || !reflect.DeepEqual(kb4.Sources, kb.Sources) {
		t.Fatal("the graph of the 4 nearest built other banks than the graph of the nearest")
	}
	spec := KnnSpec{Backbone: knnFixture, Layers: []string{"layer1", "layer2"}, KMax: 4, Ks: map[string]int{"widget": 3, "gadget": 2}}
	if err := WriteKnn(b, k4, kb, spec, 0); err != nil {
		t.Fatal(err)
	}
	if m, err = models.ReadManifest(b); err != nil {
		t.Fatal(err)
	}
	if kt := m.Map.Knn; kt.KMax != 4 || !slices.Equal(kt.Ks, []int{1, 2, 3}) {
		t.Fatalf("map.knn k_max %d ks %v, want 4 and [1 2 3] for classes %q", kt.KMax, kt.Ks, kt.Classes)
	}
	g, err := pipeline.OpenKnnGraph(knnFixture, m.Input.Height, m.Input.Width, cpu)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	opt := cpu
	opt.NoReference, opt.KnnMap, opt.KnnLeaveOneOut, opt.KnnKs = true, true, true, []int{1, 2, 4}
	s, err := pipeline.Open(b, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	items := []dataset.Item{test[1], train[0]}
	for _, it := range train {
		if it.Class == "widget" {
			items = append(items, it)
			break
		}
	}
	res, err := ScoreItems(context.Background(), s, items, Options{BatchSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		h, vecs := knnFeatures(t, m, g, r.Item)
		bank, src := s.Bundle().KnnBankFor(r.Item.Class)
		skip := uint64(0)
		if i > 0 { // training normals, scored against the banks without their own vectors
			skip = h
		}
		check := func(what string, got []float32, k int) {
			want := definedKnnMap(m, vecs, bank, src, skip, k)
			if worst, scale := maxDiff(got, want); !(scale > 0) || worst > 1e-4*scale {
				t.Errorf("%s (%s), %s: differs from the mean of the %d nearest by %g (scale %g)", r.Item.Path, r.Item.Class, what, k, worst, scale)
			}
		}
		check("the term's map", r.Result.KnnMap, m.Map.Knn.KFor(r.Item.Class))
		if len(r.Result.KnnKMaps) != 3 {
			t.Fatalf("%d maps for KnnKs [1 2 4]", len(r.Result.KnnKMaps))
		}
		for j, k := range opt.KnnKs {
			check(fmt.Sprintf("the map at k %d", k), r.Result.KnnKMaps[j], k)
		}
	}
}

// checkBankVectors: every bank vector is a vector of a training normal of its bank's class (the global bank: of
// any), and its source is that normal's hash.
func checkBankVectors(t *testing.T, m *models.Manifest, g *pipeline.KnnGraph, train []dataset.Item, kb *KnnBanks) {
	t.Helper()
	type feat struct {
		class string
		vecs  [][]float32
	}
	byHash := map[uint64]feat{}
	for _, it := range train {
		h, v := knnFeatures(t, m, g, it)
		byHash[h] = feat{it.Class, v}
	}
	for r, c := range kb.Classes {
		for j := range kb.Size {
			f, ok := byHash[kb.Sources[r][j]]
			if !ok || (c != "" && f.class != c) {
				t.Fatalf("bank %q vector %d: source %x is not a training normal of the class", c, j, kb.Sources[r][j])
			}
			v := kb.Rows[r][j*kb.Dims : (j+1)*kb.Dims]
			if !slices.ContainsFunc(f.vecs, func(q []float32) bool { return slices.Equal(q, v) }) {
				t.Fatalf("bank %q vector %d is not a vector of its source frame", c, j)
			}
		}
	}
}

// TestKnnRandomBanks: a random bank holds training vectors of its class too, not the coreset's; an unknown
// sampling is refused by name.
func TestKnnRandomBanks(t *testing.T) {
	dir := t.TempDir()
	train := pixelTrain(t, dir)
	m, err := models.ReadManifest(fixtureBundle)
	if err != nil {
		t.Fatal(err)
	}
	cpu := pipeline.Options{Providers: []string{"cpu"}, Threads: 2}
	ctx := context.Background()
	random, err := BuildKnnBanks(ctx, knnFixture, m, train, KnnDraw{Size: 24, Sampling: KnnRandom}, cpu, "train")
	if err != nil {
		t.Fatal(err)
	}
	core, err := BuildKnnBanks(ctx, knnFixture, m, train, KnnDraw{Size: 24, Sampling: KnnCoreset}, cpu, "train")
	if err != nil {
		t.Fatal(err)
	}
	g, err := pipeline.OpenKnnGraph(knnFixture, m.Input.Height, m.Input.Width, cpu)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	checkBankVectors(t, m, g, train, random)
	if slices.Equal(random.Rows[1], core.Rows[1]) {
		t.Errorf("the random bank is the coreset")
	}
	if _, err := BuildKnnBanks(ctx, knnFixture, m, train, KnnDraw{Size: 24, Sampling: "densest"}, cpu, "train"); err == nil || !strings.Contains(err.Error(), `sampling "densest"`) {
		t.Errorf("sampling densest: error %v", err)
	}
}

// definedWeight checks w against its definition: 1 x the pooled spread of the features' maps (the map minus
// w x the term) over that of the term's maps, each around its class's mean map.
func definedWeight(t *testing.T, b string, opt pipeline.Options, train []dataset.Item, w float64) {
	t.Helper()
	s, err := pipeline.Open(b, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res, err := ScoreItems(context.Background(), s, train, Options{})
	if err != nil {
		t.Fatal(err)
	}
	spread := func(get func(r ImageResult) []float64) float64 {
		by := map[string][][]float64{}
		for _, r := range res {
			by[r.Item.Class] = append(by[r.Item.Class], get(r))
		}
		var ss float64
		var n int
		for _, maps := range by {
			for i := range maps[0] {
				mean := 0.0
				for _, mp := range maps {
					mean += mp[i] / float64(len(maps))
				}
				for _, mp := range maps {
					ss += (mp[i] - mean) * (mp[i] - mean)
					n++
				}
			}
		}
		return math.Sqrt(ss / float64(n))
	}
	f := spread(func(r ImageResult) []float64 {
		out := make([]float64, len(r.Result.Map))
		for i, v := range r.Result.Map {
			out[i] = float64(v) - w*float64(r.Result.KnnMap[i])
		}
		return out
	})
	k := spread(func(r ImageResult) []float64 {
		out := make([]float64, len(r.Result.KnnMap))
		for i, v := range r.Result.KnnMap {
			out[i] = float64(v)
		}
		return out
	})
	if def := f / k; math.Abs(def-w) > 1e-3*def {
		t.Errorf("weight %g, its definition %g", w, def)
	}
}

// TestWeighKnnMatchesBundles: WeighKnn's metrics for each factor are those of the bundle calibrated with that
// factor (MeasureReference) and evaluated; factor 0 is the bundle without the term. The same for the term
// smoothed at another sigma (pipeline.Options.KnnSigmas against a bundle with map.knn.sigma). With a mean-frame
// term whose weight was never measured (only its frames written, as the select stage does), WeighKnn sizes it
// from its own pass as MeasureReference sizes it.
func TestWeighKnnMatchesBundles(t *testing.T) {
	dir := t.TempDir()
	train := pixelTrain(t, dir)
	_, test := smallSet(t, dir, 0, 3)
	knn, _ := knnBundle(t, dir, train, 32)
	ctx := context.Background()
	opt := pipeline.Options{Providers: []string{"cpu"}, Threads: 2}
	opt.NoReference, opt.PixelMap, opt.KnnMap, opt.KnnLeaveOneOut = true, true, true, true
	sharp := 1.5
	wopt := opt
	wopt.KnnSigmas = []float64{sharp}
	for _, pixel := range []float64{0, 0.5} {
		base := filepath.Join(dir, fmt.Sprintf("pixel%g", pixel))
		copyDir(t, knn, base)
		if err := WriteMeanFrames(ctx, base, train, "train", pixel, nil); err != nil {
			t.Fatal(err)
		}
		s, err := pipeline.Open(base, wopt)
		if err != nil {
			t.Fatal(err)
		}
		factors := []float64{0, 1, 3}
		mets, err := WeighKnn(ctx, s, train, test, factors, Options{})
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(mets) != 2 {
			t.Fatalf("%d rows of metrics for the term's own sigma and one more", len(mets))
		}
		for i := range 2 * len(factors) {
			at, k := i/len(factors), i%len(factors)
			a := factors[k]
			if at > 0 && a == 0 {
				continue // no term: no smoothing of it
			}
			terms := Terms{Pixel: pixel, Knn: a}
			if at > 0 {
				terms.KnnSigma = &sharp
			}
			b := filepath.Join(dir, fmt.Sprintf("pixel%g-f%d-s%d", pixel, k, at))
			copyDir(t, base, b)
			open := func() (*pipeline.Scorer, error) { return pipeline.Open(b, opt) }
			ref, err := MeasureReference(ctx, b, open, train, "train", terms, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if a > 0 && ref.KnnSigma != []float64{openFixtureManifest(t, base).Map.Sigma, sharp}[at] {
				t.Errorf("pixel %g, factor %g: the reference was measured with the term at sigma %g", pixel, a, ref.KnnSigma)
			}
			bs := openFixture(t, b)
			bm := bs.Manifest()
			if (bm.Map.Knn != nil) != (a > 0) {
				t.Errorf("pixel %g, factor %g: the bundle has the term: %v", pixel, a, bm.Map.Knn != nil)
			}
			if pixel > 0 && (bm.Map.Pixel == nil || bm.Map.Pixel.Weight == 0) {
				t.Fatalf("pixel %g: the calibrated bundle's mean-frame term %+v has no weight", pixel, bm.Map.Pixel)
			}
			rep, _, err := Evaluate(ctx, bs, test, Options{})
			bs.Close()
			if err != nil {
				t.Fatal(err)
			}
			got, want := rep.Mean, mets[at][k]
			if !sameMetrics(got, want, 1e-3) {
				t.Errorf("pixel %g, factor %g, smoothing %d: WeighKnn's metrics %+v, the bundle's %+v", pixel, a, at, want, got)
			}
		}
		if mets[0][2] == mets[1][2] {
			t.Errorf("pixel %g: the term at sigma %g scores as at the map's: the smoothing was not applied", pixel, sharp)
		}
	}
}

// openFixtureManifest reads the manifest of the bundle in dir.
func openFixtureManifest(t *testing.T, dir string) *models.Manifest {
	t.Helper()
	m, err := models.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestKnnBundleErrors: a bank file of the wrong size, a missing bank, a factor without banks and a reference
// measured at another weight are refused with what and why.
func TestKnnBundleErrors(t *testing.T) {
	dir := t.TempDir()
	train := pixelTrain(t, dir)
	b, _ := knnBundle(t, dir, train, 16)
	if _, err := models.Load(b); err != nil {
		t.Fatalf("the bundle with the term: %v", err)
	}
	broken := filepath.Join(dir, "broken")
	copyDir(t, b, broken)
	data, err := os.ReadFile(filepath.Join(broken, KnnBankFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(broken, KnnBankFile), data[:len(data)-4], 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := models.ReadManifest(broken)
	if err != nil {
		t.Fatal(err)
	}
	if err := models.Rehash(broken, m); err != nil {
		t.Fatal(err)
	}
	if _, err := models.Load(broken); err == nil || !strings.Contains(err.Error(), KnnBankFile) || !strings.Contains(err.Error(), "bytes") {
		t.Errorf("a short bank: error %v", err)
	}
	plain := filepath.Join(dir, "plain")
	copyDir(t, fixtureBundle, plain)
	if err := SetKnnFactor(plain, 1); err == nil || !strings.Contains(err.Error(), "no nearest-normal term") {
		t.Errorf("a factor without banks: error %v", err)
	}
	for _, bad := range []float64{-1, MaxKnnFactor + 1, math.NaN(), math.Inf(1)} {
		if err := SetKnnFactor(b, bad); err == nil || !strings.Contains(err.Error(), "want 0 (off) to 16") {
			t.Errorf("factor %v: error %v", bad, err)
		}
	}
	if err := SetKnnFactor(b, MaxKnnFactor); err != nil {
		t.Errorf("factor %v, the largest: %v", MaxKnnFactor, err)
	}
	m, err = models.ReadManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	m.Map.Knn.Weight = 0.5
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	m.Map.Reference = &models.MapReference{MapRows: models.MapRows{File: "r.f32", Width: 256, Height: 256, Classes: []string{""}}}
	m.Files["r.f32"] = models.FileEntry{}
	if err := m.Validate(); err == nil || !strings.Contains(err.Error(), "map.reference.knn_weight") {
		t.Errorf("a reference measured without the term's weight: error %v", err)
	}
	if err := WriteKnn(b, "", nil, KnnSpec{}, 0); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{KnnGraphFile, KnnBankFile, KnnSourcesFile} {
		if _, err := os.Stat(filepath.Join(b, f)); !os.IsNotExist(err) {
			t.Errorf("%s stays after removing the term: %v", f, err)
		}
	}
}

// TestKnnBankSize: without a size the bank is DefaultKnnBank vectors, or the fewest positions any class has when
// that is less (a class of few or small normals); a size given is kept, and refused by name where a class cannot
// fill it.
func TestKnnBankSize(t *testing.T) {
	pool := func(n int) *knnPool { return &knnPool{src: make([]uint64, n)} }
	classes := []string{"", "widget", "gadget"}
	for _, c := range []struct {
		name    string
		size    int
		fit     bool
		pools   []int
		want    int
		wantErr string
	}{
		{"default, every class larger", DefaultKnnBank, true, []int{3 * DefaultKnnBank, 2 * DefaultKnnBank, DefaultKnnBank + 1}, DefaultKnnBank, ""},
		{"default, one small class", DefaultKnnBank, true, []int{3 * DefaultKnnBank, 2 * DefaultKnnBank, 1000}, 1000, ""},
		{"default, the smallest wins", DefaultKnnBank, true, []int{1500, 700, 1000}, 700, ""},
		{"given, every class larger", 512, false, []int{3000, 2000, 1000}, 512, ""},
		{"given, one class too small", 2048, false, []int{3000, 4000, 1000}, 0, `class "gadget" has 1000 positions, fewer than the bank's 2048`},
		{"default, a class without positions", DefaultKnnBank, true, []int{3000, 0, 1000}, 0, "no positions"},
	} {
		t.Run(c.name, func(t *testing.T) {
			pools := make([]*knnPool, len(c.pools))
			for i, n := range c.pools {
				pools[i] = pool(n)
			}
			got, err := bankSize(c.size, c.fit, classes, pools)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("bankSize = %d, %v; want %d", got, err, c.want)
			}
		})
	}
}

// TestMapWeighingKnnMatchesWeighKnn: the nearest-normal term weighed from WeighMapsAt's pass (one scoring pass of
// a bundle with the term's banks, at each noise prefix, for every layer recipe) gives the metrics WeighKnn gives
// on a bundle of the chosen recipe with that many noises, which scores the reference normals and the validation
// images again; with and without the mean-frame term.
func TestMapWeighingKnnMatchesWeighKnn(t *testing.T) {
	dir := t.TempDir()
	train := pixelTrain(t, dir)
	_, test := smallSet(t, dir, 0, 3)
	knn, _ := knnBundle(t, dir, train, 32)
	ctx := context.Background()
	man, err := models.ReadManifest(knn)
	if err != nil {
		t.Fatal(err)
	}
	own := make([]float64, len(man.Features.Layers))
	for i, l := range man.Features.Layers {
		own[i] = float64(l.Weight)
	}
	weighed, _ := withMeanFrames(t, knn, filepath.Join(dir, "weighed"), train)
	counts := []int{1, 2}
	sharp := 1.5
	wopt := pipeline.Options{Providers: []string{"cpu"}, Threads: 2, LayerMaps: true, KnnLeaveOneOut: true, Ensemble: 2, NoisePrefixes: counts, PixelSigmas: []float64{0},
		KnnSigmas: []float64{sharp}}
	s, err := pipeline.Open(weighed, wopt)
	if err != nil {
		t.Fatal(err)
	}
	// the term at the map's sigma and unsmoothed (map.pixel.sigma 0), from the same pass
	cands := []MapCandidate{{Weights: own}, {Weights: own, Pixel: 0.5}, {Weights: own, Pixel: 0.5, PixelAt: 1, PixelSigma: 0}}
	w, err := WeighMapsAt(ctx, s, train, test, cands, Options{})
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	factors := []float64{0, 1, 3}
	for ci, c := range cands {
		base := filepath.Join(dir, fmt.Sprintf("cand%d", ci))
		copyDir(t, knn, base)
		var sigma *float64
		if c.PixelAt > 0 {
			sigma = &c.PixelSigma
		}
		if err := WriteMeanFrames(ctx, base, train, "train", c.Pixel, sigma); err != nil {
			t.Fatal(err)
		}
		for j, n := range counts {
			got, err := w.WeighKnn(ctx, j, c, factors)
			if err != nil {
				t.Fatal(err)
			}
			opt := pipeline.Options{Providers: []string{"cpu"}, Threads: 2, NoReference: true, PixelMap: true, KnnMap: true, KnnLeaveOneOut: true, Ensemble: n}
			kopt := opt
			kopt.KnnSigmas = []float64{sharp}
			one, err := pipeline.Open(base, kopt)
			if err != nil {
				t.Fatal(err)
			}
			want, err := WeighKnn(ctx, one, train, test, factors, Options{})
			one.Close()
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 || len(want) != 2 || !slices.Equal(w.KnnSigmas(), []float64{man.Map.Sigma, sharp}) {
				t.Fatalf("%s: %d and %d rows of metrics for the term's smoothings %v", c.Name(), len(got), len(want), w.KnnSigmas())
			}
			for at := range 2 {
				for k, a := range factors {
					g, e := got[at][k], want[at][k]
					if !sameMetrics(g, e, 1e-4) {
						t.Errorf("%s, %d noises, factor %g, smoothing %d: from the weighing %+v, WeighKnn %+v", c.Name(), n, a, at, g, e)
					}
				}
			}
			if got[0][0] == got[0][2] {
				t.Errorf("%s, %d noises: factor 3 scores as factor 0: the term was not added", c.Name(), n)
			}
			// the reference of the recipe with the term at 3 (at the map's sigma, then at sharp), from the
			// weighing's sums and measured on a bundle
			for at, ks := range []*float64{nil, &sharp} {
				ref, err := w.Reference(j, c, 3, at, "train")
				if err != nil {
					t.Fatal(err)
				}
				b := filepath.Join(dir, fmt.Sprintf("cand%d-n%d-s%d", ci, n, at))
				copyDir(t, base, b)
				open := func() (*pipeline.Scorer, error) { return pipeline.Open(b, opt) }
				want2, err := MeasureReference(ctx, b, open, train, "train", Terms{Pixel: c.Pixel, Knn: 3, KnnSigma: ks}, Options{})
				if err != nil {
					t.Fatal(err)
				}
				compareReferences(t, fmt.Sprintf("%s, %d noises, smoothing %d", c.Name(), n, at), ref, want2)
			}
			ref, err := w.Reference(j, c, 3, 0, "train")
			if err != nil {
				t.Fatal(err)
			}
			saved := filepath.Join(dir, fmt.Sprintf("saved-%d-%d", ci, n))
			if err := SaveReference(saved, ref); err != nil {
				t.Fatal(err)
			}
			back, err := LoadReference(saved)
			if err != nil {
				t.Fatal(err)
			}
			compareReferences(t, "saved and loaded", back, ref)
		}
	}
	if _, err := LoadReference(dir); err == nil {
		t.Errorf("loading a reference from a directory without one: no error")
	}
	plain, err := pipeline.Open(fixtureBundle, pipeline.Options{Providers: []string{"cpu"}, Threads: 2, LayerMaps: true})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	pw, err := WeighMapsAt(ctx, plain, train, test, []MapCandidate{{Weights: own}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pw.WeighKnn(ctx, 0, MapCandidate{Weights: own}, factors); err == nil || !strings.Contains(err.Error(), "no maps of the term") {
		t.Errorf("a weighing without the term: error %v", err)
	}
}

// compareReferences fails the test unless got is want: the same classes, image counts, noises and source, the
// terms' weights within 1e-4 (relative), every row within 1e-5 of the rows' scale.
func compareReferences(t *testing.T, what string, got, want *Reference) {
	t.Helper()
	if !slices.Equal(got.Classes, want.Classes) || !slices.Equal(got.Images, want.Images) || got.Noises != want.Noises || got.Source != want.Source ||
		got.Width != want.Width || got.Height != want.Height {
		t.Errorf("%s: reference %v %v %d noises %q %dx%d, want %v %v %d %q %dx%d", what, got.Classes, got.Images, got.Noises, got.Source, got.Width, got.Height,
			want.Classes, want.Images, want.Noises, want.Source, want.Width, want.Height)
		return
	}
	if got.PixelSigma != want.PixelSigma || got.KnnSigma != want.KnnSigma {
		t.Errorf("%s: the terms smoothed at sigma %g and %g, want %g and %g", what, got.PixelSigma, got.KnnSigma, want.PixelSigma, want.KnnSigma)
	}
	for _, p := range [][2]float64{{got.PixelWeight, want.PixelWeight}, {got.KnnWeight, want.KnnWeight}} {
		if math.Abs(p[0]-p[1]) > 1e-4*math.Abs(p[1]) || (p[1] == 0) != (p[0] == 0) {
			t.Errorf("%s: term weights %g / %g, want %g / %g", what, got.PixelWeight, got.KnnWeight, want.PixelWeight, want.KnnWeight)
			break
		}
	}
	worst, scale := 0.0, 0.0
	for c := range want.Maps {
		for i, v := range want.Maps[c] {
			worst = math.Max(worst, math.Abs(float64(v-got.Maps[c][i])))
			scale = math.Max(scale, math.Abs(float64(v)))
		}
	}
	if worst > 1e-5*math.Max(scale, 1e-3) {
		t.Errorf("%s: the rows differ by %g (scale %g)", what, worst, scale)
	}
}
