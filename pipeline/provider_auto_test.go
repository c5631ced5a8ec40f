package pipeline

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// The "auto" provider (vlmdiff score's default) takes CUDA when it can and otherwise falls back to CPU
// without a warning; naming "cuda" explicitly on a machine without it still warns.
func TestAutoProviderQuietOnCPUOnly(t *testing.T) {
	if err := InitRuntime(""); err != nil {
		t.Skip(err)
	}
	var buf bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	defer slog.SetDefault(prev)
	for _, tc := range []struct {
		providers []string
		warnIfCPU bool
	}{{[]string{"auto"}, false}, {[]string{"cuda", "cpu"}, true}} {
		buf.Reset()
		var once sync.Once
		so, got, err := newSessionOptions(Options{Providers: tc.providers}, &once)
		if err != nil {
			t.Fatal(err)
		}
		so.Destroy()
		if got == "cuda" {
			t.Skip("CUDA is usable here: nothing to fall back from")
		}
		if warned := strings.Contains(buf.String(), "CUDA"); warned != tc.warnIfCPU {
			t.Errorf("providers %v: warned %v, want %v (log %q)", tc.providers, warned, tc.warnIfCPU, buf.String())
		}
	}
}
