// Package torchenv is the environment of the Python processes vlmdiff starts (the training stages, the bench's
// reference scorer, the quantiser): where the vlmdiff_train package is, and how PyTorch's threads wait.
//
// How they wait follows how the interpreter's torch was built. GNU OpenMP lets an idle thread spin for a while
// before it sleeps (OMP_WAIT_POLICY unset) or sleep at once (PASSIVE). Which is faster depends on who else wants the
// cores. Debian's PyTorch 1.13 runs its matrix products and most convolutions in OpenBLAS, whose own pthreads then
// compete with OpenMP's spinning threads: PASSIVE is faster there. PyPI's PyTorch 2.15 runs everything (MKL, oneDNN,
// ATen) on the same OpenMP threads, and sleeping at once makes every one of its thousands of small parallel regions
// pay a wake-up: the default is faster there. Measured on the 2-core AMD EPYC (session 51, nothing else running;
// docs/training.md, "How PyTorch's threads wait"): a small-preset denoiser training step at batch 8, 1.13 0.32 s
// PASSIVE against 0.35 s default, 2.15 0.35-0.37 s PASSIVE against 0.21-0.25 s default; the reference scorer alone
// on the small bench bundle, 1.13 356 ms a frame PASSIVE against 625 default, 2.15 663 ms PASSIVE against 264
// default.
//
// So the rule is the cause: PASSIVE unless torch's BLAS is MKL (which threads with OpenMP itself); the user's
// own OMP_WAIT_POLICY always wins.
package torchenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Var is the OpenMP variable this package sets.
const Var = "OMP_WAIT_POLICY"

// ProbeScript prints the interpreter's torch version, "cuda" or "cpu-only", and torch's BLAS (BLAS_INFO of
// torch.__config__.show(): "mkl" for PyPI's and conda's builds, "generic" for Debian's, which goes through
// libblas.so.3 to OpenBLAS), space-separated on one line.
const ProbeScript = "import re, torch; m = re.search(r'BLAS_INFO=([^,\\s]+)', torch.__config__.show()); " +
	"print(torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu-only', m.group(1) if m else 'unknown')"

// Build is what ProbeScript reports.
type Build struct {
	Torch string // torch.__version__
	CUDA  bool
	BLAS  string // BLAS_INFO, "unknown" when the build does not say
}

// ParseProbe reads ProbeScript's line.
func ParseProbe(line string) (Build, error) {
	f := strings.Fields(line)
	if len(f) != 3 {
		return Build{}, fmt.Errorf("torch probe printed %q, want 'VERSION cuda|cpu-only BLAS'", strings.TrimSpace(line))
	}
	return Build{Torch: f[0], CUDA: f[1] == "cuda", BLAS: f[2]}, nil
}

// Probe runs ProbeScript with exe in env (nil: this process's environment), after importing the modules named
// in imports (what the caller needs from the same interpreter and path, checked in the same start-up).
func Probe(ctx context.Context, exe string, env []string, imports ...string) (Build, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	script := ProbeScript
	if len(imports) > 0 {
		script = "import " + strings.Join(imports, ", ") + "; " + script
	}
	cmd := exec.CommandContext(ctx, exe, "-c", script)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return Build{}, fmt.Errorf("python %s cannot import %s: %v: %s", exe, strings.Join(append([]string{"torch"}, imports...), " and "),
			err, lastLine(stderr.String()))
	}
	// the last line: a build may print warnings on stdout before it
	b, err := ParseProbe(lastLine(string(out)))
	if err != nil {
		return Build{}, fmt.Errorf("python %s: %w", exe, err)
	}
	return b, nil
}

// lastLine is the last non-empty line of s (a traceback's exception, the probe's answer).
func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return strings.TrimSpace(s)
}

// Passive says whether a torch built with this BLAS should run with OMP_WAIT_POLICY=PASSIVE: yes unless the
// BLAS is MKL, which runs on OpenMP's own threads. An unknown build gets PASSIVE, the choice measured first.
func Passive(blas string) bool {
	return !strings.EqualFold(blas, "mkl")
}

// Env returns the entries to append to a PyTorch process's environment for a torch whose BLAS is blas ("" when
// not probed): none when the environment sets OMP_WAIT_POLICY (the user's choice stands) or when OpenMP's
// default suits the build, otherwise OMP_WAIT_POLICY=PASSIVE.
func Env(blas string) []string {
	if _, ok := os.LookupEnv(Var); ok || !Passive(blas) {
		return nil
	}
	return []string{Var + "=PASSIVE"}
}

// Policy names the wait policy a process started with Env(blas) runs under, for logs and bench output.
func Policy(blas string) string {
	if v, ok := os.LookupEnv(Var); ok {
		return v + " (" + Var + " set)"
	}
	if Passive(blas) {
		return "PASSIVE"
	}
	return "OpenMP's default (spin, then sleep)"
}

// EnvTrainer names the environment variable pointing at the directory that holds the vlmdiff_train package
// (<repo>/trainer/python).
const EnvTrainer = "VLMDIFF_TRAINER"

// FindTrainerDir returns the directory holding the vlmdiff_train Python package: the explicit one when given,
// else $VLMDIFF_TRAINER, else trainer/python next to the executable or in any parent of it or of the working
// directory (a checkout, an installed tree with share/, or `go test` inside the repo).
func FindTrainerDir(explicit string) (string, error) {
	ok := func(d string) bool {
		st, err := os.Stat(filepath.Join(d, "vlmdiff_train", "__main__.py"))
		return err == nil && !st.IsDir()
	}
	for _, c := range []struct{ what, dir string }{{"--trainer-dir", explicit}, {"$" + EnvTrainer, os.Getenv(EnvTrainer)}} {
		if c.dir == "" {
			continue
		}
		if !ok(c.dir) {
			return "", fmt.Errorf("%s %s: no vlmdiff_train package there (want the directory holding vlmdiff_train/)", c.what, c.dir)
		}
		return filepath.Abs(c.dir)
	}
	var starts []string
	if exe, err := os.Executable(); err == nil {
		if r, err := filepath.EvalSymlinks(exe); err == nil {
			exe = r
		}
		starts = append(starts, filepath.Dir(exe))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, s := range starts {
		for d := s; ; d = filepath.Dir(d) {
			for _, rel := range []string{"trainer/python", "share/vlmdiff/python"} {
				if c := filepath.Join(d, rel); ok(c) {
					return c, nil
				}
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", fmt.Errorf("cannot find the vlmdiff_train package: pass --trainer-dir or set $%s to <repo>/trainer/python", EnvTrainer)
}
