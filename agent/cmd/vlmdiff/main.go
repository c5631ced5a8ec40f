// Command vlmdiff is the one binary of vlmdiff edge: the inspection daemon (`vlmdiff run`), the scoring and
// benchmark tools, and the training and evaluation pipeline. See `vlmdiff help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/vlmdiff/edge/agent/cli"
	_ "github.com/vlmdiff/edge/trainer/cli" // the trainer's commands
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
