package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/vlmdiff/edge/trainer/caption"
	"github.com/vlmdiff/edge/trainer/dataset"
)

func init() {
	Register(Command{Name: "caption", Summary: "describe indexed images with a VLM (OpenAI-compatible endpoint) or class-name templates", Run: runCaption})
}

func runCaption(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("caption", "--index index.jsonl (--endpoint URL --model NAME | --offline) --out DIR [flags]", stderr)
	index := fs.String("index", dataset.IndexFile, "index written by 'vlmdiff index'")
	endpoint := fs.String("endpoint", "", "chat-completions server: base URL, .../v1 or the full .../chat/completions URL")
	model := fs.String("model", "", "model name the server knows (e.g. OpenGVLab/InternVL2-8B)")
	keyEnv := fs.String("api-key-env", "", "environment variable holding the API key (sent as a Bearer token)")
	prompt := fs.String("prompt", caption.DefaultPrompt, "prompt (default: the seed's \"pd\" prompt)")
	conc := fs.Int("concurrency", 4, "requests in flight")
	timeout := fs.Duration("timeout", 120*time.Second, "per-request timeout")
	retries := fs.Int("retries", 4, "retries after 429, 5xx, timeouts and connection errors")
	cachePath := fs.String("cache", "", "caption cache file (default DIR/caption_cache.json)")
	out := fs.String("out", "", "output directory (required)")
	offline := fs.Bool("offline", false, "write class-name template captions without any server")
	template := fs.String("template", caption.DefaultTemplate, "offline caption; {class} is the class name")
	fallback := fs.Bool("fallback-template", false, "give images the VLM failed on a template caption (marked) instead of none")
	seedName := fs.String("dataset", "", "dataset name in the seed caption layout (mvtec, visa, realiad; default custom)")
	seedModel := fs.String("model-tag", "", "model tag in the seed caption layout (default: the model name)")
	seedRoot := fs.String("data-root", "", "directory the seed layout's image names are relative to (default: guessed)")
	if err := Parse(fs, args); err != nil {
		return err
	}
	usage := func(msg string) error {
		fmt.Fprintln(stderr, "vlmdiff caption: "+msg)
		fs.Usage()
		return ErrUsage
	}
	switch {
	case *out == "":
		return usage("--out is required")
	case !*offline && (*endpoint == "" || *model == ""):
		return usage("--endpoint and --model are required unless --offline")
	case *conc < 1:
		return usage("--concurrency must be at least 1")
	}
	items, err := dataset.ReadIndex(*index)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	opts := caption.Options{Offline: *offline, FallbackTemplate: *fallback, Template: *template, Concurrency: *conc, Logger: log}
	usedModel, usedPrompt := "", *prompt
	if !*offline {
		c := &caption.Client{Endpoint: *endpoint, Model: *model, Prompt: *prompt, Timeout: *timeout, Retries: *retries, Logger: log}
		if *retries == 0 {
			c.Retries = -1
		}
		if *keyEnv != "" {
			c.APIKey = os.Getenv(*keyEnv)
			if c.APIKey == "" {
				return fmt.Errorf("--api-key-env %s: the variable is empty or unset", *keyEnv)
			}
		}
		if *cachePath == "" {
			*cachePath = filepath.Join(*out, "caption_cache.json")
		}
		cache, err := caption.OpenCache(*cachePath)
		if err != nil {
			return err
		}
		opts.Client, opts.Cache = c, cache
		usedModel = *model
	}
	caps, runErr := caption.Run(ctx, items, opts)
	if caps == nil {
		return runErr
	}
	seed := caption.SeedLayout{Dataset: *seedName, Model: *seedModel, Root: *seedRoot}
	if err := caption.WriteOutputs(*out, caps, usedModel, usedPrompt, seed); err != nil && runErr == nil {
		runErr = err
	}
	done := 0
	for _, c := range caps {
		if c.Source != "" {
			done++
		}
	}
	fmt.Fprintf(stdout, "captioned %d of %d images into %s\n", done, len(caps), *out)
	if runErr != nil {
		return &ExitError{Code: 1, Err: runErr}
	}
	return nil
}
