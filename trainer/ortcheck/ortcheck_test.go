package ortcheck_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/internal/testpython"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/ortcheck"
)

// TestOnnxTorchMatchesOnnxRuntime generates the operator cases with the trainer's ONNX interpreter (onnx_torch)
// and runs each through ONNX Runtime: every operator a torch-exported ViT uses, in each opset variant the spec
// distinguishes, and the project's DINO module exported at opsets 14-17.
func TestOnnxTorchMatchesOnnxRuntime(t *testing.T) {
	python := testpython.Need(t, "torch", "onnx")
	if err := pipeline.InitRuntime(""); err != nil {
		t.Skipf("ONNX Runtime: %v", err)
	}
	dir := t.TempDir()
	script, _ := filepath.Abs("../python/tests/onnx_op_cases.py")
	out, err := exec.Command(python, script, dir).CombinedOutput()
	if err != nil {
		t.Fatalf("writing the cases: %v\n%s", err, out)
	}
	cases, err := ortcheck.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			res, err := ortcheck.Run(dir, c)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res {
				if !r.OK {
					t.Errorf("output %s (%s): ONNX Runtime differs from onnx_torch: rel L2 %.3g (tol %.3g), %d mismatches",
						r.Output, r.Type, r.RelL2, c.Tol, r.Mismatches)
				}
			}
		})
		seen[strings.SplitN(c.Name, "_", 2)[0]] = true
	}
	// The DINO graphs at the four opsets the export supports must be among the cases.
	for _, want := range []string{"dino", "layernorm", "softmax13", "slice13", "resize13", "erf"} {
		if !seen[want] {
			t.Errorf("no %s case was generated", want)
		}
	}
}

// TestRunRejectsAWrongRecording shows the comparison can fail: a case whose recorded output was altered.
func TestRunRejectsAWrongRecording(t *testing.T) {
	python := testpython.Path()
	if err := exec.Command(python, "-c", "import torch, onnx").Run(); err != nil {
		t.Skipf("%s cannot import torch and onnx: %v", python, err)
	}
	if err := pipeline.InitRuntime(""); err != nil {
		t.Skipf("ONNX Runtime: %v", err)
	}
	dir := t.TempDir()
	script, _ := filepath.Abs("../python/tests/onnx_op_cases.py")
	if out, err := exec.Command(python, script, dir).CombinedOutput(); err != nil {
		t.Fatalf("writing the cases: %v\n%s", err, out)
	}
	cases, err := ortcheck.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		if c.Name != "erf" && c.Name != "shape" {
			continue
		}
		p := filepath.Join(dir, c.Outputs["y0"].File)
		b, _ := os.ReadFile(p)
		b[1] ^= 0x40 // flip a bit of the first element
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := ortcheck.Run(dir, c)
		if err != nil {
			t.Fatal(err)
		}
		if res[0].OK {
			t.Errorf("case %s: an altered recording passed: %+v", c.Name, res[0])
		}
	}
}
