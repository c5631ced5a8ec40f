package agent

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vlmdiff/edge/models"
)

// TestCandidatesOrder: newest manifest created first, ties broken by the later directory name; directories
// being written (hidden, *.tmp, *.partial) are ignored; a directory without a manifest is listed with its error.
func TestCandidatesOrder(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "models", "testdata", "fixture", models.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	write := func(name string, created time.Time) {
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		m["created"] = created.Format(time.RFC3339)
		b, _ := json.Marshal(m)
		os.MkdirAll(filepath.Join(dir, name), 0o755)
		if err := os.WriteFile(filepath.Join(dir, name, models.ManifestFile), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a", t0)
	write("b", t0.Add(time.Hour))
	write("c", t0.Add(time.Hour))
	write(".d.tmp", t0.Add(5*time.Hour))
	write("e.partial", t0.Add(5*time.Hour))
	os.MkdirAll(filepath.Join(dir, "empty"), 0o755)

	m := newModelManager(nil, dir, "", slog.Default(), nil)
	cands, err := m.candidates()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range cands {
		names = append(names, filepath.Base(c.dir))
	}
	want := []string{"c", "b", "a", "empty"}
	if len(names) != len(want) {
		t.Fatalf("candidates %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("candidates %v, want %v", names, want)
		}
	}
	if cands[3].err == nil {
		t.Error("a directory without bundle.json has no error")
	}
}
