// Package ortcheck runs recorded ONNX test cases through ONNX Runtime and compares the outputs with the recorded
// ones. The trainer runs feature backbones in PyTorch through its own ONNX interpreter (trainer/python's
// onnx_torch); the daemon runs the same graphs through ONNX Runtime. There is no Python onnxruntime here, so the
// interpreter's operators are checked against the runtime that matters from Go: tests/onnx_op_cases.py writes one
// case per operator variant with onnx_torch's outputs, and this package says how far ONNX Runtime is from them.
package ortcheck

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"

	ort "github.com/yalue/onnxruntime_go"
)

// Tensor is one recorded tensor: a raw little-endian file with its shape and element type
// ("float32", "int64" or "bool").
type Tensor struct {
	File  string  `json:"file"`
	Shape []int64 `json:"shape"`
	Type  string  `json:"type"`
}

// Case is one graph with its input and the outputs the interpreter under test produced.
type Case struct {
	Name    string            `json:"-"`
	Graph   string            `json:"graph"`
	Tol     float64           `json:"tol"`
	Inputs  map[string]Tensor `json:"inputs"`
	Outputs map[string]Tensor `json:"outputs"`
}

// Result is the comparison of one output. Float outputs are compared by relative L2 error (RelL2); integer and
// bool outputs must match exactly (Mismatches counts differing elements).
type Result struct {
	Case, Output string
	Type         string
	RelL2        float64
	Mismatches   int
	OK           bool
}

// Load reads dir/cases.json (a list of case names) and each dir/<name>.json.
func Load(dir string) ([]Case, error) {
	var names []string
	if err := readJSON(filepath.Join(dir, "cases.json"), &names); err != nil {
		return nil, err
	}
	cs := make([]Case, 0, len(names))
	for _, n := range names {
		var c Case
		if err := readJSON(filepath.Join(dir, n+".json"), &c); err != nil {
			return nil, err
		}
		c.Name = n
		cs = append(cs, c)
	}
	return cs, nil
}

func readJSON(p string, v any) error {
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

// Run runs one case through ONNX Runtime on the CPU (the runtime must be initialised, e.g. by
// pipeline.InitRuntime) and compares every output.
func Run(dir string, c Case) ([]Result, error) {
	inNames := sortedKeys(c.Inputs)
	outNames := sortedKeys(c.Outputs)
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, err
	}
	defer so.Destroy()
	if err := so.SetIntraOpNumThreads(1); err != nil {
		return nil, err
	}
	sess, err := ort.NewDynamicAdvancedSession(filepath.Join(dir, c.Graph), inNames, outNames, so)
	if err != nil {
		return nil, fmt.Errorf("case %s: session: %w", c.Name, err)
	}
	defer sess.Destroy()
	var ins []ort.Value
	defer func() {
		for _, v := range ins {
			v.Destroy()
		}
	}()
	for _, n := range inNames {
		v, err := readValue(dir, c.Inputs[n])
		if err != nil {
			return nil, fmt.Errorf("case %s: input %s: %w", c.Name, n, err)
		}
		ins = append(ins, v)
	}
	outs := make([]ort.Value, len(outNames))
	if err := sess.Run(ins, outs); err != nil {
		return nil, fmt.Errorf("case %s: run: %w", c.Name, err)
	}
	defer func() {
		for _, v := range outs {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	res := make([]Result, 0, len(outNames))
	for i, n := range outNames {
		want := c.Outputs[n]
		raw, err := os.ReadFile(filepath.Join(dir, want.File))
		if err != nil {
			return nil, err
		}
		if got := []int64(outs[i].GetShape()); !slices.Equal(got, want.Shape) {
			return nil, fmt.Errorf("case %s: output %s has shape %v in ONNX Runtime, %v recorded", c.Name, n, got, want.Shape)
		}
		r := Result{Case: c.Name, Output: n, Type: want.Type}
		switch g := outs[i].(type) {
		case *ort.Tensor[float32]:
			if want.Type != "float32" {
				return nil, fmt.Errorf("case %s: output %s is float32 in ONNX Runtime, %s recorded", c.Name, n, want.Type)
			}
			r.RelL2 = relL2(g.GetData(), f32s(raw))
			r.OK = r.RelL2 <= c.Tol
		case *ort.Tensor[int64]:
			if want.Type != "int64" {
				return nil, fmt.Errorf("case %s: output %s is int64 in ONNX Runtime, %s recorded", c.Name, n, want.Type)
			}
			for j, v := range g.GetData() {
				if v != int64(binary.LittleEndian.Uint64(raw[8*j:])) {
					r.Mismatches++
				}
			}
			r.OK = r.Mismatches == 0
		case *ort.Tensor[bool]:
			if want.Type != "bool" {
				return nil, fmt.Errorf("case %s: output %s is bool in ONNX Runtime, %s recorded", c.Name, n, want.Type)
			}
			for j, v := range g.GetData() {
				if v != (raw[j] != 0) {
					r.Mismatches++
				}
			}
			r.OK = r.Mismatches == 0
		default:
			return nil, fmt.Errorf("case %s: output %s has an unsupported type %T", c.Name, n, outs[i])
		}
		res = append(res, r)
	}
	return res, nil
}

func readValue(dir string, t Tensor) (ort.Value, error) {
	raw, err := os.ReadFile(filepath.Join(dir, t.File))
	if err != nil {
		return nil, err
	}
	shape := ort.NewShape(t.Shape...)
	switch t.Type {
	case "float32":
		return ort.NewTensor(shape, f32s(raw))
	case "int64":
		d := make([]int64, len(raw)/8)
		for i := range d {
			d[i] = int64(binary.LittleEndian.Uint64(raw[8*i:]))
		}
		return ort.NewTensor(shape, d)
	case "bool":
		d := make([]bool, len(raw))
		for i := range d {
			d[i] = raw[i] != 0
		}
		return ort.NewTensor(shape, d)
	}
	return nil, fmt.Errorf("unsupported type %q", t.Type)
}

func relL2(got, want []float32) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range got {
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	if num == 0 {
		return 0
	}
	return math.Sqrt(num / math.Max(den, 1e-30))
}

func f32s(raw []byte) []float32 {
	d := make([]float32, len(raw)/4)
	for i := range d {
		d[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return d
}

func sortedKeys(m map[string]Tensor) []string {
	k := make([]string, 0, len(m))
	for n := range m {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}
