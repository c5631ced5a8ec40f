package command

import (
	"bytes"
	"context"
	"encoding/json"
	"runtime"
	"strings"
	"testing"
)

// TestVersion: `vlmdiff version`, `--version` and `version --json` answer with the build info, exit 0.
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var out, errb bytes.Buffer
		if code := Main(context.Background(), args, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "vlmdiff ") ||
			!strings.Contains(out.String(), runtime.Version()) {
			t.Errorf("Main(%q) = %d, stdout %q, stderr %q", args, code, out.String(), errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := Main(context.Background(), []string{"version", "--json"}, &out, &errb); code != 0 {
		t.Fatalf("version --json = %d: %s", code, errb.String())
	}
	var info struct {
		Version   string `json:"version"`
		GoVersion string `json:"go_version"`
		Platform  string `json:"platform"`
	}
	if err := json.Unmarshal(out.Bytes(), &info); err != nil || info.Version == "" || info.GoVersion != runtime.Version() ||
		info.Platform != runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("version --json: %v %s", err, out.String())
	}
	if code := Main(context.Background(), []string{"version", "--bogus"}, &out, &errb); code != 2 {
		t.Errorf("version --bogus = %d, want 2", code)
	}
}
