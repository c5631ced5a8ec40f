// Package cli holds the trainer's commands of the vlmdiff binary: train, eval, index, caption, calibrate,
// synth and samples. Each registers itself in init with the shared registry (internal/command); a binary
// carries them by importing this package.
package cli

import (
	"github.com/vlmdiff/edge/internal/command"
	"github.com/vlmdiff/edge/internal/scoreflags"
)

// The registry lives in internal/command; these aliases keep the command files' calls short and unchanged.
type (
	Command   = command.Command
	ExitError = command.ExitError
	// scoreFlags are the flags shared by the commands that build a scorer.
	scoreFlags = scoreflags.Flags
)

var (
	Register   = command.Register
	NewFlagSet = command.NewFlagSet
	Parse      = command.Parse
	ErrUsage   = command.ErrUsage
	// Main runs a command line against every command registered so far (the tests call it).
	Main = command.Main
)
