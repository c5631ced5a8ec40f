package run_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/agent/cli"
	"github.com/vlmdiff/edge/internal/testpython"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
)

// TestTrainSD15MiniEndToEnd is the CPU proof of the paper's configuration: the sd15 networks at test widths
// (preset sd15-mini: the same modules and state-dict keys) with random weights written in the real file formats
// (v1-5-pruned.ckpt, kl-f8.ckpt, the DINO .pth, a CLIP vocab.json/merges.txt), a ViT feature graph exported from
// the project's DINO module, and every stage of `vlmdiff train`: finetune-ae from the kl-f8 file, build from the
// SD file with the SG network initialised from the UNet encoder, train, export with the parity check, calibrate,
// evaluate, register. Then: the stages used the files they were given (checked in Python on the model files),
// `vlmdiff bundle parity` passes on the ViT bundle, and the Go pipeline's anomaly maps (ONNX Runtime, tokens to
// patch grid in Go) equal the PyTorch reference's (onnx_torch, the reference's token layout) on the same noise.
func TestTrainSD15MiniEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("trains a model (minutes)")
	}
	python := testpython.Need(t, "torch", "onnx")
	trainerDir, _ := filepath.Abs("../python")
	t.Setenv("VLMDIFF_TRAINER", trainerDir)
	py := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(python, args...)
		cmd.Env = append(os.Environ(), "PYTHONPATH="+trainerDir)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s %v: %v\n%s", python, args, err, errb.String())
		}
		return out.String()
	}

	work := t.TempDir()
	weights := filepath.Join(work, "weights")
	var wr struct {
		DinoConfig map[string]any `json:"dino_config"`
	}
	if err := json.Unmarshal([]byte(py(filepath.Join(trainerDir, "tests", "sd15_mini_weights.py"), weights)), &wr); err != nil {
		t.Fatal(err)
	}
	dcfg, _ := json.Marshal(wr.DinoConfig)
	dino := filepath.Join(weights, "dino_vits8_128.onnx")
	t.Logf("dino export: %s", py("-m", "vlmdiff_train.dino_export", "--weights", filepath.Join(weights, "dino_deitsmall8_pretrain.pth"),
		"--out", dino, "--size", "128", "--config", string(dcfg), "--opset", "17"))

	data := filepath.Join(work, "data")
	writeSet(t, data, []string{"stripes"}, 12, 2)
	modelsDir := filepath.Join(work, "models")
	cfg := fmt.Sprintf(`name: sd15-e2e
version: "1.0.0"
preset: sd15-mini
seed: 0
threads: 2
data:
  root: %[1]s
  val_fraction: 0.25
finetune_ae:
  init: %[2]s/kl-f8.ckpt
  max_steps: 2
  batch_size: 2
  lr: 0.0001
  extra:
    trusted: true
build:
  sd_checkpoint: %[2]s/v1-5-pruned.ckpt
  tokenizer: %[2]s/clip-vit-large-patch14
  extra:
    trusted: true
train:
  max_steps: 2
  batch_size: 2
  lr: 0.0001
  save_every: 1
export:
  features_onnx: %[3]s
  feature_layers: [[tokens, 1.0]]
  posterior: mean
  ddim_steps: 4
  extra:
    denoiser_static_batches: [] # as the real sd15 exports (no static copies of a 5.3 GB denoiser)
calibrate:
  method: quantile:0.99
evaluate:
  batch_size: 2
register:
  models_dir: %[4]s
`, data, weights, dino, modelsDir)
	cfgPath := filepath.Join(work, "sd15-mini.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	runDir := filepath.Join(work, "run")
	var out, errb bytes.Buffer
	code := cli.Main(context.Background(), []string{"train", "--config", cfgPath, "--run-dir", runDir, "--threads", "2", "--providers", "cpu", "--python", python}, &out, &errb)
	if code != 0 {
		t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
		for _, s := range []string{"finetune-ae", "build", "train", "export", "calibrate", "evaluate"} {
			if b, err := os.ReadFile(filepath.Join(runDir, "logs", s+".log")); err == nil {
				lines := strings.Split(string(b), "\n")
				t.Logf("%s.log tail:\n%s", s, strings.Join(lines[max(0, len(lines)-15):], "\n"))
			}
		}
		t.Fatalf("vlmdiff train exited %d", code)
	}
	// The stage times, for the record (the runner's "[stage] done in ..." lines).
	for _, m := range regexp.MustCompile(`\[[a-z-]+\] done in [^\n]+`).FindAllString(out.String(), -1) {
		t.Log(m)
	}
	if !strings.Contains(out.String(), "finished: 10 stages run") {
		t.Fatalf("not all ten stages ran:\n%s", out.String())
	}

	t.Logf("files used as given: %s", py(filepath.Join(trainerDir, "tests", "sd15_mini_weights.py"), "check", weights,
		filepath.Join(runDir, "ae", "ae.pt"), filepath.Join(runDir, "model.pt"), filepath.Join(runDir, "train", "model-trained.pt")))

	bundle := filepath.Join(runDir, "bundle")
	m, err := models.ReadManifest(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Features.Tokens || len(m.Features.Layers) != 1 || m.Features.Layers[0].Name != "tokens" {
		t.Fatalf("features %+v: want the ViT's tokens", m.Features)
	}
	// SD's UNet learnt on kl-f8 latents times 0.18215: the build stage's auto scale keeps that constant for it
	if m.Latent.ScaleFactor != 0.18215 {
		t.Fatalf("latent.scale_factor %v, want SD's 0.18215 for a UNet from sd_checkpoint", m.Latent.ScaleFactor)
	}
	if sh := m.Graphs["features"].Outputs[0].Shape; len(sh) != 3 || sh[1] != 1+16*16 || sh[2] != 32 {
		t.Fatalf("features output shape %v, want [-1, 257, 32]", sh)
	}
	if err := models.Verify(filepath.Join(modelsDir, "sd15-e2e-1.0.0")); err != nil {
		t.Fatalf("registered bundle: %v", err)
	}
	if _, ok := m.Calibration.PerClass["stripes"]; !ok {
		t.Fatalf("no calibration for the class: %+v", m.Calibration)
	}
	if _, err := os.Stat(filepath.Join(runDir, "eval")); err != nil {
		t.Fatalf("evaluate stage wrote nothing: %v", err)
	}

	// `vlmdiff bundle parity` on the ViT bundle with the export's probes.
	var pout, perr bytes.Buffer
	if code := cli.Main(context.Background(), []string{"bundle", "parity", bundle, filepath.Join(runDir, "probes")}, &pout, &perr); code != 0 {
		t.Fatalf("vlmdiff bundle parity exited %d: %s%s", code, pout.String(), perr.String())
	}
	t.Logf("bundle parity:\n%s", pout.String())

	// The Go pipeline and the PyTorch reference score the same images with the same noise.
	s, err := pipeline.Open(bundle, pipeline.Options{Providers: []string{"cpu"}, Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	images, _ := filepath.Glob(filepath.Join(data, "stripes", "test", "*", "000.png"))
	if len(images) != 2 {
		t.Fatalf("test images: %v", images)
	}
	n := m.Latent.Channels * (m.Input.Height / m.Latent.Downsample) * (m.Input.Width / m.Latent.Downsample)
	rng := rand.New(rand.NewSource(5))
	var reqs []pipeline.Request
	var noise []byte
	for _, p := range images {
		img, err := pipeline.ReadImage(p)
		if err != nil {
			t.Fatal(err)
		}
		post, start := make([]float32, n), make([]float32, n)
		for i := range post {
			post[i], start[i] = float32(rng.NormFloat64()), float32(rng.NormFloat64())
		}
		for _, v := range append(append([]float32{}, post...), start...) {
			noise = binary.LittleEndian.AppendUint32(noise, math.Float32bits(v))
		}
		reqs = append(reqs, pipeline.Request{Image: img, Noise: &pipeline.Noise{Posterior: post, Start: start}})
	}
	res, err := s.Score(context.Background(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	noisePath := filepath.Join(work, "noise.f32")
	if err := os.WriteFile(noisePath, noise, 0o644); err != nil {
		t.Fatal(err)
	}
	refOut := filepath.Join(work, "ref")
	py(append([]string{"-m", "vlmdiff_train", "reference"}, append(images, "--bundle", bundle, "--weights",
		filepath.Join(runDir, "train", "model-trained.pt"), "--noise", noisePath, "--out", refOut)...)...)
	var ref []struct {
		RawScore float64 `json:"raw_score"`
	}
	b, err := os.ReadFile(filepath.Join(refOut, "scores.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatal(err)
	}
	maps, err := os.ReadFile(filepath.Join(refOut, "maps.f32"))
	if err != nil {
		t.Fatal(err)
	}
	hw := m.Input.Height * m.Input.Width
	if len(ref) != len(images) || len(maps) != len(images)*hw*4 {
		t.Fatalf("reference gave %d scores and %d map bytes for %d images", len(ref), len(maps), len(images))
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
		t.Logf("%s: map rel L2 %.2e, score go %.6f reference %.6f", images[i], rel, res[i].RawScore, ref[i].RawScore)
		if !(rel <= 1e-4) || !(math.Abs(res[i].RawScore-ref[i].RawScore) <= 1e-5*math.Max(1, math.Abs(ref[i].RawScore))) {
			t.Errorf("%s: the Go pipeline differs from the PyTorch reference (map rel L2 %.2e, scores %.7f vs %.7f)",
				images[i], rel, res[i].RawScore, ref[i].RawScore)
		}
	}
}
