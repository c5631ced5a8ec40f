package models

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// snapshot returns every file under dir with its bytes, so a test can say "byte-identical".
func snapshot(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		files[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func sameFiles(t *testing.T, what string, before, after map[string][]byte) {
	t.Helper()
	if len(before) != len(after) {
		t.Errorf("%s: %d files before, %d after", what, len(before), len(after))
	}
	for name, b := range before {
		if !bytes.Equal(b, after[name]) {
			t.Errorf("%s: %s changed", what, name)
		}
	}
}

// onlyEntries fails when dir holds anything but the named entries (a temp or old directory left behind).
func onlyEntries(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var have []string
	for _, e := range ents {
		have = append(have, e.Name())
	}
	if strings.Join(have, ",") != strings.Join(names, ",") {
		t.Errorf("%s holds %v, want exactly %v", dir, have, names)
	}
}

// copyInto copies the fixture bundle to parent/name.
func copyInto(t *testing.T, parent, name string) string {
	t.Helper()
	dir := filepath.Join(parent, name)
	if err := CopyBundle(fixture, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestReplaceFeatures(t *testing.T) {
	fixtureFeatures := filepath.Join(fixture, "features.onnx")
	mobilenet := "../../shared/backbones/mobilenetv2_fp32_features.onnx"
	cases := []struct {
		name    string
		graph   string
		swap    FeatureSwap
		inPlace bool
	}{
		{"one layer of the fixture's own graph, new directory", fixtureFeatures,
			FeatureSwap{Input: "image", Layers: []FeatureLayer{{Name: "layer2", Weight: 1}}}, false},
		{"in place", fixtureFeatures,
			FeatureSwap{Input: "image", Layers: []FeatureLayer{{Name: "layer1", Weight: 2}}}, true},
		{"recorded as int8 with 8-bit weights", fixtureFeatures,
			FeatureSwap{Input: "image", Layers: []FeatureLayer{{Name: "layer1", Weight: 1}}, Precision: PrecisionInt8, WeightBits: 8}, false},
		{"MobileNetV2 with its own normalisation", mobilenet,
			FeatureSwap{Input: "input", Layers: []FeatureLayer{{Name: "block2", Weight: 1}, {Name: "block5", Weight: 0.5}},
				Mean: []float32{0.5, 0.5, 0.5}, Std: []float32{0.25, 0.25, 0.25}}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := os.Stat(c.graph); err != nil {
				t.Skipf("%s is absent (../shared/backbones): %v", c.graph, err)
			}
			parent := t.TempDir()
			src := copyInto(t, parent, "src")
			before := snapshot(t, src)
			dst := filepath.Join(parent, "dst")
			if c.inPlace {
				dst = src
			}
			c.swap.Graph = c.graph
			m, err := ReplaceFeatures(src, dst, c.swap)
			if err != nil {
				t.Fatal(err)
			}
			b, err := Load(dst)
			if err != nil {
				t.Fatalf("the new bundle does not load: %v", err)
			}
			got := b.Manifest
			if got.Version != m.Version || !strings.HasPrefix(got.Version, "1.0.0+") || len(got.Features.Layers) != len(c.swap.Layers) ||
				got.Features.Input != c.swap.Input || len(got.Features.Mean) != len(c.swap.Mean) ||
				got.Features.Precision != c.swap.Precision || got.Features.WeightBits != c.swap.WeightBits {
				t.Errorf("manifest: version %q, features %+v", got.Version, got.Features)
			}
			if outs := got.Graphs[RoleFeatures].Outputs; len(outs) != len(c.swap.Layers) || outs[0].Name != c.swap.Layers[0].Name {
				t.Errorf("features graph declares outputs %v, want just %v", outs, c.swap.Layers)
			}
			// the given graph cut to the layers (CutGraph), or the file itself when there is nothing to cut
			given, _ := os.ReadFile(c.graph)
			var names []string
			for _, l := range c.swap.Layers {
				names = append(names, l.Name)
			}
			want, removed, err := CutGraph(given, names)
			if err != nil {
				t.Fatal(err)
			}
			if removed == 0 {
				want = given
			}
			have, _ := os.ReadFile(filepath.Join(dst, "features.onnx"))
			if !bytes.Equal(want, have) {
				t.Errorf("features.onnx is not the given graph cut to %v (%d nodes removed)", names, removed)
			}
			if io, err := ReadGraphIO(filepath.Join(dst, "features.onnx")); removed > 0 && (err != nil || len(io.Outputs) != len(names)) {
				t.Errorf("features.onnx outputs %v (%v), want %v", io, err, names)
			}
			// the reconstruction graphs are the source's, byte for byte
			for _, role := range []string{RoleVAEEncoder, RoleDenoiser, RoleVAEDecoder, RoleHint} {
				f := got.Graphs[role].File
				if h, _ := os.ReadFile(filepath.Join(dst, f)); !bytes.Equal(h, before[f]) {
					t.Errorf("%s differs from the source's", f)
				}
			}
			if c.inPlace {
				onlyEntries(t, parent, "src")
			} else {
				sameFiles(t, "source", before, snapshot(t, src))
				onlyEntries(t, parent, "dst", "src")
			}
		})
	}
}

// TestReplaceFeaturesFailureChangesNothing: a swap that fails after the files were copied (the new manifest does
// not validate) leaves the source and an existing destination byte-identical and no directory behind; so does
// one refused up front for its graph, with ErrFeatureGraph.
func TestReplaceFeaturesFailureChangesNothing(t *testing.T) {
	graph := filepath.Join(fixture, "features.onnx")
	cases := []struct {
		name     string
		swap     FeatureSwap
		inPlace  bool
		want     string // in the error
		badGraph bool
	}{
		{"midway, new directory", FeatureSwap{Graph: graph, Input: "image", Layers: []FeatureLayer{{Name: "layer1", Weight: 0}}},
			false, "positive weight", false},
		{"midway, over an existing bundle", FeatureSwap{Graph: graph, Input: "image", Layers: []FeatureLayer{{Name: "layer1", Weight: 1}},
			Mean: []float32{0.5, 0.5}, Std: []float32{1, 1}}, false, "features.mean/std", false},
		{"unknown precision", FeatureSwap{Graph: graph, Input: "image", Layers: []FeatureLayer{{Name: "layer1", Weight: 1}}, Precision: "fp8"},
			false, `features.precision: must be absent (float32) or "int8", got "fp8"`, false},
		{"weight bits of a float graph", FeatureSwap{Graph: graph, Input: "image", Layers: []FeatureLayer{{Name: "layer1", Weight: 1}}, WeightBits: 8},
			false, `features.weight_bits: is for an int8 feature graph (features.precision "int8"), got 8 with precision ""`, false},
		{"weight bits out of range", FeatureSwap{Graph: graph, Input: "image", Layers: []FeatureLayer{{Name: "layer1", Weight: 1}}, Precision: PrecisionInt8, WeightBits: 4},
			false, "features.weight_bits: must be 7 or 8 (or absent), got 4", false},
		{"midway, in place", FeatureSwap{Graph: graph, Input: "image", Layers: []FeatureLayer{{Name: "layer1", Weight: -1}}},
			true, "positive weight", false},
		{"missing output", FeatureSwap{Graph: graph, Input: "image", Layers: []FeatureLayer{{Name: "layer9", Weight: 1}}},
			false, `no output "layer9" (outputs: layer1, layer2)`, true},
		{"wrong input name", FeatureSwap{Graph: graph, Input: "input", Layers: []FeatureLayer{{Name: "layer1", Weight: 1}}},
			false, `exactly one input named "input"`, true},
		{"graph with four inputs", FeatureSwap{Graph: filepath.Join(fixture, "denoiser.onnx"), Input: "x", Layers: []FeatureLayer{{Name: "eps", Weight: 1}}},
			false, `exactly one input named "x"`, true},
		{"not an ONNX file", FeatureSwap{Graph: filepath.Join(fixture, "conditioning.bin"), Input: "image", Layers: []FeatureLayer{{Name: "layer1", Weight: 1}}},
			false, "conditioning.bin", true},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			parent := t.TempDir()
			src := copyInto(t, parent, "src")
			before := snapshot(t, src)
			dst, entries := filepath.Join(parent, "dst"), []string{"src"}
			var dstBefore map[string][]byte
			switch {
			case c.inPlace:
				dst = src
			case i == 1: // an existing bundle at the destination
				copyInto(t, parent, "dst")
				editManifest(t, dst, func(m map[string]any) { m["description"] = "the one at dst" })
				dstBefore, entries = snapshot(t, dst), []string{"dst", "src"}
			}
			_, err := ReplaceFeatures(src, dst, c.swap)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
			if errors.Is(err, ErrFeatureGraph) != c.badGraph {
				t.Errorf("errors.Is(err, ErrFeatureGraph) = %v, want %v (%v)", !c.badGraph, c.badGraph, err)
			}
			sameFiles(t, "source", before, snapshot(t, src))
			if dstBefore != nil {
				sameFiles(t, "destination", dstBefore, snapshot(t, dst))
			}
			onlyEntries(t, parent, entries...)
		})
	}
}

// TestReplaceFeaturesDropsTheKnnLayersGraph: the nearest-normal term's layers graph is fed from the feature graph,
// whose replacement (another network, a quantised copy) no longer gives the values its banks were built from;
// the new bundle scores the term from the image again, with its banks and image graph kept.
func TestReplaceFeaturesDropsTheKnnLayersGraph(t *testing.T) {
	parent := t.TempDir()
	src := copyInto(t, parent, "src")
	addKnn(t, src, []string{""}, 8, 0.25, 0.5, withLayersGraph)
	dst := filepath.Join(parent, "dst")
	swap := FeatureSwap{Graph: filepath.Join(fixture, "features.onnx"), Input: "image",
		Layers: []FeatureLayer{{Name: "layer1", Weight: 1}, {Name: "layer2", Weight: 1}}}
	if _, err := ReplaceFeatures(src, dst, swap); err != nil {
		t.Fatal(err)
	}
	b, err := Load(dst)
	if err != nil {
		t.Fatalf("the new bundle does not load: %v", err)
	}
	k := b.Manifest.Map.Knn
	if k == nil || k.LayersGraph != "" || k.Graph != "knn.onnx" {
		t.Fatalf("map.knn %+v: want the image graph alone", k)
	}
	if _, err := os.Stat(filepath.Join(dst, "knn_layers.onnx")); !os.IsNotExist(err) {
		t.Errorf("knn_layers.onnx is still in the new bundle: %v", err)
	}
	if _, ok := b.Manifest.Files["knn_layers.onnx"]; ok {
		t.Error("files still lists knn_layers.onnx")
	}
}
