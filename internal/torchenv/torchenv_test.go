package torchenv

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/internal/testpython"
)

func unsetPolicy(t *testing.T) {
	t.Helper()
	t.Setenv(Var, "")
	os.Unsetenv(Var) // t.Setenv restores the old value afterwards
}

func TestParseProbe(t *testing.T) {
	cases := []struct {
		line string
		want Build
		err  bool
	}{
		{"1.13.0a0 cpu-only generic\n", Build{Torch: "1.13.0a0", BLAS: "generic"}, false},
		{"2.15.0+cu132 cuda mkl", Build{Torch: "2.15.0+cu132", CUDA: true, BLAS: "mkl"}, false},
		{"2.15.0 cpu-only", Build{}, true},
		{"", Build{}, true},
	}
	for _, c := range cases {
		got, err := ParseProbe(c.line)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("ParseProbe(%q) = %+v, %v; want %+v, error %v", c.line, got, err, c.want, c.err)
		}
	}
}

func TestEnvAndPolicy(t *testing.T) {
	cases := []struct {
		name, set, blas string
		env             []string
		policy          string
	}{
		{"OpenBLAS beside OpenMP", "", "generic", []string{"OMP_WAIT_POLICY=PASSIVE"}, "PASSIVE"},
		{"not probed", "", "", []string{"OMP_WAIT_POLICY=PASSIVE"}, "PASSIVE"},
		{"unknown build", "", "unknown", []string{"OMP_WAIT_POLICY=PASSIVE"}, "PASSIVE"},
		{"MKL on OpenMP's threads", "", "mkl", nil, "OpenMP's default (spin, then sleep)"},
		{"MKL, upper case", "", "MKL", nil, "OpenMP's default (spin, then sleep)"},
		{"the user's policy stands", "ACTIVE", "generic", nil, "ACTIVE (OMP_WAIT_POLICY set)"},
		{"the user's policy stands over MKL", "PASSIVE", "mkl", nil, "PASSIVE (OMP_WAIT_POLICY set)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.set != "" {
				t.Setenv(Var, c.set)
			} else {
				unsetPolicy(t)
			}
			if got := Env(c.blas); !slices.Equal(got, c.env) {
				t.Errorf("Env(%q) = %q, want %q", c.blas, got, c.env)
			}
			if got := Policy(c.blas); got != c.policy {
				t.Errorf("Policy(%q) = %q, want %q", c.blas, got, c.policy)
			}
		})
	}
}

// TestProbeRealTorch: the probe reads the real interpreter's torch; its version must be the one torch itself
// prints, and its BLAS one that the build names.
func TestProbeRealTorch(t *testing.T) {
	exe := testpython.Need(t, "torch")
	b, err := Probe(context.Background(), exe, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(exe, "-c", "import torch; print(torch.__version__)").Output()
	if err != nil {
		t.Fatal(err)
	}
	if b.Torch != strings.TrimSpace(string(out)) {
		t.Errorf("probe says torch %q, torch says %q", b.Torch, strings.TrimSpace(string(out)))
	}
	cfg, err := exec.Command(exe, "-c", "import torch; print(torch.__config__.show())").Output()
	if err != nil {
		t.Fatal(err)
	}
	if b.BLAS == "" || b.BLAS == "unknown" || !strings.Contains(string(cfg), "BLAS_INFO="+b.BLAS) {
		t.Errorf("probe says BLAS %q; torch's config:\n%s", b.BLAS, cfg)
	}
}

// TestProbeMissingInterpreter: a bad interpreter is an error naming it, not a silent default.
func TestProbeMissingInterpreter(t *testing.T) {
	_, err := Probe(context.Background(), "/nonexistent/python3", nil)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/python3") {
		t.Fatalf("err = %v, want one naming the interpreter", err)
	}
}

// TestFindTrainerDir: the trainer package is found from a flag, from $VLMDIFF_TRAINER, or upwards from the
// working directory in a checkout (trainer/python) or an installed tree (share/vlmdiff/python); a directory
// without the package is refused by name.
func TestFindTrainerDir(t *testing.T) {
	mk := func(root, rel string) string {
		d := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Join(d, "vlmdiff_train"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "vlmdiff_train", "__main__.py"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	checkout, installed, empty := t.TempDir(), t.TempDir(), t.TempDir()
	inCheckout := mk(checkout, "trainer/python")
	inInstalled := mk(installed, "share/vlmdiff/python")
	deep := filepath.Join(checkout, "runs", "piped")
	deepInstalled := filepath.Join(installed, "var", "lib")
	for _, d := range []string{deep, deepInstalled} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name, explicit, env, wd, want, errHas string
	}{
		{"flag", inCheckout, "", empty, inCheckout, ""},
		{"flag without the package", empty, inCheckout, empty, "", "--trainer-dir " + empty},
		{"environment", "", inInstalled, empty, inInstalled, ""},
		{"environment without the package", "", empty, deep, "", "$" + EnvTrainer + " " + empty},
		{"upwards in a checkout", "", "", deep, inCheckout, ""},
		{"upwards in an installed tree", "", "", deepInstalled, inInstalled, ""},
		{"nowhere", "", "", empty, "", "--trainer-dir"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(EnvTrainer, c.env)
			if c.env == "" {
				os.Unsetenv(EnvTrainer)
			}
			t.Chdir(c.wd)
			got, err := FindTrainerDir(c.explicit)
			if c.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), c.errHas) {
					t.Fatalf("FindTrainerDir = %q, %v; want an error naming %q", got, err, c.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("FindTrainerDir = %q, want %q", got, c.want)
			}
		})
	}
}

// TestProbeNamesAMissingImport: a module the caller asked for that the interpreter lacks fails the probe, and the
// error names it (the trainer's check imports vlmdiff_train this way).
func TestProbeNamesAMissingImport(t *testing.T) {
	exe := testpython.Need(t, "torch")
	_, err := Probe(context.Background(), exe, nil, "vlmdiff_no_such_module")
	if err == nil || !strings.Contains(err.Error(), "torch and vlmdiff_no_such_module") ||
		!strings.Contains(err.Error(), "ModuleNotFoundError") {
		t.Fatalf("err = %v, want one naming the module and the exception", err)
	}
}

// TestProbeNamesTheInterpreterOnABadAnswer: an interpreter that runs but answers something else than the probe's
// line fails with an error naming it, for the trainer's check and the bench alike.
func TestProbeNamesTheInterpreterOnABadAnswer(t *testing.T) {
	exe := filepath.Join(t.TempDir(), "python")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\necho 'not a probe line'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Probe(context.Background(), exe, nil)
	if err == nil || !strings.Contains(err.Error(), "python "+exe+":") || !strings.Contains(err.Error(), "not a probe line") {
		t.Fatalf("err = %v, want one naming %s and what it printed", err, exe)
	}
}
