package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vlmdiff/edge/agent/store"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// TestSamplesExportIsATrainingDataset: samples collected into the store come out as a dataset that the
// trainer's index stage reads (layout "collected"), and a store held by a running daemon is refused clearly.
func TestSamplesExportIsATrainingDataset(t *testing.T) {
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "vlmdiff.db")
	png := filepath.Join(dir, "f.png")
	writeTestPNG(t, png, 32, 24)
	img, _ := os.ReadFile(png)
	st, err := store.Open(store.Options{Path: dbPath, MinFreeBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i, cam := range []string{"line1", "line1", "line2"} {
		if err := st.AddSample(store.Sample{Camera: cam, Class: "widget", Seq: uint64(10 + i), CapturedAt: time.Now(), Score: 0.1, PNG: img}); err != nil {
			t.Fatal(err)
		}
	}
	// while the store is open (a daemon running), the export is refused naming the lock
	var stdout, stderr bytes.Buffer
	out := filepath.Join(dir, "dataset")
	code := Main(context.Background(), []string{"samples", "export", "--store", dbPath, "--out", out}, &stdout, &stderr)
	if code == 0 || !strings.Contains(stderr.String(), "locked") {
		t.Fatalf("export of a locked store: exit %d, stderr %q", code, stderr.String())
	}
	st.Close()
	stderr.Reset()
	code = Main(context.Background(), []string{"samples", "export", "--store", dbPath, "--out", out, "--delete"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	items, err := dataset.Open(out, "auto")
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 3 {
		t.Fatalf("dataset has %d items, want 3", len(items))
	}
	for _, it := range items {
		if it.Split != "train" || it.Label != 0 || it.Class != "widget" {
			t.Errorf("item %+v: want a normal train image of class widget", it)
		}
		if _, err := os.Stat(it.Path); err != nil {
			t.Error(err)
		}
	}
	st, err = store.Open(store.Options{Path: dbPath})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if n, _ := st.SampleCount(); n != 0 {
		t.Errorf("--delete left %d samples", n)
	}
}
