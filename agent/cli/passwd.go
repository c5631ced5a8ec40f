package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/vlmdiff/edge/agent/httpauth"
)

func init() {
	Register(Command{Name: "passwd", Summary: "print a bcrypt hash of a password read from stdin, for http.auth.users[].password_hash", Run: runPasswd})
}

// passwdInput is where `vlmdiff passwd` reads the password (tests replace it).
var passwdInput io.Reader = os.Stdin

// runPasswd is `vlmdiff passwd [--cost N]`: it reads one line from stdin and prints its bcrypt hash. WHY
// stdin: a password given as an argument lands in the shell history and in every `ps` listing.
func runPasswd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("passwd", "[--cost N] < password", stderr)
	cost := fs.Int("cost", bcrypt.DefaultCost, fmt.Sprintf("bcrypt cost, %d..%d: each step doubles the work of every login and of every guess", bcrypt.MinCost, bcrypt.MaxCost))
	if err := Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 || *cost < bcrypt.MinCost || *cost > bcrypt.MaxCost {
		fs.Usage()
		return ErrUsage
	}
	if f, ok := passwdInput.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			io.WriteString(stderr, "password (shown as you type; to hide it: read -rs PW; printf '%s\\n' \"$PW\" | vlmdiff passwd):\n")
		}
	}
	line, err := bufio.NewReader(passwdInput).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read the password from stdin: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	switch {
	case len(pw) < 8:
		return fmt.Errorf("the password on stdin is %d characters: use at least 8 (e.g. `read -rs PW; printf '%%s\\n' \"$PW\" | vlmdiff passwd`)", len(pw))
	case len(pw) > 72:
		return fmt.Errorf("the password is %d bytes: bcrypt uses at most 72", len(pw))
	}
	h, err := httpauth.HashPassword([]byte(pw), *cost)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, string(h))
	return nil
}
