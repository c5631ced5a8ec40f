package models

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// graphNodes counts the nodes of a model's graph.
func graphNodes(t *testing.T, data []byte) int {
	t.Helper()
	n := 0
	err := walk(data, func(num protowire.Number, typ protowire.Type, g []byte) error {
		if num != 7 || typ != protowire.BytesType {
			return nil
		}
		return walk(g, func(f protowire.Number, ft protowire.Type, _ []byte) error {
			if f == graphNode && ft == protowire.BytesType {
				n++
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func outputNames(t *testing.T, data []byte) []string {
	t.Helper()
	io, err := parseModel(data)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range io.Outputs {
		names = append(names, o.Name)
	}
	return names
}

// The numbers that the cut graph computes the layers as the whole graph does are checked through ONNX Runtime
// in pipeline (TestCutFeatureGraphComputesTheSameLayers); here: what is kept and what is refused.
func TestCutGraph(t *testing.T) {
	fixtureGraph, err := os.ReadFile(filepath.Join(fixture, "features.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	mobilenet, mobErr := os.ReadFile("../../shared/backbones/mobilenetv2_fp32_features.onnx")
	// removed: the nodes the trainer's rule (vlmdiff_train.onnx_prune) removes from the same files
	cases := []struct {
		name    string
		data    []byte
		outputs []string
		removed int
	}{
		{"the fixture's first layer", fixtureGraph, []string{"layer1"}, 4},
		{"the fixture's layers in the other order", fixtureGraph, []string{"layer2", "layer1"}, 0},
		{"MobileNetV2 to block12", mobilenet, []string{"block2", "block5", "block12"}, 24},
		{"MobileNetV2 to block5", mobilenet, []string{"block5", "block2"}, 64},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.data == nil {
				t.Skipf("../shared/backbones is absent: %v", mobErr)
			}
			all := graphNodes(t, c.data)
			cut, removed, err := CutGraph(c.data, c.outputs)
			if err != nil {
				t.Fatal(err)
			}
			if got := outputNames(t, cut); !slices.Equal(got, c.outputs) {
				t.Errorf("outputs %v, want %v", got, c.outputs)
			}
			left := graphNodes(t, cut)
			if left+removed != all || removed != c.removed {
				t.Errorf("%d nodes left + %d removed (want %d removed), the graph had %d", left, removed, c.removed, all)
			}
			io, err := parseModel(cut)
			if err != nil || len(io.Inputs) != 1 {
				t.Fatalf("inputs %v (%v), want the image input alone", io, err)
			}
			// cutting again to the same outputs removes nothing and changes nothing
			again, n, err := CutGraph(cut, c.outputs)
			if err != nil || n != 0 || !bytes.Equal(again, cut) {
				t.Errorf("a second cut removed %d nodes (%v) or changed the bytes", n, err)
			}
		})
	}
	t.Run("MobileNetV2's shallow layers drop the deep ones' weights", func(t *testing.T) {
		if mobilenet == nil {
			t.Skipf("../shared/backbones is absent: %v", mobErr)
		}
		cut, removed, err := CutGraph(mobilenet, []string{"block2", "block5"})
		if err != nil {
			t.Fatal(err)
		}
		if removed < 50 || len(cut) > len(mobilenet)/4 {
			t.Errorf("block2+block5: %d nodes removed, %d of %d bytes left", removed, len(cut), len(mobilenet))
		}
	})
}

// withIf returns data with one more node in its graph: an If whose branches are graphs (control flow).
func withIf(t *testing.T, data []byte) []byte {
	t.Helper()
	var attr []byte
	attr = protowire.AppendTag(attr, 1, protowire.BytesType)
	attr = protowire.AppendString(attr, "then_branch")
	attr = protowire.AppendTag(attr, 6, protowire.BytesType) // g
	attr = protowire.AppendBytes(attr, nil)
	var node []byte
	node = protowire.AppendTag(node, 1, protowire.BytesType)
	node = protowire.AppendString(node, "cond")
	node = protowire.AppendTag(node, 2, protowire.BytesType)
	node = protowire.AppendString(node, "e")
	node = protowire.AppendTag(node, 4, protowire.BytesType)
	node = protowire.AppendString(node, "If")
	node = protowire.AppendTag(node, 5, protowire.BytesType)
	node = protowire.AppendBytes(node, attr)
	fields, err := rawFields(data)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, f := range fields {
		if f.num != 7 {
			out = append(out, f.raw...)
			continue
		}
		g := slices.Clone(f.val)
		g = protowire.AppendTag(g, graphNode, protowire.BytesType)
		g = protowire.AppendBytes(g, node)
		out = protowire.AppendTag(out, 7, protowire.BytesType)
		out = protowire.AppendBytes(out, g)
	}
	return out
}

func TestCutGraphRefuses(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(fixture, "features.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		data    []byte
		outputs []string
		want    string
	}{
		{"an output the graph does not declare", data, []string{"layer1", "layer9"}, `"layer9" is not an output`},
		{"an output named twice", data, []string{"layer1", "layer1"}, "named twice"},
		{"no outputs", data, nil, "no outputs"},
		{"not ONNX", []byte("not a model at all"), []string{"layer1"}, "cut graph"},
		{"control flow", withIf(t, data), []string{"layer1"}, "control-flow"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := CutGraph(c.data, c.outputs)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one naming %q", err, c.want)
			}
			if c.name == "control flow" && !errors.Is(err, ErrNotCut) {
				t.Errorf("control flow: %v does not wrap ErrNotCut", err)
			}
		})
	}
}
