// Package scoreflags holds the command-line flags that build a scorer, shared by the commands that score
// (score and bench in agent/cli; eval, calibrate and train in trainer/cli), so every command spells and
// defaults them the same way.
package scoreflags

import (
	"errors"
	"strings"

	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/pipeline"
)

// Flags are the scorer settings a command takes from its flags.
type Flags struct {
	Bundle    string
	Providers string
	Threads   int
	// DenoiserThreads is pipeline.Options.DenoiserThreads (0 = Threads).
	DenoiserThreads int
	Spin            bool
	// DenoiserSpin lets only the denoiser's sessions spin-wait (pipeline.Options.DenoiserSpin).
	DenoiserSpin bool
	// SpinMicros bounds a spinning thread's wait (pipeline.Options.SpinMicros).
	SpinMicros int
	Library    string
	ClassCond  bool
	Lean       bool
	Pattern    bool
	Shared     bool
	// DynamicOnly ignores the bundle's static-shape denoiser graphs (pipeline.Options.DynamicOnly).
	DynamicOnly bool
	// NoReference scores raw maps, ignoring the bundle's map reference (pipeline.Options.NoReference).
	NoReference bool
	// PixelMap returns the mean-frame term's own map with every result (pipeline.Options.PixelMap); not a flag.
	PixelMap bool
	// KnnMap and KnnLeaveOneOut: the nearest-normal term's own map, scored against banks without the frame's
	// own vectors (pipeline.Options); not flags, for the calibrate command's reference.
	KnnMap, KnnLeaveOneOut bool
	// StaticNoLayout drops ONNX Runtime's NCHWc layout pass on the static denoisers (pipeline.Options.StaticNoLayout).
	StaticNoLayout bool
	// Ensemble overrides the bundle's diffusion.ensemble (pipeline.Options.Ensemble; 0 = the bundle's).
	Ensemble int
}

// Register declares the flags on fs (a *flag.FlagSet).
func (f *Flags) Register(fs interface {
	StringVar(*string, string, string, string)
	IntVar(*int, string, int, string)
	BoolVar(*bool, string, bool, string)
}) {
	fs.StringVar(&f.Bundle, "bundle", "", "model bundle directory (required)")
	fs.StringVar(&f.Providers, "providers", "auto", "execution providers in order of preference: cuda, cpu, or auto (CUDA when usable, quietly CPU otherwise)")
	fs.IntVar(&f.Threads, "threads", 0, "ONNX Runtime intra-op threads per session (0 = all cores)")
	fs.IntVar(&f.DenoiserThreads, "denoiser-threads", 0, "ONNX Runtime intra-op threads of the denoiser's sessions (0 = --threads); its small operators may run faster on one")
	fs.BoolVar(&f.Spin, "spin", false, "let ONNX Runtime's idle threads spin-wait (faster only on otherwise idle cores)")
	fs.BoolVar(&f.DenoiserSpin, "denoiser-spin", true, "let the denoiser's ONNX Runtime threads spin-wait between its short operators, as the daemon does (models.denoiser_spin; --denoiser-spin=false for the sleeping threads of before)")
	fs.IntVar(&f.SpinMicros, "spin-us", config.DefaultSpinMicros, "microseconds a spinning thread waits for work before it sleeps (ONNX Runtime >= 1.26; 0 = its own count)")
	fs.StringVar(&f.Library, "onnxruntime", "", "path of libonnxruntime.so (default: $"+pipeline.EnvLibrary+", then .deps/lib)")
	fs.BoolVar(&f.ClassCond, "class-conditioning", false, "condition on the class prompt when the bundle has one (uses CFG)")
	fs.BoolVar(&f.Lean, "lean-memory", false, "no ONNX Runtime memory arena, large blocks back to the system after each run (models.memory: lean)")
	fs.BoolVar(&f.Pattern, "mem-pattern", true, "ONNX Runtime's memory pattern; the daemon runs without it (models.memory: shared or lean)")
	fs.BoolVar(&f.Shared, "shared-arena", false, "one ONNX Runtime arena for all sessions, grown as asked (models.shared_arena)")
	fs.BoolVar(&f.DynamicOnly, "dynamic-only", false, "ignore the bundle's static-shape denoiser graphs (the scorer before issue 14, for before/after runs)")
	fs.BoolVar(&f.NoReference, "no-reference", false, "score raw maps, ignoring the bundle's map reference (the mean normal map per class), to see what it removes")
	fs.IntVar(&f.Ensemble, "ensemble", 0, "start noises per frame whose maps are averaged, overriding the bundle's diffusion.ensemble (0 = the bundle's); "+
		"calibrate writes it into the bundle, other commands only measure with it (the bundle's reference and thresholds hold for its own count)")
	fs.BoolVar(&f.StaticNoLayout, "static-no-layout", false, "optimise the static-shape denoisers without ONNX Runtime's NCHWc layout pass (fewer operators per step, plain convolutions; slower on the 2-core test machine; for before/after runs)")
}

// Options are the pipeline options the flags select (everything but the bundle).
func (f *Flags) Options() pipeline.Options {
	var prov []string
	for _, p := range strings.Split(f.Providers, ",") {
		if p = strings.TrimSpace(p); p != "" {
			prov = append(prov, p)
		}
	}
	return pipeline.Options{Providers: prov, Threads: f.Threads, DenoiserThreads: f.DenoiserThreads, Spin: f.Spin, DenoiserSpin: f.DenoiserSpin, SpinMicros: f.SpinMicros, Library: f.Library, ClassConditioning: f.ClassCond,
		LeanMemory: f.Lean, NoMemPattern: !f.Pattern,
		SharedArena: f.Shared, DynamicOnly: f.DynamicOnly, NoReference: f.NoReference, PixelMap: f.PixelMap, KnnMap: f.KnnMap, KnnLeaveOneOut: f.KnnLeaveOneOut, StaticNoLayout: f.StaticNoLayout,
		Ensemble: f.Ensemble}
}

// Open opens the scorer for --bundle.
func (f *Flags) Open() (*pipeline.Scorer, error) {
	if f.Bundle == "" {
		return nil, errors.New("--bundle is required")
	}
	return pipeline.Open(f.Bundle, f.Options())
}

// MemoryName names the daemon's models.memory setting that these flags amount to (config.MemoryShared, Lean
// or ORT), or "custom" for a mix no setting gives, so that a measurement says which memory the daemon would
// have to run with to see the same figures.
func (f *Flags) MemoryName() string {
	switch o := f.Options(); {
	case o.LeanMemory && o.NoMemPattern && !o.SharedArena:
		return config.MemoryLean
	case !o.LeanMemory && o.NoMemPattern && o.SharedArena:
		return config.MemoryShared
	case !o.LeanMemory && !o.NoMemPattern && !o.SharedArena:
		return config.MemoryORT
	}
	return "custom"
}
