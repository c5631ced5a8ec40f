package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vlmdiff/edge/internal/testpython"
	"github.com/vlmdiff/edge/models"
)

const (
	fixtureBundle  = "../models/testdata/fixture"
	fixtureWeights = "../models/testdata/fixture-src/fixture.pt"
)

// needTorch skips when PyTorch is missing, except in CI, where the test command installs it and its absence
// is a failure.
func needTorch(t *testing.T) {
	t.Helper()
	testpython.Need(t, "torch", "scipy", "PIL")
}

func initRuntime(t testing.TB) {
	t.Helper()
	if err := InitRuntime(""); err != nil {
		t.Fatal(err)
	}
}

// writeTextures writes three seeded textures of 256x256, 200x150 and 128x128 (gen0-2.png) into dir: a square
// frame at the input size, a non-square one and a smaller one, so resizing shows. It returns their paths.
func writeTextures(t *testing.T, dir string) []string {
	t.Helper()
	var paths []string
	for i, sz := range [][2]int{{256, 256}, {200, 150}, {128, 128}} {
		p := filepath.Join(dir, fmt.Sprintf("gen%d.png", i))
		writeTexture(t, p, sz[0], sz[1], uint64(i+1))
		paths = append(paths, p)
	}
	return paths
}

// writeTexture writes a PNG with smooth structure plus noise, of any size, so resizing is exercised.
func writeTexture(t *testing.T, path string, w, h int, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 3))
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			v := 128 + 60*math.Sin(float64(x)/7+float64(seed)) + 40*math.Cos(float64(y)/11)
			img.Set(x, y, color.RGBA{
				R: uint8(min(max(v+float64(r.IntN(30)), 0), 255)),
				G: uint8(min(max(v*0.8+float64(r.IntN(30)), 0), 255)),
				B: uint8(min(max(255-v+float64(r.IntN(30)), 0), 255)), A: 255})
		}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
}

// TestParityWithPyTorchReference scores the same images with the same noise through this pipeline (ONNX
// Runtime, Go math) and through the trainer's independent PyTorch reference (torch networks, PIL, torch and
// scipy math): anomaly maps must agree to 1e-4 relative L2 and image scores to 1e-5.
func TestParityWithPyTorchReference(t *testing.T) {
	needTorch(t)
	initRuntime(t)
	dir := t.TempDir()
	images := writeTextures(t, dir)
	if piped, _ := filepath.Glob("../../shared/datasets/piped/PA_BDP01_TL/test/impurity/*.png"); len(piped) > 0 {
		images = append(images, piped[0])
	}

	// The SDEdit-style start: a copy of the fixture whose manifest runs only the DDIM steps at or below 501.
	partial := filepath.Join(dir, "partial-start")
	copyDir(t, fixtureBundle, partial)
	editBundleJSON(t, partial, func(m map[string]any) {
		d := m["diffusion"].(map[string]any)
		d["start_step"], d["sampler_from_start_step"] = 501, true
	})

	// Two start noises per frame (diffusion.ensemble): the map is the mean of the two.
	ens2 := filepath.Join(dir, "ensemble-2")
	copyDir(t, fixtureBundle, ens2)
	editBundleJSON(t, ens2, func(m map[string]any) {
		m["diffusion"].(map[string]any)["ensemble"] = 2
	})

	// Two start noises with a match radius on the first layer (features.layers[0].match): each frame position
	// takes its best match within one cell of the reconstruction's map, on both sides.
	match := filepath.Join(dir, "match-1")
	copyDir(t, fixtureBundle, match)
	editBundleJSON(t, match, func(m map[string]any) {
		m["diffusion"].(map[string]any)["ensemble"] = 2
		m["features"].(map[string]any)["layers"].([]any)[0].(map[string]any)["match"] = 1
	})

	// The mean-frame term (map.pixel) with a map reference measured with it: rows for "" and "widget" differ, so
	// the class picks both rows on both sides.
	pixel := filepath.Join(dir, "pixel-term")
	copyDir(t, fixtureBundle, pixel)
	addPixelTerm(t, pixel, 0.8, nil)
	// The same term smoothed with its own sigma (map.pixel.sigma 1, the map's 5): both sides smooth it apart.
	pixelSharp := filepath.Join(dir, "pixel-term-sigma")
	copyDir(t, fixtureBundle, pixelSharp)
	one := 1.0
	addPixelTerm(t, pixelSharp, 0.8, &one)

	// The nearest-normal term (map.knn) on the fixture's knn graph with seeded banks for "" and "widget": the
	// class picks the bank on both sides; Python runs the graph's features with torch ops and the distance with
	// torch.cdist, Go the whole graph through ONNX Runtime.
	knn := filepath.Join(dir, "knn-term")
	copyDir(t, fixtureBundle, knn)
	addKnnTerm(t, knn, 0.7, false)
	// The same term smoothed with its own sigma (map.knn.sigma 1.5, the map's 5).
	knnSharp := filepath.Join(dir, "knn-term-sigma")
	copyDir(t, fixtureBundle, knnSharp)
	addKnnTerm(t, knnSharp, 0.7, false)
	editBundleJSON(t, knnSharp, func(m map[string]any) {
		m["map"].(map[string]any)["knn"].(map[string]any)["sigma"] = 1.5
	})
	// The same term fed the frames' layer1 and layer2 from the feature graph (map.knn.layers_graph): Go runs the
	// knn graph without its backbone, Python still the whole image graph.
	knnLayers := filepath.Join(dir, "knn-term-layers")
	copyDir(t, fixtureBundle, knnLayers)
	addKnnTerm(t, knnLayers, 0.7, true)
	// The term as the mean of the k nearest (map.knn.k_max 4, ks 2 for the global bank and 3 for "widget"), on the
	// fixture's graph that gives the 4 nearest distances.
	knnK := filepath.Join(dir, "knn-term-k")
	copyDir(t, fixtureBundle, knnK)
	addKnnTerm(t, knnK, 0.7, false)
	withKNearest(t, knnK, 4, []int{2, 3})

	// The guided filter (map.guided) on the mean-frame term's bundle: the features' map, the term and the
	// reference all filtered with each frame's luminance as guide; and on the map without its Gaussian.
	guided := filepath.Join(dir, "guided")
	copyDir(t, fixtureBundle, guided)
	addPixelTerm(t, guided, 0.8, &one)
	editBundleJSON(t, guided, func(m map[string]any) {
		m["map"].(map[string]any)["guided"] = map[string]any{"radius": 8, "eps": 1e-3}
	})
	guidedRaw := filepath.Join(dir, "guided-no-gaussian")
	copyDir(t, fixtureBundle, guidedRaw)
	editBundleJSON(t, guidedRaw, func(m map[string]any) {
		mp := m["map"].(map[string]any)
		mp["sigma"], mp["guided"] = 0, map[string]any{"radius": 4, "eps": 1e-4}
	})

	// perFrame scores each image alone: batch 1 runs the fixture's static-shape batch-1 denoiser (context built
	// in, constants folded); a batch of all images runs the dynamic one (dynamicOnly: even where a static graph
	// of that size exists).
	cases := []struct {
		name        string
		bundle      string
		class       string
		classCond   bool
		perFrame    bool
		dynamicOnly bool
	}{
		{"empty prompt (no CFG), dynamic denoiser", fixtureBundle, "", false, false, true},
		{"empty prompt (no CFG), static batch-1 denoiser", fixtureBundle, "", false, true, false},
		{"class prompt with CFG", fixtureBundle, "widget", true, false, false},
		{"sampler from start step 501", partial, "", false, true, false},
		{"two start noises, batch of all images", ens2, "", false, false, false},
		{"two start noises with CFG", ens2, "widget", true, true, false},
		{"match radius 1 on the first layer, two start noises", match, "", false, false, false},
		{"mean-frame term and map reference, global rows", pixel, "", false, false, false},
		{"mean-frame term and map reference, class rows", pixel, "widget", true, true, false},
		{"mean-frame term at its own sigma, class rows", pixelSharp, "widget", true, true, false},
		{"nearest-normal term, global bank", knn, "", false, false, false},
		{"nearest-normal term, class bank", knn, "widget", true, true, false},
		{"nearest-normal term at its own sigma, class bank", knnSharp, "widget", true, false, false},
		{"nearest-normal term fed the feature graph's layers, batch of all images", knnLayers, "widget", true, false, false},
		{"nearest-normal term fed the feature graph's layers, one frame", knnLayers, "", false, true, false},
		{"nearest-normal term, mean of the 3 nearest, class bank, batch of all images", knnK, "widget", true, false, false},
		{"nearest-normal term, mean of the 2 nearest, global bank, one frame", knnK, "", false, true, false},
		{"guided filter on the map and the mean-frame term, class rows, batch of all images", guided, "widget", true, false, false},
		{"guided filter without the Gaussian, one frame", guidedRaw, "", false, true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Open(c.bundle, Options{Providers: []string{"cpu"}, Threads: 2, ClassConditioning: c.classCond,
				DynamicOnly: c.dynamicOnly})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if static := s.staticDenoiser(&denoiserInputs{rows: 1}) != nil; static == c.dynamicOnly {
				t.Fatalf("static batch-1 denoiser loaded: %v, want %v", static, !c.dynamicOnly)
			}
			n, K := s.lc*s.lh*s.lw, s.Ensemble()
			var reqs []Request
			noise := make([]byte, 0, len(images)*K*2*n*4) // the reference's [N, K, 2, C, h, w]
			for i, p := range images {
				img, err := ReadImage(p)
				if err != nil {
					t.Fatal(err)
				}
				nz := &Noise{}
				for k := range K {
					post, start := noiseFor(int64(100+10*i+k), 0, false, n)
					nz.Posterior, nz.Start = append(nz.Posterior, post...), append(nz.Start, start...)
					for _, v := range append(post, start...) {
						noise = binary.LittleEndian.AppendUint32(noise, math.Float32bits(v))
					}
				}
				reqs = append(reqs, Request{Image: img, Class: c.class, Noise: nz})
			}
			res, err := scoreAll(s, reqs, c.perFrame)
			if err != nil {
				t.Fatal(err)
			}
			noisePath := filepath.Join(dir, "noise.f32")
			if err := os.WriteFile(noisePath, noise, 0o644); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "ref-"+c.class+filepath.Base(c.bundle))
			args := append([]string{"-m", "vlmdiff_train", "reference"}, images...)
			args = append(args, "--bundle", c.bundle, "--weights", fixtureWeights, "--noise", noisePath, "--out", out)
			if c.class != "" {
				args = append(args, "--class", c.class)
			}
			cmd := exec.Command(testpython.Path(), args...)
			cmd.Env = append(os.Environ(), "PYTHONPATH=../trainer/python")
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("reference scorer: %v\n%s", err, b)
			}
			var ref []struct {
				Image    string  `json:"image"`
				RawScore float64 `json:"raw_score"`
			}
			b, err := os.ReadFile(filepath.Join(out, "scores.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &ref); err != nil {
				t.Fatal(err)
			}
			maps, err := os.ReadFile(filepath.Join(out, "maps.f32"))
			if err != nil {
				t.Fatal(err)
			}
			hw := s.m.Input.Height * s.m.Input.Width
			if len(ref) != len(images) || len(maps) != len(images)*hw*4 {
				t.Fatalf("reference returned %d scores and %d map bytes for %d images", len(ref), len(maps), len(images))
			}
			for i := range images {
				if res[i].Err != nil {
					t.Fatalf("%s: %v", images[i], res[i].Err)
				}
				var num, den float64
				for j := 0; j < hw; j++ {
					rv := float64(math.Float32frombits(binary.LittleEndian.Uint32(maps[(i*hw+j)*4:])))
					d := float64(res[i].Map[j]) - rv
					num += d * d
					den += rv * rv
				}
				rel := math.Sqrt(num / den)
				ds := math.Abs(res[i].RawScore - ref[i].RawScore)
				t.Logf("%s: map rel L2 %.2e, score go %.6f ref %.6f (diff %.1e)", filepath.Base(images[i]), rel, res[i].RawScore, ref[i].RawScore, ds)
				if rel > 1e-4 {
					t.Errorf("%s: anomaly map differs from the reference by %.2e relative L2 (limit 1e-4)", images[i], rel)
				}
				if ds > 1e-5 {
					t.Errorf("%s: score %.7f, reference %.7f (limit 1e-5)", images[i], res[i].RawScore, ref[i].RawScore)
				}
			}
		})
	}
}

// TestExportProbes rebuilds the fixture with parity probes (PyTorch outputs of every graph on seeded inputs
// at batch 2) and checks ONNX Runtime against them; a probe whose expected output is perturbed must fail.
func TestExportProbes(t *testing.T) {
	needTorch(t)
	dir := t.TempDir()
	bundle, probes := filepath.Join(dir, "bundle"), filepath.Join(dir, "probes")
	cmd := exec.Command(testpython.Path(), "-m", "vlmdiff_train", "fixture", "--out", bundle, "--weights", filepath.Join(dir, "w.pt"), "--probes", probes)
	cmd.Env = append(os.Environ(), "PYTHONPATH=../trainer/python")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("fixture export: %v\n%s", err, b)
	}
	res, err := CheckProbes(bundle, probes, 1e-4, Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]bool{}
	for _, r := range res {
		roles[r.Role] = true
		t.Logf("%s %s: %.2e", r.Role, r.Output, r.RelL2)
	}
	if len(roles) != 5 {
		t.Errorf("probes covered %d graphs, want all 5: %v", len(roles), roles)
	}
	// perturb PyTorch's eps by 1%: the check must refuse it
	p := filepath.Join(probes, "denoiser.output.eps.bin")
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+4 <= len(raw); i += 4 {
		v := math.Float32frombits(binary.LittleEndian.Uint32(raw[i:]))
		binary.LittleEndian.PutUint32(raw[i:], math.Float32bits(v*1.01))
	}
	os.WriteFile(p, raw, 0o644)
	if _, err := CheckProbes(bundle, probes, 1e-4, Options{Threads: 2}); err == nil {
		t.Error("a 1% difference passed the parity check")
	}

	// The autoencoder without ResnetBlocks at full resolution (finetune_ae.extra.full_res_blocks: 0): its
	// encoder goes from conv_in straight to the first downsampling and its decoder from the last upsampling to
	// conv_out, and both graphs must still compute what PyTorch does.
	lean, leanProbes := filepath.Join(dir, "lean"), filepath.Join(dir, "lean-probes")
	script := `import sys
from vlmdiff_train.fixture import FIXTURE_SPEC, build_fixture
spec = dict(FIXTURE_SPEC, vae=dict(FIXTURE_SPEC["vae"], full_res_blocks=0))
build_fixture(sys.argv[1], sys.argv[2], sys.argv[3], spec=spec)`
	cmd = exec.Command(testpython.Path(), "-c", script, lean, filepath.Join(dir, "lean.pt"), leanProbes)
	cmd.Env = append(os.Environ(), "PYTHONPATH=../trainer/python")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("fixture export without full-resolution blocks: %v\n%s", err, b)
	}
	res, err = CheckProbes(lean, leanProbes, 1e-4, Options{Threads: 2})
	if err != nil {
		t.Fatalf("without full-resolution blocks: %v", err)
	}
	checked := map[string]bool{}
	for _, r := range res {
		checked[r.Role] = true
	}
	if !checked["vae_encoder"] || !checked["vae_decoder"] {
		t.Errorf("without full-resolution blocks the probes covered %v, want both autoencoder graphs", checked)
	}
	for _, role := range []string{"vae_encoder", "vae_decoder"} {
		a, errA := os.Stat(filepath.Join(bundle, role+".onnx"))
		b, errB := os.Stat(filepath.Join(lean, role+".onnx"))
		if errA != nil || errB != nil || b.Size() >= a.Size() {
			t.Errorf("%s: %v / %v; want the graph without full-resolution blocks smaller than the fixture's", role, errA, errB)
		}
	}
}

// scoreAll scores reqs in one batch, or one frame per call.
func scoreAll(s *Scorer, reqs []Request, perFrame bool) ([]Result, error) {
	if !perFrame {
		return s.Score(context.Background(), reqs)
	}
	var out []Result
	for _, r := range reqs {
		res, err := s.Score(context.Background(), []Request{r})
		if err != nil {
			return nil, err
		}
		out = append(out, res...)
	}
	return out, nil
}

// copyDir copies a bundle directory's files (flat) into dst.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// editBundleJSON rewrites a bundle's manifest through edit (bundle.json is not among the hashed files).
func editBundleJSON(t *testing.T, dir string, edit func(map[string]any)) {
	t.Helper()
	p := filepath.Join(dir, "bundle.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// addPixelTerm gives the bundle in dir a mean-frame term (models.PixelTerm) at the given weight (and smoothing
// sigma, nil: the map's) and a map reference measured with it: seeded smooth mean frames and reference maps, with
// rows for "" and "widget".
func addPixelTerm(t *testing.T, dir string, weight float64, sigma *float64) {
	t.Helper()
	const H, W = 256, 256
	r := rand.New(rand.NewPCG(11, 12))
	var frames, refs []byte
	for row := range 2 {
		for c := range 3 {
			for y := range H {
				for x := range W {
					v := 0.3*math.Sin(float64(x)/9+float64(c+row)) + 0.2*math.Cos(float64(y)/13) + 0.05*r.NormFloat64()
					frames = binary.LittleEndian.AppendUint32(frames, math.Float32bits(float32(v)))
				}
			}
		}
		for range H * W {
			refs = binary.LittleEndian.AppendUint32(refs, math.Float32bits(float32(0.01*float64(row+1)+0.001*r.NormFloat64())))
		}
	}
	entry := func(name string, b []byte) map[string]any { return writeEntry(t, dir, name, b) }
	editBundleJSON(t, dir, func(m map[string]any) {
		files := m["files"].(map[string]any)
		files["map_pixel_mean.f32"] = entry("map_pixel_mean.f32", frames)
		files["map_reference.f32"] = entry("map_reference.f32", refs)
		mp := m["map"].(map[string]any)
		mp["pixel"] = map[string]any{"file": "map_pixel_mean.f32", "width": W, "height": H, "classes": []string{"", "widget"},
			"factor": 0.5, "weight": weight}
		mp["reference"] = map[string]any{"file": "map_reference.f32", "width": W, "height": H, "classes": []string{"", "widget"},
			"pixel_weight": weight}
		if sigma != nil {
			mp["pixel"].(map[string]any)["sigma"] = *sigma
			mp["reference"].(map[string]any)["pixel_sigma"] = *sigma
		}
	})
	if _, err := models.Load(dir); err != nil {
		t.Fatal(err)
	}
}

// addKnnTerm gives the bundle in dir the nearest-normal term at weight: the fixture's knn graph
// (models/testdata/knn) and seeded banks of 300 vectors for "" and "widget" drawn around the scale of its features;
// with layers also the graph fed the feature graph's layer1 and layer2 (map.knn.layers_graph).
func addKnnTerm(t *testing.T, dir string, weight float64, layers bool) {
	t.Helper()
	const size, dims = 300, 56
	graph, err := os.ReadFile("../models/testdata/knn/knn.onnx")
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(13, 14))
	var bank, src []byte
	for row := range 2 {
		for range size {
			for range dims {
				v := math.Abs(0.3*r.NormFloat64() + 0.1*float64(row))
				bank = binary.LittleEndian.AppendUint32(bank, math.Float32bits(float32(v)))
			}
			src = binary.LittleEndian.AppendUint64(src, r.Uint64())
		}
	}
	entry := func(name string, b []byte) map[string]any { return writeEntry(t, dir, name, b) }
	editBundleJSON(t, dir, func(m map[string]any) {
		files := m["files"].(map[string]any)
		files["knn.onnx"] = entry("knn.onnx", graph)
		files["map_knn_bank.f32"] = entry("map_knn_bank.f32", bank)
		files["map_knn_sources.u64"] = entry("map_knn_sources.u64", src)
		term := map[string]any{"graph": "knn.onnx", "bank": "map_knn_bank.f32",
			"sources": "map_knn_sources.u64", "classes": []string{"", "widget"}, "size": size, "dims": dims,
			"height": 64, "width": 64, "factor": 1, "weight": weight}
		if layers {
			lg, err := os.ReadFile("../models/testdata/knn/knn_layers.onnx")
			if err != nil {
				t.Fatal(err)
			}
			files["knn_layers.onnx"] = entry("knn_layers.onnx", lg)
			term["layers_graph"], term["layers"] = "knn_layers.onnx", []string{"layer1", "layer2"}
		}
		m["map"].(map[string]any)["knn"] = term
	})
	if _, err := models.Load(dir); err != nil {
		t.Fatal(err)
	}
}

// withKNearest swaps the knn graph of the term addKnnTerm gave the bundle in dir for the fixture's graph with
// the kmax nearest distances (models/testdata/knn/knn_k<kmax>.onnx) and sets map.knn.ks to ks.
func withKNearest(t *testing.T, dir string, kmax int, ks []int) {
	t.Helper()
	name := fmt.Sprintf("knn_k%d.onnx", kmax)
	graph, err := os.ReadFile("../models/testdata/knn/" + name)
	if err != nil {
		t.Fatal(err)
	}
	editBundleJSON(t, dir, func(m map[string]any) {
		files := m["files"].(map[string]any)
		delete(files, "knn.onnx")
		files[name] = writeEntry(t, dir, name, graph)
		term := m["map"].(map[string]any)["knn"].(map[string]any)
		term["graph"], term["k_max"], term["ks"] = name, kmax, ks
	})
	if err := os.Remove(filepath.Join(dir, "knn.onnx")); err != nil {
		t.Fatal(err)
	}
	if _, err := models.Load(dir); err != nil {
		t.Fatal(err)
	}
}

// writeEntry writes a bundle file and returns its files entry (sha256 and size).
func writeEntry(t *testing.T, dir, name string, b []byte) map[string]any {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return map[string]any{"sha256": hex.EncodeToString(sum[:]), "size": len(b)}
}
