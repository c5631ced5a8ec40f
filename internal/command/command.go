// Package command is the registry of the single vlmdiff binary's subcommands. Each area owns its commands
// and registers them in an init function (the daemon and scoring tools in agent/cli, the trainer's in
// trainer/cli), the way Caddy's modules register themselves; the main package chooses which areas the binary
// carries by importing them. The registry itself depends on nothing but the standard library (and
// internal/buildinfo, for the built-in `version`), so no area pulls in another through it.
package command

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"

	"github.com/vlmdiff/edge/internal/buildinfo"
)

// Command is one subcommand. Run gets the arguments after the command's name and the process's streams.
type Command struct {
	Name    string
	Summary string
	Run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = map[string]Command{}

// Register adds a subcommand; called from init functions. A second command with the same name panics at
// start-up, so two areas cannot silently shadow each other.
func Register(c Command) {
	if _, dup := commands[c.Name]; dup {
		panic("command: duplicate command " + c.Name)
	}
	commands[c.Name] = c
}

// ErrUsage marks a usage error: the command already printed what was wrong, and the exit code is 2.
var ErrUsage = errors.New("usage error")

// ExitError carries an exit code for a command that finished its work but must still fail (for example
// `vlmdiff score` after one unreadable image among many).
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Main runs the command named by args[0] and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "version" || args[0] == "--version" || args[0] == "-version" {
		return printVersion(args[1:], stdout, stderr)
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "vlmdiff: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	err := c.Run(ctx, args[1:], stdout, stderr)
	var ee *ExitError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, ErrUsage):
		return 2
	case errors.As(err, &ee):
		if ee.Err != nil {
			fmt.Fprintf(stderr, "vlmdiff %s: %v\n", c.Name, ee.Err)
		}
		return ee.Code
	default:
		fmt.Fprintf(stderr, "vlmdiff %s: %v\n", c.Name, err)
		return 1
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "vlmdiff: visual defect inspection with the VLMDiff method")
	fmt.Fprintln(w, "\nUsage: vlmdiff COMMAND [flags] [args]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].Summary)
	}
	fmt.Fprintf(w, "  %-10s %s\n", "version", "print the build's version (also --version; --json for JSON)")
	fmt.Fprintln(w, "\nRun 'vlmdiff COMMAND -h' for a command's flags.")
}

// NewFlagSet returns a flag set that reports errors instead of exiting, with a usage line.
func NewFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("vlmdiff "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: vlmdiff %s %s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// Parse parses flags, mapping parse failures to ErrUsage.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return ErrUsage
	}
	return nil
}

// printVersion is `vlmdiff version [--json]` (and `vlmdiff --version`): built in, so every binary built from
// the registry answers it whatever areas it carries.
func printVersion(args []string, stdout, stderr io.Writer) int {
	fs := NewFlagSet("version", "[--json]", stderr)
	asJSON := fs.Bool("json", false, "print the build info as JSON")
	if err := Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	info := buildinfo.Get()
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(info)
		return 0
	}
	fmt.Fprintln(stdout, info.String())
	return 0
}
