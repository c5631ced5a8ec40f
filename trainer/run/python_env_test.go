package run

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// TestPythonEnvOpenMP: the trainer's Python gets OMP_WAIT_POLICY=PASSIVE unless the user chose a policy, which
// is then passed on untouched.
func TestPythonEnvOpenMP(t *testing.T) {
	cases := []struct {
		name, set, want string
	}{
		{"unset", "", "OMP_WAIT_POLICY=PASSIVE"},
		{"user's choice", "ACTIVE", "OMP_WAIT_POLICY=ACTIVE"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.set != "" {
				t.Setenv("OMP_WAIT_POLICY", c.set)
			} else {
				t.Setenv("OMP_WAIT_POLICY", "")
				os.Unsetenv("OMP_WAIT_POLICY") // t.Setenv above restores it afterwards
			}
			env := Python{Exe: "python3", TrainerDir: "/t"}.env()
			var got []string
			for _, kv := range env {
				if strings.HasPrefix(kv, "OMP_WAIT_POLICY=") {
					got = append(got, kv)
				}
			}
			if !slices.Equal(got, []string{c.want}) {
				t.Errorf("OMP_WAIT_POLICY entries %q, want [%q]", got, c.want)
			}
		})
	}
}
