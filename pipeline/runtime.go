package pipeline

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// EnvLibrary names the environment variable that points at the ONNX Runtime shared library.
const EnvLibrary = "ONNXRUNTIME_LIB"

var (
	runtimeMu   sync.Mutex
	runtimePath string
)

// LibraryCandidates lists where InitRuntime looks for the ONNX Runtime shared library, in order: the configured
// path, $ONNXRUNTIME_LIB, .deps/lib (where `make deps` puts it) next to the executable and in the working
// directory or any of its parents, then the usual system locations.
func LibraryCandidates(configured string) []string {
	var c []string
	if configured != "" {
		c = append(c, configured)
	}
	if env := os.Getenv(EnvLibrary); env != "" {
		c = append(c, env)
	}
	const rel = ".deps/lib/libonnxruntime.so"
	if exe, err := os.Executable(); err == nil {
		dir := filepath.Dir(exe)
		c = append(c, filepath.Join(dir, rel), filepath.Join(dir, "..", rel))
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			c = append(c, filepath.Join(d, rel))
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	c = append(c, "/usr/local/lib/libonnxruntime.so", "/usr/lib/libonnxruntime.so",
		"/usr/lib/x86_64-linux-gnu/libonnxruntime.so", "/opt/onnxruntime/lib/libonnxruntime.so")
	return c
}

// InitRuntime loads the ONNX Runtime shared library and creates its process-wide environment. It is safe to
// call more than once; later calls are no-ops. configured is the path from the config ("" to search).
//
// When an explicit path (config or environment) is given it must work: falling back silently to another
// library would hide a misconfiguration on a GPU machine.
func InitRuntime(configured string) error {
	runtimeMu.Lock()
	defer runtimeMu.Unlock()
	if ort.IsInitialized() {
		return nil
	}
	explicit := configured
	if explicit == "" {
		explicit = os.Getenv(EnvLibrary)
	}
	var candidates []string
	if explicit != "" {
		candidates = []string{explicit}
	} else {
		candidates = LibraryCandidates("")
	}
	var tried []string
	for _, p := range candidates {
		if _, err := os.Stat(p); err != nil {
			tried = append(tried, p+" (absent)")
			continue
		}
		ort.SetSharedLibraryPath(p)
		if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
			tried = append(tried, fmt.Sprintf("%s (%v)", p, err))
			continue
		}
		runtimePath = p
		slog.Debug("onnxruntime loaded", "library", p, "version", ort.GetVersion())
		return nil
	}
	return fmt.Errorf("ONNX Runtime library not found or not usable; looked in: %s. "+
		"Install it with `make deps` (puts the CPU build in .deps/lib), set %s or models.onnxruntime_library "+
		"in the config to the path of libonnxruntime.so (>= 1.24; the onnxruntime-gpu build for CUDA)",
		strings.Join(tried, "; "), EnvLibrary)
}

// RuntimeVersion returns the loaded ONNX Runtime library's version ("" before InitRuntime).
func RuntimeVersion() string {
	runtimeMu.Lock()
	defer runtimeMu.Unlock()
	if runtimePath == "" {
		return ""
	}
	return ort.GetVersion()
}

// RuntimeLibrary returns the path of the loaded ONNX Runtime library ("" before InitRuntime).
func RuntimeLibrary() string {
	runtimeMu.Lock()
	defer runtimeMu.Unlock()
	return runtimePath
}

// Options configures how a bundle's graphs run.
type Options struct {
	// Providers in order of preference: "cuda", "cpu", or "auto" (CUDA when usable, else CPU, logged only at
	// debug level). CPU is always the last resort; an unusable "cuda" named explicitly is warned about once.
	Providers []string
	// Threads is ONNX Runtime's intra-op thread count per session (0 = ONNX Runtime's default).
	Threads int
	// DenoiserThreads, when > 0, is the intra-op thread count of the denoiser's sessions (dynamic, static and
	// time graphs) instead of Threads. A small denoiser step is about a thousand short operators on tensors of
	// a few thousand values: a second thread adds a wake-up and a join to each of them and gains little
	// arithmetic, while the encoder, decoder and feature graphs are few large convolutions that two threads
	// split well (docs/operations.md, "Tuning scoring speed").
	DenoiserThreads int
	// Spin lets ONNX Runtime's idle worker threads spin-wait between operators. Off by default: spinning
	// only pays when the cores are otherwise idle, and on small CPUs it slows scoring down.
	Spin bool
	// DenoiserSpin lets the denoiser's sessions spin-wait even when Spin is off. A denoiser step is about a
	// thousand operators of a few microseconds each: a sleeping worker thread is woken for every one of them,
	// and that wake-up is what made a second thread slower than one. Spinning keeps the worker awake between
	// them, so the denoiser gains from its second thread; the other graphs, few large convolutions, do not
	// need it (docs/operations.md, "Tuning scoring speed").
	DenoiserSpin bool
	// SpinMicros, when > 0, is how long a spinning thread waits for work before it sleeps
	// (session.intra_op.spin_duration_us, ONNX Runtime >= 1.26). 0 keeps ONNX Runtime's own spin count, which
	// kept the threads spinning well after a run, on cores the next graph's threads needed.
	SpinMicros int
	// DeviceID selects the GPU for the CUDA provider.
	DeviceID int
	// Library is the ONNX Runtime shared library path ("" = search; see InitRuntime).
	Library string
	// LeanMemory turns off ONNX Runtime's CPU memory arena and has the C allocator hand large blocks back to
	// the system when they are freed (mallopt: a fixed 128 KiB mmap threshold, two malloc arenas). With the
	// arena every session keeps the high-water mark of its tensors for good (five sessions, five high-water
	// marks), and glibc keeps freed blocks in per-thread arenas: the daemon with the small preset held about
	// 340 MiB, lean about 100 MiB less (docs/operations.md, "Memory"). The price is fresh pages for each run's
	// tensors. Off (the zero value) keeps ONNX Runtime's defaults.
	LeanMemory bool
	// NoMemPattern turns off ONNX Runtime's memory pattern. With it, each session plans one block per input
	// shape for a run's intermediate tensors and keeps it in its arena beside the chunks of the tensors it
	// allocates one by one; without it every tensor comes from the arena, which reuses freed chunks from one
	// operator to the next. The small preset's peak RSS is about 50 MiB lower, with no system calls added (the
	// arena is user space), unlike LeanMemory.
	NoMemPattern bool
	// SharedArena has every session allocate from one process-wide ONNX Runtime arena that grows only by what
	// is asked (kSameAsRequested) instead of one arena per session that grows by powers of two. The sessions of
	// a frame run one after another, so the shared arena holds the largest session's working set rather than
	// the sum of five, and it keeps its memory, so no run pays for fresh pages (unlike LeanMemory).
	SharedArena bool
	// ClassConditioning conditions the denoiser on the frame's class prompt when the bundle has one (with
	// classifier-free guidance against the unconditional context). Off, every frame uses the bundle's
	// default context: the paper's setting for MVTec-AD, VisA and Real-IAD.
	ClassConditioning bool
	// DynamicOnly ignores the bundle's static-shape denoiser graphs and runs the dynamic one for every batch:
	// the scorer as it was before issue 14's overhead lever, for before/after measurements.
	DynamicOnly bool
	// NoReference scores raw maps even when the bundle has a map reference (map.reference): how the calibrate
	// stage measures the reference itself, and how to see what it removes.
	NoReference bool
	// LayerMaps has every result carry each feature layer's own smoothed map (Result.LayerMaps), for comparing
	// layer weights without rescoring. It costs one more smoothing per layer and frame, so only the select
	// stage asks for it.
	LayerMaps bool
	// PixelMap has every result carry the mean-frame term's own smoothed map (Result.PixelMap) when the bundle
	// has the term; LayerMaps implies it. For the calibrate stage, which sizes the term's weight.
	PixelMap bool
	// KnnMap has every result carry the nearest-normal term's own smoothed map (Result.KnnMap) when the bundle
	// has the term (map.knn); LayerMaps implies it.
	KnnMap bool
	// KnnLeaveOneOut scores each frame against banks without the vectors that came from that very frame
	// (map.knn.sources): how the calibrate and select stages score training normals, whose nearest neighbour
	// would otherwise be themselves.
	KnnLeaveOneOut bool
	// Ensemble, when > 0, overrides the bundle's diffusion.ensemble: how many start noises each frame is
	// reconstructed from. For measuring what a count costs and gives (vlmdiff eval/bench --ensemble) before
	// calibrate writes it into the bundle; the bundle's map reference and thresholds hold only for their own
	// count.
	Ensemble int
	// NoisePrefixes, with LayerMaps, has every result also carry the layer maps that a bundle with only the
	// first n start noises would give, for each n (Result.PrefixLayerMaps): noise k is drawn from seed Seed+k
	// whatever the count, so the first n reconstructions of an ensemble are those of a count of n. The select
	// stage weighs every count of select.ensembles from one scoring pass at the largest instead of one pass per
	// count. Increasing, each in 1..the ensemble.
	NoisePrefixes []int
	// PixelSigmas, with PixelMap or LayerMaps and a bundle with the mean-frame term, has every result also carry
	// the term's map smoothed at each of these sigmas (Result.PixelMaps), as PixelMap is smoothed at the
	// term's own: the select stage weighs the term's smoothing from one scoring pass. Each in
	// 0..models.MaxPixelSigma.
	PixelSigmas []float64
	// KnnSigmas, with KnnMap or LayerMaps and a bundle with the nearest-normal term, has every result also carry
	// the term's map smoothed at each of these sigmas (Result.KnnMaps), as PixelSigmas does for the mean-frame
	// term. Each in 0..models.MaxPixelSigma.
	KnnSigmas []float64
	// KnnKs, with KnnMap and a bundle with the nearest-normal term, has every result also carry the term's map
	// (at its own smoothing) as the mean of each of these counts of nearest bank vectors (Result.KnnKMaps),
	// whatever the frame's class takes (map.knn.ks): the select stage chooses each class's count from one
	// scoring pass. Each in 1..map.knn.k_max.
	KnnKs []int
	// StaticNoLayout optimises the static-shape denoiser sessions at the extended level, without ONNX Runtime's
	// NCHWc layout pass: 80 fewer operators per small-preset step, but plain instead of blocked convolutions,
	// and slower in the quiet interleaved runs (Scorer.staticNoLayout). Off (the zero value): ONNX Runtime's
	// default, all passes.
	StaticNoLayout bool
}

// newSessionOptions builds session options with the preferred providers. A provider that cannot be used (no
// CUDA build, no GPU) is logged once and skipped: the CPU provider always remains, so a line without a GPU
// keeps inspecting.
func newSessionOptions(o Options, logOnce *sync.Once) (*ort.SessionOptions, string, error) {
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, "", fmt.Errorf("session options: %w", err)
	}
	if o.Threads > 0 {
		if err := so.SetIntraOpNumThreads(o.Threads); err != nil {
			so.Destroy()
			return nil, "", fmt.Errorf("threads %d: %w", o.Threads, err)
		}
		_ = so.SetInterOpNumThreads(1)
	}
	if !o.Spin {
		// Idle pool threads sleep instead of spin-waiting for the next operator. A denoiser step is
		// ~2000 short operators; on a 2-core line PC the spinning threads took the cores that the calling
		// thread (and the daemon's Go side) needed. Measured figures: docs/operations.md.
		if err := so.AddSessionConfigEntry("session.intra_op.allow_spinning", "0"); err != nil {
			so.Destroy()
			return nil, "", fmt.Errorf("session option allow_spinning: %w", err)
		}
	}
	if o.Spin && o.SpinMicros > 0 {
		// A spinning thread sleeps after this long without work (ONNX Runtime >= 1.26; older libraries ignore
		// the key and spin for their own count). Long enough to bridge the gap between two short operators,
		// short enough that the threads are asleep soon after a run, before the next session's threads start.
		if err := so.AddSessionConfigEntry("session.intra_op.spin_duration_us", strconv.Itoa(o.SpinMicros)); err != nil {
			so.Destroy()
			return nil, "", fmt.Errorf("session option spin_duration_us: %w", err)
		}
	}
	if o.NoMemPattern {
		if err := so.SetMemPattern(false); err != nil {
			so.Destroy()
			return nil, "", fmt.Errorf("session option memory pattern: %w", err)
		}
	}
	if o.SharedArena && !o.LeanMemory {
		if err := registerSharedArena(); err != nil {
			so.Destroy()
			return nil, "", err
		}
		if err := so.AddSessionConfigEntry("session.use_env_allocators", "1"); err != nil {
			so.Destroy()
			return nil, "", fmt.Errorf("session option use_env_allocators: %w", err)
		}
	}
	if o.LeanMemory {
		if err := so.SetCpuMemArena(false); err != nil {
			so.Destroy()
			return nil, "", fmt.Errorf("session option cpu memory arena: %w", err)
		}
		releaseLargeAllocations()
	}
	if prefix := os.Getenv("VLMDIFF_ORT_PROFILE"); prefix != "" {
		// ONNX Runtime's per-node timing (Chrome trace JSON, written when a session closes, named by the second
		// it opened, so sessions opened in the same second overwrite each other): how to see which operators a
		// model spends its time in. Off in production; it slows scoring.
		if err := so.EnableProfiling(prefix); err != nil {
			so.Destroy()
			return nil, "", fmt.Errorf("VLMDIFF_ORT_PROFILE: %w", err)
		}
	}
	provider := "cpu"
	for _, p := range o.Providers {
		switch strings.ToLower(p) {
		case "cuda":
			err := appendCUDA(so, o.DeviceID)
			if err == nil {
				return so, "cuda", nil
			}
			logOnce.Do(func() {
				reason := err.Error()
				if i := strings.LastIndex(reason, "with error: "); i >= 0 { // ONNX Runtime's long prefix
					reason = reason[i+len("with error: "):]
				}
				slog.Warn("CUDA execution provider unavailable, using CPU", "reason", reason)
			})
		case "auto":
			// CUDA when this build and machine have it; otherwise CPU without a warning, because nobody asked
			// for CUDA (`vlmdiff score` on a CPU-only install warned on every run).
			if err := appendCUDA(so, o.DeviceID); err == nil {
				return so, "cuda", nil
			} else {
				logOnce.Do(func() { slog.Debug("CUDA execution provider unavailable, using CPU", "reason", err.Error()) })
			}
			return so, provider, nil
		case "cpu", "":
			return so, provider, nil
		default:
			so.Destroy()
			return nil, "", fmt.Errorf("unknown execution provider %q (want cuda, cpu or auto)", p)
		}
	}
	return so, provider, nil
}

func appendCUDA(so *ort.SessionOptions, device int) error {
	co, err := ort.NewCUDAProviderOptions()
	if err != nil {
		return err
	}
	defer co.Destroy()
	if err := co.Update(map[string]string{"device_id": fmt.Sprint(device)}); err != nil {
		return err
	}
	if err := so.AppendExecutionProviderCUDA(co); err != nil {
		return err
	}
	return nil
}

var errClosed = errors.New("scorer is closed")

var (
	sharedArenaOnce sync.Once
	sharedArenaErr  error
)

// registerSharedArena registers the process-wide CPU arena that Options.SharedArena sessions use (once).
func registerSharedArena() error {
	sharedArenaOnce.Do(func() {
		const sameAsRequested = 1 // OrtArenaCfg arena_extend_strategy: kSameAsRequested
		cfg, err := ort.NewArenaCfg(0, sameAsRequested, -1, -1)
		if err != nil {
			sharedArenaErr = fmt.Errorf("shared arena config: %w", err)
			return
		}
		defer cfg.Destroy()
		mi, err := ort.GetMemoryInfo()
		if err == nil {
			err = ort.CreateAndRegisterAllocator(mi, cfg)
		}
		if err != nil {
			sharedArenaErr = fmt.Errorf("register the shared arena: %w", err)
		}
	})
	return sharedArenaErr
}
