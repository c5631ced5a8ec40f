// Package testpython names the Python interpreter that the tests run the trainer and the PyTorch reference
// with, so one variable moves every test to another PyTorch: Debian's (the default, what `make deps` installs)
// or PyPI's in `.deps/torch` (`make deps-torch`), e.g.
//
//	VLMDIFF_TEST_PYTHON=$PWD/.deps/torch/bin/python go test ./trainer/run ./pipeline
//
// It is imported by tests only.
package testpython

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Env is the variable that overrides the interpreter.
const Env = "VLMDIFF_TEST_PYTHON"

// Default is Debian's interpreter, the one with python3-torch.
const Default = "/usr/bin/python3"

// Path returns $VLMDIFF_TEST_PYTHON, or Default when it is unset or empty.
func Path() string {
	if p := os.Getenv(Env); p != "" {
		return p
	}
	return Default
}

// Need returns Path() when it imports every module named; otherwise it skips the test, or fails it under CI
// (CI=true), where the test command installs them and their absence is a failure, not a reason to skip.
func Need(t testing.TB, modules ...string) string {
	t.Helper()
	py := Path()
	imp := "import " + strings.Join(modules, ", ")
	if out, err := exec.Command(py, "-c", imp).CombinedOutput(); err != nil {
		msg := strings.TrimSpace(string(out))
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:] // the exception line, not the traceback
		}
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but %s cannot %q (make deps installs them; %s overrides the interpreter): %v: %s", py, imp, Env, err, msg)
		}
		t.Skipf("%s cannot %q: %v: %s", py, imp, err, msg)
	}
	return py
}
