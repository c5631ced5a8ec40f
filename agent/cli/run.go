package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/vlmdiff/edge/agent"
	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/agent/dashboard"
	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/pipeline"
)

func init() {
	Register(Command{Name: "run", Summary: "run the inspection daemon (cameras -> model -> MQTT/store/HTTP)", Run: runDaemon})
}

// runDaemon is `vlmdiff run --config FILE [--check-config [--json]]`. The process's signal context (SIGINT/SIGTERM)
// starts the graceful shutdown.
func runDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("run", "--config FILE [--check-config [--json]]", stderr)
	path := fs.String("config", "/etc/vlmdiff/agent.yaml", "the daemon's YAML config (docs/config.md)")
	check := fs.Bool("check-config", false, "validate the config, print a summary and exit (0 = valid)")
	asJSON := fs.Bool("json", false, "with --check-config: print the summary, or the problems, as JSON (checkconfig.go)")
	if err := Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "vlmdiff run: unexpected arguments %q\n", fs.Args())
		return ErrUsage
	}
	cfg, err := config.Load(*path)
	if *check && *asJSON {
		return checkConfigJSON(stdout, *path, cfg, err)
	}
	if err != nil {
		return &ExitError{Code: 2, Err: err}
	}
	if err := cfg.CheckFiles(); err != nil {
		return &ExitError{Code: 2, Err: fmt.Errorf("config %s: %w", *path, err)}
	}
	if *check {
		models := cfg.Models.Dir
		if cfg.Models.Bundle != "" {
			models = cfg.Models.Bundle + " (pinned)"
		}
		broker := cfg.MQTT.Broker
		if broker == "" {
			broker = "embedded on " + cfg.MQTT.Listen
		}
		var cams []string
		for _, c := range cfg.Cameras {
			cams = append(cams, c.CameraName()+"("+c.Kind+")")
		}
		fmt.Fprintf(stdout, "config %s: ok\n  agent %s, models %s, cameras %s\n  mqtt %s prefix %s, store %s, http %q\n",
			*path, cfg.Agent.Name, models, strings.Join(cams, " "), broker, cfg.MQTT.Prefix, cfg.Store.Path, cfg.HTTP.Listen)
		return nil
	}
	log := newLogger(cfg.Agent, stderr)
	slog.SetDefault(log)
	if err := pipeline.InitRuntime(cfg.Models.ONNXRuntime); err != nil {
		return fmt.Errorf("ONNX Runtime: %w", err)
	}
	opt := pipeline.Options{Providers: cfg.Models.Providers, Threads: cfg.Models.Threads, DenoiserThreads: cfg.Models.DenoiserThreads, Spin: cfg.Models.Spin, DenoiserSpin: cfg.Models.DenoiserSpinOn(), SpinMicros: cfg.Models.SpinUS(), DeviceID: cfg.Models.DeviceID,
		Library: cfg.Models.ONNXRuntime, LeanMemory: cfg.Models.Memory == config.MemoryLean,
		NoMemPattern: cfg.Models.Memory != config.MemoryORT, SharedArena: cfg.Models.Memory == config.MemoryShared}
	a, err := agent.New(cfg, agent.Options{
		Open:   func(dir string) (agent.Scorer, error) { return pipeline.Open(dir, opt) },
		Logger: log,
		OnHTTP: func(s *httpapi.Server) { s.Handle("/", dashboard.Handler()) }, // the operator page
	})
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

func newLogger(c config.Agent, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.LogLevel))
	ho := &slog.HandlerOptions{Level: lvl}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, ho))
	}
	return slog.New(slog.NewTextHandler(w, ho))
}
