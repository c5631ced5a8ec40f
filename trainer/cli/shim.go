package cli

// Temporary bridge for the pure-move commit: the trainer's commands moved here from agent/cli unchanged and
// still register in agent/cli's registry. The next commit replaces this file with the shared registry.

import (
	"errors"
	"strings"

	daemoncli "github.com/vlmdiff/edge/agent/cli"
	"github.com/vlmdiff/edge/pipeline"
)

type Command = daemoncli.Command
type ExitError = daemoncli.ExitError

var (
	Register   = daemoncli.Register
	Main       = daemoncli.Main
	NewFlagSet = daemoncli.NewFlagSet
	Parse      = daemoncli.Parse
	ErrUsage   = daemoncli.ErrUsage
)

type scoreFlags struct {
	bundle    string
	providers string
	threads   int
	spin      bool
	library   string
	classCond bool
}

func (f *scoreFlags) register(fs interface {
	StringVar(*string, string, string, string)
	IntVar(*int, string, int, string)
	BoolVar(*bool, string, bool, string)
}) {
	fs.StringVar(&f.bundle, "bundle", "", "model bundle directory (required)")
	fs.StringVar(&f.providers, "providers", "cuda,cpu", "execution providers in order of preference")
	fs.IntVar(&f.threads, "threads", 0, "ONNX Runtime intra-op threads per session (0 = all cores)")
	fs.BoolVar(&f.spin, "spin", false, "let ONNX Runtime's idle threads spin-wait (faster only on otherwise idle cores)")
	fs.StringVar(&f.library, "onnxruntime", "", "path of libonnxruntime.so (default: $"+pipeline.EnvLibrary+", then .deps/lib)")
	fs.BoolVar(&f.classCond, "class-conditioning", false, "condition on the class prompt when the bundle has one (uses CFG)")
}

func (f *scoreFlags) options() pipeline.Options {
	var prov []string
	for _, p := range strings.Split(f.providers, ",") {
		if p = strings.TrimSpace(p); p != "" {
			prov = append(prov, p)
		}
	}
	return pipeline.Options{Providers: prov, Threads: f.threads, Spin: f.spin, Library: f.library, ClassConditioning: f.classCond}
}

func (f *scoreFlags) open() (*pipeline.Scorer, error) {
	if f.bundle == "" {
		return nil, errors.New("--bundle is required")
	}
	return pipeline.Open(f.bundle, f.options())
}
