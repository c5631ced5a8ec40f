package eval

import (
	"encoding/binary"
	"encoding/csv"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// TestWriteMaps: every map comes back bit for bit from its file, in the order of the index, with the item's
// path, class, label and mask; a map whose length does not match its size is refused by name.
func TestWriteMaps(t *testing.T) {
	res := []ImageResult{
		{Item: dataset.Item{Path: "/d/a,1.png", Class: "bolt", Label: 0},
			Result: pipeline.Result{Map: []float32{0, 1.5, float32(math.Inf(1)), -2, 3, 4}, MapWidth: 3, MapHeight: 2, RawScore: 0.25}},
		{Item: dataset.Item{Path: "/d/b.png", Class: "nut", Label: 1, Mask: "/d/b_mask.png"},
			Result: pipeline.Result{Map: []float32{7, 8}, MapWidth: 1, MapHeight: 2, RawScore: 1e-3}},
	}
	dir := filepath.Join(t.TempDir(), "maps", "test")
	if err := WriteMaps(dir, res); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, MapsIndexFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"file", "path", "class", "label", "mask", "width", "height", "raw_score"},
		{"00000.f32", "/d/a,1.png", "bolt", "0", "", "3", "2", "0.25"},
		{"00001.f32", "/d/b.png", "nut", "1", "/d/b_mask.png", "1", "2", "0.001"},
	}
	if len(rows) != len(want) {
		t.Fatalf("index has %d rows, want %d: %v", len(rows), len(want), rows)
	}
	for i := range want {
		for j := range want[i] {
			if rows[i][j] != want[i][j] {
				t.Errorf("index row %d col %d = %q, want %q", i, j, rows[i][j], want[i][j])
			}
		}
	}
	for i, r := range res {
		b, err := os.ReadFile(filepath.Join(dir, rows[i+1][0]))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != 4*len(r.Result.Map) {
			t.Fatalf("%s: %d bytes, want %d", rows[i+1][0], len(b), 4*len(r.Result.Map))
		}
		for k, v := range r.Result.Map {
			if got := math.Float32frombits(binary.LittleEndian.Uint32(b[4*k:])); math.Float32bits(got) != math.Float32bits(v) {
				t.Errorf("%s value %d = %v, want %v", rows[i+1][0], k, got, v)
			}
		}
	}
	bad := []ImageResult{{Item: dataset.Item{Path: "/d/short.png"}, Result: pipeline.Result{Map: []float32{1}, MapWidth: 2, MapHeight: 2}}}
	if err := WriteMaps(t.TempDir(), bad); err == nil || !strings.Contains(err.Error(), "/d/short.png") {
		t.Errorf("short map: error %v, want one naming the image", err)
	}
}
