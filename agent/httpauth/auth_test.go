package httpauth

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

const (
	testPassword = "s3cret-pass"
	testToken    = "plc-token-0123456789abcdefghij"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// server mounts the auth routes and two guarded routes that echo who was let through.
func server(t *testing.T) (*httptest.Server, *clock, *syncBuf) {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Date(2025, 3, 1, 8, 0, 0, 0, time.UTC)}
	logs := &syncBuf{}
	a, err := New(Config{Users: []User{{Name: "op", Hash: hash}}, Tokens: []Token{{Name: "plc", Secret: testToken}},
		SessionTTL: time.Hour, FailDelay: time.Millisecond, Now: clk.now,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	a.Mount(mux)
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "who="+Who(r.Context())) })
	mux.Handle("POST /op", a.Operator(echo))
	mux.Handle("POST /machine", a.Machine(echo))
	mux.HandleFunc("GET /session", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, a.Info(r)) })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, clk, logs
}

type client struct {
	t    *testing.T
	c    *http.Client
	base string
	csrf string
}

func newClient(t *testing.T, base string) *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: t, c: &http.Client{Jar: jar}, base: base}
}

func (c *client) do(method, path, ctype, body string, hdr map[string]string) (int, string) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.c.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (c *client) login(user, pw string) int {
	c.t.Helper()
	code, body := c.do("POST", "/api/auth/login", "application/json", `{"username":"`+user+`","password":"`+pw+`"}`, nil)
	if code == 200 {
		var si SessionInfo
		if err := json.Unmarshal([]byte(body), &si); err != nil || si.CSRFToken == "" || si.User != user {
			c.t.Fatalf("login answer %s", body)
		}
		c.csrf = si.CSRFToken
	}
	return code
}

// TestGuards: each guarded route, each way of calling it.
func TestGuards(t *testing.T) {
	srv, _, _ := server(t)
	in := newClient(t, srv.URL)
	if code := in.login("op", testPassword); code != 200 {
		t.Fatalf("login: %d", code)
	}
	anon := newClient(t, srv.URL)
	origin := map[string]string{"Origin": "http://evil.example"}
	for _, tc := range []struct {
		name, path string
		c          *client
		ctype      string
		body       string
		hdr        map[string]string
		code       int
		who        string
	}{
		{"op: nothing", "/op", anon, "", "", nil, 401, ""},
		{"op: session without CSRF", "/op", in, "", "", nil, 403, ""},
		{"op: session, wrong CSRF", "/op", in, "", "", map[string]string{CSRFHeader: "nope"}, 403, ""},
		{"op: session, CSRF of another length", "/op", in, "", "", map[string]string{CSRFHeader: in.csrf + "x"}, 403, ""},
		{"op: session and CSRF", "/op", in, "", "", map[string]string{CSRFHeader: in.csrf}, 200, "who=op"},
		{"op: CSRF as a form field", "/op", in, "application/x-www-form-urlencoded", CSRFField + "=" + url.QueryEscape(in.csrf), nil, 200, "who=op"},
		{"op: CSRF without a session", "/op", anon, "", "", map[string]string{CSRFHeader: in.csrf}, 401, ""},
		{"op: a token is no login", "/op", anon, "", "", map[string]string{"Authorization": "Bearer " + testToken}, 401, ""},
		{"op: cross-origin", "/op", in, "", "", map[string]string{CSRFHeader: in.csrf, "Origin": "http://evil.example"}, 403, ""},
		{"machine: nothing", "/machine", anon, "", "", nil, 401, ""},
		{"machine: token", "/machine", anon, "", "", map[string]string{"Authorization": "Bearer " + testToken}, 200, "who=token:plc"},
		{"machine: wrong token", "/machine", anon, "", "", map[string]string{"Authorization": "Bearer " + testToken[:len(testToken)-1] + "X"}, 401, ""},
		{"machine: wrong token with a session", "/machine", in, "", "", map[string]string{"Authorization": "Bearer nope", CSRFHeader: in.csrf}, 401, ""},
		{"machine: basic auth is no token", "/machine", anon, "", "", map[string]string{"Authorization": "Basic b3A6cw=="}, 401, ""},
		{"machine: session without CSRF", "/machine", in, "", "", nil, 403, ""},
		{"machine: session and CSRF", "/machine", in, "", "", map[string]string{CSRFHeader: in.csrf}, 200, "who=op"},
		{"machine: cross-origin session", "/machine", in, "", "", origin, 403, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := tc.c.do("POST", tc.path, tc.ctype, tc.body, tc.hdr)
			if code != tc.code || (tc.who != "" && body != tc.who) {
				t.Errorf("%d %q, want %d %q", code, body, tc.code, tc.who)
			}
		})
	}
}

// TestSessionLifetime: a session ends at logout and at expiry; the cookie is HttpOnly and SameSite=Strict.
func TestSessionLifetime(t *testing.T) {
	srv, clk, _ := server(t)
	c := newClient(t, srv.URL)
	req, _ := http.NewRequest("POST", srv.URL+"/api/auth/login", strings.NewReader(`{"username":"op","password":"`+testPassword+`"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	ck := resp.Cookies()
	if len(ck) != 1 || ck[0].Name != CookieName || !ck[0].HttpOnly || ck[0].SameSite != http.SameSiteStrictMode || ck[0].Secure {
		t.Fatalf("cookie %+v: want %s, HttpOnly, SameSite=Strict, not Secure over plain HTTP", ck, CookieName)
	}

	if c.login("op", testPassword) != 200 {
		t.Fatal("login")
	}
	ok := map[string]string{CSRFHeader: c.csrf}
	if code, _ := c.do("POST", "/op", "", "", ok); code != 200 {
		t.Fatalf("fresh session: %d", code)
	}
	clk.add(time.Hour + time.Second)
	if code, _ := c.do("POST", "/op", "", "", ok); code != 401 {
		t.Errorf("expired session: %d, want 401", code)
	}
	if _, body := c.do("GET", "/session", "", "", nil); strings.Contains(body, `"user"`) {
		t.Errorf("expired session still reported: %s", body)
	}

	if c.login("op", testPassword) != 200 {
		t.Fatal("login again")
	}
	ok = map[string]string{CSRFHeader: c.csrf}
	if code, _ := c.do("POST", "/api/auth/logout", "", "", nil); code != 403 {
		t.Errorf("logout without CSRF: %d, want 403", code)
	}
	if code, _ := c.do("POST", "/api/auth/logout", "", "", ok); code != 200 {
		t.Errorf("logout: %d", code)
	}
	if code, _ := c.do("POST", "/op", "", "", ok); code != 401 {
		t.Errorf("after logout: %d, want 401", code)
	}
}

// TestFailedLogins: wrong passwords and unknown users are refused alike, the password never reaches the log,
// and past MaxFailures the address is refused (429) even with the right password until the window passes.
func TestFailedLogins(t *testing.T) {
	srv, clk, logs := server(t)
	c := newClient(t, srv.URL)
	for i, tc := range []struct{ user, pw string }{
		{"op", "wrong-one-1"}, {"nobody", "wrong-one-2"}, {"op", ""}, {"OP", testPassword}, {"op", testPassword + " "},
	} {
		code, body := c.do("POST", "/api/auth/login", "application/json", `{"username":"`+tc.user+`","password":"`+tc.pw+`"}`, nil)
		if code != 401 || !strings.Contains(body, "wrong username or password") {
			t.Errorf("attempt %d (%s): %d %s, want 401", i, tc.user, code, body)
		}
	}
	if code := c.login("op", testPassword); code != 429 {
		t.Errorf("6th attempt, right password: %d, want 429 (rate limited)", code)
	}
	clk.add(time.Minute)
	if code := c.login("op", testPassword); code != 200 {
		t.Errorf("after the window: %d, want 200", code)
	}
	if code, _ := c.do("POST", "/api/auth/login", "text/plain", "op:"+testPassword, nil); code != 400 {
		t.Errorf("garbage body: %d, want 400", code)
	}
	form := url.Values{"username": {"op"}, "password": {testPassword}}.Encode()
	if code, _ := c.do("POST", "/api/auth/login", "application/x-www-form-urlencoded", form, nil); code != 200 {
		t.Errorf("form login: %d", code)
	}
	if code, _ := c.do("POST", "/api/auth/login", "application/json", `{"username":"op","password":"`+testPassword+`"}`,
		map[string]string{"Origin": "http://evil.example"}); code != 403 {
		t.Errorf("cross-origin login: %d, want 403", code)
	}
	l := logs.String()
	for _, secret := range []string{"wrong-one-1", "wrong-one-2", testPassword} {
		if strings.Contains(l, secret) {
			t.Errorf("the log holds a password (%q):\n%s", secret, l)
		}
	}
	if !strings.Contains(l, "login failed") || !strings.Contains(l, "user=nobody") {
		t.Errorf("failed logins are not logged with the user:\n%s", l)
	}
}
