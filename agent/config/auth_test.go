package config

import (
	"strings"
	"testing"
)

// A bcrypt hash (cost 4) of "correct horse", pasted as `vlmdiff passwd` prints it.
const testHash = "$2a$04$PnZBlNc4tlxYi1VlUVRy6.Jd/FJ4ghT/myzYD0fa0GygLkQlf5ks."

// TestHTTPAuth: valid users and tokens parse (the hash's `$` stays as it is, a token comes from the
// environment); a plaintext password, a short token, duplicates and a silly session_ttl name their field.
func TestHTTPAuth(t *testing.T) {
	ok := minimal + `
http:
  listen: 127.0.0.1:8080
  auth:
    users: [{username: anna, password_hash: "` + testHash + `"}]
    tokens: [{name: plc, token: "${PLC_TOKEN}"}]
`
	cfg, err := Parse(strings.NewReader(ok), env(map[string]string{"PLC_TOKEN": "0123456789abcdefghijklmnop"}))
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.HTTP.Auth
	if !a.Enabled() || a.Users[0].PasswordHash != testHash || a.Tokens[0].Token != "0123456789abcdefghijklmnop" || a.SessionTTL != DefaultSessionTTL {
		t.Errorf("parsed %+v", a)
	}
	if c, _ := Parse(strings.NewReader(minimal), env(nil)); c.HTTP.Auth.Enabled() {
		t.Error("auth on without users or tokens")
	}
	for _, tc := range []struct{ auth, field string }{
		{`users: [{username: anna, password_hash: "correct horse"}]`, "http.auth.users[0].password_hash: is not a bcrypt hash"},
		{`users: [{username: anna}]`, "http.auth.users[0].password_hash: is required"},
		{`users: [{username: "an na", password_hash: "` + testHash + `"}]`, "http.auth.users[0].username"},
		{`users: [{username: a, password_hash: "` + testHash + `"}, {username: a, password_hash: "` + testHash + `"}]`, "http.auth.users[1].username: \"a\" is listed twice"},
		{`tokens: [{name: plc, token: short}]`, "http.auth.tokens[0].token: must be at least 24"},
		{`tokens: [{token: 0123456789abcdefghijklmnop}]`, "http.auth.tokens[0].name"},
		{`session_ttl: 1s`, "http.auth.session_ttl: must be 1m..720h"},
	} {
		_, err := Parse(strings.NewReader(minimal+"http:\n  auth:\n    "+tc.auth+"\n"), env(nil))
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: error %v, want one naming %q", tc.auth, err, tc.field)
		}
	}
}
