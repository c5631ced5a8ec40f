package run_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/agent/cli"
	"github.com/vlmdiff/edge/internal/testpython"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/trainer/eval"
	"github.com/vlmdiff/edge/trainer/run"
)

// randomFeaturesScript writes a seeded random-weight conv feature graph (model_file.TinyFeatures: layer1 at /4,
// layer2 at /8) as ONNX, through the exporter's own graph wrapper and checker: the stand-in for a pretrained
// backbone that a clean clone does not have.
const randomFeaturesScript = `import sys, torch
from vlmdiff_train.export import FeaturesGraph, export_graph
from vlmdiff_train.model_file import TinyFeatures
path, seed, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(seed)
g = FeaturesGraph(TinyFeatures((16, 24, 32)), ["layer1", "layer2"])
export_graph(g, (torch.randn(1, 3, size, size),), ["image"], ["layer1", "layer2"], path)
`

// TestTrainContractRandomFeatures runs every stage of `vlmdiff train` (the Go runner writing each Python stage's
// config, Python running it) on a small generated dataset with a feature graph generated here, so the Go->Python
// contract is tested on a clean clone, without ../shared. Training is a few steps: this checks that each stage
// accepts what the runner sends and hands on what the next stage reads, not the model's quality (that is
// TestTrainTinyEndToEnd's job).
func TestTrainContractRandomFeatures(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every training stage (a minute or two)")
	}
	python := testpython.Need(t, "torch", "onnx")
	trainerDir, _ := filepath.Abs("../python")
	t.Setenv("VLMDIFF_TRAINER", trainerDir)

	work := t.TempDir()
	feat := filepath.Join(work, "random_features.onnx")
	cmd := exec.Command(python, "-c", randomFeaturesScript, feat, "11", "64")
	cmd.Env = append(os.Environ(), "PYTHONPATH="+trainerDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("generating the random feature graph: %v\n%s", err, out)
	}
	data := filepath.Join(work, "data")
	writeSet(t, data, []string{"stripes"}, 4, 2)
	modelsDir := filepath.Join(work, "models")
	cfgPath := filepath.Join(work, "contract.yaml")
	cfg := run.TinyTestConfig(data, feat, "[[layer1, 1.0], [layer2, 0.5]]", modelsDir, 2, 2)
	// No static-shape denoisers: they were most of this test's five minutes, and TestTrainTinyEndToEnd exports,
	// checks and scores them.
	cfg = strings.Replace(cfg, "export:\n", "export:\n  extra:\n    denoiser_static_batches: []\n", 1)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	runDir := filepath.Join(work, "run")
	var out, errb bytes.Buffer
	code := cli.Main(context.Background(), []string{"train", "--config", cfgPath, "--run-dir", runDir, "--threads", "2", "--providers", "cpu", "--python", python}, &out, &errb)
	t.Logf("vlmdiff train output:\n%s\nstderr:\n%s", out.String(), errb.String())
	if code != 0 {
		for _, s := range []string{"finetune-ae", "build", "train", "export"} {
			if b, err := os.ReadFile(filepath.Join(runDir, "logs", s+".log")); err == nil {
				lines := strings.Split(string(b), "\n")
				t.Logf("%s.log tail:\n%s", s, strings.Join(lines[max(0, len(lines)-15):], "\n"))
			}
		}
		t.Fatalf("vlmdiff train exited %d", code)
	}
	if !strings.Contains(out.String(), "finished: 10 stages run") {
		t.Fatalf("not all ten stages ran")
	}
	// Each Python stage got its config from the runner and read it (an unknown or mistyped key exits 1).
	for _, stage := range []string{"finetune-ae", "build", "train", "export"} {
		b, err := os.ReadFile(filepath.Join(runDir, "configs", stage+".json"))
		if err != nil {
			t.Fatalf("the runner wrote no config for %s: %v", stage, err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil || m["run_dir"] == nil {
			t.Fatalf("%s config: %v, %s", stage, err, b)
		}
	}
	reg := filepath.Join(modelsDir, "e2e-1.0.0")
	if err := models.Verify(reg); err != nil {
		t.Fatalf("registered bundle does not verify: %v", err)
	}
	m, err := models.ReadManifest(reg)
	if err != nil {
		t.Fatal(err)
	}
	var layers []string
	for _, l := range m.Features.Layers {
		layers = append(layers, l.Name)
	}
	if !slices.Equal(layers, []string{"layer1", "layer2"}) || m.Input.Height != 64 || m.Provenance.Preset != "tiny" {
		t.Fatalf("bundle: layers %v, input %dx%d, preset %q; want the generated graph's layer1/layer2 at 64 px, tiny",
			layers, m.Input.Height, m.Input.Width, m.Provenance.Preset)
	}
	if c, ok := m.Calibration.PerClass["stripes"]; !ok || c.NormalN == 0 {
		t.Fatalf("calibration has no stripes entry from the calibrate stage: %+v", m.Calibration)
	}
	if _, err := os.Stat(filepath.Join(runDir, "eval", eval.JSONFile)); err != nil {
		t.Fatalf("the evaluate stage wrote no metrics: %v", err)
	}
}
