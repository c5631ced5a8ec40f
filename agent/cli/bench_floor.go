package cli

import (
	"fmt"
	"io"
	"path/filepath"
	"text/tabwriter"

	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/pipeline/floor"
)

// benchFloor is `vlmdiff bench --floor`: per batch size and stage, the MACs the bundle's graphs execute per
// frame (counted from the graphs at that batch; pipeline/floor), the rate the measured p50 achieves, and the
// floor, MACs / the machine's measured peak. x_floor = measured / floor: 1 would be every operator at the peak.
type benchFloor struct {
	Peak   floor.Peak   `json:"peak"`
	Stages []floorStage `json:"stages"`
}

type floorStage struct {
	Batch        int     `json:"batch"`
	Stage        string  `json:"stage"`
	Graph        string  `json:"graph,omitempty"`
	RunsPerBatch int     `json:"runs_per_batch"`
	Ops          int     `json:"ops_per_run"`       // the graph's own operators
	ShapeOps     int     `json:"shape_ops_per_run"` // of which shape bookkeeping (floor.ShapeOps)
	OpsORT       int     `json:"ort_ops_per_run"`   // operators ONNX Runtime runs after its optimisations
	MACsPerFrame int64   `json:"macs_per_frame"`
	P50MS        float64 `json:"p50_ms_per_frame"`
	GFLOPS       float64 `json:"gflops"`
	FloorMS      float64 `json:"floor_ms_per_frame"`
	XFloor       float64 `json:"x_floor"`
}

// measureFloor counts the graphs of every measured batch size and measures the peak. It runs after the timed
// part of the bench, so its sessions do not disturb the timings.
func measureFloor(s *pipeline.Scorer, rep *benchReport, threads int) (*benchFloor, error) {
	peak, err := floor.MeasurePeak(threads, 5)
	if err != nil {
		return nil, err
	}
	fl := &benchFloor{Peak: peak}
	p50 := map[[2]any]float64{}
	for _, st := range rep.Stages {
		p50[[2]any{st.Batch, st.Stage}] = st.P50MS
	}
	floorMS := func(macs int64) float64 { return 2 * float64(macs) / (peak.GFLOPS() * 1e9) * 1000 }
	for _, b := range rep.Batches {
		var totalMACs int64
		for _, run := range s.GraphRuns(b.Batch) {
			var in []floor.Input
			for _, gi := range run.Inputs {
				elem := floor.ElemFloat
				if gi.Int64 {
					elem = floor.ElemInt64
				}
				in = append(in, floor.Input{Name: gi.Name, Elem: elem, Shape: gi.Shape})
			}
			raw, err := floor.Profile(run.Path, in, run.Outputs, threads, false)
			if err != nil {
				return nil, fmt.Errorf("floor: %s: %w", run.Stage, err)
			}
			opt, err := floor.ProfileAt(run.Path, in, run.Outputs, threads, true, run.NoLayout)
			if err != nil {
				return nil, fmt.Errorf("floor: %s: %w", run.Stage, err)
			}
			fs := floorStage{Batch: b.Batch, Stage: run.Stage, Graph: filepath.Base(run.Path), RunsPerBatch: run.Runs,
				Ops: raw.Ops, ShapeOps: raw.ShapeOpCount(), OpsORT: opt.Ops,
				MACsPerFrame: raw.MACs * int64(run.Runs) / int64(b.Batch), P50MS: p50[[2]any{b.Batch, run.Stage}]}
			totalMACs += fs.MACsPerFrame
			if n := len(fl.Stages); n > 0 && fl.Stages[n-1].Batch == fs.Batch && fl.Stages[n-1].Stage == fs.Stage && fl.Stages[n-1].Graph == fs.Graph {
				// one stage, two runs of its graph (the frames' features beside the reconstruction, then the
				// reconstructions'): one row, the stage's p50 against both runs' work
				last := &fl.Stages[n-1]
				last.RunsPerBatch += fs.RunsPerBatch
				last.MACsPerFrame += fs.MACsPerFrame
				*last = last.rated(floorMS)
				continue
			}
			fl.Stages = append(fl.Stages, fs.rated(floorMS))
		}
		fl.Stages = append(fl.Stages, floorStage{Batch: b.Batch, Stage: pipeline.StageMap, P50MS: p50[[2]any{b.Batch, pipeline.StageMap}]},
			floorStage{Batch: b.Batch, Stage: pipeline.StageTotal, MACsPerFrame: totalMACs, P50MS: totalP50(b, p50)}.rated(floorMS))
	}
	return fl, nil
}

// totalP50 is the total's p50 that the floor ratio compares: the median of the rounds' p50s, as the batch line
// prints it, or the p50 over all frames when there was one round.
func totalP50(b benchBatch, p50 map[[2]any]float64) float64 {
	if b.MedianP50MS > 0 {
		return b.MedianP50MS
	}
	return p50[[2]any{b.Batch, pipeline.StageTotal}]
}

// rated fills the achieved rate, the floor and the ratio from the MACs and the p50.
func (f floorStage) rated(floorMS func(int64) float64) floorStage {
	if f.MACsPerFrame > 0 && f.P50MS > 0 {
		f.GFLOPS = 2 * float64(f.MACsPerFrame) / (f.P50MS / 1000) / 1e9
		f.FloorMS = floorMS(f.MACsPerFrame)
		f.XFloor = f.P50MS / f.FloorMS
	}
	return f
}

func writeFloorTable(w io.Writer, fl *benchFloor) {
	fmt.Fprintf(w, "\nfloor: peak %.1f GFLOP/s (conv %.1f, matmul %.1f; ONNX Runtime, %d threads); floor = MACs / peak\n",
		fl.Peak.GFLOPS(), fl.Peak.ConvGFLOPS, fl.Peak.MatMulGFLOPS, fl.Peak.Threads)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "batch\tstage\tgraph\truns/batch\tops/run\tshape ops\tORT ops\tMMAC/frame\tp50 ms\tGFLOP/s\t% peak\tfloor ms\tx floor\t\n")
	for _, f := range fl.Stages {
		if f.Graph == "" && f.MACsPerFrame == 0 { // map: no graph, all of it is overhead
			fmt.Fprintf(tw, "%d\t%s\t-\t-\t-\t-\t-\t0\t%.1f\t-\t-\t0\t-\t\n", f.Batch, f.Stage, f.P50MS)
			continue
		}
		ops := "-\t-\t-\t-"
		if f.Graph != "" {
			ops = fmt.Sprintf("%d\t%d\t%d\t%d", f.RunsPerBatch, f.Ops, f.ShapeOps, f.OpsORT)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.1f\t%.1f\t%.1f\t%.0f\t%.2f\t%.1fx\t\n", f.Batch, f.Stage, orDash(f.Graph), ops,
			float64(f.MACsPerFrame)/1e6, f.P50MS, f.GFLOPS, 100*f.GFLOPS/fl.Peak.GFLOPS(), f.FloorMS, f.XFloor)
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
