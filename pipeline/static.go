package pipeline

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/vlmdiff/edge/models"
)

// staticDenoisers holds the bundle's static-shape denoiser graphs (models.StaticGraph) whose built-in context
// is the unconditional one, opened on first use. Each session costs its weights plus ONNX Runtime's copy of
// the optimised graph (tens of MiB for the small preset), and a daemon at batch 1 never runs the batch-2 or
// batch-4 graphs: opening all of them at load put the small preset's RSS over the 300 MB budget (issue 14).
type staticDenoisers struct {
	mu     sync.Mutex
	files  map[int]string // batch rows -> graph file
	timeIn map[int]bool   // batch rows -> the graph takes the time graph's outputs in place of t
	open   map[int]*graph
	failed map[int]bool // a graph that would not open runs on the dynamic denoiser from then on
	time   *timeTensors // the bundle's time graph; nil when it has none
}

// timeTensors runs the denoiser's time graph (models.TimeGraph) once per timestep and keeps its outputs for
// the scorer's lifetime: they depend on t alone, and a bundle's sampler visits the same few timesteps for
// every frame (ddim_steps of them, fewer with sampler_from_start_step), so each is computed once per process
// instead of inside every denoiser step.
type timeTensors struct {
	file  string
	names []string
	mu    sync.Mutex
	g     *graph
	err   error // the time graph would not open: the static graphs that need it are not used
	cache map[int][]ort.Value
}

// staticSet lists the static graphs the scorer may use; Options.DynamicOnly lists none.
func (s *Scorer) staticSet() *staticDenoisers {
	sd := &staticDenoisers{files: map[int]string{}, timeIn: map[int]bool{}, open: map[int]*graph{}, failed: map[int]bool{}}
	if s.opt.DynamicOnly {
		return sd
	}
	spec := s.m.Graphs[models.RoleDenoiser]
	for _, sg := range spec.Static {
		if sg.Context == s.m.Conditioning.Unconditional {
			sd.files[sg.Batch] = sg.File
			sd.timeIn[sg.Batch] = sg.TimeInputs && spec.Time != nil
		}
	}
	if tg := spec.Time; tg != nil {
		sd.time = &timeTensors{file: tg.File, cache: map[int][]ort.Value{}}
		for _, o := range tg.Outputs {
			sd.time.names = append(sd.time.names, o.Name)
		}
	}
	return sd
}

// staticGraph returns the static graph for a batch of rows, opening its session the first time, or nil when the
// dynamic graph must run (no graph of that size, or it failed to open: logged once, and scoring goes on
// with the dynamic graph, which gives the same maps within parity tolerance).
func (s *Scorer) staticGraph(rows int) *graph {
	sd := s.denStatic
	sd.mu.Lock()
	defer sd.mu.Unlock()
	if g := sd.open[rows]; g != nil {
		return g
	}
	file, ok := sd.files[rows]
	if !ok || sd.failed[rows] {
		return nil
	}
	in := []string{models.TensorX, models.TensorT, models.TensorHint}
	var err error
	if sd.timeIn[rows] {
		in = append([]string{models.TensorX, models.TensorHint}, sd.time.names...)
		err = sd.time.open(s)
	}
	var g *graph
	if err == nil {
		g, err = s.newGraphAt(fmt.Sprintf("%s (static batch %d)", models.RoleDenoiser, rows), file, in,
			[]string{models.TensorEps}, s.staticNoLayout())
	}
	if err != nil {
		sd.failed[rows] = true
		slog.Warn("static-shape denoiser unusable; this batch size runs on the dynamic denoiser", "file", file, "err", err)
		return nil
	}
	sd.open[rows] = g
	return g
}

// staticNoLayout says whether the static denoisers' sessions run without ONNX Runtime's NCHWc layout pass
// (graph optimisation level extended instead of all; Options.StaticNoLayout asks for it). The pass rewrites each
// convolution into a blocked-layout kernel with ReorderInput/ReorderOutput nodes around it wherever the next
// operator is not blocked too, and in the denoiser almost none is (GroupNorm's Reshape/InstanceNormalization,
// the attention's Reshapes): on the small preset's batch-1 step it adds 120 reorder nodes and saves 40 Adds,
// 1119 operators per step with it, 1039 without. The blocked kernels win the extra dispatches back: on the quiet
// 2-core machine, 4 interleaved rounds of `vlmdiff bench` gave a batch-1 denoise of 55.8-63.5 ms with the pass
// and 59.9-71.5 ms without, and a batch-4 frame 82.4-84.8 ms against 86.8-115.5 ms. So the pass stays on
// by default and `--static-no-layout` is for measuring on other CPUs. Only on the CPU provider: the level is a
// CPU-layout matter, and CUDA sessions keep ONNX Runtime's default.
func (s *Scorer) staticNoLayout() bool {
	return s.opt.StaticNoLayout && s.provider != "cuda"
}

// graphs returns the sessions opened so far (for Close), the time graph's among them.
func (sd *staticDenoisers) graphs() []*graph {
	if sd == nil { // NewScorer failed before listing them
		return nil
	}
	sd.mu.Lock()
	defer sd.mu.Unlock()
	out := make([]*graph, 0, len(sd.open)+1)
	for _, g := range sd.open {
		out = append(out, g)
	}
	if sd.time != nil {
		sd.time.mu.Lock()
		if sd.time.g != nil {
			out = append(out, sd.time.g)
		}
		sd.time.mu.Unlock()
	}
	return out
}

// release destroys the kept time tensors (for Close, once no frame is being scored).
func (sd *staticDenoisers) release() {
	if sd == nil || sd.time == nil {
		return
	}
	sd.time.mu.Lock()
	defer sd.time.mu.Unlock()
	for t, vs := range sd.time.cache {
		for _, v := range vs {
			v.Destroy()
		}
		delete(sd.time.cache, t)
	}
}

// open creates the time graph's session the first time a static graph needs it. A time graph that will not
// open is remembered: every static graph that takes its outputs then runs on the dynamic denoiser.
func (tt *timeTensors) open(s *Scorer) error {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	if tt.g != nil || tt.err != nil {
		return tt.err
	}
	tt.g, tt.err = s.newGraph(models.RoleDenoiser+" (time)", tt.file, []string{models.TensorT}, tt.names)
	return tt.err
}

// at returns the time graph's outputs for timestep t, in the order of the static graphs' inputs after x and
// hint, running the graph the first time t is asked for. The tensors belong to the cache (read-only inputs).
func (tt *timeTensors) at(t int) ([]ort.Value, error) {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	if vs, ok := tt.cache[t]; ok {
		return vs, nil
	}
	if tt.g == nil {
		return nil, errors.New("time graph is not open")
	}
	tT, err := ort.NewTensor(ort.NewShape(1), []int64{int64(t)})
	if err != nil {
		return nil, err
	}
	defer tT.Destroy()
	out, shapes, err := tt.g.run(tT)
	if err != nil {
		return nil, err
	}
	vs := make([]ort.Value, len(out))
	for i := range out {
		if vs[i], err = tensor(shapes[i], out[i]); err != nil {
			for _, v := range vs[:i] {
				v.Destroy()
			}
			return nil, err
		}
	}
	tt.cache[t] = vs
	return vs, nil
}

// dynamicDenoiser returns the dynamic-shape denoiser (x, t, context, hint), creating its session on first use.
func (s *Scorer) dynamicDenoiser() (*graph, error) {
	s.denMu.Lock()
	defer s.denMu.Unlock()
	if s.den != nil {
		return s.den, nil
	}
	g, ok := s.m.Graphs[models.RoleDenoiser]
	if !ok {
		return nil, fmt.Errorf("bundle has no %s graph", models.RoleDenoiser)
	}
	d, err := s.newGraph(models.RoleDenoiser, g.File,
		[]string{models.TensorX, models.TensorT, models.TensorContext, models.TensorHint}, []string{models.TensorEps})
	if err != nil {
		return nil, err
	}
	s.den = d
	return d, nil
}
