package broker

import (
	"strings"
	"testing"
)

// FuzzCommandOf: the broker's reading of a command topic (what its ACL lets a user publish) accepts only
// <camera>/<threshold|sample>/set with one plain camera level.
func FuzzCommandOf(f *testing.F) {
	for _, s := range []string{"line/threshold/set", "line/sample/set", "line/result", "a/b/threshold/set", "+/threshold/set", "/threshold/set", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rest string) {
		cmd, ok := commandOf(rest)
		if !ok {
			return
		}
		parts := strings.Split(rest, "/")
		if len(parts) != 3 || parts[0] == "" || strings.ContainsAny(parts[0], "+#") || parts[1] != cmd || parts[2] != "set" {
			t.Fatalf("%q accepted as command %q", rest, cmd)
		}
	})
}
