package pipeline

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
)

// maxRelDiff is the largest |got - want| over the largest |want|.
func maxRelDiff(got, want []float64) float64 {
	var diff, scale float64
	for i := range want {
		diff = max(diff, math.Abs(got[i]-want[i]))
		scale = max(scale, math.Abs(want[i]))
	}
	return diff / scale
}

// mapCase is a feature batch of frames and reconstructions and the map recipe applied to it.
type mapCase struct {
	name            string
	tokens          bool
	layers          [][3]int // channels, h, w (tokens: dim, side, side)
	weights         []float64
	H, W            int
	sigma, truncate float64
	match           []int // each layer's match radius (nil: 0)
}

func (c mapCase) matchOf(l int) int {
	if l < len(c.match) {
		return c.match[l]
	}
	return 0
}

func (c mapCase) features(r *rand.Rand, frames int) []layerOutput {
	var out []layerOutput
	for l, ly := range c.layers {
		ch, h, w := ly[0], ly[1], ly[2]
		per, shape := ch*h*w, []int64{int64(2 * frames), int64(ch), int64(h), int64(w)}
		if c.tokens {
			per, shape = (h*w+1)*ch, []int64{int64(2 * frames), int64(h*w + 1), int64(ch)}
		}
		data := randn(r, 2*frames*per, 1)
		for j := frames * per; j < len(data); j++ {
			data[j] = data[j-frames*per] + 0.4*data[j]
		}
		out = append(out, layerOutput{Name: fmt.Sprintf("l%d", l), Weight: c.weights[l], Match: c.matchOf(l), Data: data, Shape: shape})
	}
	return out
}

var mapCases = []mapCase{
	{"small preset geometry", false, [][3]int{{24, 64, 64}, {32, 32, 32}, {96, 16, 16}}, []float64{1, 1, 1}, 256, 256, 5, 4, nil},
	{"weighted, odd sizes, non-square", false, [][3]int{{5, 13, 21}, {7, 6, 4}, {3, 1, 9}}, []float64{0.7, 1.5, 0.25}, 40, 72, 2, 4, nil},
	// a kernel radius (20) larger than the map: reflections of reflections
	{"kernel wider than the map", false, [][3]int{{6, 4, 4}, {9, 3, 5}}, []float64{1, 2}, 11, 9, 5, 4, nil},
	{"no smoothing", false, [][3]int{{4, 8, 8}, {6, 5, 5}}, []float64{1, 0.5}, 33, 17, 0, 4, nil},
	{"one output row", false, [][3]int{{4, 3, 7}}, []float64{1}, 1, 30, 1.5, 4, nil},
	{"layer larger than the map", false, [][3]int{{3, 50, 40}, {5, 10, 10}}, []float64{1, 1}, 24, 24, 1.25, 4, nil},
	{"ViT tokens", true, [][3]int{{17, 6, 6}}, []float64{1}, 24, 24, 2, 3, nil},
	{"ViT tokens, odd count", true, [][3]int{{33, 5, 5}}, []float64{0.5}, 40, 40, 5, 4, nil},
	// best matches within 1 and 2 cells, beside a same-position layer; rows split between goroutines mid-window
	{"match radii", false, [][3]int{{6, 12, 10}, {8, 6, 5}, {4, 3, 3}}, []float64{1, 0.5, 1}, 48, 40, 2, 4, []int{1, 2, 0}},
	{"match radius past a small map", false, [][3]int{{5, 2, 3}}, []float64{1}, 16, 16, 1, 4, []int{3}},
}

// TestSmoothedMapMatchesDefinition checks the banded map stage against its definition (upsample every layer
// to full size, sum, then a 41-tap Gaussian along rows and columns) on geometries that exercise every border
// case, with one scratch reused across all of them, as the scorer does.
func TestSmoothedMapMatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	sc := &mapScratch{}
	for _, c := range mapCases {
		t.Run(c.name, func(t *testing.T) {
			const frames = 2
			feats := c.features(r, frames)
			for i := range frames {
				want, err := anomalyMap(feats, i, frames, c.tokens, c.H, c.W)
				if err != nil {
					t.Fatal(err)
				}
				if c.sigma > 0 {
					gaussianFilterDirect(want, c.H, c.W, c.sigma, c.truncate)
				}
				// one goroutine, and three: ranges of rows that split layers and sweeps of four. Every value is
				// summed in the same order either way, so the two maps are identical.
				var one []float64
				for _, workers := range []int{1, 3} {
					got, err := smoothedAnomalyMap(feats, i, frames, 1, c.tokens, c.H, c.W, c.sigma, c.truncate, sc, workers)
					if err != nil {
						t.Fatal(err)
					}
					if len(got) != c.H*c.W {
						t.Fatalf("map of %d values, want %d", len(got), c.H*c.W)
					}
					if e := maxRelDiff(got, want); !(e <= 1e-13) {
						t.Errorf("frame %d, %d workers: banded map differs from the definition by %.2e (max relative)", i, workers, e)
					}
					if one == nil {
						one = slices.Clone(got)
					} else if !slices.Equal(got, one) {
						t.Errorf("frame %d: the map on %d goroutines differs from the map on one", i, workers)
					}
				}
			}
		})
	}
}

// TestEnsembleMapIsTheMeanOfItsMaps checks the map of a frame reconstructed from several start noises
// (diffusion.ensemble): it must be the mean of the maps of the frame against each reconstruction alone, each
// computed as a batch of one frame and one reconstruction, on one goroutine and on three.
func TestEnsembleMapIsTheMeanOfItsMaps(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	sc := &mapScratch{}
	for _, c := range mapCases {
		t.Run(c.name, func(t *testing.T) {
			const frames, ens = 2, 3
			items := frames * (1 + ens)
			var feats []layerOutput
			for l, ly := range c.layers {
				ch, h, w := ly[0], ly[1], ly[2]
				per, shape := ch*h*w, []int64{int64(items), int64(ch), int64(h), int64(w)}
				if c.tokens {
					per, shape = (h*w+1)*ch, []int64{int64(items), int64(h*w + 1), int64(ch)}
				}
				data := randn(r, items*per, 1)
				for j := frames * per; j < len(data); j++ { // reconstruction i*ens+k resembles frame i
					frame := (j/per - frames) / ens
					data[j] = data[frame*per+j%per] + 0.4*data[j]
				}
				feats = append(feats, layerOutput{Name: fmt.Sprintf("l%d", l), Weight: c.weights[l], Match: c.matchOf(l), Data: data, Shape: shape})
			}
			// pair returns the batch [frame i, reconstruction k of frame i] of every layer
			pair := func(i, k int) []layerOutput {
				out := make([]layerOutput, len(feats))
				for l, f := range feats {
					per := len(f.Data) / items
					j := frames + i*ens + k
					sh := slices.Clone(f.Shape)
					sh[0] = 2
					out[l] = layerOutput{Name: f.Name, Weight: f.Weight, Match: f.Match, Shape: sh,
						Data: append(slices.Clone(f.Data[i*per:(i+1)*per]), f.Data[j*per:(j+1)*per]...)}
				}
				return out
			}
			for i := range frames {
				want := make([]float64, c.H*c.W)
				for k := range ens {
					m, err := smoothedAnomalyMap(pair(i, k), 0, 1, 1, c.tokens, c.H, c.W, c.sigma, c.truncate, sc, 1)
					if err != nil {
						t.Fatal(err)
					}
					for j, v := range m {
						want[j] += v / ens
					}
				}
				for _, workers := range []int{1, 3} {
					got, err := smoothedAnomalyMap(feats, i, frames, ens, c.tokens, c.H, c.W, c.sigma, c.truncate, sc, workers)
					if err != nil {
						t.Fatal(err)
					}
					if e := maxRelDiff(got, want); !(e <= 1e-12) {
						t.Errorf("frame %d, %d workers: the ensemble map differs from the mean of its %d maps by %.2e (max relative)", i, workers, ens, e)
					}
				}
			}
			if _, err := smoothedAnomalyMap(feats, 0, frames, 0, c.tokens, c.H, c.W, c.sigma, c.truncate, sc, 1); err == nil {
				t.Error("0 reconstructions per frame: want an error, got a map")
			}
			// a batch one reconstruction short is refused by name, not read past its end
			short := slices.Clone(feats)
			for l := range short {
				sh := slices.Clone(short[l].Shape)
				sh[0]--
				short[l].Shape, short[l].Data = sh, short[l].Data[:len(short[l].Data)/items*(items-1)]
			}
			if _, err := smoothedAnomalyMap(short, frames-1, frames, ens, c.tokens, c.H, c.W, c.sigma, c.truncate, sc, 1); err == nil || !strings.Contains(err.Error(), "needs item") {
				t.Errorf("a feature batch without the last reconstruction: got %v, want an error naming the missing item", err)
			}
		})
	}
}

func TestGaussianFilterMatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, c := range []struct {
		h, w            int
		sigma, truncate float64
	}{{256, 256, 5, 4}, {31, 17, 2, 4}, {7, 50, 5, 4}, {1, 12, 1, 4}, {64, 64, 0.5, 2}} {
		m := make([]float64, c.h*c.w)
		for i := range m {
			m[i] = r.NormFloat64()
		}
		want := slices.Clone(m)
		gaussianFilterDirect(want, c.h, c.w, c.sigma, c.truncate)
		gaussianFilter(m, c.h, c.w, c.sigma, c.truncate)
		if e := maxRelDiff(m, want); !(e <= 1e-13) {
			t.Errorf("%+v: differs from the direct filter by %.2e", c, e)
		}
	}
}

// TestPooledMaxMatchesDefinition checks the transposed running-sum pooling against the pass-by-pass
// definition, on one to three goroutines, with one scratch reused across sizes, and that the map is left as
// it was.
func TestPooledMaxMatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	sc := &poolScratch{}
	for _, c := range []struct{ h, w, k, reps int }{
		{256, 256, 8, 8}, {200, 120, 8, 8}, {31, 57, 3, 5}, {9, 9, 9, 1}, {10, 40, 2, 9}, {5, 7, 1, 3}, {6, 6, 3, 0},
	} {
		m := make([]float64, c.h*c.w)
		for i := range m {
			// smooth structure plus noise, positive like a distance map
			y, x := i/c.w, i%c.w
			m[i] = 1 + math.Sin(float64(x)/9)*math.Cos(float64(y)/7) + 0.3*r.Float64()
		}
		orig := slices.Clone(m)
		want := pooledMaxDirect(m, c.h, c.w, c.k, c.reps)
		one := pooledMaxWith(m, c.h, c.w, c.k, c.reps, sc, 1)
		for _, workers := range []int{1, 2, 3} {
			got := pooledMaxWith(m, c.h, c.w, c.k, c.reps, sc, workers)
			if math.Abs(got-want) > 1e-13*math.Abs(want) {
				t.Errorf("%+v, %d workers: pooled max %v, definition %v", c, workers, got, want)
			}
			if got != one {
				t.Errorf("%+v: %v on %d goroutines, %v on one", c, got, workers, one)
			}
		}
		if !slices.Equal(m, orig) {
			t.Errorf("%+v: the pooling changed its input", c)
		}
	}
}

func TestCosineDistanceRows(t *testing.T) {
	// position-major twin of TestCosineDistance's cases: identical 0, orthogonal 1, opposite 2, zeros 1
	a := []float32{1, 2, 3, 1, 0, 0, 1, 2, 3, 0, 0, 0, 1, 1, 1}
	b := []float32{1, 2, 3, 0, 1, 0, -1, -2, -3, 0, 0, 0, 2, 2, 2}
	d := make([]float64, 5)
	cosineDistanceRows(a, b, 5, 3, d)
	for i, want := range []float64{0, 1, 2, 1, 0} {
		if math.Abs(d[i]-want) > 1e-12 {
			t.Errorf("position %d: got %v, want %v", i, d[i], want)
		}
	}
	// and it agrees with the channel-planes form on the transposed data, for odd sizes
	r := rand.New(rand.NewPCG(9, 10))
	for _, n := range []struct{ pos, ch int }{{7, 5}, {64, 384}, {1, 3}} {
		rows := randn(r, 2*n.pos*n.ch, 1)
		planes := make([]float32, len(rows))
		for k := range 2 {
			for p := range n.pos {
				for c := range n.ch {
					planes[k*n.pos*n.ch+c*n.pos+p] = rows[k*n.pos*n.ch+p*n.ch+c]
				}
			}
		}
		got, want := make([]float64, n.pos), make([]float64, n.pos)
		cosineDistanceRows(rows[:n.pos*n.ch], rows[n.pos*n.ch:], n.pos, n.ch, got)
		cosineDistanceDirect(planes[:n.pos*n.ch], planes[n.pos*n.ch:], n.ch, n.pos, want)
		if e := maxRelDiff(got, want); !(e <= 1e-13) {
			t.Errorf("%+v: rows and planes differ by %.2e", n, e)
		}
	}
}

func TestCosineDistanceMatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, n := range []struct{ ch, hw int }{{24, 4096}, {7, 300}, {1, 5}, {96, 256}, {5, 257}} {
		a, b := randn(r, n.ch*n.hw, 1), randn(r, n.ch*n.hw, 1)
		got, want := make([]float64, n.hw), make([]float64, n.hw)
		cosineDistance(a, b, n.ch, n.hw, got)
		cosineDistanceDirect(a, b, n.ch, n.hw, want)
		if e := maxRelDiff(got, want); !(e <= 1e-13) {
			t.Errorf("%+v: differs from the definition by %.2e", n, e)
		}
	}
}

// TestMapStageFrameErrors: a non-finite feature value fails its frame only; a feature output whose shape
// does not match its data fails the batch with an error naming the layer.
func TestMapStageFrameErrors(t *testing.T) {
	bb := benchBackbones[0]
	s := benchScorer(bb)
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1))} {
		feats := benchFeatures(bb, 2)
		// frame 1's reconstruction, one channel of one position of the coarsest layer
		l := feats[2]
		per := len(l.Data) / 4
		l.Data[3*per+5] = bad
		res, err := s.mapsAndScores(feats, nil, nil, make([]Request, 2))
		if err != nil {
			t.Fatal(err)
		}
		if res[0].Err != nil || len(res[0].Map) != 256*256 {
			t.Errorf("%v in frame 1 failed frame 0: %v", bad, res[0].Err)
		}
		if res[1].Err == nil || !strings.Contains(res[1].Err.Error(), "non-finite") {
			t.Errorf("%v in frame 1's features: want a non-finite error, got %v (score %v)", bad, res[1].Err, res[1].RawScore)
		}
	}
	feats := benchFeatures(bb, 1)
	feats[1].Data = feats[1].Data[:len(feats[1].Data)-1]
	if _, err := s.mapsAndScores(feats, nil, nil, make([]Request, 1)); err == nil || !strings.Contains(err.Error(), "feature l1") {
		t.Errorf("short feature data: want an error naming l1, got %v", err)
	}
	tok := benchBackbones[2]
	ts := benchScorer(tok)
	feats = benchFeatures(tok, 1)
	feats[0].Shape[1]-- // 1023 patch tokens: not a square grid
	feats[0].Data = feats[0].Data[:2*int(feats[0].Shape[1]*feats[0].Shape[2])]
	if _, err := ts.mapsAndScores(feats, nil, nil, make([]Request, 1)); err == nil || !strings.Contains(err.Error(), "not a square grid") {
		t.Errorf("1023 tokens: want a not-a-square-grid error, got %v", err)
	}
}

// TestMapStageConcurrent: Score may run on several goroutines at once, so the map stage's pooled buffers and
// cached plans must keep them apart: batches scored at once give the results they give one after another.
func TestMapStageConcurrent(t *testing.T) {
	bb := benchBackbones[0]
	s := benchScorer(bb)
	const n = 4
	feats := make([][]layerOutput, n)
	want := make([][]Result, n)
	for g := range n {
		feats[g] = benchFeatures(bb, 1+g%2)
		for _, l := range feats[g] { // make each batch differ
			l.Data[g] += float32(g)
		}
		var err error
		if want[g], err = s.mapsAndScores(feats[g], nil, nil, make([]Request, 1+g%2)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	got := make([][]Result, n)
	errs := make([]error, n)
	for g := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				got[g], errs[g] = s.mapsAndScores(feats[g], nil, nil, make([]Request, 1+g%2))
			}
		}()
	}
	wg.Wait()
	for g := range n {
		if errs[g] != nil {
			t.Fatal(errs[g])
		}
		for i := range want[g] {
			if got[g][i].RawScore != want[g][i].RawScore || !slices.Equal(got[g][i].Map, want[g][i].Map) {
				t.Errorf("batch %d frame %d: concurrent result differs (score %v, alone %v)", g, i, got[g][i].RawScore, want[g][i].RawScore)
			}
		}
	}
}

// TestMeanFrameTermMatchesDefinition checks the map with the mean-frame term (models.PixelTerm) against its
// definition: the features' smoothed map plus weight x the per-pixel RGB distance to the mean frame smoothed
// with the term's own sigma (the map's, none, or another); and the term alone (no layers) as its own smoothed
// distance.
func TestMeanFrameTermMatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	sc := &mapScratch{}
	for _, c := range mapCases {
		t.Run(c.name, func(t *testing.T) {
			const frames = 2
			feats := c.features(r, frames)
			x := make([]float32, frames*3*c.H*c.W)
			mean := make([]float32, 3*c.H*c.W)
			for j := range x {
				x[j] = float32(r.NormFloat64())
			}
			for j := range mean {
				mean[j] = float32(r.NormFloat64())
			}
			n := c.H * c.W
			for i := range frames {
				xi := x[i*3*n : (i+1)*3*n]
				dist := make([]float64, n)
				for p := range dist {
					s := 0.0
					for ch := range 3 {
						d := float64(xi[ch*n+p]) - float64(mean[ch*n+p])
						s += d * d
					}
					dist[p] = math.Sqrt(s)
				}
				for _, layers := range [][]layerOutput{feats, nil} {
					for _, termSigma := range []float64{c.sigma, 0, 1.5} {
						const w = 0.37
						want := make([]float64, n)
						if layers != nil {
							var err error
							if want, err = anomalyMap(layers, i, frames, c.tokens, c.H, c.W); err != nil {
								t.Fatal(err)
							}
						}
						if c.sigma > 0 {
							gaussianFilterDirect(want, c.H, c.W, c.sigma, c.truncate)
						}
						term := slices.Clone(dist)
						if termSigma > 0 {
							gaussianFilterDirect(term, c.H, c.W, termSigma, c.truncate)
						}
						for p := range want {
							want[p] += w * term[p]
						}
						for _, workers := range []int{1, 3} {
							got, err := smoothedMapWith(layers, &pixelInput{x: xi, mean: mean, weight: w, sigma: termSigma}, nil, i, frames, 1, 1, c.tokens, c.H, c.W, c.sigma, c.truncate, sc, workers)
							if err != nil {
								t.Fatal(err)
							}
							if e := maxRelDiff(got, want); !(e <= 1e-12) {
								t.Errorf("frame %d, %d layers, term sigma %g, %d workers: map with the term differs from the definition by %.2e (max relative)",
									i, len(layers), termSigma, workers, e)
							}
						}
					}
				}
			}
			if _, err := smoothedMapWith(feats, &pixelInput{x: x[:5], mean: mean, weight: 1}, nil, 0, frames, 1, 1, c.tokens, c.H, c.W, c.sigma, c.truncate, sc, 1); err == nil || !strings.Contains(err.Error(), "mean-frame term") {
				t.Errorf("a frame of 5 values: want an error naming the mean-frame term, got %v", err)
			}
		})
	}
}

// TestBalancedRowRanges: mapPlan.balanced cuts the stacked rows into ranges of about equal work (each within one
// row's cost of its share), in order and covering every row, whatever the layers' costs; and splitAt runs every
// row once, empty ranges skipped. ResNet50's geometry with the full-size mean-frame term is the case that
// prompted it: by count, one of two goroutines got every feature row.
func TestBalancedRowRanges(t *testing.T) {
	resnet := []layerSize{{64, 64, 5}, {32, 32, 5}, {16, 16, 5}, {256, 256, 1}}
	for _, c := range []struct {
		name  string
		sizes []layerSize
		cost  []float64
		parts int
	}{
		{"resnet50 and the term, 2", resnet, []float64{256*64 + 256*12, 512*32 + 256*7, 1024*16 + 256*5, 3*256 + 256*9}, 2},
		{"resnet50 and the term, 4", resnet, []float64{256*64 + 256*12, 512*32 + 256*7, 1024*16 + 256*5, 3*256 + 256*9}, 4},
		{"equal costs, 3", resnet, []float64{1, 1, 1, 1}, 3},
		{"one costly row", []layerSize{{1, 8, 5}, {4, 8, 5}}, []float64{1000, 1}, 3},
		{"one part", resnet, []float64{5, 4, 3, 2}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newMapPlan(c.sizes, 256, 256, 4)
			b := p.balanced(c.cost, c.parts, nil)
			if len(b) != c.parts+1 || b[0] != 0 || b[c.parts] != p.eRows || !slices.IsSorted(b) {
				t.Fatalf("bounds %v: want %d increasing boundaries from 0 to %d", b, c.parts+1, p.eRows)
			}
			rowCost := make([]float64, 0, p.eRows)
			maxRow, total := 0.0, 0.0
			for l, ly := range p.layers {
				for range ly.h {
					rowCost = append(rowCost, c.cost[l])
				}
				maxRow = max(maxRow, c.cost[l])
				total += float64(ly.h) * c.cost[l]
			}
			for k := range c.parts {
				sum := 0.0
				for _, v := range rowCost[b[k]:b[k+1]] {
					sum += v
				}
				if share := total / float64(c.parts); math.Abs(sum-share) > maxRow {
					t.Errorf("range %d (rows %d..%d) costs %g, its share is %g (a row costs at most %g)", k, b[k], b[k+1], sum, share, maxRow)
				}
			}
			var mu sync.Mutex
			seen := make([]int, p.eRows)
			splitAt(b, func(_, lo, hi int) {
				mu.Lock()
				defer mu.Unlock()
				for r := lo; r < hi; r++ {
					seen[r]++
				}
			})
			for r, n := range seen {
				if n != 1 {
					t.Fatalf("row %d ran %d times, want once (bounds %v)", r, n, b)
				}
			}
		})
	}
}
