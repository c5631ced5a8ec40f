package models

import (
	"encoding/binary"
	"errors"
	"maps"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// addReference writes rows (one per class, 256x256 each, the fixture's input size) as map_reference.f32 into a
// copied fixture and declares it, with its true checksum unless edit changes the declaration afterwards.
func addReference(t *testing.T, dir string, classes []string, rows [][]float32, edit func(ref, files map[string]any)) {
	t.Helper()
	addRows(t, dir, "map_reference.f32", "reference", classes, rows, nil, edit)
}

// addRows writes rows as file into a copied fixture and declares them as map.<section> (with extra fields),
// with the file's true checksum unless edit changes the declaration afterwards.
func addRows(t *testing.T, dir, file, section string, classes []string, rows [][]float32, extra map[string]any, edit func(decl, files map[string]any)) {
	t.Helper()
	var buf []byte
	for _, r := range rows {
		for _, v := range r {
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
		}
	}
	p := filepath.Join(dir, file)
	if err := os.WriteFile(p, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	sum, err := FileSHA256(p)
	if err != nil {
		t.Fatal(err)
	}
	editManifest(t, dir, func(m map[string]any) {
		cl := make([]any, len(classes))
		for i, c := range classes {
			cl[i] = c
		}
		decl := map[string]any{"file": file, "width": 256, "height": 256, "classes": cl}
		maps.Copy(decl, extra)
		files := m["files"].(map[string]any)
		files[file] = map[string]any{"sha256": sum, "size": len(buf)}
		if edit != nil {
			edit(decl, files)
		}
		m["map"].(map[string]any)[section] = decl
	})
}

func refRow(f func(i int) float32) []float32 {
	r := make([]float32, 256*256)
	for i := range r {
		r[i] = f(i)
	}
	return r
}

// TestReferenceLoads: a bundle's map reference is decoded by class; a class without a row gets the global one,
// and a bundle without a reference gives none.
func TestReferenceLoads(t *testing.T) {
	dir := copyBundle(t)
	global := refRow(func(int) float32 { return 0.25 })
	bolt := refRow(func(i int) float32 { return float32(i) * 1e-6 })
	addReference(t, dir, []string{"", "bolt"}, [][]float32{global, bolt}, nil)
	b, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		class string
		want  []float32
	}{{"bolt", bolt}, {"nut", global}, {"", global}} {
		got := b.ReferenceFor(c.class)
		if len(got) != len(c.want) || got[1000] != c.want[1000] || got[len(got)-1] != c.want[len(got)-1] {
			t.Errorf("ReferenceFor(%q) is not the expected row", c.class)
		}
	}
	plain, err := Load(fixture)
	if err != nil {
		t.Fatal(err)
	}
	if plain.ReferenceFor("bolt") != nil {
		t.Error("a bundle without map.reference has a reference")
	}
}

// TestReferenceRefused: a reference that cannot be applied exactly is refused at load, naming the field or file.
func TestReferenceRefused(t *testing.T) {
	ok := refRow(func(int) float32 { return 0.1 })
	nan := refRow(func(i int) float32 {
		if i == 77 {
			return float32(math.NaN())
		}
		return 0.1
	})
	cases := []struct {
		name    string
		classes []string
		rows    [][]float32
		edit    func(ref, files map[string]any)
		check   string
		msg     string
	}{
		{"no global row", []string{"bolt"}, [][]float32{ok}, nil, "schema", `global row ""`},
		{"a class twice", []string{"", "bolt", "bolt"}, [][]float32{ok, ok, ok}, nil, "schema", "appears twice"},
		{"another size than the maps", []string{""}, [][]float32{ok},
			func(ref, _ map[string]any) { ref["width"] = 128 }, "schema", "128x256"},
		{"file not listed", []string{""}, [][]float32{ok},
			func(_, files map[string]any) { delete(files, "map_reference.f32") }, "schema", "not listed"},
		{"counts for other classes", []string{""}, [][]float32{ok},
			func(ref, _ map[string]any) { ref["images"] = []any{3, 4} }, "schema", "map.reference.images"},
		{"fewer rows than classes", []string{"", "bolt"}, [][]float32{ok},
			func(ref, files map[string]any) {}, "reference", "bytes"},
		{"a NaN in a row", []string{""}, [][]float32{nan}, nil, "reference", "non-finite"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyBundle(t)
			addReference(t, dir, c.classes, c.rows, c.edit)
			err := Verify(dir)
			if err == nil {
				t.Fatal("bundle accepted")
			}
			var ce *CheckError
			if !errors.As(err, &ce) || ce.Check != c.check {
				t.Fatalf("error %v: want check %q", err, c.check)
			}
			if !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q should contain %q", err, c.msg)
			}
		})
	}
}

// addPixel writes rows (one per class, 3x256x256 each) as map_pixel_mean.f32 into a copied fixture and declares
// the mean-frame term (map.pixel) with factor 0.5 and weight w, with the file's true checksum unless edit
// changes the declaration afterwards.
func addPixel(t *testing.T, dir string, classes []string, rows [][]float32, w float64, edit func(term, files map[string]any)) {
	t.Helper()
	addRows(t, dir, "map_pixel_mean.f32", "pixel", classes, rows, map[string]any{"factor": 0.5, "weight": w}, edit)
}

func frameRow(f func(i int) float32) []float32 {
	r := make([]float32, 3*256*256)
	for i := range r {
		r[i] = f(i)
	}
	return r
}

// TestMeanFramesLoad: the mean-frame term's rows are decoded by class, a class without a row gets the global
// one; a reference measured with the term's weight loads beside it.
func TestMeanFramesLoad(t *testing.T) {
	dir := copyBundle(t)
	global := frameRow(func(int) float32 { return -0.5 })
	bolt := frameRow(func(i int) float32 { return float32(i%977) * 1e-3 })
	addPixel(t, dir, []string{"", "bolt"}, [][]float32{global, bolt}, 0.7, nil)
	addReference(t, dir, []string{""}, [][]float32{refRow(func(int) float32 { return 0.1 })}, func(ref, _ map[string]any) { ref["pixel_weight"] = 0.7 })
	b, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		class string
		want  []float32
	}{{"bolt", bolt}, {"nut", global}, {"", global}} {
		got := b.MeanFrameFor(c.class)
		if len(got) != len(c.want) || got[1000] != c.want[1000] || got[len(got)-1] != c.want[len(got)-1] {
			t.Errorf("MeanFrameFor(%q) is not the expected row", c.class)
		}
	}
	// the term at its own sigma, with a reference measured at it
	sharp := copyBundle(t)
	addPixel(t, sharp, []string{""}, [][]float32{global}, 0.7, func(term, _ map[string]any) { term["sigma"] = 0 })
	addReference(t, sharp, []string{""}, [][]float32{refRow(func(int) float32 { return 0.1 })}, func(ref, _ map[string]any) {
		ref["pixel_weight"], ref["pixel_sigma"] = 0.7, 0
	})
	if sb, err := Load(sharp); err != nil {
		t.Errorf("a term at sigma 0 with its reference: %v", err)
	} else if got := sb.Manifest.Map.Pixel.SmoothingSigma(sb.Manifest.Map.Sigma); got != 0 {
		t.Errorf("the term's sigma: got %g, want 0", got)
	}
	if got := b.Manifest.Map.Pixel.SmoothingSigma(b.Manifest.Map.Sigma); got != b.Manifest.Map.Sigma {
		t.Errorf("a term without its own sigma smooths at %g, want the map's %g", got, b.Manifest.Map.Sigma)
	}
	if plain, err := Load(fixture); err != nil || plain.MeanFrameFor("bolt") != nil {
		t.Errorf("a bundle without map.pixel: err %v, has mean frames %v", err, plain.MeanFrameFor("bolt") != nil)
	}
}

// TestMeanFramesRefused: a mean-frame term that cannot be applied exactly, or a map reference measured with
// another weight of it, is refused at load, naming the field or file.
func TestMeanFramesRefused(t *testing.T) {
	ok := frameRow(func(int) float32 { return 0.1 })
	nan := frameRow(func(i int) float32 {
		if i == 3*256*256-1 {
			return float32(math.Inf(1))
		}
		return 0.1
	})
	cases := []struct {
		name    string
		classes []string
		rows    [][]float32
		weight  float64
		edit    func(term, files map[string]any)
		refW    any // the reference's pixel_weight; nil: no reference
		check   string
		msg     string
	}{
		{"no global row", []string{"bolt"}, [][]float32{ok}, 0, nil, nil, "schema", `map.pixel.classes`},
		{"another size than the maps", []string{""}, [][]float32{ok}, 0,
			func(term, _ map[string]any) { term["height"] = 64 }, nil, "schema", "256x64"},
		{"file not listed", []string{""}, [][]float32{ok}, 0,
			func(_, files map[string]any) { delete(files, "map_pixel_mean.f32") }, nil, "schema", "map.pixel.file"},
		{"a negative weight", []string{""}, [][]float32{ok}, -1, nil, nil, "schema", "map.pixel.weight"},
		{"a negative factor", []string{""}, [][]float32{ok}, 0, func(term, _ map[string]any) { term["factor"] = -0.5 }, nil, "schema", "map.pixel.factor"},
		{"fewer rows than classes", []string{"", "bolt"}, [][]float32{ok}, 0, nil, nil, "pixel", "bytes"},
		{"an Inf in a row", []string{""}, [][]float32{nan}, 0, nil, nil, "pixel", "non-finite"},
		{"a reference measured without the term", []string{""}, [][]float32{ok}, 0.7, nil, 0, "schema", "map.reference.pixel_weight"},
		{"a reference measured at another weight", []string{""}, [][]float32{ok}, 0.7, nil, 0.5, "schema", "weight 0.5"},
		{"a negative sigma", []string{""}, [][]float32{ok}, 0, func(term, _ map[string]any) { term["sigma"] = -1 }, nil, "schema", "map.pixel.sigma"},
		{"a sigma past the bound", []string{""}, [][]float32{ok}, 0, func(term, _ map[string]any) { term["sigma"] = 100 }, nil, "schema", "map.pixel.sigma"},
		{"a reference measured with the map's sigma for a term at its own", []string{""}, [][]float32{ok}, 0.7,
			func(term, _ map[string]any) { term["sigma"] = 1 }, 0.7, "schema", "map.reference.pixel_sigma"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyBundle(t)
			addPixel(t, dir, c.classes, c.rows, c.weight, c.edit)
			if c.refW != nil {
				addReference(t, dir, []string{""}, [][]float32{refRow(func(int) float32 { return 0.1 })}, func(ref, _ map[string]any) { ref["pixel_weight"] = c.refW })
			}
			err := Verify(dir)
			if err == nil {
				t.Fatal("bundle accepted")
			}
			var ce *CheckError
			if !errors.As(err, &ce) || ce.Check != c.check {
				t.Fatalf("error %v: want check %q", err, c.check)
			}
			if !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q should contain %q", err, c.msg)
			}
		})
	}
}
