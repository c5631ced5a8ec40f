package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vlmdiff/edge/pipeline"
)

func init() {
	Register(Command{Name: "bench", Summary: "measure per-stage latency, frames/s and peak memory of a bundle", Run: runBench})
}

// benchReport is what `vlmdiff bench` measured; --json prints it as is, for tracking across builds.
type benchReport struct {
	Bundle    string `json:"bundle"`
	Version   string `json:"version"`
	Width     int    `json:"width"`
	Height    int    `json:"height"`
	DDIMSteps int    `json:"ddim_steps"`
	// DenoiseSteps is how many of them a reconstruction runs (fewer from a start step below the schedule's last
	// with diffusion.sampler_from_start_step), StartStep the step the frame is noised to.
	DenoiseSteps  int `json:"denoise_steps"`
	StartStep     int `json:"start_step"`
	Ensemble      int `json:"ensemble"` // start noises per frame (diffusion.ensemble or --ensemble)
	FeatureLayers int `json:"feature_layers"`
	// FeaturePrecision is the feature graph's features.precision ("" = float32, "int8" = vlmdiff quantize's).
	FeaturePrecision string `json:"feature_precision,omitempty"`
	// FeatureWeightBits is an int8 graph's features.weight_bits (7 or 8; 0 when not recorded).
	FeatureWeightBits int    `json:"feature_weight_bits,omitempty"`
	Provider          string `json:"provider"`
	Threads           int    `json:"threads"`
	// DenoiserThreads is --denoiser-threads (0: the denoiser runs on Threads too).
	DenoiserThreads int  `json:"denoiser_threads,omitempty"`
	Spin            bool `json:"spin"`
	// DenoiserSpin is --denoiser-spin; SpinMicros is --spin-us (what a spinning thread waits before it sleeps).
	DenoiserSpin bool `json:"denoiser_spin"`
	SpinMicros   int  `json:"spin_us"`
	GOMAXPROCS   int  `json:"gomaxprocs"`
	// Memory names the daemon's models.memory setting the memory flags amount to (shared, lean, ort or
	// custom): the peak RSS, and to a lesser degree the speed, hold for a daemon with that setting.
	Memory string `json:"memory"`
	// ORTVersion is the loaded ONNX Runtime library's version: speeds differ between releases.
	ORTVersion   string       `json:"onnxruntime_version"`
	OpenMS       float64      `json:"open_ms"`
	FirstFrameMS float64      `json:"first_frame_ms"`
	Stages       []benchStage `json:"stages"`
	Batches      []benchBatch `json:"batches"`
	PeakRSSMiB   float64      `json:"peak_rss_mib"`
	// DynamicOnly: the bundle's static-shape denoisers were ignored (--dynamic-only).
	DynamicOnly bool            `json:"dynamic_only"`
	Floor       *benchFloor     `json:"floor,omitempty"`
	Reference   *benchReference `json:"reference,omitempty"`
	AB          *benchAB        `json:"ab_dynamic,omitempty"`
	// Paired is --ab's: this scorer against one with more flags, frame by frame.
	Paired *benchPaired `json:"ab,omitempty"`
	// Workers holds the throughput of --workers scoring goroutines sharing the scorer (empty at 1 worker).
	Workers []benchWorkers `json:"workers,omitempty"`
}

// benchWorkers is the throughput of several scoring goroutines sharing one scorer, as the daemon's
// models.workers runs them: wall time per frame, not the latency of one frame. A line with several cameras
// keeps every worker busy, so this, not the batch-1 latency, is what bounds the frames a line PC scores.
type benchWorkers struct {
	Workers int `json:"workers"`
	// Threads is each worker's ONNX Runtime intra-op threads (--worker-threads, else --threads; 0 = all cores).
	Threads int     `json:"threads"`
	Batch   int     `json:"batch"`
	Frames  int     `json:"frames"`  // over all rounds
	Seconds float64 `json:"seconds"` // over all rounds
	// RoundMS is each round's wall time per frame, MSPerFrame their median (one round of a few seconds can be
	// far off the next on a shared machine, as with the latency table).
	RoundMS      []float64 `json:"round_wall_ms_per_frame"`
	MSPerFrame   float64   `json:"wall_ms_per_frame"`
	FramesPerSec float64   `json:"frames_per_s"` // at MSPerFrame
}

type benchStage struct {
	Batch int     `json:"batch"`
	Stage string  `json:"stage"`
	P50MS float64 `json:"p50_ms_per_frame"`
	P95MS float64 `json:"p95_ms_per_frame"`
}

type benchBatch struct {
	Batch        int     `json:"batch"`
	Frames       int     `json:"frames"` // over all rounds
	Seconds      float64 `json:"seconds"`
	FramesPerSec float64 `json:"frames_per_s"`
	// RoundP50MS is each round's p50 of the total per frame; MedianP50MS their median. On a shared or
	// virtual machine one run of a few seconds can be 50% off the next, so a latency figure is the median of
	// interleaved rounds, each batch size measured in every round (ABBA order), never one run.
	RoundP50MS  []float64 `json:"round_p50_ms_per_frame"`
	MedianP50MS float64   `json:"median_p50_ms_per_frame"`
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("bench", "--bundle DIR [--batches 1,4] [--frames N] [--json] [IMAGES...]", stderr)
	var sf scoreFlags
	sf.Register(fs)
	batches := fs.String("batches", "1,4", "batch sizes to measure")
	frames := fs.Int("frames", 16, "frames scored per batch size (after one warm-up batch)")
	asJSON := fs.Bool("json", false, "print the measurements as one JSON object instead of tables")
	withFloor := fs.Bool("floor", false, "also print the floor table: MACs per stage counted from the graphs, the achieved GFLOP/s, "+
		"the machine's peak (a built-in convolution and matmul through ONNX Runtime) and measured / floor")
	var ro referenceOpts
	fs.StringVar(&ro.weights, "reference", "", "model file (.pt) of the bundle: also time the PyTorch reference scorer on the same "+
		"bundle, weights and images, interleaved with this pipeline at batch 1, and print the ratio")
	fs.StringVar(&ro.python, "python", "/usr/bin/python3", "Python interpreter with torch, for --reference")
	fs.StringVar(&ro.trainerDir, "trainer-dir", "", "directory holding the vlmdiff_train package (default: $VLMDIFF_TRAINER, then trainer/python or share/vlmdiff/python found upwards from the binary or the working directory)")
	fs.IntVar(&ro.rounds, "rounds", 3, "interleaved rounds: of the batch sizes (--frames each, the latency is the median of the rounds' p50s), "+
		"and of --reference and --ab-dynamic (each: every image once per scorer); --ab pairs --rounds x --frames/batch a batch size")
	workers := fs.Int("workers", 1, "also measure the throughput of this many scoring goroutines sharing the scorer (the daemon's "+
		"models.workers; pair with --worker-threads, e.g. 2 workers x 1 thread on 2 cores): wall ms per frame at each batch size, "+
		"median of --rounds")
	workerThreads := fs.Int("worker-threads", 0, "ONNX Runtime intra-op threads of each --workers goroutine, on a second scorer "+
		"of the same bundle (0 = --threads, the latency table's scorer): models.threads of a daemon with models.workers")
	abDynamic := fs.Bool("ab-dynamic", false, "also time a second scorer that ignores the static-shape denoisers, interleaved "+
		"with this one at batch 1: the before/after of the static export in one run")
	ab := fs.String("ab", "", "also time a second scorer B opened with these scorer flags on top of this command's (e.g. \"--spin\", "+
		"\"--denoiser-threads 1\", \"--bundle DIR2\"), pairs of batches back to back at each --batches size (--rounds x --frames/batch pairs, "+
		"which goes first alternating): each side's p50 per stage, the median of the paired B/A ratios with its 95% interval, "+
		"and how many pairs B won. For comparing settings on a machine whose speed drifts")
	if err := Parse(fs, args); err != nil {
		return err
	}
	ro.threads = sf.Threads
	var bs []int
	for _, s := range strings.Split(*batches, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("--batches: %q is not a positive integer", s)
		}
		bs = append(bs, n)
	}
	if ro.rounds < 1 {
		return fmt.Errorf("--rounds: %d, want at least 1", ro.rounds)
	}
	if *workerThreads < 0 {
		return fmt.Errorf("--worker-threads: %d, want 0 (as --threads) or more", *workerThreads)
	}
	var bsf scoreFlags
	if *ab != "" {
		var err error
		if bsf, err = abFlags(fs, *ab); err != nil {
			return err
		}
	}
	t0 := time.Now()
	s, err := sf.Open()
	if err != nil {
		return err
	}
	defer s.Close()
	rep, imgs, err := measureBench(ctx, s, time.Since(t0), &sf, fs.Args(), bs, *frames, ro.rounds)
	if err != nil {
		return err
	}
	if *workers > 1 {
		if rep.Workers, err = measureWorkersAt(ctx, s, sf, *workerThreads, imgs, bs, *frames, *workers, ro.rounds); err != nil {
			return err
		}
	}
	if ro.weights != "" {
		if rep.Reference, err = measureReference(ctx, s, imgs, fs.Args(), ro); err != nil {
			return err
		}
	}
	if *abDynamic && !sf.DynamicOnly {
		o := sf.Options()
		o.DynamicOnly = true
		dyn, err := pipeline.NewScorer(s.Bundle(), o)
		if err != nil {
			return err
		}
		rep.AB, err = measureAB(ctx, s, dyn, imgs, ro.rounds)
		dyn.Close()
		if err != nil {
			return err
		}
	}
	if *ab != "" {
		b, err := bsf.Open()
		if err != nil {
			return fmt.Errorf("--ab %q: %w", *ab, err)
		}
		rep.Paired, err = measurePaired(ctx, s, b, *ab, imgs, bs, *frames, ro.rounds)
		b.Close()
		if err != nil {
			return err
		}
	}
	if *withFloor {
		if rep.Floor, err = measureFloor(s, rep, sf.Threads); err != nil {
			return err
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	writeBenchTables(stdout, rep)
	return nil
}

// measureBench warms the scorer up and scores frames at each batch size, in rounds that take the batch sizes
// in turn (reversed every other round); it returns the report and the images.
func measureBench(ctx context.Context, s *pipeline.Scorer, open time.Duration, sf *scoreFlags, paths []string, bs []int,
	frames, rounds int) (*benchReport, []pipeline.Image, error) {
	openMS := open.Seconds() * 1000
	m := s.Manifest()
	imgs, err := benchImages(paths, m.Input.Width, m.Input.Height)
	if err != nil {
		return nil, nil, err
	}
	first := time.Now()
	if err := s.Warmup(ctx); err != nil {
		return nil, nil, err
	}
	rep := &benchReport{Bundle: m.Name, Version: m.Version, Width: m.Input.Width, Height: m.Input.Height,
		DDIMSteps: m.Diffusion.DDIMSteps, DenoiseSteps: s.DenoiseSteps(), StartStep: m.Diffusion.StartStep, Ensemble: s.Ensemble(), FeatureLayers: len(m.Features.Layers), FeaturePrecision: m.Features.Precision, FeatureWeightBits: m.Features.WeightBits, Provider: s.Provider(),
		Threads: sf.Threads, DenoiserThreads: sf.DenoiserThreads, Spin: sf.Spin, DenoiserSpin: sf.DenoiserSpin, SpinMicros: sf.SpinMicros, GOMAXPROCS: runtime.GOMAXPROCS(0), Memory: sf.MemoryName(), ORTVersion: pipeline.RuntimeVersion(), OpenMS: openMS,
		FirstFrameMS: time.Since(first).Seconds() * 1000, DynamicOnly: sf.DynamicOnly}
	per := make([]map[string][]float64, len(bs))
	for i, b := range bs {
		per[i] = map[string][]float64{}
		rep.Batches = append(rep.Batches, benchBatch{Batch: b})
		// one warm-up batch at this size
		if _, err := s.Score(ctx, batchOf(imgs, 0, b)); err != nil {
			return nil, nil, err
		}
	}
	for r := 0; r < rounds; r++ {
		for j := range bs {
			i := j
			if r%2 == 1 {
				i = len(bs) - 1 - j
			}
			if err := benchRound(ctx, s, imgs, &rep.Batches[i], per[i], frames); err != nil {
				return nil, nil, err
			}
		}
	}
	for i, b := range rep.Batches {
		for _, st := range benchStageOrder { // a stage that did not run (the knn graph of a bundle without one) has no row
			if len(per[i][st]) > 0 {
				rep.Stages = append(rep.Stages, benchStage{Batch: b.Batch, Stage: st, P50MS: pct(per[i][st], 50), P95MS: pct(per[i][st], 95)})
			}
		}
		rep.Batches[i].FramesPerSec = float64(b.Frames) / b.Seconds
		rep.Batches[i].MedianP50MS = pct(b.RoundP50MS, 50)
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		rep.PeakRSSMiB = float64(ru.Maxrss) / 1024
	}
	return rep, imgs, nil
}

// benchRound scores about frames frames in batches of b.Batch, adds each stage's time per frame to per and the
// round's frames, wall time and p50 of the total to b.
func benchRound(ctx context.Context, s *pipeline.Scorer, imgs []pipeline.Image, b *benchBatch, per map[string][]float64, frames int) error {
	n := max(frames/b.Batch, 1)
	var total []float64
	start := time.Now()
	for i := 0; i < n; i++ {
		res, err := s.Score(ctx, batchOf(imgs, i*b.Batch, b.Batch))
		if err != nil {
			return err
		}
		if res[0].Err != nil {
			return res[0].Err
		}
		for k, v := range res[0].LatencyMS {
			per[k] = append(per[k], v)
		}
		total = append(total, res[0].LatencyMS[pipeline.StageTotal])
	}
	b.Seconds += time.Since(start).Seconds()
	b.Frames += n * b.Batch
	b.RoundP50MS = append(b.RoundP50MS, pct(total, 50))
	return nil
}

// measureWorkersAt is measureWorkers on s, or, when threads is set and differs from s's (sf.Threads), on a second
// scorer of the same flags with that many threads, closed after.
func measureWorkersAt(ctx context.Context, s *pipeline.Scorer, sf scoreFlags, threads int, imgs []pipeline.Image,
	bs []int, frames, w, rounds int) ([]benchWorkers, error) {
	if threads == 0 || threads == sf.Threads {
		return measureWorkers(ctx, s, imgs, bs, frames, w, sf.Threads, rounds)
	}
	sf.Threads = threads
	ws, err := sf.Open()
	if err != nil {
		return nil, fmt.Errorf("--worker-threads %d: %w", threads, err)
	}
	defer ws.Close()
	return measureWorkers(ctx, ws, imgs, bs, frames, w, threads, rounds)
}

// measureWorkers scores frames per batch size with w goroutines sharing s, each its own batches, in rounds
// (every batch size once a round), and returns the median wall time per frame of the rounds. threads is what
// s was opened with, for the report. Every goroutine warms up first in each round (its first batch may open a
// lazily opened graph).
func measureWorkers(ctx context.Context, s *pipeline.Scorer, imgs []pipeline.Image, bs []int, frames, w, threads,
	rounds int) ([]benchWorkers, error) {
	out := make([]benchWorkers, len(bs))
	for i, b := range bs {
		out[i] = benchWorkers{Workers: w, Threads: threads, Batch: b}
	}
	for r := 0; r < rounds; r++ {
		for i, b := range bs {
			f, wall, err := workersRound(ctx, s, imgs, b, frames, w)
			if err != nil {
				return nil, err
			}
			o := &out[i]
			o.Frames += f
			o.Seconds += wall
			o.RoundMS = append(o.RoundMS, wall*1000/float64(f))
		}
	}
	for i := range out {
		out[i].MSPerFrame = pct(out[i].RoundMS, 50)
		out[i].FramesPerSec = 1000 / out[i].MSPerFrame
	}
	return out, nil
}

// workersRound is one round of measureWorkers at batch size b: the frames scored and the wall seconds.
func workersRound(ctx context.Context, s *pipeline.Scorer, imgs []pipeline.Image, b, frames, w int) (int, float64, error) {
	n := max(frames/(b*w), 1)
	var wg sync.WaitGroup
	errs := make([]error, w)
	var ready, done sync.WaitGroup
	ready.Add(w)
	done.Add(1)
	for g := 0; g < w; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			_, err := s.Score(ctx, batchOf(imgs, g*b, b))
			ready.Done()
			done.Wait()
			for i := 0; i < n && err == nil; i++ {
				var res []pipeline.Result
				res, err = s.Score(ctx, batchOf(imgs, (g*n+i)*b, b))
				if err == nil && res[0].Err != nil {
					err = res[0].Err
				}
			}
			errs[g] = err
		}(g)
	}
	ready.Wait()
	start := time.Now()
	done.Done()
	wg.Wait()
	wall := time.Since(start).Seconds()
	if err := errors.Join(errs...); err != nil {
		return 0, 0, fmt.Errorf("bench --workers %d, batch %d: %w", w, b, err)
	}
	return n * b * w, wall, nil
}

// benchImages reads the given images, or makes 4 seeded random frames of the bundle's input size.
func benchImages(paths []string, w, h int) ([]pipeline.Image, error) {
	var imgs []pipeline.Image
	for _, p := range paths {
		im, err := pipeline.ReadImage(p)
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, im)
	}
	if len(imgs) == 0 {
		r := rand.New(rand.NewPCG(1, 2))
		for i := 0; i < 4; i++ {
			pix := make([]byte, w*h*3)
			for j := range pix {
				pix[j] = byte(r.IntN(256))
			}
			imgs = append(imgs, pipeline.Image{Width: w, Height: h, Pix: pix})
		}
	}
	return imgs, nil
}

// writeBenchTables prints the report as the human-readable tables.
func writeBenchTables(w io.Writer, rep *benchReport) {
	dt := ""
	if rep.DenoiserThreads > 0 {
		dt = fmt.Sprintf(" (denoiser %d)", rep.DenoiserThreads)
	}
	spin := "off"
	switch {
	case rep.Spin:
		spin = "all"
	case rep.DenoiserSpin:
		spin = "denoiser"
	}
	if spin != "off" && rep.SpinMicros > 0 {
		spin += fmt.Sprintf(" (%d us)", rep.SpinMicros)
	}
	fp := ""
	if rep.FeaturePrecision != "" {
		fp = " " + rep.FeaturePrecision
		if rep.FeatureWeightBits > 0 {
			fp += fmt.Sprintf(" (%d-bit weights)", rep.FeatureWeightBits)
		}
	}
	ddim := strconv.Itoa(rep.DDIMSteps)
	if rep.DenoiseSteps != rep.DDIMSteps {
		ddim = fmt.Sprintf("%d of %d from step %d", rep.DenoiseSteps, rep.DDIMSteps, rep.StartStep)
	}
	fmt.Fprintf(w, "bundle %s %s  input %dx%d  ddim %s  noises %d  features %d layers%s  provider %s  threads %d%s  spin %s  memory %s  GOMAXPROCS %d  onnxruntime %s\n",
		rep.Bundle, rep.Version, rep.Width, rep.Height, ddim, rep.Ensemble, rep.FeatureLayers, fp, rep.Provider, rep.Threads, dt,
		spin, rep.Memory, rep.GOMAXPROCS, rep.ORTVersion)
	fmt.Fprintf(w, "open+verify %.0f ms, first frame (warm-up) %.0f ms\n\n", rep.OpenMS, rep.FirstFrameMS)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "batch\tstage\tp50 ms/frame\tp95 ms/frame\t\n")
	for _, st := range rep.Stages {
		fmt.Fprintf(tw, "%d\t%s\t%.1f\t%.1f\t\n", st.Batch, st.Stage, st.P50MS, st.P95MS)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, b := range rep.Batches {
		fmt.Fprintf(w, "batch %d: %.2f frames/s (%d frames in %.1f s)", b.Batch, b.FramesPerSec, b.Frames, b.Seconds)
		if len(b.RoundP50MS) > 1 {
			r := make([]string, len(b.RoundP50MS))
			for i, v := range b.RoundP50MS {
				r[i] = fmt.Sprintf("%.1f", v)
			}
			fmt.Fprintf(w, "; total p50 of %d interleaved rounds %s ms/frame, median %.1f", len(r), strings.Join(r, " / "), b.MedianP50MS)
		}
		fmt.Fprintln(w)
	}
	for _, b := range rep.Workers {
		th := "all cores"
		if b.Threads > 0 {
			th = fmt.Sprintf("%d thread%s", b.Threads, map[bool]string{true: "", false: "s"}[b.Threads == 1])
		}
		r := make([]string, len(b.RoundMS))
		for i, v := range b.RoundMS {
			r[i] = fmt.Sprintf("%.1f", v)
		}
		fmt.Fprintf(w, "%d workers x %s, batch %d: %.1f ms/frame wall, %.2f frames/s (median of %d rounds %s; %d frames in %.1f s)\n",
			b.Workers, th, b.Batch, b.MSPerFrame, b.FramesPerSec, len(r), strings.Join(r, " / "), b.Frames, b.Seconds)
	}
	if rep.PeakRSSMiB > 0 {
		fmt.Fprintf(w, "peak RSS %.0f MiB\n", rep.PeakRSSMiB)
	}
	if rep.Reference != nil {
		writeReferenceTable(w, rep.Reference)
	}
	if rep.AB != nil {
		writeABTable(w, rep.AB)
	}
	if rep.Paired != nil {
		writePairedTable(w, rep.Paired)
	}
	if rep.Floor != nil {
		writeFloorTable(w, rep.Floor)
	}
}

func batchOf(imgs []pipeline.Image, off, n int) []pipeline.Request {
	reqs := make([]pipeline.Request, n)
	for i := range reqs {
		reqs[i] = pipeline.Request{Image: imgs[(off+i)%len(imgs)], Seq: uint64(off + i)}
	}
	return reqs
}

func pct(v []float64, p float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	i := int(float64(len(s)-1)*p/100 + 0.5)
	return s[i]
}
