package cli

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
)

// TestBundleWithoutVerbListsEveryVerb: `vlmdiff bundle` alone is a usage error that names all four verbs.
func TestBundleWithoutVerbListsEveryVerb(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main(context.Background(), []string{"bundle"}, &out, &errb); code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
	for _, verb := range []string{"verify", "show", "parity", "set-features"} {
		if !strings.Contains(errb.String(), "vlmdiff bundle "+verb) {
			t.Errorf("usage does not list %q:\n%s", verb, errb.String())
		}
	}
	if !strings.Contains(commandSummary(t, "bundle"), "set-features") {
		t.Errorf("bundle's summary in `vlmdiff help` does not list set-features")
	}
}

func commandSummary(t *testing.T, name string) string {
	var errb bytes.Buffer
	Main(context.Background(), []string{"help"}, &bytes.Buffer{}, &errb)
	for _, line := range strings.Split(errb.String(), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return line
		}
	}
	t.Fatalf("help does not list %s:\n%s", name, errb.String())
	return ""
}

// TestDaemonCommandsDoNotCarryTheTrainer: the daemon side of the binary builds without any trainer package
// (they register from trainer/cli, which only the main imports).
func TestDaemonCommandsDoNotCarryTheTrainer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "github.com/vlmdiff/edge/trainer/") {
			t.Errorf("agent/cli depends on %s", p)
		}
	}
}
