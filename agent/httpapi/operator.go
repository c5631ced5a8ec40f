package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/vlmdiff/edge/agent/httpauth"
)

// Operator is the optional part of a Backend that carries out the dashboard's operator actions. Server
// mounts POST /api/cameras/{cam}/threshold and POST /api/events/{cam}/{seq}/false-alarm when the Backend
// implements it; they need a logged-in user (http.auth.users) and are refused (403) without auth.
type Operator interface {
	// SetThreshold sets a camera's threshold override (reset: back to the model's calibrated one) under the
	// same guard as the MQTT threshold command; who names the user. Errors: ErrNotFound (camera),
	// ErrForbidden (remote thresholds off), ErrBadRequest (outside the allowed range).
	SetThreshold(camera string, threshold float64, reset bool, who string) (any, error)
	// MarkFalseAlarm keeps an NG result's frame as a collected normal sample, recording who and when.
	// Errors: ErrNotFound (no such result, or its frame is no longer kept), ErrConflict (not NG),
	// ErrUnavailable (sample collection refused: disk guard, store full).
	MarkFalseAlarm(camera string, seq uint64, who string) (any, error)
}

// errNoOperator answers operator routes when nobody can log in.
var errNoOperator = errors.New("operator actions are off: they need a login (http.auth.users; docs/operations.md, Securing the HTTP API)")

// machine guards a state-changing route a machine may call (a bearer token or a login); open without auth,
// as before logins existed.
func (s *Server) machine(h http.HandlerFunc) http.Handler {
	if s.auth == nil {
		return h
	}
	return s.auth.Machine(h)
}

// operator guards a route only a logged-in user may call; without users it is refused.
func (s *Server) operator(h http.HandlerFunc) http.Handler {
	if !s.auth.HasUsers() {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			httpError(w, http.StatusForbidden, errNoOperator)
		})
	}
	return s.auth.Operator(h)
}

// mountAuth serves GET /api/auth/session always (the dashboard asks it whether to offer a login) and the
// login and logout routes when auth is on.
func (s *Server) mountAuth() {
	s.mux.HandleFunc("GET /api/auth/session", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, s.auth.Info(r))
	})
	if s.auth == nil {
		s.mux.HandleFunc("POST /api/auth/login", func(w http.ResponseWriter, r *http.Request) {
			httpError(w, http.StatusForbidden, errNoOperator)
		})
		return
	}
	s.auth.Mount(s.mux)
}

func (s *Server) mountOperator(o Operator) {
	s.mux.Handle("POST /api/cameras/{cam}/threshold", s.operator(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Threshold *float64 `json:"threshold"`
			Reset     bool     `json:"reset"`
		}
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil || (body.Threshold == nil) == !body.Reset {
			s.writePush(w, nil, fmt.Errorf(`want {"threshold": number} or {"reset": true}: %w`, ErrBadRequest))
			return
		}
		v := 0.0
		if body.Threshold != nil {
			v = *body.Threshold
		}
		res, err := o.SetThreshold(r.PathValue("cam"), v, body.Reset, httpauth.Who(r.Context()))
		s.writePush(w, res, err)
	}))
	s.mux.Handle("POST /api/events/{cam}/{seq}/false-alarm", s.operator(func(w http.ResponseWriter, r *http.Request) {
		seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
		if err != nil || seq == 0 {
			s.writePush(w, nil, fmt.Errorf("seq %q: want a result's seq (a positive integer): %w", r.PathValue("seq"), ErrBadRequest))
			return
		}
		res, err := o.MarkFalseAlarm(r.PathValue("cam"), seq, httpauth.Who(r.Context()))
		s.writePush(w, res, err)
	}))
}
