package run

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vlmdiff/edge/internal/torchenv"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/trainer/eval"
)

// Python runs the Python stages.
type Python struct {
	Exe        string
	TrainerDir string
	// BLAS is the interpreter's torch BLAS as Check found it ("" before Check): it decides the OpenMP wait
	// policy of every stage (internal/torchenv).
	BLAS string
}

func (p Python) env() []string {
	pp := p.TrainerDir
	if old := os.Getenv("PYTHONPATH"); old != "" {
		pp += string(os.PathListSeparator) + old
	}
	env := append(os.Environ(), "PYTHONPATH="+pp, "PYTHONUNBUFFERED=1")
	return append(env, torchenv.Env(p.BLAS)...)
}

// Module returns the command `python -m module args...` with the trainer package on PYTHONPATH, for the tools
// that are not training stages (vlmdiff quantize's quantiser, which runs in another interpreter).
func (p Python) Module(ctx context.Context, module string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, p.Exe, append([]string{"-m", module}, args...)...)
	cmd.Env = p.env()
	return cmd
}

// Check verifies that the interpreter imports torch and vlmdiff_train, records torch's BLAS in p.BLAS (the
// stages' OpenMP wait policy follows it: internal/torchenv) and returns a short description.
func (p *Python) Check(ctx context.Context) (string, error) {
	b, err := torchenv.Probe(ctx, p.Exe, p.env(), "vlmdiff_train")
	if err != nil {
		return "", fmt.Errorf("%w (PYTHONPATH=%s)", err, p.TrainerDir)
	}
	p.BLAS = b.BLAS
	dev := "cpu-only"
	if b.CUDA {
		dev = "cuda"
	}
	return fmt.Sprintf("python %s (torch %s %s, BLAS %s, OpenMP wait %s; vlmdiff_train from %s)", p.Exe, b.Torch, dev,
		b.BLAS, torchenv.Policy(b.BLAS), p.TrainerDir), nil
}

// Event is one progress line of a Python stage (trainer/python/vlmdiff_train/progress.py).
type Event struct {
	Event   string         `json:"event"`
	Stage   string         `json:"stage"`
	Step    int            `json:"step"`
	Total   int            `json:"total"`
	Epoch   *int           `json:"epoch"`
	Loss    *float64       `json:"loss"`
	ETA     *float64       `json:"eta_s"`
	Outputs map[string]any `json:"outputs"`
}

// interpreterPath makes an interpreter named by a relative path (`--python .deps/torch/bin/python`) absolute
// against the working directory it was given in. Why: a stage runs in its run directory, where that path names
// nothing (session 61: the finetune-ae stage failed to start after the check had passed). A bare name (python3)
// stays a name looked up on PATH.
func interpreterPath(exe string) (string, error) {
	if filepath.IsAbs(exe) || !strings.ContainsRune(exe, filepath.Separator) {
		return exe, nil
	}
	abs, err := filepath.Abs(exe)
	if err != nil {
		return "", fmt.Errorf("python %s: %w", exe, err)
	}
	return abs, nil
}

// RunStage runs `python -m vlmdiff_train STAGE --config CFG` (or the launcher instead of `python -m`), with the
// stage's JSON config written to RUN/configs/<stage>.json. stdout progress events become throttled progress
// lines; stdout and stderr go to the stage log. It returns the "done" event's outputs.
func (p Python) RunStage(ctx context.Context, sc *StageContext, stage string, cfg map[string]any, launcher []string) (map[string]any, error) {
	cfgPath := sc.Path("configs", stage+".json")
	if err := os.MkdirAll(filepath.Dir(cfgPath), 0o755); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding the stage config: %w", err)
	}
	if err := writeFileAtomic(cfgPath, append(b, '\n')); err != nil {
		return nil, err
	}
	args := []string{"-m", "vlmdiff_train", stage, "--config", cfgPath}
	exe, err := interpreterPath(p.Exe)
	if err != nil {
		return nil, err
	}
	if len(launcher) > 0 {
		// torchrun runs a module with -m too: torchrun --nproc_per_node=8 -m vlmdiff_train ...
		exe, args = launcher[0], append(append([]string{}, launcher[1:]...), args...)
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = p.env()
	cmd.Dir = sc.Dir
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	fmt.Fprintf(sc.Log, "$ PYTHONPATH=%s %s %s\n", p.TrainerDir, exe, strings.Join(args, " "))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	tail := &tailWriter{n: 20}
	cmd.Stderr = io.MultiWriter(lockedWriter{&mu, sc.Log}, tail)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", exe, err)
	}
	var done *Event
	pr := &progressPrinter{w: sc.Progress, stage: stage, every: 2 * time.Second}
	sco := bufio.NewScanner(stdout)
	sco.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sco.Scan() {
		line := sco.Bytes()
		mu.Lock()
		sc.Log.Write(append(append([]byte{}, line...), '\n'))
		mu.Unlock()
		var ev Event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil {
			continue
		}
		switch ev.Event {
		case "progress":
			pr.event(ev)
		case "done":
			e := ev
			done = &e
		}
	}
	werr := cmd.Wait()
	pr.flush()
	if werr != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("python stage %s: %v: %s", stage, werr, tail.last())
	}
	if done == nil {
		return nil, fmt.Errorf("python stage %s exited without its done event", stage)
	}
	return done.Outputs, nil
}

// progressPrinter prints throttled "stage step/total epoch loss ETA" lines.
type progressPrinter struct {
	w     io.Writer
	stage string
	every time.Duration
	last  time.Time
	ev    *Event
	shown bool
}

func (p *progressPrinter) event(ev Event) {
	p.ev, p.shown = &ev, false
	if p.w == nil || time.Since(p.last) < p.every {
		return
	}
	p.print()
}

func (p *progressPrinter) flush() {
	if p.ev != nil && !p.shown && p.w != nil {
		p.print()
	}
}

func (p *progressPrinter) print() {
	p.last, p.shown = time.Now(), true
	fmt.Fprintln(p.w, FormatEvent(p.stage, *p.ev))
}

// FormatEvent renders a progress event for humans.
func FormatEvent(stage string, ev Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%s] step %d", stage, ev.Step)
	if ev.Total > 0 {
		fmt.Fprintf(&b, "/%d (%.0f%%)", ev.Total, 100*float64(ev.Step)/float64(ev.Total))
	}
	if ev.Epoch != nil {
		fmt.Fprintf(&b, " epoch %d", *ev.Epoch)
	}
	if ev.Loss != nil {
		fmt.Fprintf(&b, " loss %.5g", *ev.Loss)
	}
	if ev.ETA != nil {
		fmt.Fprintf(&b, " ETA %s", eval.FormatDuration(time.Duration(*ev.ETA*float64(time.Second))))
	}
	return b.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// tailWriter keeps the last n lines written, for error messages.
type tailWriter struct {
	n     int
	lines []string
	part  string
}

func (t *tailWriter) Write(b []byte) (int, error) {
	s := t.part + string(b)
	parts := strings.Split(s, "\n")
	t.part = parts[len(parts)-1]
	for _, l := range parts[:len(parts)-1] {
		if strings.TrimSpace(l) == "" {
			continue
		}
		t.lines = append(t.lines, l)
		if len(t.lines) > t.n {
			t.lines = t.lines[1:]
		}
	}
	return len(b), nil
}

// last is the most telling stderr line: the stage's one-line "error:" message when there is one.
func (t *tailWriter) last() string {
	all := append(append([]string{}, t.lines...), t.part)
	for i := len(all) - 1; i >= 0; i-- {
		if strings.Contains(all[i], ": error: ") || strings.Contains(all[i], ": usage: ") {
			return strings.TrimSpace(all[i])
		}
	}
	return lastLine(strings.Join(all, "\n"))
}

func lastLine(s string) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	if len(ls) == 0 || ls[len(ls)-1] == "" {
		return "(no output)"
	}
	return strings.TrimSpace(ls[len(ls)-1])
}

// pruneScript cuts an ONNX graph to the named outputs (vlmdiff_train.onnx_prune): only the nodes, weights and
// outputs they need. Dropping the other outputs alone is not enough: ONNX Runtime still ran most of the nodes
// that fed only them (MobileNetV2 with outputs block5 and block12 but all 97 nodes left: 54 kernels a run,
// against 42 for the graph cut at block12). A graph with control flow keeps its nodes and loses only the outputs.
const pruneScript = `import sys, onnx
from vlmdiff_train.onnx_prune import prune_to_outputs
src, dst, keep = sys.argv[1], sys.argv[2], sys.argv[3:]
m = onnx.load(src)
try:
    m, _ = prune_to_outputs(m, keep)
except RuntimeError as e:
    if "control-flow" not in str(e):
        sys.exit("feature graph %s: %s" % (src, e))
    kept = [o for o in m.graph.output if o.name in keep]
    del m.graph.output[:]
    m.graph.output.extend(kept)
onnx.checker.check_model(m)
onnx.save(m, dst)
`

// PruneONNXOutputs writes a copy of an ONNX graph cut to the keep outputs (pruneScript). A backbone file
// usually has more outputs than a bundle maps (ResNet's stage3_act, MobileNet's five blocks), and ONNX Runtime
// runs every node a declared output needs.
func (p Python) PruneONNXOutputs(ctx context.Context, src, dst string, keep []string) error {
	cmd := exec.CommandContext(ctx, p.Exe, append([]string{"-c", pruneScript, src, dst}, keep...)...)
	cmd.Env = p.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pruning %s to outputs %v: %v: %s", src, keep, err, lastLine(string(out)))
	}
	return nil
}

// knnNotSharedExit is vlmdiff_train.knn_graph's NOT_SHARED.
const knnNotSharedExit = 3

// KnnGraph writes the nearest-normal term's graph for the bundle m at dst (vlmdiff_train.knn_graph): spec's
// backbone cut at its layers, fed the bundle's normalised input; or, with features (the bundle's feature
// graph), the graph fed those layers, after the module checked that features gives the backbone's values for
// them (its exit status 3 when not: an error wrapping eval.ErrKnnNotShared). It is an eval.MakeKnnGraph.
func (p Python) KnnGraph(ctx context.Context, spec eval.KnnSpec, m *models.Manifest, features, dst string) error {
	floats := func(v []float32) string {
		s := make([]string, len(v))
		for i, f := range v {
			s[i] = strconv.FormatFloat(float64(f), 'g', -1, 32)
		}
		return strings.Join(s, ",")
	}
	args := []string{"--backbone", spec.Backbone, "--layers", strings.Join(spec.Layers, ","),
		"--height", strconv.Itoa(m.Input.Height), "--width", strconv.Itoa(m.Input.Width), "--dims", strconv.Itoa(spec.Dims),
		"--in-mean", floats(m.Input.Mean[:]), "--in-std", floats(m.Input.Std[:]), "--out", dst}
	if len(spec.Mean) == 3 && len(spec.Std) == 3 {
		args = append(args, "--mean", floats(spec.Mean), "--std", floats(spec.Std))
	}
	if spec.KMax > 1 {
		args = append(args, "--k-max", strconv.Itoa(spec.KMax))
	}
	if features != "" {
		args = append(args, "--from-layers", features)
		if len(m.Features.Mean) == 3 && len(m.Features.Std) == 3 {
			args = append(args, "--features-mean", floats(m.Features.Mean), "--features-std", floats(m.Features.Std))
		}
	}
	out, err := p.Module(ctx, "vlmdiff_train.knn_graph", args...).CombinedOutput()
	if ee := (*exec.ExitError)(nil); features != "" && errors.As(err, &ee) && ee.ExitCode() == knnNotSharedExit {
		return fmt.Errorf("%w: %s", eval.ErrKnnNotShared, strings.TrimPrefix(lastLine(string(out)), "knn graph: not shared: "))
	}
	if err != nil {
		return fmt.Errorf("knn graph of %s %v: %v: %s", spec.Backbone, spec.Layers, err, lastLine(string(out)))
	}
	return nil
}
