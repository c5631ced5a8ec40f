package command

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
)

func TestMainExitCodes(t *testing.T) {
	boom := errors.New("boom")
	Register(Command{Name: "t-ok", Summary: "succeeds", Run: func(context.Context, []string, io.Writer, io.Writer) error { return nil }})
	Register(Command{Name: "t-fail", Summary: "fails", Run: func(context.Context, []string, io.Writer, io.Writer) error { return boom }})
	Register(Command{Name: "t-usage", Summary: "misused", Run: func(context.Context, []string, io.Writer, io.Writer) error { return ErrUsage }})
	Register(Command{Name: "t-help", Summary: "-h", Run: func(context.Context, []string, io.Writer, io.Writer) error { return flag.ErrHelp }})
	Register(Command{Name: "t-exit", Summary: "exit 3", Run: func(context.Context, []string, io.Writer, io.Writer) error {
		return &ExitError{Code: 3, Err: boom}
	}})
	for _, tc := range []struct {
		args      []string
		code      int
		stderrHas string
		stderrNot string
	}{
		{nil, 2, "Commands:", ""},
		{[]string{"help"}, 0, "t-ok       succeeds", ""},
		{[]string{"-h"}, 0, "Commands:", ""},
		{[]string{"nope"}, 2, `unknown command "nope"`, ""},
		{[]string{"t-ok"}, 0, "", "t-ok"},
		{[]string{"t-fail"}, 1, "vlmdiff t-fail: boom", ""},
		{[]string{"t-usage"}, 2, "", "usage error"},
		{[]string{"t-help"}, 0, "", "t-help"},
		{[]string{"t-exit"}, 3, "vlmdiff t-exit: boom", ""},
	} {
		var out, errb bytes.Buffer
		code := Main(context.Background(), tc.args, &out, &errb)
		if code != tc.code || !strings.Contains(errb.String(), tc.stderrHas) || (tc.stderrNot != "" && strings.Contains(errb.String(), tc.stderrNot)) {
			t.Errorf("Main(%q) = %d, stderr %q; want %d, stderr with %q and without %q", tc.args, code, errb.String(), tc.code, tc.stderrHas, tc.stderrNot)
		}
	}
}

func TestRegisterRejectsADuplicate(t *testing.T) {
	Register(Command{Name: "t-dup", Run: func(context.Context, []string, io.Writer, io.Writer) error { return nil }})
	defer func() {
		if recover() == nil {
			t.Fatal("a second command named t-dup was accepted")
		}
	}()
	Register(Command{Name: "t-dup", Run: func(context.Context, []string, io.Writer, io.Writer) error { return nil }})
}
