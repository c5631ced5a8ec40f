// Package echo renders untrusted input for error messages and log lines. WHY: a refusal that quotes what it
// refused is what lets an operator fix the sender, but echoing it whole lets the sender decide the size of
// our logs and retained MQTT messages (a 1 MB payload on threshold/set used to come back as a 3.3 MB retained
// state and a 3.2 MB log line) and put control characters in them. So every echo goes through Short: a
// bounded prefix, Go-quoted (escaped, printable), with the full length when it was cut.
package echo

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Max is the most bytes of input Short quotes.
const Max = 64

// Short returns b quoted and escaped; input longer than Max bytes is cut at a rune boundary and the total
// length appended, so the result is always under 4*Max+40 bytes whatever b holds.
func Short(b []byte) string {
	if len(b) <= Max {
		return strconv.Quote(string(b))
	}
	cut := Max
	for cut > Max-utf8.UTFMax && !utf8.RuneStart(b[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(string(b[:cut])), len(b))
}

// String is Short for a string.
func String(s string) string {
	if len(s) <= Max {
		return strconv.Quote(s)
	}
	return Short([]byte(s))
}

// Clip bounds a message that may embed input from elsewhere (an error from a parser, say) to n bytes,
// cutting at a rune boundary and marking the cut.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "...(cut)"
}
