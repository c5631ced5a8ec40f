package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// TestPasswd: the printed hash is a bcrypt hash of the line read from stdin (without its newline), at the
// asked cost; short passwords and arguments are refused.
func TestPasswd(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		args     []string
		code     int
		errHas   string
	}{
		{"ok", "correct horse\n", []string{"--cost", "4"}, 0, ""},
		{"crlf", "correct horse\r\n", []string{"--cost", "4"}, 0, ""},
		{"no newline", "correct horse", []string{"--cost", "4"}, 0, ""},
		{"short", "abc\n", []string{"--cost", "4"}, 1, "at least 8"},
		{"argument", "correct horse\n", []string{"hunter22"}, 2, ""},
		{"bad cost", "correct horse\n", []string{"--cost", "99"}, 2, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			passwdInput = strings.NewReader(tc.in)
			var out, errb bytes.Buffer
			code := Main(context.Background(), append([]string{"passwd"}, tc.args...), &out, &errb)
			if code != tc.code || !strings.Contains(errb.String(), tc.errHas) {
				t.Fatalf("exit %d (stderr %q), want %d with %q", code, errb.String(), tc.code, tc.errHas)
			}
			if code != 0 {
				return
			}
			h := []byte(strings.TrimSpace(out.String()))
			if err := bcrypt.CompareHashAndPassword(h, []byte("correct horse")); err != nil {
				t.Errorf("hash %s does not match the password: %v", h, err)
			}
			if c, _ := bcrypt.Cost(h); c != 4 {
				t.Errorf("cost %d, want 4", c)
			}
			if strings.Contains(out.String()+errb.String(), "correct horse") {
				t.Error("the password was printed")
			}
		})
	}
}
