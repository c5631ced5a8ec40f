package cli

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vlmdiff/edge/pipeline"
)

func init() {
	Register(Command{Name: "bench", Summary: "measure per-stage latency, frames/s and peak memory of a bundle", Run: runBench})
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("bench", "--bundle DIR [--batches 1,4] [--frames N] [IMAGES...]", stderr)
	var sf scoreFlags
	sf.Register(fs)
	batches := fs.String("batches", "1,4", "batch sizes to measure")
	frames := fs.Int("frames", 16, "frames scored per batch size (after one warm-up batch)")
	if err := Parse(fs, args); err != nil {
		return err
	}
	var bs []int
	for _, s := range strings.Split(*batches, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("--batches: %q is not a positive integer", s)
		}
		bs = append(bs, n)
	}
	t0 := time.Now()
	s, err := sf.Open()
	if err != nil {
		return err
	}
	defer s.Close()
	openMS := time.Since(t0).Seconds() * 1000
	m := s.Manifest()

	var imgs []pipeline.Image
	for _, p := range fs.Args() {
		im, err := pipeline.ReadImage(p)
		if err != nil {
			return err
		}
		imgs = append(imgs, im)
	}
	if len(imgs) == 0 {
		r := rand.New(rand.NewPCG(1, 2))
		for i := 0; i < 4; i++ {
			pix := make([]byte, m.Input.Width*m.Input.Height*3)
			for j := range pix {
				pix[j] = byte(r.IntN(256))
			}
			imgs = append(imgs, pipeline.Image{Width: m.Input.Width, Height: m.Input.Height, Pix: pix})
		}
	}
	first := time.Now()
	if err := s.Warmup(ctx); err != nil {
		return err
	}
	firstMS := time.Since(first).Seconds() * 1000

	fmt.Fprintf(stdout, "bundle %s %s  input %dx%d  ddim %d  features %d layers  provider %s  threads %d  spin %v  GOMAXPROCS %d\n",
		m.Name, m.Version, m.Input.Width, m.Input.Height, m.Diffusion.DDIMSteps, len(m.Features.Layers), s.Provider(),
		sf.Threads, sf.Spin, runtime.GOMAXPROCS(0))
	fmt.Fprintf(stdout, "open+verify %.0f ms, first frame (warm-up) %.0f ms\n\n", openMS, firstMS)
	stages := []string{pipeline.StagePreprocess, pipeline.StageEncode, pipeline.StageHint, pipeline.StageDenoise,
		pipeline.StageDecode, pipeline.StageFeatures, pipeline.StageMap, pipeline.StageTotal}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "batch\tstage\tp50 ms/frame\tp95 ms/frame\t\n")
	var summary []string
	for _, b := range bs {
		per := map[string][]float64{}
		n := max(*frames/b, 1)
		// one warm-up batch at this size
		if _, err := s.Score(ctx, batchOf(imgs, 0, b)); err != nil {
			return err
		}
		start := time.Now()
		for i := 0; i < n; i++ {
			res, err := s.Score(ctx, batchOf(imgs, i*b, b))
			if err != nil {
				return err
			}
			if res[0].Err != nil {
				return res[0].Err
			}
			for k, v := range res[0].LatencyMS {
				per[k] = append(per[k], v)
			}
		}
		wall := time.Since(start).Seconds()
		for _, st := range stages {
			if len(per[st]) == 0 {
				continue
			}
			fmt.Fprintf(tw, "%d\t%s\t%.1f\t%.1f\t\n", b, st, pct(per[st], 50), pct(per[st], 95))
		}
		summary = append(summary, fmt.Sprintf("batch %d: %.2f frames/s (%d frames in %.1f s)", b, float64(n*b)/wall, n*b, wall))
	}
	tw.Flush()
	fmt.Fprintln(stdout)
	for _, l := range summary {
		fmt.Fprintln(stdout, l)
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		fmt.Fprintf(stdout, "peak RSS %.0f MiB\n", float64(ru.Maxrss)/1024)
	}
	return nil
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
