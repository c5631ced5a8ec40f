package config

import (
	"fmt"
	"time"
	"unicode"

	"golang.org/x/crypto/bcrypt"
)

// HTTPAuth configures who may change state over the HTTP API (docs/operations.md, "Securing the HTTP API").
// Empty (no users, no tokens) keeps the API as it always was: reads and the machine routes (POST /api/score,
// POST /api/cameras/<cam>/trigger) open, and no operator actions at all. With users the dashboard offers a
// login and the operator actions; with users or tokens every state-changing route needs a credential.
type HTTPAuth struct {
	// Users may log in to the dashboard; PasswordHash is a bcrypt hash (`vlmdiff passwd`), never a password.
	Users []AuthUser `yaml:"users"`
	// Tokens are machine credentials (a PLC gateway): `Authorization: Bearer <token>` on POST /api/score and
	// POST /api/cameras/<cam>/trigger. Put the token in the environment (`${VLMDIFF_PLC_TOKEN}`).
	Tokens []AuthToken `yaml:"tokens"`
	// SessionTTL is how long a login lasts (default 12h); sessions live in memory, a restart ends them.
	SessionTTL time.Duration `yaml:"session_ttl"`
	// CookieSecure sets the session cookie's Secure attribute even though the daemon itself serves plain
	// HTTP: set it behind a TLS-terminating proxy. Requests that arrive over TLS always get it.
	CookieSecure bool `yaml:"cookie_secure"`
}

// AuthUser is one dashboard account.
type AuthUser struct {
	Username     string `yaml:"username"`
	PasswordHash string `yaml:"password_hash"`
}

// AuthToken is one machine credential.
type AuthToken struct {
	Name  string `yaml:"name"`
	Token string `yaml:"token"`
}

// Enabled reports whether any credential is configured (and so whether state-changing routes need one).
func (a HTTPAuth) Enabled() bool { return len(a.Users) > 0 || len(a.Tokens) > 0 }

// DefaultSessionTTL is http.auth.session_ttl's default.
const DefaultSessionTTL = 12 * time.Hour

// MinTokenLen is the shortest machine token accepted: a token is compared, not hashed slowly, so it must be
// too long to guess (24 random characters are over 128 bits from base64).
const MinTokenLen = 24

func (c *Config) setAuthDefaults() {
	if c.HTTP.Auth.SessionTTL == 0 {
		c.HTTP.Auth.SessionTTL = DefaultSessionTTL
	}
}

func (c *Config) validateAuth(bad func(path, format string, args ...any)) {
	a := c.HTTP.Auth
	if a.SessionTTL < time.Minute || a.SessionTTL > 30*24*time.Hour {
		bad("http.auth.session_ttl", "must be 1m..720h, not %s", a.SessionTTL)
	}
	users := map[string]bool{}
	for i, u := range a.Users {
		p := fmt.Sprintf("http.auth.users[%d]", i)
		switch {
		case !validName(u.Username):
			bad(p+".username", "%q must be 1-64 printable characters without spaces or ':'", u.Username)
		case users[u.Username]:
			bad(p+".username", "%q is listed twice", u.Username)
		}
		users[u.Username] = true
		if u.PasswordHash == "" {
			bad(p+".password_hash", "is required: a bcrypt hash from `vlmdiff passwd` (never the password itself)")
		} else if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
			bad(p+".password_hash", "is not a bcrypt hash (`vlmdiff passwd` prints one; a plaintext password is refused): %v", err)
		}
	}
	tokens := map[string]bool{}
	for i, t := range a.Tokens {
		p := fmt.Sprintf("http.auth.tokens[%d]", i)
		switch {
		case !validName(t.Name):
			bad(p+".name", "%q must be 1-64 printable characters without spaces or ':'", t.Name)
		case tokens[t.Name]:
			bad(p+".name", "%q is listed twice", t.Name)
		}
		tokens[t.Name] = true
		if len(t.Token) < MinTokenLen {
			bad(p+".token", "must be at least %d characters (e.g. `openssl rand -base64 32`), got %d", MinTokenLen, len(t.Token))
		}
	}
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) || r == ':' {
			return false
		}
	}
	return true
}
