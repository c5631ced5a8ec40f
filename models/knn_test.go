package models

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// addKnn copies the fixture's knn graphs (models/testdata/knn: the one fed the image, and the one fed the feature
// graph's layer1 and layer2, listed but not declared) into a copied fixture with banks of size vectors of 56
// values per class (value v, NaN for "nan") and declares map.knn at weight w; edit changes the declaration after
// the files are listed.
func addKnn(t *testing.T, dir string, classes []string, size int, v float32, w float64, edit func(term, files map[string]any)) {
	t.Helper()
	graph, err := os.ReadFile("testdata/knn/knn.onnx")
	if err != nil {
		t.Fatal(err)
	}
	layersGraph, err := os.ReadFile("testdata/knn/knn_layers.onnx")
	if err != nil {
		t.Fatal(err)
	}
	k4Graph, err := os.ReadFile("testdata/knn/knn_k4.onnx")
	if err != nil {
		t.Fatal(err)
	}
	var bank, src []byte
	for range classes {
		for j := range size {
			for range 56 {
				bank = binary.LittleEndian.AppendUint32(bank, math.Float32bits(v))
			}
			src = binary.LittleEndian.AppendUint64(src, uint64(j))
		}
	}
	listed := map[string]any{}
	for name, b := range map[string][]byte{"knn.onnx": graph, "knn_layers.onnx": layersGraph, "knn_k4.onnx": k4Graph, "bank.f32": bank, "src.u64": src} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		sum, err := FileSHA256(p)
		if err != nil {
			t.Fatal(err)
		}
		listed[name] = map[string]any{"sha256": sum, "size": len(b)}
	}
	editManifest(t, dir, func(m map[string]any) {
		cl := make([]any, len(classes))
		for i, c := range classes {
			cl[i] = c
		}
		term := map[string]any{"graph": "knn.onnx", "bank": "bank.f32", "sources": "src.u64", "classes": cl,
			"size": size, "dims": 56, "height": 64, "width": 64, "factor": 1, "weight": w}
		files := m["files"].(map[string]any)
		for k, v := range listed {
			files[k] = v
		}
		if edit != nil {
			edit(term, files)
		}
		m["map"].(map[string]any)["knn"] = term
	})
}

func TestKnnTermLoads(t *testing.T) {
	dir := copyBundle(t)
	addKnn(t, dir, []string{"", "bolt"}, 8, 0.25, 0.5, nil)
	b, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	rows, src := b.KnnBankFor("bolt")
	if len(rows) != 8*56 || rows[0] != 0.25 || len(src) != 8 || src[7] != 7 {
		t.Fatalf("bolt's bank: %d values (first %v), %d sources", len(rows), rows[0], len(src))
	}
	if r, _ := b.KnnBankFor("nut"); len(r) != 8*56 { // the global bank
		t.Fatalf("a class without a bank gets %d values", len(r))
	}
	if got := b.Manifest.Map.Knn.SmoothingSigma(b.Manifest.Map.Sigma); got != b.Manifest.Map.Sigma {
		t.Errorf("a term without its own sigma smooths at %g, want the map's %g", got, b.Manifest.Map.Sigma)
	}
	// the term at its own sigma, with a reference measured so
	sharp := copyBundle(t)
	addKnn(t, sharp, []string{""}, 8, 0.25, 0.5, func(term, _ map[string]any) { term["sigma"] = 2.0 })
	addReference(t, sharp, []string{""}, [][]float32{refRow(func(int) float32 { return 0.1 })}, func(ref, _ map[string]any) {
		ref["knn_weight"], ref["knn_sigma"] = 0.5, 2.0
	})
	if sb, err := Load(sharp); err != nil {
		t.Errorf("a term at sigma 2 with its reference: %v", err)
	} else if got := sb.Manifest.Map.Knn.SmoothingSigma(sb.Manifest.Map.Sigma); got != 2 {
		t.Errorf("the term's sigma: got %g, want 2", got)
	}
	// the graph fed the feature graph's layers instead of the image
	dir = copyBundle(t)
	addKnn(t, dir, []string{""}, 8, 0.25, 0.5, withLayersGraph)
	if b, err = Load(dir); err != nil {
		t.Fatal(err)
	}
	if got := b.Manifest.Map.Knn.LayersGraph; got != "knn_layers.onnx" {
		t.Fatalf("layers_graph %q", got)
	}
	// a feature graph replaced: the layers graph goes, the image graph stays
	m := b.Manifest
	if f := DropKnnLayersGraph(m); f != "knn_layers.onnx" || m.Map.Knn.LayersGraph != "" || m.Files["knn_layers.onnx"] != (FileEntry{}) || m.Map.Knn.Graph != "knn.onnx" {
		t.Fatalf("DropKnnLayersGraph: %q, term %+v", f, m.Map.Knn)
	}
}

func TestKnnTermKNearest(t *testing.T) {
	dir := copyBundle(t)
	addKnn(t, dir, []string{"", "bolt", "nut"}, 8, 0.25, 0.5, withK4(1, 4, 2))
	b, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	kt := b.Manifest.Map.Knn
	for _, c := range []struct {
		class string
		k     int
	}{{"", 1}, {"bolt", 4}, {"nut", 2}, {"washer", 1}} {
		if got := kt.KFor(c.class); got != c.k {
			t.Errorf("KFor(%q) = %d, want %d", c.class, got, c.k)
		}
	}
	if kt.KMaxOrOne() != 4 {
		t.Errorf("KMaxOrOne %d, want 4", kt.KMaxOrOne())
	}
	// without ks every class takes the nearest alone
	plain := &KnnTerm{Classes: []string{"", "bolt"}}
	if plain.KFor("bolt") != 1 || plain.KMaxOrOne() != 1 {
		t.Errorf("a term without k_max and ks: KFor %d, KMaxOrOne %d", plain.KFor("bolt"), plain.KMaxOrOne())
	}
}

// withK4 declares the fixture's graph with the 4 nearest distances (testdata/knn/knn_k4.onnx) and ks (addKnn's
// edit).
func withK4(ks ...int) func(term, files map[string]any) {
	return func(term, _ map[string]any) {
		term["graph"], term["k_max"] = "knn_k4.onnx", 4
		v := make([]any, len(ks))
		for i, k := range ks {
			v[i] = k
		}
		term["ks"] = v
	}
}

// withLayersGraph declares the fixture's layers graph, fed layer1 and layer2 (addKnn's edit).
func withLayersGraph(term, _ map[string]any) {
	term["layers_graph"] = "knn_layers.onnx"
	term["layers"] = []any{"layer1", "layer2"}
}

func TestKnnTermRefused(t *testing.T) {
	cases := []struct {
		name    string
		classes []string
		v       float32
		edit    func(term, files map[string]any)
		refW    any // the reference's knn_weight; nil: no reference
		check   string
		msg     string
	}{
		{"no global bank", []string{"bolt"}, 0.1, nil, nil, "schema", "map.knn.classes"},
		{"graph not listed", []string{""}, 0.1, func(_, files map[string]any) { delete(files, "knn.onnx") }, nil, "schema", "map.knn.graph"},
		{"an empty bank", []string{""}, 0.1, func(term, _ map[string]any) { term["size"] = 0 }, nil, "schema", "map.knn.size"},
		{"a distance map larger than the input", []string{""}, 0.1, func(term, _ map[string]any) { term["height"] = 300 }, nil, "schema", "300x64"},
		{"an isolated fraction of 1", []string{""}, 0.1, func(term, _ map[string]any) { term["isolated"] = 1.0 }, nil, "schema", "map.knn.isolated"},
		{"a negative weight", []string{""}, 0.1, func(term, _ map[string]any) { term["weight"] = -1.0 }, nil, "schema", "map.knn.weight"},
		{"dims the graph does not have", []string{""}, 0.1, func(term, _ map[string]any) { term["dims"] = 32 }, nil, "knn", "bank"},
		{"more classes than rows", []string{""}, 0.1, func(term, _ map[string]any) { term["classes"] = []any{"", "bolt"} }, nil, "knn", "bytes"},
		{"a NaN in a bank", []string{""}, float32(math.NaN()), nil, nil, "knn", "non-finite"},
		{"a reference measured without the term", []string{""}, 0.1, nil, 0.0, "schema", "map.reference.knn_weight"},
		{"a negative sigma", []string{""}, 0.1, func(term, _ map[string]any) { term["sigma"] = -1.0 }, nil, "schema", "map.knn.sigma"},
		{"a sigma past the bound", []string{""}, 0.1, func(term, _ map[string]any) { term["sigma"] = 100.0 }, nil, "schema", "map.knn.sigma"},
		{"a reference measured with the map's sigma for a term at its own", []string{""}, 0.1, func(term, _ map[string]any) { term["sigma"] = 2.0 }, 0.5,
			"schema", "map.reference.knn_sigma"},
		{"a layers graph not listed", []string{""}, 0.1, func(term, files map[string]any) { withLayersGraph(term, files); delete(files, "knn_layers.onnx") }, nil, "schema", "map.knn.layers_graph"},
		{"a layers graph without layers", []string{""}, 0.1, func(term, files map[string]any) { withLayersGraph(term, files); delete(term, "layers") }, nil, "schema", "needs map.knn.layers"},
		{"a layers graph fed a layer the features lack", []string{""}, 0.1, func(term, files map[string]any) {
			withLayersGraph(term, files)
			term["layers"] = []any{"layer1", "layer3"}
		}, nil, "schema", "[layer3] that are not outputs of the feature graph"},
		{"the image graph as the layers graph", []string{""}, 0.1, func(term, files map[string]any) {
			withLayersGraph(term, files)
			term["layers_graph"] = "knn.onnx"
		}, nil, "knn", "input"},
		{"ks for fewer classes", []string{"", "bolt"}, 0.1, withK4(1), nil, "schema", "map.knn.ks"},
		{"a k above k_max", []string{""}, 0.1, withK4(5), nil, "schema", "map.knn.ks"},
		{"a k of 0", []string{""}, 0.1, withK4(0), nil, "schema", "map.knn.ks"},
		{"a k_max above the bank", []string{""}, 0.1, func(term, files map[string]any) { withK4(1)(term, files); term["k_max"] = 9 }, nil, "schema", "map.knn.k_max"},
		{"k_max 4 on the graph of the nearest alone", []string{""}, 0.1, func(term, files map[string]any) { withK4(1)(term, files); term["graph"] = "knn.onnx" }, nil, "knn", "output"},
		{"the graph of 4 nearest declared without k_max", []string{""}, 0.1, func(term, _ map[string]any) { term["graph"] = "knn_k4.onnx" }, nil, "knn", "output"},
		{"a layers graph fed one layer too few", []string{""}, 0.1, func(term, files map[string]any) {
			withLayersGraph(term, files)
			term["layers"] = []any{"layer1"}
		}, nil, "knn", "inputs"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyBundle(t)
			addKnn(t, dir, c.classes, 8, c.v, 0.5, c.edit)
			if c.refW != nil {
				addReference(t, dir, []string{""}, [][]float32{refRow(func(int) float32 { return 0.1 })}, func(ref, _ map[string]any) { ref["knn_weight"] = c.refW })
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
