package eval

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// TestReferenceItems: at most perClass items per class, spread over the class's items in order; every item
// when a class has fewer or perClass is 0.
func TestReferenceItems(t *testing.T) {
	var in []dataset.Item
	for i := 0; i < 10; i++ {
		in = append(in, dataset.Item{Path: string(rune('a' + i)), Class: "a"})
	}
	in = append(in, dataset.Item{Path: "z1", Class: "b"}, dataset.Item{Path: "z2", Class: "b"})
	cases := []struct {
		per  int
		want string
	}{
		{4, "acfhz1z2"},
		{1, "az1"},
		{0, "abcdefghijz1z2"},
		{20, "abcdefghijz1z2"},
	}
	for _, c := range cases {
		got := ""
		for _, it := range ReferenceItems(in, c.per) {
			got += it.Path
		}
		if got != c.want {
			t.Errorf("perClass %d: %q, want %q", c.per, got, c.want)
		}
	}
}

// TestBuildWriteReference: the reference is the mean raw map of each class's normals and of all of them; once
// written, the bundle verifies, carries it, and scores every frame against it; written as nil, it is gone.
func TestBuildWriteReference(t *testing.T) {
	dir := t.TempDir()
	bdir := filepath.Join(dir, "bundle")
	copyDir(t, fixtureBundle, bdir)
	var items []dataset.Item
	for i, c := range []string{"widget", "widget", "gadget"} {
		p := filepath.Join(dir, "train", c+string(rune('a'+i))+".png")
		os.MkdirAll(filepath.Dir(p), 0o755)
		writeTexture(t, p, 128, 128, int64(300+i), false)
		items = append(items, dataset.Item{Path: p, Class: c, Split: dataset.SplitTrain})
	}
	raw, err := pipeline.Open(bdir, pipeline.Options{Providers: []string{"cpu"}, Threads: 2, NoReference: true})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx := context.Background()
	res, err := ScoreItems(ctx, raw, items, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := BuildReference(ctx, raw, items, "test images", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ref.Classes; len(got) != 3 || got[0] != "" || got[1] != "gadget" || got[2] != "widget" {
		t.Fatalf("classes %q", got)
	}
	if ref.Images[0] != 3 || ref.Images[1] != 1 || ref.Images[2] != 2 {
		t.Errorf("images %v, want [3 1 2]", ref.Images)
	}
	for _, k := range []int{0, 1000, 256*256 - 1} {
		m0, m1, m2 := float64(res[0].Result.Map[k]), float64(res[1].Result.Map[k]), float64(res[2].Result.Map[k])
		for j, want := range []float64{(m0 + m1 + m2) / 3, m2, (m0 + m1) / 2} {
			if math.Abs(float64(ref.Maps[j][k])-want) > 1e-6 {
				t.Errorf("row %q pixel %d = %v, want %v", ref.Classes[j], k, ref.Maps[j][k], want)
			}
		}
	}
	if err := WriteReference(bdir, ref); err != nil {
		t.Fatal(err)
	}
	b, err := models.Load(bdir)
	if err != nil {
		t.Fatal(err)
	}
	if r := b.Manifest.Map.Reference; r == nil || r.Source != "test images" || b.ReferenceFor("gadget")[1000] != ref.Maps[1][1000] {
		t.Fatalf("written reference not loaded: %+v", r)
	}
	s := openFixture(t, bdir)
	got, err := ScoreItems(ctx, s, items[2:], Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The only gadget image is its class's reference: what is left is float32 rounding.
	for k, v := range got[0].Result.Map {
		if math.Abs(float64(v)) > 1e-5 {
			t.Fatalf("pixel %d of the gadget image against its own mean: %v", k, v)
		}
	}
	if err := WriteReference(bdir, nil); err != nil {
		t.Fatal(err)
	}
	b, err = models.Load(bdir)
	if err != nil {
		t.Fatal(err)
	}
	if b.Manifest.Map.Reference != nil || b.Reference != nil {
		t.Error("reference still there after removal")
	}
	if _, err := os.Stat(filepath.Join(bdir, ReferenceFile)); !os.IsNotExist(err) {
		t.Errorf("%s still on disk: %v", ReferenceFile, err)
	}
}
