package testpython

import "testing"

func TestPath(t *testing.T) {
	for _, c := range []struct{ env, want string }{
		{"", Default},
		{"/opt/torch/bin/python", "/opt/torch/bin/python"},
	} {
		t.Setenv(Env, c.env)
		if got := Path(); got != c.want {
			t.Errorf("%s=%q: Path() = %q, want %q", Env, c.env, got, c.want)
		}
	}
}

// TestNeedSkipsOutsideCI: an interpreter that cannot run skips the test that needs it when CI is unset.
func TestNeedSkipsOutsideCI(t *testing.T) {
	t.Setenv(Env, "/nonexistent/python")
	t.Setenv("CI", "")
	var ran bool
	t.Run("needs", func(t *testing.T) {
		Need(t, "json")
		ran = true
	})
	if ran {
		t.Fatal("Need returned for an interpreter that does not exist")
	}
}
