package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/vlmdiff/edge/internal/torchenv"
	"github.com/vlmdiff/edge/trainer/run"
)

func init() {
	Register(Command{Name: "train", Summary: "train a bundle: index, caption, finetune-ae, build, train, select, export, calibrate, evaluate, register", Run: runTrain})
}

func runTrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("train", "--config FILE [--run-dir DIR] [--from STAGE] [--until STAGE]", stderr)
	cfgPath := fs.String("config", "", "training config (YAML; see configs/train and docs/training.md) (required)")
	runDir := fs.String("run-dir", "", "run directory holding every stage's outputs and records (default runs/<name>)")
	from := fs.String("from", "", "redo this stage and every later one ("+strings.Join(run.StageNames, ", ")+")")
	until := fs.String("until", "", "stop after this stage")
	trainerDir := fs.String("trainer-dir", "", "directory holding the vlmdiff_train Python package (default $"+torchenv.EnvTrainer+", then found from the binary)")
	python := fs.String("python", "", "Python interpreter with torch (default: the config's python.exe, /usr/bin/python3)")
	checkOnly := fs.Bool("check", false, "run the checks only")
	providers := fs.String("providers", "cuda,cpu", "ONNX Runtime execution providers for calibrate and evaluate")
	threads := fs.Int("threads", 0, "ONNX Runtime intra-op threads for calibrate and evaluate (0 = all cores)")
	library := fs.String("onnxruntime", "", "path of libonnxruntime.so (default: $ONNXRUNTIME_LIB, then .deps/lib)")
	if err := Parse(fs, args); err != nil {
		return err
	}
	if *cfgPath == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "vlmdiff train: --config is required and takes no arguments")
		fs.Usage()
		return ErrUsage
	}
	cfg, err := run.LoadConfig(*cfgPath)
	if err != nil {
		return err
	}
	dir := *runDir
	if dir == "" {
		dir = filepath.Join("runs", cfg.Name)
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	td := *trainerDir
	if td == "" {
		td = cfg.Python.TrainerDir
	}
	if td, err = torchenv.FindTrainerDir(td); err != nil {
		return err
	}
	exe := cfg.Python.Exe
	if *python != "" {
		exe = *python
	}
	sf := scoreFlags{Providers: *providers, Threads: *threads, Library: *library}
	ort := sf.Options()
	t := &run.Training{Config: cfg, Dir: dir, Python: run.Python{Exe: exe, TrainerDir: td}, ORT: ort, Out: stdout,
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	line, err := t.Preflight(ctx)
	if err != nil {
		return fmt.Errorf("check failed: %w", err)
	}
	fmt.Fprintln(stdout, line)
	if *checkOnly {
		return nil
	}
	fmt.Fprintf(stdout, "run directory %s\n", dir)
	sum, err := t.Runner(*from, *until).Run(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "finished: %d stages run, %d up to date\n", len(sum.Ran), len(sum.Skipped))
	return nil
}
