package echo

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestShort(t *testing.T) {
	big := bytes.Repeat([]byte{0xff, 'a', '\n', 0x1b}, 1<<18) // 1 MB of bytes that must be escaped
	cases := []struct {
		name string
		in   []byte
		want string
	}{
		{"short", []byte("0.5x"), `"0.5x"`},
		{"control chars escaped", []byte("a\nb\x1b"), `"a\nb\x1b"`},
		{"long cut with length", bytes.Repeat([]byte("z"), 100), `"` + strings.Repeat("z", 64) + `"... (100 bytes)`},
	}
	for _, c := range cases {
		if got := Short(c.in); got != c.want {
			t.Errorf("%s: Short = %s, want %s", c.name, got, c.want)
		}
	}
	got := Short(big)
	if len(got) > 4*Max+40 || !strings.HasSuffix(got, "(1048576 bytes)") || strings.ContainsAny(got, "\n\x1b") {
		t.Errorf("1 MB input rendered as %d bytes: %.100s", len(got), got)
	}
	multi := []byte(strings.Repeat("é", 100))
	if s := Short(multi); !utf8.ValidString(s) {
		t.Errorf("cut inside a rune: %s", s)
	}
}

func TestClip(t *testing.T) {
	if got := Clip("abcdef", 3); got != "abc...(cut)" {
		t.Errorf("Clip = %q", got)
	}
	if got := Clip("abc", 3); got != "abc" {
		t.Errorf("Clip = %q", got)
	}
	if got := Clip(strings.Repeat("é", 10), 5); !utf8.ValidString(got) {
		t.Errorf("Clip cut a rune: %q", got)
	}
}
