package evidence

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestSaveAndPrune: items land in <camera>/<day>/<seq>-<verdict>.*; pruning by age drops whole old days and
// pruning by size drops the oldest files first until the tree fits; empty folders go too.
func TestSaveAndPrune(t *testing.T) {
	dir := t.TempDir()
	tr, err := Open(Options{Dir: dir, MaxAge: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	frame := bytes.Repeat([]byte{1}, 1000)
	save := func(cam string, seq uint64, at time.Time) {
		t.Helper()
		paths, err := tr.Save(Item{Camera: cam, Seq: seq, Verdict: "NG", Time: at, Frame: frame, Heatmap: []byte("hm"),
			HeatmapFormat: "png", Result: []byte(`{"seq":1}`)})
		if err != nil || len(paths) != 3 {
			t.Fatalf("save: %v %v", paths, err)
		}
	}
	save("top", 1, now.Add(-5*24*time.Hour)) // past max_age
	save("top", 2, now.Add(-1*time.Hour))
	save("side", 3, now)
	save("top", 4, now)
	if data, err := os.ReadFile(filepath.Join(dir, "top", "2026-03-10", "0000000004-NG.json")); err != nil || string(data) != `{"seq":1}` {
		t.Fatalf("result JSON: %q %v", data, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "top", "2026-03-10", "0000000004-NG.heatmap.png")); err != nil {
		t.Fatal(err)
	}

	st, err := tr.Prune(now)
	if err != nil || st.Removed != 3 {
		t.Fatalf("age prune: %+v %v; want the 3 files of the old day removed", st, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "top", "2026-03-05")); !os.IsNotExist(err) {
		t.Errorf("the emptied day folder is still there: %v", err)
	}

	// Size: 3 items of ~1011 bytes remain; a bound of 2500 bytes keeps the newest files only.
	tr.opts.MaxBytes = 2500
	st, err = tr.Prune(now)
	if err != nil || st.Bytes > 2500 || st.Removed == 0 {
		t.Fatalf("size prune: %+v %v", st, err)
	}
	files, _ := tr.List("", "")
	var names []string
	for _, f := range files {
		names = append(names, f.Path)
	}
	if slices.Contains(names, "top/2026-03-10/0000000002-NG.png") || !slices.Contains(names, "top/2026-03-10/0000000004-NG.png") {
		t.Errorf("after the size prune %v: want the oldest (seq 2) gone and the newest (seq 4) kept", names)
	}
	if _, err := tr.Save(Item{Camera: "../x", Seq: 1, Verdict: "NG", Time: now, Frame: frame}); err == nil {
		t.Error("a camera name with a path separator was accepted")
	}
}
