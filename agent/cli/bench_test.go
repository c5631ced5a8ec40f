package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/internal/testpython"
	"github.com/vlmdiff/edge/internal/torchenv"
	"github.com/vlmdiff/edge/models"
)

// TestBenchJSON: `bench --json` prints one JSON object with every stage of every batch size measured, the
// provider it ran on and the frame rate, so a build can be tracked by a script; the table output carries the
// same figures.
func TestBenchJSON(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"bench", "--bundle", fixtureBundle, "--providers", "cpu", "--threads", "1",
		"--batches", "1,2", "--frames", "2", "--rounds", "2", "--json"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var rep benchReport
	dec := json.NewDecoder(&stdout)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("not one JSON report: %v", err)
	}
	// the flags' defaults are ONNX Runtime's own memory settings (models.memory: ort)
	if rep.Provider != "cpu" || rep.Bundle == "" || rep.Width <= 0 || len(rep.Batches) != 2 || rep.Memory != "ort" {
		t.Fatalf("report %+v", rep)
	}
	totals := map[int]float64{}
	for _, st := range rep.Stages {
		if st.P50MS < 0 || st.P95MS < st.P50MS {
			t.Errorf("stage %+v: want 0 <= p50 <= p95", st)
		}
		if st.Stage == "total" {
			totals[st.Batch] = st.P50MS
		}
	}
	if totals[1] <= 0 || totals[2] <= 0 {
		t.Errorf("total stage missing or zero per batch: %v", totals)
	}
	for _, b := range rep.Batches {
		// 2 frames in each of 2 rounds; the median of two rounds lies between them
		if b.Frames != 4 || !(b.FramesPerSec > 0) || len(b.RoundP50MS) != 2 {
			t.Errorf("batch %+v: want 4 frames over 2 rounds", b)
			continue
		}
		lo, hi := min(b.RoundP50MS[0], b.RoundP50MS[1]), max(b.RoundP50MS[0], b.RoundP50MS[1])
		if !(lo > 0) || b.MedianP50MS < lo || b.MedianP50MS > hi {
			t.Errorf("batch %d: median %.2f outside its rounds %v", b.Batch, b.MedianP50MS, b.RoundP50MS)
		}
	}

	var table bytes.Buffer
	writeBenchTables(&table, &rep)
	if !strings.Contains(table.String(), "provider cpu") || !strings.Contains(table.String(), "batch 2:") ||
		!strings.Contains(table.String(), "interleaved rounds") || !strings.Contains(table.String(), "memory ort") {
		t.Errorf("table output:\n%s", table.String())
	}
}

// benchJSON runs `vlmdiff bench ... --json` and decodes its report strictly.
func benchJSON(t *testing.T, args ...string) *benchReport {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args = append([]string{"bench", "--bundle", fixtureBundle, "--providers", "cpu", "--threads", "1", "--json"}, args...)
	if code := Main(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var rep benchReport
	dec := json.NewDecoder(&stdout)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("not one JSON report: %v", err)
	}
	return &rep
}

// floorRows indexes a floor table by batch and stage.
func floorRows(t *testing.T, rep *benchReport) map[[2]any]floorStage {
	t.Helper()
	if rep.Floor == nil {
		t.Fatal("no floor table in the report")
	}
	rows := map[[2]any]floorStage{}
	for _, f := range rep.Floor.Stages {
		rows[[2]any{f.Batch, f.Stage}] = f
	}
	return rows
}

// TestBenchFloorTable: `bench --floor` has a row per graph stage with MACs counted from the graphs, the map
// and total rows, the peak, and the static-shape denoiser where the fixture has one of the batch size; with
// --dynamic-only the dynamic denoiser runs instead, with more operators and more shape bookkeeping per step (the
// overhead the static export removes). Only shapes and counts are checked, no timings.
func TestBenchFloorTable(t *testing.T) {
	rep := benchJSON(t, "--batches", "1,2", "--frames", "2", "--floor")
	if p := rep.Floor.Peak; !(p.ConvGFLOPS > 0 && p.MatMulGFLOPS > 0) || p.Threads != 1 {
		t.Errorf("peak %+v", p)
	}
	rows := floorRows(t, rep)
	for _, b := range []int{1, 2} {
		var sum int64
		for _, st := range []string{"encode", "hint", "denoise", "decode", "features"} {
			f, ok := rows[[2]any{b, st}]
			if !ok || f.MACsPerFrame <= 0 || f.Ops <= 0 || f.OpsORT <= 0 || f.Graph == "" {
				t.Errorf("batch %d %s: row %+v", b, st, f)
			}
			sum += f.MACsPerFrame
		}
		if tot := rows[[2]any{b, "total"}]; tot.MACsPerFrame != sum || !(tot.FloorMS > 0) {
			t.Errorf("batch %d total %+v, want the stages' sum %d MACs and a floor", b, tot, sum)
		}
		if _, ok := rows[[2]any{b, "map"}]; !ok {
			t.Errorf("batch %d: no map row", b)
		}
		// the fixture has a static denoiser for batch 1 only; batch 2 runs the dynamic one
		want := map[int]string{1: "denoiser_b1.onnx", 2: "denoiser.onnx"}[b]
		if d := rows[[2]any{b, "denoise"}]; d.Graph != want || d.RunsPerBatch != rep.DenoiseSteps || rep.DenoiseSteps != rep.DDIMSteps {
			t.Errorf("batch %d denoise row %+v, want %s run %d times", b, d, want, rep.DDIMSteps)
		}
	}
	if a, b := rows[[2]any{1, "encode"}].MACsPerFrame, rows[[2]any{2, "encode"}].MACsPerFrame; a != b {
		t.Errorf("encoder MACs per frame differ between batch 1 (%d) and 2 (%d)", a, b)
	}

	dyn := floorRows(t, benchJSON(t, "--batches", "1", "--frames", "1", "--floor", "--dynamic-only"))
	d, s := dyn[[2]any{1, "denoise"}], rows[[2]any{1, "denoise"}]
	if d.Graph != "denoiser.onnx" || d.Ops <= s.Ops || d.ShapeOps <= s.ShapeOps || d.OpsORT <= s.OpsORT {
		t.Errorf("dynamic denoiser %+v, static %+v: want more operators and shape operators per step", d, s)
	}
	if d.MACsPerFrame <= s.MACsPerFrame {
		t.Errorf("dynamic denoiser %d MACs/frame, static %d: the static graph's folded context keys and values "+
			"should make it less", d.MACsPerFrame, s.MACsPerFrame)
	}

	// with the denoiser on fewer threads, the frames' features run apart from the reconstructions': one
	// features row, two runs, the same work per frame
	over := benchJSON(t, "--batches", "1", "--frames", "1", "--floor", "--threads", "2", "--denoiser-threads", "1")
	n := 0
	for _, f := range over.Floor.Stages {
		if f.Stage == "features" {
			n++
		}
	}
	of, f1 := floorRows(t, over)[[2]any{1, "features"}], rows[[2]any{1, "features"}]
	if n != 1 || of.RunsPerBatch != 2 || of.MACsPerFrame != f1.MACsPerFrame || over.DenoiserThreads != 1 {
		t.Errorf("overlapped features: %d rows, %+v (denoiser threads %d); want one row of 2 runs and %d MACs/frame",
			n, of, over.DenoiserThreads, f1.MACsPerFrame)
	}

	// the denoiser's spin settings are reported as given, with the library's version
	spin := benchJSON(t, "--batches", "1", "--frames", "1", "--threads", "2", "--denoiser-spin", "--spin-us", "70")
	if !spin.DenoiserSpin || spin.SpinMicros != 70 || spin.Spin || spin.ORTVersion == "" {
		t.Errorf("--denoiser-spin --spin-us 70: report says denoiser spin %v, %d us, spin %v, onnxruntime %q",
			spin.DenoiserSpin, spin.SpinMicros, spin.Spin, spin.ORTVersion)
	}

	var table bytes.Buffer
	writeBenchTables(&table, spin)
	if !strings.Contains(table.String(), "spin denoiser (70 us)") {
		t.Errorf("header does not name the spin settings:\n%s", table.String())
	}
	off := benchJSON(t, "--batches", "1", "--frames", "1", "--denoiser-spin=false")
	table.Reset()
	writeBenchTables(&table, off)
	if off.DenoiserSpin || !strings.Contains(table.String(), "spin off") {
		t.Errorf("--denoiser-spin=false: denoiser spin %v, header:\n%s", off.DenoiserSpin, table.String())
	}
	table.Reset()
	writeBenchTables(&table, rep)
	for _, want := range []string{"floor: peak", "denoiser_b1.onnx", "x floor", "spin denoiser (100 us)", "onnxruntime 1."} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}

// TestBenchReference: `bench --reference` times the PyTorch reference on the same bundle and weights,
// interleaved with the pipeline, and reports both p50s and their ratio; --ab-dynamic does the same for the
// scorer without its static-shape denoisers.
func TestBenchReference(t *testing.T) {
	python := testpython.Need(t, "torch", "scipy", "PIL")
	rep := benchJSON(t, "--batches", "1", "--frames", "1", "--reference", "../../models/testdata/fixture-src/fixture.pt",
		"--rounds", "1", "--ab-dynamic", "--python", python)
	if ab := rep.AB; ab == nil || ab.Rounds != 1 || ab.Frames != 4 || !(ab.StaticP50MS > 0) || !(ab.DynamicP50MS > 0) ||
		math.Abs(ab.Speedup-ab.DynamicP50MS/ab.StaticP50MS) > 1e-9 {
		t.Errorf("A/B %+v", ab)
	}
	r := rep.Reference
	if r == nil || r.Rounds != 1 || r.Frames != 4 || r.Torch == "" || !(r.PipelineP50MS > 0) || !(r.ReferenceP50 > 0) ||
		math.Abs(r.Ratio-r.ReferenceP50/r.PipelineP50MS) > 1e-9 {
		t.Fatalf("reference %+v", r)
	}
	// the reference ran under the wait policy its torch's BLAS asks for (internal/torchenv)
	if r.BLAS == "" || r.OpenMPWait != torchenv.Policy(r.BLAS) {
		t.Errorf("reference BLAS %q, OpenMP wait %q; want the policy %q", r.BLAS, r.OpenMPWait, torchenv.Policy(r.BLAS))
	}
	var table bytes.Buffer
	writeBenchTables(&table, rep)
	if !strings.Contains(table.String(), "side by side") || !strings.Contains(table.String(), "PyTorch reference") ||
		!strings.Contains(table.String(), "speedup") {
		t.Errorf("table:\n%s", table.String())
	}
}

// TestBenchWorkers: `bench --workers 2` scores with two goroutines sharing a scorer, in --rounds rounds, and
// reports per batch size every frame it scored (each goroutine's batches in every round), each round's wall
// time per frame and their median; --worker-threads opens that scorer with its own thread count and says so;
// without --workers there is no entry.
func TestBenchWorkers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		threads int
	}{
		{"as --threads", []string{"--threads", "2"}, 2},
		{"one thread each", []string{"--threads", "2", "--worker-threads", "1"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--batches", "1,2", "--frames", "4", "--workers", "2", "--rounds", "2"}, tc.args...)
			rep := benchJSON(t, args...)
			if len(rep.Workers) != 2 {
				t.Fatalf("workers entries %+v, want one per batch size", rep.Workers)
			}
			for i, b := range []int{1, 2} {
				w := rep.Workers[i]
				want := 2 * max(4/(b*2), 1) * b * 2
				if w.Workers != 2 || w.Threads != tc.threads || w.Batch != b || w.Frames != want || len(w.RoundMS) != 2 {
					t.Errorf("entry %d = %+v, want 2 workers x %d threads, batch %d, %d frames in 2 rounds", i, w,
						tc.threads, b, want)
				}
				lo, hi := min(w.RoundMS[0], w.RoundMS[1]), max(w.RoundMS[0], w.RoundMS[1])
				if !(w.Seconds > 0) || !(lo > 0) || w.MSPerFrame < lo || w.MSPerFrame > hi ||
					math.Abs(w.FramesPerSec-1000/w.MSPerFrame) > 1e-9 {
					t.Errorf("entry %d: times %+v inconsistent", i, w)
				}
			}
			var table bytes.Buffer
			writeBenchTables(&table, rep)
			head := fmt.Sprintf("2 workers x %d thread", tc.threads)
			if !strings.Contains(table.String(), head) || !strings.Contains(table.String(), "median of 2 rounds") {
				t.Errorf("table lacks %q and the rounds:\n%s", head, table.String())
			}
		})
	}
	if rep := benchJSON(t, "--batches", "1", "--frames", "1"); len(rep.Workers) != 0 {
		t.Errorf("workers entries without --workers: %+v", rep.Workers)
	}
}

// TestBenchRefusesBadCounts: counts that would measure nothing are refused by name before the bundle opens.
func TestBenchRefusesBadCounts(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--rounds", "0"}, "--rounds: 0"},
		{[]string{"--batches", "1,0"}, `--batches: "0"`},
		{[]string{"--workers", "2", "--worker-threads", "-1"}, "--worker-threads: -1"},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"bench", "--bundle", fixtureBundle, "--providers", "cpu"}, tc.args...)
		if code := Main(context.Background(), args, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want an error naming %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}

// TestBenchTruncatedStart: a bundle that starts from step 301 with sampler_from_start_step runs 4 of its 10
// DDIM steps (301, 201, 101, 1); the report, the header and the floor table count what runs.
func TestBenchTruncatedStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bundle")
	if err := os.CopyFS(dir, os.DirFS(fixtureBundle)); err != nil {
		t.Fatal(err)
	}
	m, err := models.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	m.Diffusion = m.Diffusion.WithStart(301)
	if err := models.WriteManifest(dir, m); err != nil {
		t.Fatal(err)
	}
	rep := benchJSON(t, "--bundle", dir, "--batches", "1", "--frames", "2", "--floor")
	if rep.DDIMSteps != 10 || rep.DenoiseSteps != 4 || rep.StartStep != 301 {
		t.Errorf("ddim %d, denoise steps %d, start %d: want 10, 4, 301", rep.DDIMSteps, rep.DenoiseSteps, rep.StartStep)
	}
	if d := floorRows(t, rep)[[2]any{1, "denoise"}]; d.RunsPerBatch != 4 {
		t.Errorf("denoise row %+v: want 4 runs a batch", d)
	}
	var out bytes.Buffer
	writeBenchTables(&out, rep)
	if !strings.Contains(out.String(), "ddim 4 of 10 from step 301") {
		t.Errorf("header does not say what runs:\n%s", out.String())
	}
}

// TestBenchPaired: `bench --ab FLAGS` times a second scorer, opened with the command's scorer flags plus FLAGS,
// in pairs of batches at each batch size (rounds x frames/batch pairs), and reports both sides' stages, the
// median of the paired ratios inside its interval, and the pairs B won; the table says what B is.
func TestBenchPaired(t *testing.T) {
	rep := benchJSON(t, "--batches", "1,2", "--frames", "2", "--rounds", "3", "--ab", "--spin --spin-us 50")
	p := rep.Paired
	if p == nil || p.BFlags != "--spin --spin-us 50" || len(p.Batches) != 2 {
		t.Fatalf("paired %+v", p)
	}
	for i, size := range []int{1, 2} {
		b := p.Batches[i]
		want := 3 * max(2/size, 1) // 6 pairs at batch 1, 3 at batch 2
		if b.Batch != size || b.Pairs != want || b.BFaster < 0 || b.BFaster > b.Pairs {
			t.Errorf("batch %d: %+v, want %d pairs", size, b, want)
		}
		if !(b.RatioMedian > 0) {
			t.Errorf("batch %d: ratio median %v", size, b.RatioMedian)
		}
		if size == 1 && (len(b.RatioCI95) != 2 || b.RatioCI95[0] > b.RatioMedian || b.RatioCI95[1] < b.RatioMedian) {
			t.Errorf("batch 1: interval %v does not hold the median %v", b.RatioCI95, b.RatioMedian)
		}
		if size == 2 && b.RatioCI95 != nil { // 3 pairs: no 95% interval
			t.Errorf("batch 2: interval %v from 3 pairs", b.RatioCI95)
		}
		stages := map[string]pairedStage{}
		for _, st := range b.Stages {
			stages[st.Stage] = st
		}
		for _, st := range []string{"encode", "denoise", "decode", "features", "total"} {
			if s, ok := stages[st]; !ok || !(s.AP50MS > 0) || !(s.BP50MS > 0) {
				t.Errorf("batch %d stage %s: %+v", size, st, s)
			}
		}
	}
	var table bytes.Buffer
	writeBenchTables(&table, rep)
	for _, want := range []string{"B = A with --spin --spin-us 50", "batch 1: B / A", "of 6 paired ratios", "no 95% interval under 6 pairs"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	if rep := benchJSON(t, "--batches", "1", "--frames", "1"); rep.Paired != nil {
		t.Errorf("paired report without --ab: %+v", rep.Paired)
	}
}

// TestBenchPairedRefusals: --ab takes scorer flags only; anything else is refused by name before the bundle
// opens, and the error of a B that cannot open starts with --ab's text.
func TestBenchPairedRefusals(t *testing.T) {
	for _, tc := range []struct{ ab, want string }{
		{"--frames 4", `--ab "--frames 4": flag provided but not defined: -frames`},
		{"--spin extra", `--ab "--spin extra": "extra" is not a flag`},
		{"   ", "no flags"},
		{"--bundle /nonexistent/bundle", `--ab "--bundle /nonexistent/bundle": `},
	} {
		var stdout, stderr bytes.Buffer
		args := []string{"bench", "--bundle", fixtureBundle, "--providers", "cpu", "--threads", "1", "--batches", "1", "--frames", "1", "--ab", tc.ab}
		if code := Main(context.Background(), args, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("--ab %q: exit %d, stderr %q, want an error naming %q", tc.ab, code, stderr.String(), tc.want)
		}
	}
}

// TestAbFlagsReplay: B gets every scorer flag set on the command line, then --ab's on top (a later flag wins),
// and nothing that is not a scorer flag.
func TestAbFlagsReplay(t *testing.T) {
	fs := NewFlagSet("bench", "", io.Discard)
	var sf scoreFlags
	sf.Register(fs)
	fs.Int("frames", 16, "")
	if err := fs.Parse([]string{"--bundle", "A", "--threads", "2", "--spin-us", "50", "--frames", "3", "--mem-pattern=false"}); err != nil {
		t.Fatal(err)
	}
	b, err := abFlags(fs, "--bundle B --denoiser-threads 1 --spin-us 0")
	if err != nil {
		t.Fatal(err)
	}
	if b.Bundle != "B" || b.Threads != 2 || b.DenoiserThreads != 1 || b.SpinMicros != 0 || b.Pattern || !b.DenoiserSpin || b.Spin {
		t.Errorf("B's flags %+v", b)
	}
	if sf.Bundle != "A" || sf.SpinMicros != 50 || sf.DenoiserThreads != 0 {
		t.Errorf("A's flags changed: %+v", sf)
	}
}

// TestMedianCI95: the sign test's interval of the median: none under 6 values, the extremes at 6 (coverage
// 1 - 2/64), the 2nd from each end at 9, and for 100 values the 40th and 61st (the textbook k = 40).
func TestMedianCI95(t *testing.T) {
	seq := func(n int) []float64 {
		v := make([]float64, n)
		for i := range v {
			v[i] = float64(n - i) // descending: the function must sort
		}
		return v
	}
	for _, tc := range []struct {
		n      int
		ok     bool
		lo, hi float64
	}{
		{5, false, 0, 0},
		{6, true, 1, 6},
		{9, true, 2, 8},
		{100, true, 40, 61},
	} {
		lo, hi, ok := medianCI95(seq(tc.n))
		if ok != tc.ok || lo != tc.lo || hi != tc.hi {
			t.Errorf("n=%d: [%v, %v] ok=%v, want [%v, %v] ok=%v", tc.n, lo, hi, ok, tc.lo, tc.hi, tc.ok)
		}
	}
	if m := median([]float64{3, 1, 2, 10}); m != 2.5 {
		t.Errorf("median of 4 values %v, want 2.5", m)
	}
}
