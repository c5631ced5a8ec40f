package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/vlmdiff/edge/agent/store"
)

func init() {
	Register(Command{Name: "samples", Summary: "export the normal samples the daemon collected as a training dataset", Run: runSamples})
}

// runSamples is `vlmdiff samples export --store FILE --out DIR`: it writes the collected-samples layout
// (samples.jsonl + images/<camera>/<seq>.png) that `vlmdiff train` reads with data.layout collected. The
// store file is locked while the daemon runs, so stop the daemon first (or copy the file).
func runSamples(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "export" {
		fmt.Fprintln(stderr, "Usage: vlmdiff samples export --store FILE --out DIR [--delete]")
		return ErrUsage
	}
	fs := NewFlagSet("samples export", "--store FILE --out DIR [--delete]", stderr)
	path := fs.String("store", "/var/lib/vlmdiff/vlmdiff.db", "the daemon's store file (store.path)")
	out := fs.String("out", "", "dataset directory to write (required)")
	del := fs.Bool("delete", false, "delete the samples from the store after a successful export")
	if err := Parse(fs, args[1:]); err != nil {
		return err
	}
	if *out == "" || fs.NArg() != 0 {
		fs.Usage()
		return ErrUsage
	}
	if _, err := os.Stat(*path); err != nil {
		return fmt.Errorf("store %s: %w", *path, err)
	}
	st, err := store.Open(store.Options{Path: *path, OpenTimeout: 2 * time.Second})
	if err != nil {
		return err
	}
	defer st.Close()
	n, err := st.ExportSamples(*out)
	if err != nil {
		return err
	}
	if *del && n > 0 {
		if _, err := st.DeleteSamples(""); err != nil {
			return fmt.Errorf("exported %d samples to %s but could not delete them from the store: %w", n, *out, err)
		}
	}
	fmt.Fprintf(stdout, "exported %d samples to %s (train with data.layout: collected, data.root: %s)\n", n, *out, *out)
	return nil
}
