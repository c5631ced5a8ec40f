package cli

import (
	"fmt"
	"io"
	"strings"
)

// renameFlag rewrites a deprecated spelling --old (or -old, with "=value" or a separate value) to --name
// before parsing, and says once on stderr that it is deprecated. WHY not a second flag: the flag package
// prints every defined flag in the help, and the help should show one name per setting (`--val-fraction`
// in every command, issue 15) while scripts written for the old spelling keep working.
func renameFlag(args []string, old, name string, stderr io.Writer) []string {
	out := make([]string, len(args))
	warned := false
	for i, a := range args {
		out[i] = a
		if a == "--" {
			copy(out[i:], args[i:])
			break
		}
		flagName, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || flagName != old {
			continue
		}
		out[i] = "--" + name
		if hasValue {
			out[i] += "=" + value
		}
		if !warned {
			fmt.Fprintf(stderr, "vlmdiff: --%s is deprecated, use --%s\n", old, name)
			warned = true
		}
	}
	return out
}
