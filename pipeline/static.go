package pipeline

import (
	"fmt"
	"log/slog"
	"sync"

	"github.com/vlmdiff/edge/models"
)

// staticDenoisers holds the bundle's static-shape denoiser graphs (models.StaticGraph) whose built-in context
// is the unconditional one, opened on first use. Each session costs its weights plus ONNX Runtime's copy of
// the optimised graph (tens of MiB for the small preset), and a daemon at batch 1 never runs the batch-2 or
// batch-4 graphs: opening all of them at load put the small preset's RSS over the 300 MB budget (issue 14).
type staticDenoisers struct {
	mu     sync.Mutex
	files  map[int]string // batch rows -> graph file
	open   map[int]*graph
	failed map[int]bool // a graph that would not open runs on the dynamic denoiser from then on
}

// staticSet lists the static graphs the scorer may use; Options.DynamicOnly lists none.
func (s *Scorer) staticSet() *staticDenoisers {
	sd := &staticDenoisers{files: map[int]string{}, open: map[int]*graph{}, failed: map[int]bool{}}
	if s.opt.DynamicOnly {
		return sd
	}
	for _, sg := range s.m.Graphs[models.RoleDenoiser].Static {
		if sg.Context == s.m.Conditioning.Unconditional {
			sd.files[sg.Batch] = sg.File
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
	g, err := s.newGraph(fmt.Sprintf("%s (static batch %d)", models.RoleDenoiser, rows), file,
		[]string{models.TensorX, models.TensorT, models.TensorHint}, []string{models.TensorEps})
	if err != nil {
		sd.failed[rows] = true
		slog.Warn("static-shape denoiser unusable; this batch size runs on the dynamic denoiser", "file", file, "err", err)
		return nil
	}
	sd.open[rows] = g
	return g
}

// graphs returns the sessions opened so far (for Close).
func (sd *staticDenoisers) graphs() []*graph {
	sd.mu.Lock()
	defer sd.mu.Unlock()
	out := make([]*graph, 0, len(sd.open))
	for _, g := range sd.open {
		out = append(out, g)
	}
	return out
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
