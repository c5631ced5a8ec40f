package run

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/internal/testpython"
	"github.com/vlmdiff/edge/internal/torchenv"
)

// TestPythonEnvOpenMP: the trainer's Python gets OMP_WAIT_POLICY=PASSIVE unless its torch's BLAS is MKL (which
// threads with OpenMP itself) or the user chose a policy, which is then passed on untouched.
func TestPythonEnvOpenMP(t *testing.T) {
	cases := []struct {
		name, set, blas string
		want            []string
	}{
		{"not probed yet", "", "", []string{"OMP_WAIT_POLICY=PASSIVE"}},
		{"Debian's torch (OpenBLAS)", "", "generic", []string{"OMP_WAIT_POLICY=PASSIVE"}},
		{"PyPI's torch (MKL)", "", "mkl", nil},
		{"user's choice over OpenBLAS", "ACTIVE", "generic", []string{"OMP_WAIT_POLICY=ACTIVE"}},
		{"user's choice over MKL", "PASSIVE", "mkl", []string{"OMP_WAIT_POLICY=PASSIVE"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.set != "" {
				t.Setenv("OMP_WAIT_POLICY", c.set)
			} else {
				t.Setenv("OMP_WAIT_POLICY", "")
				os.Unsetenv("OMP_WAIT_POLICY") // t.Setenv above restores it afterwards
			}
			env := Python{Exe: "python3", TrainerDir: "/t", BLAS: c.blas}.env()
			var got []string
			for _, kv := range env {
				if strings.HasPrefix(kv, "OMP_WAIT_POLICY=") {
					got = append(got, kv)
				}
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("OMP_WAIT_POLICY entries %q, want %q", got, c.want)
			}
		})
	}
}

// TestPythonCheckRecordsBLAS: Check asks the real interpreter's torch for its BLAS and keeps it, so the stages
// after it run under that build's policy; the description names both.
func TestPythonCheckRecordsBLAS(t *testing.T) {
	exe := testpython.Need(t, "torch")
	td, err := torchenv.FindTrainerDir("")
	if err != nil {
		t.Skip(err)
	}
	want, err := torchenv.Probe(context.Background(), exe, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := Python{Exe: exe, TrainerDir: td}
	desc, err := p.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p.BLAS != want.BLAS || p.BLAS == "" {
		t.Errorf("BLAS %q after Check, the interpreter says %q", p.BLAS, want.BLAS)
	}
	for _, s := range []string{want.Torch, "BLAS " + want.BLAS, "OpenMP wait " + torchenv.Policy(want.BLAS)} {
		if !strings.Contains(desc, s) {
			t.Errorf("description %q lacks %q", desc, s)
		}
	}
}

// TestRunStageRelativeInterpreter: an interpreter given as a path relative to the working directory
// (`vlmdiff train --python .deps/torch/bin/python`, as docs/training.md writes it) runs the stage although the
// stage runs in the run directory, where that relative path names nothing; a config's python.exe is relative to
// the config file, and a bare name stays a name for PATH.
func TestRunStageRelativeInterpreter(t *testing.T) {
	sys, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3 on PATH")
	}
	// a stand-in vlmdiff_train that answers the stage protocol: one "done" event naming its config
	pkg := filepath.Join(t.TempDir(), "trainer")
	if err := os.MkdirAll(filepath.Join(pkg, "vlmdiff_train"), 0o755); err != nil {
		t.Fatal(err)
	}
	main := "import json, sys\nprint(json.dumps({'event': 'done', 'stage': sys.argv[1], 'outputs': {'config': sys.argv[3]}}))\n"
	for name, body := range map[string]string{"__init__.py": "", "__main__.py": main} {
		if err := os.WriteFile(filepath.Join(pkg, "vlmdiff_train", name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	work := t.TempDir()
	if err := os.MkdirAll(filepath.Join(work, "env", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(sys, filepath.Join(work, "env", "bin", "python")); err != nil {
		t.Fatal(err)
	}
	t.Chdir(work)
	runDir := t.TempDir()
	var prog strings.Builder
	sc := &StageContext{Name: "build", Dir: runDir, Log: io.Discard, Progress: &prog}
	out, err := Python{Exe: "env/bin/python", TrainerDir: pkg}.RunStage(context.Background(), sc, "build", map[string]any{}, nil)
	if err != nil {
		t.Fatalf("a relative interpreter path: %v", err)
	}
	if want := filepath.Join(runDir, "configs", "build.json"); out["config"] != want {
		t.Errorf("outputs %v, want config %s", out, want)
	}

	cfgDir := t.TempDir()
	cases := []struct{ exe, want string }{
		{"env/bin/python", filepath.Join(cfgDir, "env", "bin", "python")},
		{"/opt/py/bin/python", "/opt/py/bin/python"},
		{"python3", "python3"},
	}
	for _, c := range cases {
		cfg := &Config{Python: PythonConfig{Exe: c.exe}}
		cfg.resolve(cfgDir)
		if cfg.Python.Exe != c.want {
			t.Errorf("python.exe %q in a config under %s resolves to %q, want %q", c.exe, cfgDir, cfg.Python.Exe, c.want)
		}
	}
}
