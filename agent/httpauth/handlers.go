package httpauth

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"time"
)

type principalKey struct{}

// Who names whoever a guarded handler's request was let through for: the user name of a session, or
// "token:<name>" for a machine token; "" when the route is not guarded (auth off).
func Who(ctx context.Context) string {
	s, _ := ctx.Value(principalKey{}).(string)
	return s
}

// Operator guards a route that needs a logged-in user: a live session cookie and the session's CSRF token
// in the X-CSRF-Token header (or the csrf_token field of a urlencoded form). 401 without a session, 403
// without the right token or from another origin.
func (a *Auth) Operator(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if who, ok := a.session(w, r, "log in first (POST /api/auth/login)"); ok {
			h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, who)))
		}
	})
}

// Machine guards a route a machine may call: a configured bearer token (no CSRF token: a browser never sends
// an Authorization header on its own), or else what Operator asks for. A wrong token is 401 even when a
// session cookie comes with it.
func (a *Auth) Machine(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, present := a.token(r)
		if present {
			if name == "" {
				w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
				a.log.Warn("request with an unknown bearer token refused", "path", r.URL.Path, "remote", clientHost(r.RemoteAddr))
				writeError(w, http.StatusUnauthorized, errors.New("unknown bearer token"))
				return
			}
			h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, "token:"+name)))
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="vlmdiff"`)
		if who, ok := a.session(w, r, "a bearer token (http.auth.tokens) or a login is required"); ok {
			w.Header().Del("WWW-Authenticate")
			h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, who)))
		}
	})
}

// session checks the session and CSRF token, answering the refusal itself when they do not pass.
func (a *Auth) session(w http.ResponseWriter, r *http.Request, missing string) (string, bool) {
	if !sameOrigin(r) {
		writeError(w, http.StatusForbidden, errors.New("cross-origin request refused"))
		return "", false
	}
	s := a.Session(r)
	if s == nil {
		writeError(w, http.StatusUnauthorized, errors.New(missing))
		return "", false
	}
	tok := r.Header.Get(CSRFHeader)
	if tok == "" && isForm(r) {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		tok = r.PostFormValue(CSRFField)
	}
	if tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.CSRF)) != 1 {
		a.log.Warn("request refused: missing or wrong CSRF token", "user", s.User, "path", r.URL.Path, "remote", clientHost(r.RemoteAddr))
		writeError(w, http.StatusForbidden, fmt.Errorf("missing or wrong CSRF token (send the session's csrf_token in the %s header)", CSRFHeader))
		return "", false
	}
	return s.User, true
}

func isForm(r *http.Request) bool {
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return ct == "application/x-www-form-urlencoded"
}

// SessionInfo is GET /api/auth/session's answer (also the login's).
type SessionInfo struct {
	// Enabled: http.auth is configured (state-changing routes need a credential).
	Enabled bool `json:"enabled"`
	// Login: users are configured, so the dashboard offers a login and operator actions.
	Login     bool      `json:"login"`
	User      string    `json:"user,omitempty"`
	CSRFToken string    `json:"csrf_token,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// Info describes the request's session; a nil Auth (auth off) answers Enabled false.
func (a *Auth) Info(r *http.Request) SessionInfo {
	if a == nil {
		return SessionInfo{}
	}
	si := SessionInfo{Enabled: true, Login: a.HasUsers()}
	if s := a.Session(r); s != nil {
		si.User, si.CSRFToken, si.ExpiresAt = s.User, s.CSRF, s.Expires
	}
	return si
}

// Mux is where Mount adds its routes (an http.ServeMux).
type Mux interface {
	Handle(pattern string, h http.Handler)
	HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request))
}

// Mount adds POST /api/auth/login and POST /api/auth/logout to mux.
func (a *Auth) Mount(mux Mux) {
	mux.HandleFunc("POST /api/auth/login", a.login)
	mux.Handle("POST /api/auth/logout", a.Operator(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.Logout(r)
		a.SetCookie(w, r, "", 0)
		a.log.Info("logout", "user", Who(r.Context()), "remote", clientHost(r.RemoteAddr))
		writeJSON(w, http.StatusOK, SessionInfo{Enabled: true, Login: a.HasUsers()})
	})))
}

// login takes {"username","password"} as JSON or a urlencoded form and answers SessionInfo with the cookie.
func (a *Auth) login(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		writeError(w, http.StatusForbidden, errors.New("cross-origin login refused"))
		return
	}
	if !a.HasUsers() {
		writeError(w, http.StatusForbidden, errors.New("no users are configured (http.auth.users)"))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	var cred struct{ Username, Password string }
	if isForm(r) {
		cred.Username, cred.Password = r.PostFormValue("username"), r.PostFormValue("password")
	} else if err := json.NewDecoder(r.Body).Decode(&cred); err != nil {
		writeError(w, http.StatusBadRequest, errors.New(`want {"username": ..., "password": ...} as JSON or a form`))
		return
	}
	s, id, err := a.Login(r.Context(), cred.Username, cred.Password, r.RemoteAddr)
	switch {
	case errors.Is(err, ErrRateLimited):
		w.Header().Set("Retry-After", fmt.Sprint(int(a.cfg.FailWindow.Seconds())))
		writeError(w, http.StatusTooManyRequests, err)
		return
	case err != nil:
		writeError(w, http.StatusUnauthorized, err)
		return
	}
	a.SetCookie(w, r, id, s.Expires.Sub(a.cfg.Now()))
	writeJSON(w, http.StatusOK, SessionInfo{Enabled: true, Login: true, User: s.User, CSRFToken: s.CSRF, ExpiresAt: s.Expires})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
