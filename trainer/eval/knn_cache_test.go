package eval

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// fixtureKnnGraphs is a MakeKnnGraph that copies the fixture's knn graphs (models/testdata/knn) and counts calls.
type fixtureKnnGraphs struct{ calls int }

func (g *fixtureKnnGraphs) make(_ context.Context, spec KnnSpec, _ *models.Manifest, features, dst string) error {
	g.calls++
	src := "../../models/testdata/knn/knn"
	if features != "" {
		src += "_layers"
	}
	switch spec.KMax {
	case 0, 1:
		src += ".onnx"
	case 4:
		src += "_k4.onnx"
	default:
		return fmt.Errorf("the fixture has no knn graph of %d nearest distances", spec.KMax)
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}

// knnFiles reads a bundle's term: map.knn and its files' bytes.
func knnFiles(t *testing.T, b string) (*models.KnnTerm, map[string][]byte) {
	t.Helper()
	m, err := models.ReadManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	if m.Map.Knn == nil {
		t.Fatalf("%s has no nearest-normal term", b)
	}
	files := map[string][]byte{}
	for _, f := range []string{KnnGraphFile, KnnLayersGraphFile, KnnBankFile, KnnSourcesFile} {
		data, err := os.ReadFile(filepath.Join(b, f))
		if f == KnnLayersGraphFile && os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		files[f] = data
	}
	return m.Map.Knn, files
}

// TestKnnCacheWritesWhatABuildWrites: a term taken from the cache is byte for byte the term a build writes
// (graphs, banks, sources, map.knn), without the graphs or the banks being made again; whatever the banks
// depend on (the normals, their files, the recipe, the input) makes a new build, and what they do not (the
// feature weights) does not.
func TestKnnCacheWritesWhatABuildWrites(t *testing.T) {
	dir := t.TempDir()
	train := pixelTrain(t, dir)
	cpu := pipeline.Options{Providers: []string{"cpu"}, Threads: 2}
	ctx := context.Background()
	spec := KnnSpec{Backbone: filepath.Join(fixtureBundle, "features.onnx"), Layers: []string{"layer1", "layer2"}, Bank: 24}
	bundle := func(name string, edit func(m *models.Manifest)) string {
		b := filepath.Join(dir, name)
		copyDir(t, fixtureBundle, b)
		if edit != nil {
			if err := updateManifest(b, "test", func(m *models.Manifest) error { edit(m); return nil }); err != nil {
				t.Fatal(err)
			}
		}
		return b
	}

	plain := &fixtureKnnGraphs{}
	built := bundle("built", nil)
	if _, err := AddKnn(ctx, built, spec, plain.make, train, 2, cpu, "train"); err != nil {
		t.Fatal(err)
	}
	wantTerm, wantFiles := knnFiles(t, built)
	if wantTerm.LayersGraph == "" {
		t.Fatal("the fixture's term has no layers graph: the test would not cover it")
	}

	var cache KnnCache
	graphs := &fixtureKnnGraphs{}
	add := func(b string, spec KnnSpec, normal []dataset.Item) *KnnBanks {
		t.Helper()
		kb, err := cache.AddKnn(ctx, b, spec, graphs.make, normal, 2, cpu, "train")
		if err != nil {
			t.Fatal(err)
		}
		return kb
	}
	if kb := add(bundle("first", nil), spec, train); kb.Reused || graphs.calls != 2 {
		t.Fatalf("first build: reused %v, %d graphs made", kb.Reused, graphs.calls)
	}
	reweighed := bundle("reweighed", func(m *models.Manifest) { m.Features.Layers[0].Weight = 0.25 })
	if kb := add(reweighed, spec, train); !kb.Reused || graphs.calls != 2 {
		t.Fatalf("the same term for a bundle with other feature weights: reused %v, %d graphs made", kb.Reused, graphs.calls)
	}
	term, files := knnFiles(t, reweighed)
	if !reflect.DeepEqual(term, wantTerm) {
		t.Errorf("map.knn from the cache %+v, built %+v", term, wantTerm)
	}
	for f, want := range wantFiles {
		if !bytes.Equal(files[f], want) {
			t.Errorf("%s from the cache differs from the built one", f)
		}
	}

	// the graph of the 4 nearest distances with a count per class: the banks from the cache, the two graphs made
	// once for that count and then kept too
	k4 := spec
	k4.KMax, k4.Ks = 4, map[string]int{"widget": 4}
	kbK := bundle("k4", nil)
	if kb := add(kbK, k4, train); !kb.Reused || graphs.calls != 4 {
		t.Fatalf("the same banks with the graph of 4 nearest distances: reused %v, %d graphs made (want 4)", kb.Reused, graphs.calls)
	}
	k4.Ks = map[string]int{"gadget": 2}
	kbK2 := bundle("k4-other", nil)
	if kb := add(kbK2, k4, train); !kb.Reused || graphs.calls != 4 {
		t.Fatalf("the same banks and graph with other counts: reused %v, %d graphs made (want 4)", kb.Reused, graphs.calls)
	}
	for _, c := range []struct {
		b    string
		want []int
	}{{kbK, []int{1, 1, 4}}, {kbK2, []int{1, 2, 1}}} {
		term, files := knnFiles(t, c.b)
		if term.KMax != 4 || !reflect.DeepEqual(term.Ks, c.want) || !bytes.Equal(files[KnnBankFile], wantFiles[KnnBankFile]) || term.LayersGraph == "" {
			t.Errorf("%s: k_max %d ks %v (want 4, %v for %q), same banks %v, layers graph %q", c.b, term.KMax, term.Ks, c.want, term.Classes,
				bytes.Equal(files[KnnBankFile], wantFiles[KnnBankFile]), term.LayersGraph)
		}
		if err := models.Verify(c.b); err != nil {
			t.Errorf("%s does not verify: %v", c.b, err)
		}
	}
	// and the nearest alone again: the first graphs, from the cache
	if kb := add(bundle("k1-again", nil), spec, train); !kb.Reused || graphs.calls != 4 {
		t.Fatalf("the nearest alone after the 4 nearest: reused %v, %d graphs made (want 4)", kb.Reused, graphs.calls)
	}

	// each of these is another term: built anew, not taken from the cache
	touched := filepath.Join(dir, "touched")
	if err := os.MkdirAll(touched, 0o755); err != nil {
		t.Fatal(err)
	}
	moved := append([]dataset.Item(nil), train...)
	moved[0].Path = filepath.Join(touched, "n0.png")
	data, err := os.ReadFile(train[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(moved[0].Path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	rewritten := append([]dataset.Item(nil), train...)
	rewritten[1].Path = filepath.Join(touched, "n1.png")
	if data, err = os.ReadFile(train[1].Path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rewritten[1].Path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	bigger := spec
	bigger.Bank = 16
	for _, tc := range []struct {
		name   string
		bundle func(m *models.Manifest)
		spec   KnnSpec
		normal []dataset.Item
		before func()
	}{
		{name: "one normal fewer", spec: spec, normal: train[:4]},
		{name: "another class", spec: spec, normal: func() []dataset.Item {
			n := append([]dataset.Item(nil), train...)
			n[4].Class = "gizmo"
			return n
		}()},
		{name: "another bank size", spec: bigger, normal: train},
		{name: "another input normalisation", bundle: func(m *models.Manifest) { m.Input.Mean[0] = 0.5 }, spec: spec, normal: train},
		{name: "a normal at another path", spec: spec, normal: moved},
		{name: "a normal rewritten", spec: spec, normal: rewritten, before: func() {
			later := time.Now().Add(time.Hour)
			if err := os.Chtimes(rewritten[1].Path, later, later); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.before != nil {
				add(bundle("pre-"+tc.name, nil), tc.spec, tc.normal) // kept before the change
				tc.before()
			}
			calls := graphs.calls
			if kb := add(bundle(tc.name, tc.bundle), tc.spec, tc.normal); kb.Reused || graphs.calls == calls {
				t.Errorf("reused %v, %d graphs made: want a new build", kb.Reused, graphs.calls-calls)
			}
		})
	}
	// the feature graph decides only the layers graph: made once per feature graph, the banks reused
	another := bundle("another feature graph", func(m *models.Manifest) {
		// other bytes of the graph the layers graph is made from: a doc_string (field 6) appended, which protobuf
		// merges into the model
		p := filepath.Join(dir, "another feature graph", m.Graphs[models.RoleFeatures].File)
		f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, werr := f.Write([]byte{6<<3 | 2, 1, 'x'})
		if cerr := f.Close(); werr != nil || cerr != nil {
			t.Fatal(werr, cerr)
		}
		sum, err := models.FileSHA256(p)
		if err != nil {
			t.Fatal(err)
		}
		e := m.Files[m.Graphs[models.RoleFeatures].File]
		e.SHA256, e.Size = sum, e.Size+3
		m.Files[m.Graphs[models.RoleFeatures].File] = e
	})
	again := filepath.Join(dir, "again")
	copyDir(t, another, again)
	for _, tc := range []struct {
		name   string
		bundle string
		graphs int    // graphs made
		reason string // in NotShared; "" with a layers graph
	}{
		{"a feature graph without the term's layers", bundle("lacks layer2", func(m *models.Manifest) {
			m.Features.Layers = m.Features.Layers[:1]
			g := m.Graphs[models.RoleFeatures]
			g.Outputs = g.Outputs[:1]
			m.Graphs[models.RoleFeatures] = g
		}), 0, "[layer2]"},
		// the map does not weigh layer2, but the feature graph still outputs it: the scorer fetches it for the term
		{"a map without one of the term's layers", bundle("maps layer1", func(m *models.Manifest) { m.Features.Layers = m.Features.Layers[:1] }), 0, ""},
		{"another feature graph", another, 1, ""},
		{"that feature graph again", again, 0, ""},
	} {
		calls := graphs.calls
		kb := add(tc.bundle, spec, train)
		if !kb.Reused || graphs.calls-calls != tc.graphs || (tc.reason == "") != (kb.LayersGraph != "") || !strings.Contains(kb.NotShared, tc.reason) {
			t.Errorf("%s: reused %v, %d graphs made (want %d), layers graph %q, reason %q (want %q)", tc.name, kb.Reused, graphs.calls-calls, tc.graphs, kb.LayersGraph, kb.NotShared, tc.reason)
		}
		m, err := models.ReadManifest(tc.bundle)
		if err != nil {
			t.Fatal(err)
		}
		if (m.Map.Knn.LayersGraph != "") != (tc.reason == "") {
			t.Errorf("%s: map.knn.layers_graph %q", tc.name, m.Map.Knn.LayersGraph)
		}
		_, files := knnFiles(t, tc.bundle)
		if !bytes.Equal(files[KnnBankFile], wantFiles[KnnBankFile]) || !bytes.Equal(files[KnnSourcesFile], wantFiles[KnnSourcesFile]) {
			t.Errorf("%s: the banks differ from the built ones", tc.name)
		}
	}
}
