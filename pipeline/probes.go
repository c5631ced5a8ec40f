package pipeline

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/vlmdiff/edge/models"
)

// probeTensor is one tensor of a parity probe: a raw little-endian file with its shape and element type.
type probeTensor struct {
	File  string  `json:"file"`
	Shape []int64 `json:"shape"`
	Type  string  `json:"type"`
}

type probe struct {
	Inputs  map[string]probeTensor `json:"inputs"`
	Outputs map[string]probeTensor `json:"outputs"`
}

// ProbeResult is the parity of one graph: the worst relative L2 error over its outputs.
type ProbeResult struct {
	Role   string
	Output string
	RelL2  float64
}

// CheckProbes runs each graph of the bundle in dir through ONNX Runtime on the inputs the exporter recorded
// in probeDir (<role>.json, written by the trainer's export stage from PyTorch) and compares the outputs with
// PyTorch's. The export stage fails when any relative L2 error exceeds tol: a graph that exports without error
// but computes something else (an unsupported op lowered wrongly, a shape specialised to the probe) must never
// reach a line.
// DefaultParityTolerance is the largest relative L2 error between ONNX Runtime and PyTorch that the export
// stage and `vlmdiff bundle parity` accept unless told otherwise.
const DefaultParityTolerance = 1e-4

func CheckProbes(dir, probeDir string, tol float64, opt Options) ([]ProbeResult, error) {
	if err := InitRuntime(opt.Library); err != nil {
		return nil, err
	}
	m, err := models.ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	roles := make([]string, 0, len(m.Graphs))
	for r := range m.Graphs {
		roles = append(roles, r)
	}
	sort.Strings(roles)
	var results []ProbeResult
	checked := 0
	for _, role := range roles {
		pf := filepath.Join(probeDir, role+".json")
		b, err := os.ReadFile(pf)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return results, err
		}
		var p probe
		if err := json.Unmarshal(b, &p); err != nil {
			return results, fmt.Errorf("probe %s: %w", pf, err)
		}
		rs, err := checkProbe(filepath.Join(dir, m.Graphs[role].File), probeDir, role, p, opt)
		if err != nil {
			return results, fmt.Errorf("parity of %s graph: %w", role, err)
		}
		checked++
		for _, r := range rs {
			results = append(results, r)
			if !(r.RelL2 <= tol) {
				return results, fmt.Errorf("parity of %s graph: output %s differs from PyTorch by %.3g relative L2 (limit %.3g)",
					role, r.Output, r.RelL2, tol)
			}
		}
	}
	if checked == 0 {
		return nil, fmt.Errorf("no probe files for any graph of %s in %s", dir, probeDir)
	}
	return results, nil
}

func checkProbe(graphPath, probeDir, role string, p probe, opt Options) ([]ProbeResult, error) {
	inNames := make([]string, 0, len(p.Inputs))
	for n := range p.Inputs {
		inNames = append(inNames, n)
	}
	sort.Strings(inNames)
	outNames := make([]string, 0, len(p.Outputs))
	for n := range p.Outputs {
		outNames = append(outNames, n)
	}
	sort.Strings(outNames)
	so, _, err := newSessionOptions(Options{Providers: []string{"cpu"}, Threads: opt.Threads}, &cudaFallbackOnce)
	if err != nil {
		return nil, err
	}
	defer so.Destroy()
	sess, err := ort.NewDynamicAdvancedSession(graphPath, inNames, outNames, so)
	if err != nil {
		return nil, err
	}
	defer sess.Destroy()
	var inputs []ort.Value
	defer func() {
		for _, v := range inputs {
			v.Destroy()
		}
	}()
	for _, n := range inNames {
		t := p.Inputs[n]
		raw, err := os.ReadFile(filepath.Join(probeDir, t.File))
		if err != nil {
			return nil, err
		}
		shape := ort.NewShape(t.Shape...)
		switch t.Type {
		case "float32":
			v, err := ort.NewTensor(shape, f32s(raw))
			if err != nil {
				return nil, fmt.Errorf("input %s: %w", n, err)
			}
			inputs = append(inputs, v)
		case "int64":
			d := make([]int64, len(raw)/8)
			for i := range d {
				d[i] = int64(binary.LittleEndian.Uint64(raw[8*i:]))
			}
			v, err := ort.NewTensor(shape, d)
			if err != nil {
				return nil, fmt.Errorf("input %s: %w", n, err)
			}
			inputs = append(inputs, v)
		default:
			return nil, fmt.Errorf("input %s: unsupported probe type %q", n, t.Type)
		}
	}
	outs := make([]ort.Value, len(outNames))
	if err := sess.Run(inputs, outs); err != nil {
		return nil, err
	}
	var res []ProbeResult
	for i, n := range outNames {
		got, ok := outs[i].(*ort.Tensor[float32])
		if !ok {
			return nil, fmt.Errorf("output %s is not float32", n)
		}
		raw, err := os.ReadFile(filepath.Join(probeDir, p.Outputs[n].File))
		if err != nil {
			return nil, err
		}
		want := f32s(raw)
		g := got.GetData()
		if len(g) != len(want) {
			return nil, fmt.Errorf("output %s has %d values (shape %v), PyTorch gave %d (shape %v)", n, len(g), got.GetShape(), len(want), p.Outputs[n].Shape)
		}
		var num, den float64
		for j := range g {
			d := float64(g[j]) - float64(want[j])
			num += d * d
			den += float64(want[j]) * float64(want[j])
		}
		rel := math.Sqrt(num / math.Max(den, 1e-30))
		res = append(res, ProbeResult{Role: role, Output: n, RelL2: rel})
		got.Destroy()
	}
	return res, nil
}

func f32s(raw []byte) []float32 {
	d := make([]float32, len(raw)/4)
	for i := range d {
		d[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return d
}
