package pipeline

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/vlmdiff/edge/models"
)

// The benchmarks of the CPU stages around the graphs: "map" (Scorer.mapsAndScores: per-layer 1 - cos,
// upsampling, smoothing, pooled score, calibration) and "preprocess" (resize and normalise into the input
// tensor). They time the same code the scorer runs, on feature shapes of the bundles this project ships.
// Run: go test -run '^$' -bench 'MapStage|Preprocess' ./pipeline/
// Each reports ns/frame besides ns/op, so batches of different sizes compare directly.

// benchBackbone is a feature backbone's output geometry at a 256 x 256 input.
type benchBackbone struct {
	name   string
	tokens bool
	layers []struct{ c, side int }
}

var benchBackbones = []benchBackbone{
	// the small preset (configs/train/small.yaml): MobileNetV2 blocks 2/5/12
	{"mobilenetv2", false, []struct{ c, side int }{{24, 64}, {32, 32}, {96, 16}}},
	// its commented alternative: ResNet50 stages 1-3
	{"resnet50", false, []struct{ c, side int }{{256, 64}, {512, 32}, {1024, 16}}},
	// DINO ViT-S/8 (docs/algorithm.md §1.9 A): 32 x 32 patch tokens of 384 after the CLS token
	{"vits8", true, []struct{ c, side int }{{384, 32}}},
}

// benchScorer is a Scorer with only what the map stage reads: the manifest's input, features, map and score
// recipes (the reference's: sigma 5, truncate 4, 8 passes of an 8 x 8 pool) and a calibration.
func benchScorer(bb benchBackbone) *Scorer {
	m := &models.Manifest{
		Input:    models.Input{Height: 256, Width: 256, Resize: "pil_bilinear", Mean: [3]float32{0.485, 0.456, 0.406}, Std: [3]float32{0.229, 0.224, 0.225}},
		Features: models.Features{Tokens: bb.tokens},
		Map:      models.MapSpec{Upsample: "bilinear_align_corners", Sigma: 5, Truncate: 4},
		Score:    models.ScoreSpec{PoolKernel: 8, PoolRepeat: 8, Reduce: "max"},
	}
	m.Calibration.Global = models.ClassCalib{Threshold: 1, Min: 0.5, Max: 1.5, PixelThreshold: 0.6}
	for i := range bb.layers {
		m.Features.Layers = append(m.Features.Layers, models.FeatureLayer{Name: fmt.Sprintf("l%d", i), Weight: 1})
	}
	return &Scorer{m: m, ens: 1}
}

// benchFeatures makes a batch of frames' features and their reconstructions' (near the frames', as a trained
// model's are), laid out as the feature graph returns them.
func benchFeatures(bb benchBackbone, frames int) []layerOutput {
	r := rand.New(rand.NewPCG(7, 8))
	var out []layerOutput
	for i, l := range bb.layers {
		var shape []int64
		per := l.c * l.side * l.side
		if bb.tokens {
			per = (l.side*l.side + 1) * l.c
			shape = []int64{int64(2 * frames), int64(l.side*l.side + 1), int64(l.c)}
		} else {
			shape = []int64{int64(2 * frames), int64(l.c), int64(l.side), int64(l.side)}
		}
		data := make([]float32, 2*frames*per)
		for j := 0; j < frames*per; j++ {
			v := float32(r.NormFloat64())
			data[j] = v
			data[frames*per+j] = v + 0.3*float32(r.NormFloat64())
		}
		out = append(out, layerOutput{Name: fmt.Sprintf("l%d", i), Weight: 1, Data: data, Shape: shape})
	}
	return out
}

// BenchmarkMapStage times Scorer.mapsAndScores by backbone, batch size and the goroutines a frame may use
// (Options.Threads: t1 is one, t2 two).
func BenchmarkMapStage(b *testing.B) {
	for _, bb := range benchBackbones {
		for _, frames := range []int{1, 4} {
			for _, threads := range []int{1, 2} {
				b.Run(fmt.Sprintf("%s/b%d/t%d", bb.name, frames, threads), func(b *testing.B) {
					s := benchScorer(bb)
					s.opt.Threads = threads
					feats := benchFeatures(bb, frames)
					reqs := make([]Request, frames)
					for b.Loop() {
						res, err := s.mapsAndScores(feats, nil, nil, reqs)
						if err != nil || res[0].Err != nil {
							b.Fatal(err, res[0].Err)
						}
					}
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frames), "ns/frame")
				})
			}
		}
	}
}

// BenchmarkMapStageMeanFrame times Scorer.mapsAndScores on ResNet50's geometry without the mean-frame term
// (none), with it smoothed at the map's sigma (map: one more full-size map in the banded product) and at its
// own sigma of 1 px (own1: map.pixel.sigma, a band of its own Gaussian), by batch size and goroutines.
func BenchmarkMapStageMeanFrame(b *testing.B) {
	bb := benchBackbones[1]
	r := rand.New(rand.NewPCG(9, 10))
	one := 1.0
	for _, term := range []struct {
		name  string
		on    bool
		sigma *float64
	}{{"none", false, nil}, {"map", true, nil}, {"own1", true, &one}} {
		for _, frames := range []int{1, 4} {
			for _, threads := range []int{1, 2} {
				b.Run(fmt.Sprintf("term=%s/b%d/t%d", term.name, frames, threads), func(b *testing.B) {
					s := benchScorer(bb)
					s.opt.Threads = threads
					x := make([]float32, frames*3*256*256)
					for i := range x {
						x[i] = float32(r.NormFloat64())
					}
					if term.on {
						mean := make([]float32, 3*256*256)
						s.m.Map.Pixel = &models.PixelTerm{Factor: 0.5, Weight: 0.2, Sigma: term.sigma}
						s.bundle = &models.Bundle{Manifest: s.m, MeanFrames: map[string][]float32{"": mean}}
					}
					feats := benchFeatures(bb, frames)
					reqs := make([]Request, frames)
					for b.Loop() {
						res, err := s.mapsAndScores(feats, x, nil, reqs)
						if err != nil || res[0].Err != nil {
							b.Fatal(err, res[0].Err)
						}
					}
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frames), "ns/frame")
				})
			}
		}
	}
}

// BenchmarkMapStageGuided times Scorer.mapsAndScores on ResNet50's geometry at 256 px without and with the
// guided filter (map.guided, radius 8): the frame's guide and its window statistics, then four box means of the
// map, by goroutines at batch 1.
func BenchmarkMapStageGuided(b *testing.B) {
	bb := benchBackbones[1]
	r := rand.New(rand.NewPCG(11, 12))
	for _, on := range []bool{false, true} {
		for _, threads := range []int{1, 2} {
			b.Run(fmt.Sprintf("guided=%v/t%d", on, threads), func(b *testing.B) {
				s := benchScorer(bb)
				s.opt.Threads = threads
				x := make([]float32, 3*256*256)
				for i := range x {
					x[i] = float32(r.NormFloat64())
				}
				if on {
					s.m.Map.Guided = &models.GuidedFilter{Radius: 8, Eps: 1e-3}
				}
				feats := benchFeatures(bb, 1)
				reqs := make([]Request, 1)
				for b.Loop() {
					res, err := s.mapsAndScores(feats, x, nil, reqs)
					if err != nil || res[0].Err != nil {
						b.Fatal(err, res[0].Err)
					}
				}
			})
		}
	}
}

// BenchmarkPreprocess times Scorer.preprocess (resize, normalise, input tensor) by frame size at batch 1: a
// frame already at the input size, a smaller one upscaled (the PIPED images are 128 x 128) and a camera frame
// downscaled with Pillow's antialiasing.
func BenchmarkPreprocess(b *testing.B) {
	initRuntime(b)
	s := benchScorer(benchBackbones[0])
	for _, sz := range [][2]int{{256, 256}, {128, 128}, {1280, 720}} {
		b.Run(fmt.Sprintf("%dx%d", sz[0], sz[1]), func(b *testing.B) {
			reqs := []Request{{Image: cameraFrame(sz[0], sz[1])}}
			for b.Loop() {
				_, t, err := s.preprocess(reqs)
				if err != nil {
					b.Fatal(err)
				}
				t.Destroy()
			}
		})
	}
}

// BenchmarkMapParts splits the map stage of one frame (small preset geometry) into its steps: the per-layer
// distances, the banded upsample-and-smooth product, and the pooled score.
func BenchmarkMapParts(b *testing.B) {
	bb := benchBackbones[0]
	feats := benchFeatures(bb, 1)
	sc := &mapScratch{}
	amap, err := smoothedAnomalyMap(feats, 0, 1, 1, false, 256, 256, 5, 4, sc, 1)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("distance", func(b *testing.B) {
		for b.Loop() {
			for l := range feats {
				n := sc.sizes[l].h * sc.sizes[l].w
				feats[l].distance(0, 1, false, sc.chans[l], n, 0, n, sc.d[l])
			}
		}
	})
	b.Run("smooth", func(b *testing.B) {
		p := planFor(sc.sizes, 256, 256, 4)
		out := make([]float64, 256*256)
		for b.Loop() {
			p.apply(sc.d, sc.wts, sc.e, out, 1, nil, nil)
		}
	})
	b.Run("pool", func(b *testing.B) {
		for b.Loop() {
			pooledMaxWith(amap, 256, 256, 8, 8, &sc.pool, 1)
		}
	})
}

// BenchmarkMapStageMatch times the map stage of one frame with a match radius on the finest layers
// (features.layers[].match: 1 on the first, 1 on the first two, 2 on the first), against none, for the CNN
// backbones, with one and two goroutines. Run: go test -run '^$' -bench MapStageMatch ./pipeline/
func BenchmarkMapStageMatch(b *testing.B) {
	for _, bb := range benchBackbones[:2] {
		for _, radii := range [][]int{{0}, {1}, {1, 1}, {2}} {
			for _, threads := range []int{1, 2} {
				b.Run(fmt.Sprintf("%s/match%v/t%d", bb.name, radii, threads), func(b *testing.B) {
					s := benchScorer(bb)
					s.opt.Threads = threads
					feats := benchFeatures(bb, 1)
					for l, r := range radii {
						feats[l].Match = r
					}
					reqs := make([]Request, 1)
					for b.Loop() {
						res, err := s.mapsAndScores(feats, nil, nil, reqs)
						if err != nil || res[0].Err != nil {
							b.Fatal(err, res[0].Err)
						}
					}
				})
			}
		}
	}
}
