package scoreflags

import (
	"flag"
	"io"
	"testing"
)

// TestMemoryName: the memory flags are named after the daemon's models.memory setting that gives the same
// pipeline options (agent/cli/run.go maps the setting to those options), and any other mix is "custom".
func TestMemoryName(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "ort"},
		{[]string{"--mem-pattern=false", "--shared-arena"}, "shared"},
		{[]string{"--mem-pattern=false", "--lean-memory"}, "lean"},
		{[]string{"--shared-arena"}, "custom"},
		{[]string{"--lean-memory"}, "custom"},
		{[]string{"--mem-pattern=false"}, "custom"},
	} {
		var f Flags
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f.Register(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		if got := f.MemoryName(); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.args, got, tc.want)
		}
	}
}
