package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vlmdiff/edge/internal/torchenv"
	"github.com/vlmdiff/edge/pipeline"
)

// benchReference is `vlmdiff bench --reference WEIGHTS`: the PyTorch reference scorer
// (trainer/python/vlmdiff_train/reference.py, through bench_reference.py) and this pipeline scoring the same
// images with the same bundle and weights at batch 1, in alternating rounds of one run, so that whatever else
// loads the machine loads both alike. Ratio = reference p50 / pipeline p50.
type benchReference struct {
	Python        string  `json:"python"`
	Torch         string  `json:"torch"`
	TorchThreads  int     `json:"torch_threads"`
	BLAS          string  `json:"torch_blas"`
	OpenMPWait    string  `json:"openmp_wait_policy"`
	Rounds        int     `json:"rounds"`
	Frames        int     `json:"frames_per_round"`
	PipelineP50MS float64 `json:"pipeline_p50_ms_per_frame"`
	ReferenceP50  float64 `json:"reference_p50_ms_per_frame"`
	Ratio         float64 `json:"ratio"`
}

// referenceOpts are the bench flags of the side-by-side.
type referenceOpts struct {
	weights, python, trainerDir string
	rounds, threads             int
}

// measureReference runs the side-by-side on imgs (written as PNGs when they came from no files).
func measureReference(ctx context.Context, s *pipeline.Scorer, imgs []pipeline.Image, paths []string, o referenceOpts) (*benchReference, error) {
	trainer, err := torchenv.FindTrainerDir(o.trainerDir)
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		dir, err := os.MkdirTemp("", "vlmdiff-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		if paths, err = writePNGs(dir, imgs); err != nil {
			return nil, err
		}
	}
	args := append([]string{"-m", "vlmdiff_train.bench_reference", "--bundle", s.Bundle().Dir, "--weights", o.weights,
		"--threads", fmt.Sprint(o.threads), "--ensemble", fmt.Sprint(s.Ensemble())}, paths...)
	// PyTorch at its best: the OpenMP wait policy that suits its build (internal/torchenv). With the wrong one
	// the reference ran 2-2.5x slower here and the ratio flattered the pipeline (Debian's 1.13 with OpenMP's
	// spinning: 5.58x against 2.38x in one quiet run; PyPI's 2.15 with PASSIVE: 6.9x against about 3x).
	build, err := torchenv.Probe(ctx, o.python, nil)
	if err != nil {
		return nil, fmt.Errorf("reference scorer: %w", err)
	}
	cmd := exec.CommandContext(ctx, o.python, args...)
	cmd.Env = append(append(os.Environ(), "PYTHONPATH="+trainer, "PYTHONUNBUFFERED=1"), torchenv.Env(build.BLAS)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("reference scorer %s: %w", o.python, err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	ref := &benchReference{Python: o.python, Rounds: o.rounds, Frames: len(imgs), BLAS: build.BLAS,
		OpenMPWait: torchenv.Policy(build.BLAS)}
	goMS, refMS, err := interleave(ctx, s, imgs, o.rounds, stdin, bufio.NewScanner(stdout), ref)
	if err != nil {
		return nil, fmt.Errorf("reference scorer: %w; %s", err, lastLines(stderr.String(), 5))
	}
	ref.PipelineP50MS, ref.ReferenceP50 = pct(goMS, 50), pct(refMS, 50)
	ref.Ratio = ref.ReferenceP50 / ref.PipelineP50MS
	return ref, nil
}

// interleave alternates rounds after an untimed warm-up round of the reference: every image through the
// pipeline at batch 1 and every image through the reference, the pipeline first in even rounds and the reference
// first in odd ones (the one going first was measured slower under load); it returns the per-frame milliseconds
// of each.
func interleave(ctx context.Context, s *pipeline.Scorer, imgs []pipeline.Image, rounds int, cmdIn io.Writer,
	cmdOut *bufio.Scanner, ref *benchReference) (goMS, refMS []float64, err error) {
	var ready struct {
		Ready   bool   `json:"ready"`
		Torch   string `json:"torch"`
		Threads int    `json:"threads"`
	}
	if !cmdOut.Scan() || json.Unmarshal(cmdOut.Bytes(), &ready) != nil || !ready.Ready {
		return nil, nil, fmt.Errorf("did not start (%q)", cmdOut.Text())
	}
	ref.Torch, ref.TorchThreads = ready.Torch, ready.Threads
	goRound := func() error {
		for i := range imgs {
			t0 := time.Now()
			res, err := s.Score(ctx, batchOf(imgs, i, 1))
			if err != nil {
				return err
			}
			if res[0].Err != nil {
				return res[0].Err
			}
			goMS = append(goMS, time.Since(t0).Seconds()*1000)
		}
		return nil
	}
	refRound := func() error {
		if _, err := io.WriteString(cmdIn, "round\n"); err != nil {
			return err
		}
		var round struct {
			MS []float64 `json:"ms"`
		}
		if !cmdOut.Scan() || json.Unmarshal(cmdOut.Bytes(), &round) != nil || len(round.MS) != len(imgs) {
			if err := ctx.Err(); err != nil {
				return err
			}
			return fmt.Errorf("unexpected answer %q", cmdOut.Text())
		}
		refMS = append(refMS, round.MS...)
		return nil
	}
	// one untimed round first: the pipeline was warmed up when it opened, and the reference's first calls build
	// its kernels' plans (oneDNN primitives, thread pools)
	if err := refRound(); err != nil {
		return nil, nil, fmt.Errorf("warm-up round: %w", err)
	}
	refMS = refMS[:0]
	for r := 0; r < rounds; r++ {
		order := []func() error{goRound, refRound}
		if r%2 == 1 { // ABBA: each goes first in every other round
			order[0], order[1] = refRound, goRound
		}
		for _, f := range order {
			if err := f(); err != nil {
				return nil, nil, fmt.Errorf("round %d: %w", r+1, err)
			}
		}
	}
	return goMS, refMS, nil
}

func writePNGs(dir string, imgs []pipeline.Image) ([]string, error) {
	var paths []string
	for i, im := range imgs {
		rgba := image.NewNRGBA(image.Rect(0, 0, im.Width, im.Height))
		for j := 0; j < im.Width*im.Height; j++ {
			copy(rgba.Pix[4*j:4*j+3], im.Pix[3*j:3*j+3])
			rgba.Pix[4*j+3] = 255
		}
		p := filepath.Join(dir, fmt.Sprintf("bench%d.png", i))
		f, err := os.Create(p)
		if err != nil {
			return nil, err
		}
		err = png.Encode(f, rgba)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func writeReferenceTable(w io.Writer, r *benchReference) {
	fmt.Fprintf(w, "\nside by side, batch 1, %d interleaved rounds of %d frames (PyTorch %s, %d threads, BLAS %s, OpenMP wait %s):\n",
		r.Rounds, r.Frames, r.Torch, r.TorchThreads, r.BLAS, r.OpenMPWait)
	fmt.Fprintf(w, "  pipeline (ONNX Runtime)   p50 %8.1f ms/frame\n", r.PipelineP50MS)
	fmt.Fprintf(w, "  PyTorch reference         p50 %8.1f ms/frame\n", r.ReferenceP50)
	fmt.Fprintf(w, "  ratio (reference / pipeline)  %.2fx\n", r.Ratio)
}

// benchAB is `vlmdiff bench --ab-dynamic`: the scorer as opened and a second one on the same bundle that ignores
// the static-shape denoisers (pipeline.Options.DynamicOnly, the scorer before issue 14's lever), alternating
// rounds at batch 1 in one run (ABBA order), so that a loaded machine loads both alike. Speedup = dynamic p50 /
// static p50.
type benchAB struct {
	Rounds       int     `json:"rounds"`
	Frames       int     `json:"frames_per_round"`
	StaticP50MS  float64 `json:"static_p50_ms_per_frame"`
	DynamicP50MS float64 `json:"dynamic_p50_ms_per_frame"`
	Speedup      float64 `json:"speedup"`
}

// measureAB times rounds of every image through s and through dyn, alternately.
func measureAB(ctx context.Context, s, dyn *pipeline.Scorer, imgs []pipeline.Image, rounds int) (*benchAB, error) {
	if err := dyn.Warmup(ctx); err != nil {
		return nil, err
	}
	var ms [2][]float64
	scorers := []*pipeline.Scorer{s, dyn}
	for r := 0; r < rounds; r++ {
		for j := range scorers {
			k := (j + r) % 2 // ABBA: each goes first in every other round
			sc := scorers[k]
			for i := range imgs {
				t0 := time.Now()
				res, err := sc.Score(ctx, batchOf(imgs, i, 1))
				if err != nil {
					return nil, err
				}
				if res[0].Err != nil {
					return nil, res[0].Err
				}
				ms[k] = append(ms[k], time.Since(t0).Seconds()*1000)
			}
		}
	}
	ab := &benchAB{Rounds: rounds, Frames: len(imgs), StaticP50MS: pct(ms[0], 50), DynamicP50MS: pct(ms[1], 50)}
	ab.Speedup = ab.DynamicP50MS / ab.StaticP50MS
	return ab, nil
}

func writeABTable(w io.Writer, ab *benchAB) {
	fmt.Fprintf(w, "\nstatic-shape denoisers vs dynamic (--dynamic-only), batch 1, %d interleaved rounds of %d frames:\n", ab.Rounds, ab.Frames)
	fmt.Fprintf(w, "  static   p50 %8.1f ms/frame\n  dynamic  p50 %8.1f ms/frame\n  speedup  %.2fx\n", ab.StaticP50MS, ab.DynamicP50MS, ab.Speedup)
}
