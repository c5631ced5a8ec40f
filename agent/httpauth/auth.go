// Package httpauth guards the daemon's state-changing HTTP routes: dashboard logins (bcrypt password hashes
// from the config, server-side sessions in an HttpOnly SameSite=Strict cookie, a synchronizer CSRF token per
// session) and machine bearer tokens for PLC gateways. It knows nothing of the routes it guards: httpapi
// wraps each state-changing handler with Operator (a logged-in user) or Machine (a user or a token).
//
// WHY server-side sessions and a synchronizer token: a session can be ended (logout, expiry) without
// trusting the client, and a CSRF token bound to the session cannot be forged by a page on another origin,
// which can make the browser send the cookie (SameSite aside) but cannot read the token.
package httpauth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// CookieName is the session cookie; CSRFHeader and CSRFField carry the CSRF token (header for fetch, form
// field for plain HTML forms).
const (
	CookieName = "vlmdiff_session"
	CSRFHeader = "X-CSRF-Token"
	CSRFField  = "csrf_token"
)

// User is one account: its name and bcrypt hash.
type User struct {
	Name string
	Hash []byte
}

// Token is one machine credential.
type Token struct {
	Name   string
	Secret string
}

// Config configures an Auth. Zero values mean the documented defaults.
type Config struct {
	Users  []User
	Tokens []Token
	// SessionTTL is a session's lifetime from login (default 12h).
	SessionTTL time.Duration
	// SecureCookie always sets the cookie's Secure attribute (behind a TLS proxy); requests over TLS get it
	// anyway.
	SecureCookie bool
	// FailDelay is added to every failed login's answer (default 500ms): it slows guessing and hides
	// whether the user exists.
	FailDelay time.Duration
	// MaxFailures failed logins per client address within FailWindow (defaults 5 and 1 minute) make
	// further attempts from it answer 429 until the window has passed.
	MaxFailures int
	FailWindow  time.Duration
	// MaxSessions bounds the sessions kept (default 256); past it the oldest is ended.
	MaxSessions int
	Logger      *slog.Logger
	Now         func() time.Time
}

// Auth checks credentials. Safe for concurrent use.
type Auth struct {
	cfg    Config
	log    *slog.Logger
	dummy  []byte // a hash checked for unknown users, so they take as long as known ones
	tokens [][sha256.Size]byte
	bcrypt chan struct{} // bounds concurrent bcrypt checks (each costs tens of ms of CPU)

	mu       sync.Mutex
	sessions map[[sha256.Size]byte]*Session
	failures map[string]*failures
}

// Session is one login.
type Session struct {
	User    string    `json:"user"`
	CSRF    string    `json:"csrf_token"`
	Expires time.Time `json:"expires_at"`
	created time.Time
}

type failures struct {
	n     int
	since time.Time
}

// New checks the users' hashes and prepares the session store.
func New(cfg Config) (*Auth, error) {
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	if cfg.FailDelay <= 0 {
		cfg.FailDelay = 500 * time.Millisecond
	}
	if cfg.MaxFailures <= 0 {
		cfg.MaxFailures = 5
	}
	if cfg.FailWindow <= 0 {
		cfg.FailWindow = time.Minute
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 256
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cost := bcrypt.DefaultCost
	for _, u := range cfg.Users {
		c, err := bcrypt.Cost(u.Hash)
		if err != nil {
			return nil, fmt.Errorf("httpauth: user %q: password hash: %w", u.Name, err)
		}
		cost = c
	}
	dummy, err := bcrypt.GenerateFromPassword([]byte("no such user"), cost)
	if err != nil {
		return nil, fmt.Errorf("httpauth: %w", err)
	}
	a := &Auth{cfg: cfg, log: cfg.Logger, dummy: dummy, bcrypt: make(chan struct{}, 2),
		sessions: map[[sha256.Size]byte]*Session{}, failures: map[string]*failures{}}
	for _, t := range cfg.Tokens {
		a.tokens = append(a.tokens, sha256.Sum256([]byte(t.Secret)))
	}
	return a, nil
}

// HasUsers reports whether anyone can log in (the dashboard offers a login only then).
func (a *Auth) HasUsers() bool { return a != nil && len(a.cfg.Users) > 0 }

// HashPassword returns a bcrypt hash of password for the config (`vlmdiff passwd`).
func HashPassword(password []byte, cost int) ([]byte, error) {
	if len(password) == 0 {
		return nil, errors.New("empty password")
	}
	h, err := bcrypt.GenerateFromPassword(password, cost)
	if err != nil {
		return nil, fmt.Errorf("hash password: %w", err)
	}
	return h, nil
}

// Errors Login returns.
var (
	ErrBadLogin    = errors.New("wrong username or password")
	ErrRateLimited = errors.New("too many failed logins from this address; try again later")
)

// Login checks a username and password from the client at remote and starts a session. A failure waits
// FailDelay before it returns; too many from one address answer ErrRateLimited at once.
func (a *Auth) Login(ctx context.Context, username, password, remote string) (*Session, string, error) {
	host := clientHost(remote)
	if a.limited(host) {
		a.log.Warn("login refused: rate limited", "user", username, "remote", host)
		return nil, "", ErrRateLimited
	}
	ok := a.check(ctx, username, password)
	if !ok {
		a.fail(host)
		a.log.Warn("login failed", "user", username, "remote", host)
		select {
		case <-time.After(a.cfg.FailDelay):
		case <-ctx.Done():
		}
		return nil, "", ErrBadLogin
	}
	a.mu.Lock()
	delete(a.failures, host)
	a.mu.Unlock()
	id, s := a.newSession(username)
	a.log.Info("login", "user", username, "remote", host, "expires", s.Expires.Format(time.RFC3339))
	return s, id, nil
}

// check compares in constant time: every user name is compared, and an unknown user is checked against a
// dummy hash of the same cost, so neither the name nor the password shows in the answer's timing.
func (a *Auth) check(ctx context.Context, username, password string) bool {
	hash := a.dummy
	found := 0
	for _, u := range a.cfg.Users {
		if subtle.ConstantTimeCompare([]byte(u.Name), []byte(username)) == 1 {
			hash, found = u.Hash, 1
		}
	}
	select {
	case a.bcrypt <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(password))
	<-a.bcrypt
	return err == nil && found == 1
}

func (a *Auth) limited(host string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.failures[host]
	if f == nil {
		return false
	}
	if a.cfg.Now().Sub(f.since) >= a.cfg.FailWindow {
		delete(a.failures, host)
		return false
	}
	return f.n >= a.cfg.MaxFailures
}

func (a *Auth) fail(host string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.cfg.Now()
	f := a.failures[host]
	if f == nil || now.Sub(f.since) >= a.cfg.FailWindow {
		f = &failures{since: now}
		a.failures[host] = f
	}
	f.n++
	if len(a.failures) > 10000 { // a flood from many addresses: forget the oldest windows
		for h, g := range a.failures {
			if now.Sub(g.since) >= a.cfg.FailWindow {
				delete(a.failures, h)
			}
		}
	}
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (a *Auth) newSession(user string) (string, *Session) {
	id := randomToken()
	now := a.cfg.Now()
	s := &Session{User: user, CSRF: randomToken(), Expires: now.Add(a.cfg.SessionTTL), created: now}
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, o := range a.sessions {
		if !now.Before(o.Expires) {
			delete(a.sessions, k)
		}
	}
	for len(a.sessions) >= a.cfg.MaxSessions {
		var oldest [sha256.Size]byte
		var t time.Time
		for k, o := range a.sessions {
			if t.IsZero() || o.created.Before(t) {
				oldest, t = k, o.created
			}
		}
		delete(a.sessions, oldest)
	}
	// Only the id's hash is kept: a memory dump does not hand out live cookies.
	a.sessions[sha256.Sum256([]byte(id))] = s
	return id, s
}

// Session returns the request's live session, or nil.
func (a *Auth) Session(r *http.Request) *Session {
	c, err := r.Cookie(CookieName)
	if err != nil || c.Value == "" {
		return nil
	}
	k := sha256.Sum256([]byte(c.Value))
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.sessions[k]
	if s == nil {
		return nil
	}
	if !a.cfg.Now().Before(s.Expires) {
		delete(a.sessions, k)
		return nil
	}
	cp := *s
	return &cp
}

// Logout ends the request's session.
func (a *Auth) Logout(r *http.Request) {
	if c, err := r.Cookie(CookieName); err == nil {
		a.mu.Lock()
		delete(a.sessions, sha256.Sum256([]byte(c.Value)))
		a.mu.Unlock()
	}
}

// SetCookie writes the session cookie for maxAge (id "" clears it). Max-Age rather than Expires: the
// browser's clock need not agree with the daemon's.
func (a *Auth) SetCookie(w http.ResponseWriter, r *http.Request, id string, maxAge time.Duration) {
	c := &http.Cookie{Name: CookieName, Value: id, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: a.cfg.SecureCookie || r.TLS != nil, MaxAge: int(maxAge / time.Second)}
	if id == "" || c.MaxAge <= 0 {
		c.MaxAge = -1
	}
	http.SetCookie(w, c)
}

// token returns the name of the configured token the request's bearer credential matches; present tells
// whether the request carried one at all.
func (a *Auth) token(r *http.Request) (name string, present bool) {
	h := r.Header.Get("Authorization")
	scheme, cred, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", h != ""
	}
	// Compare digests: equal lengths, and the time does not depend on how much of the token matched.
	got := sha256.Sum256([]byte(strings.TrimSpace(cred)))
	match := -1
	for i, t := range a.tokens {
		if subtle.ConstantTimeCompare(got[:], t[:]) == 1 {
			match = i
		}
	}
	if match < 0 {
		return "", true
	}
	return a.cfg.Tokens[match].Name, true
}

// sameOrigin refuses a request whose Origin header names another site (a browser always sends Origin on a
// cross-site POST). Requests without Origin (curl, a PLC gateway) pass: they carry no ambient cookie risk.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && strings.EqualFold(u.Host, r.Host)
}

func clientHost(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}
