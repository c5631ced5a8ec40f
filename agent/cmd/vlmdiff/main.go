// Command vlmdiff is the one binary of vlmdiff edge: the inspection daemon (`vlmdiff run`), the scoring and
// benchmark tools, and the training and evaluation pipeline. See `vlmdiff help`.
//
// Each area registers its own commands (internal/command); the blank imports below are the list of areas
// this binary carries.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	_ "github.com/vlmdiff/edge/agent/cli" // the daemon, score, bench, bundle
	"github.com/vlmdiff/edge/internal/command"
	_ "github.com/vlmdiff/edge/trainer/cli" // train, eval, index, caption, calibrate, synth, samples
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := command.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
