package run

import (
	"context"
	"os"
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
