// Package httpapi serves the daemon's HTTP surface: health and readiness for orchestrators, Prometheus
// metrics, and a small JSON API over the daemon's state and store (docs/operations.md, "HTTP API", shows the
// shapes). It knows nothing of how the daemon works: everything comes through Backend, which the agent
// implements, and more routes (the dashboard) can be mounted with Handle.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/vlmdiff/edge/agent/httpauth"
)

// ErrNotFound makes a handler answer 404.
var ErrNotFound = errors.New("not found")

// Backend is what the API reads. The JSON values are encoded as they are.
type Backend interface {
	// Ready returns nil when the daemon can score (a model loaded and the store open), else why not.
	Ready() error
	// Healthy returns nil unless scoring has stalled (frames wait and no worker made progress): the same
	// check that feeds the systemd watchdog.
	Healthy() error
	StatsJSON() any
	CamerasJSON() any
	ModelJSON() any
	// LatestFrameJPEG and LatestHeatmap return the camera's most recent scored frame and heatmap
	// (ErrNotFound for an unknown camera or before the first one).
	LatestFrameJPEG(camera string) ([]byte, error)
	LatestHeatmap(camera string) (data []byte, contentType string, err error)
	// Events returns results newest first: verdict "NG" or "" (all), camera "" = all.
	Events(verdict, camera string, limit int) (any, error)
	// History returns a camera's scores over time, newest first.
	History(camera string, limit int) (any, error)
	// Image returns a stored image by key (Record.heatmap_key / thumbnail_key).
	Image(key string) (data []byte, contentType string, err error)
	// Metrics serves /metrics (the Prometheus exposition).
	Metrics() http.Handler
}

// Server is the HTTP server.
type Server struct {
	b    Backend
	log  *slog.Logger
	auth *httpauth.Auth // nil: http.auth is off
	mux  *routeMux
	srv  *http.Server
	ln   net.Listener
}

// New builds the routes. auth nil keeps the API as it was before logins existed: reads and the machine
// routes open, operator actions refused (403). With auth every state-changing route needs a credential
// (docs/operations.md, "Securing the HTTP API").
func New(b Backend, log *slog.Logger, auth *httpauth.Auth) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{b: b, log: log, auth: auth, mux: &routeMux{ServeMux: http.NewServeMux()}}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := b.Healthy(); err != nil {
			httpError(w, http.StatusServiceUnavailable, err)
			return
		}
		io.WriteString(w, "ok\n")
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /metrics", b.Metrics())
	s.mux.HandleFunc("GET /api/stats", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, b.StatsJSON()) })
	s.mux.HandleFunc("GET /api/cameras", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, b.CamerasJSON()) })
	s.mux.HandleFunc("GET /api/model", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, b.ModelJSON()) })
	s.mux.HandleFunc("GET /api/cameras/{cam}/frame.jpg", func(w http.ResponseWriter, r *http.Request) {
		data, err := b.LatestFrameJPEG(r.PathValue("cam"))
		s.writeImage(w, data, "image/jpeg", err)
	})
	// The latest heatmap, whatever its format: heatmap_url names it by mqtt.heatmap.format, and the .png
	// name of older releases keeps working for links and dashboards that have it.
	latestHeatmap := func(w http.ResponseWriter, r *http.Request) {
		data, ct, err := b.LatestHeatmap(r.PathValue("cam"))
		s.writeImage(w, data, ct, err)
	}
	s.mux.HandleFunc("GET /api/cameras/{cam}/heatmap.jpg", latestHeatmap)
	s.mux.HandleFunc("GET /api/cameras/{cam}/heatmap.png", latestHeatmap)
	s.mux.HandleFunc("GET /api/images/{key...}", func(w http.ResponseWriter, r *http.Request) {
		data, ct, err := b.Image(r.PathValue("key"))
		s.writeImage(w, data, ct, err)
	})
	s.mux.HandleFunc("GET /api/events", func(w http.ResponseWriter, r *http.Request) {
		limit, err := limitParam(r, 50)
		if err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		verdict := r.URL.Query().Get("verdict")
		if verdict != "" && verdict != "NG" && verdict != "OK" {
			httpError(w, http.StatusBadRequest, fmt.Errorf("verdict: want NG, OK or nothing, not %q", verdict))
			return
		}
		v, err := b.Events(verdict, r.URL.Query().Get("camera"), limit)
		s.writeResult(w, v, err)
	})
	s.mux.HandleFunc("GET /api/history", func(w http.ResponseWriter, r *http.Request) {
		limit, err := limitParam(r, 200)
		if err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		v, err := b.History(r.URL.Query().Get("camera"), limit)
		s.writeResult(w, v, err)
	})
	if p, ok := b.(Pusher); ok {
		s.mountPush(p)
	}
	if e, ok := b.(EvidenceSource); ok {
		s.mountEvidence(e)
	}
	s.mountAuth()
	if ss, ok := b.(SampleStore); ok {
		s.mountSamples(ss)
	}
	if o, ok := b.(Operator); ok {
		s.mountOperator(o)
	}
	return s
}

// Handle mounts another handler (e.g. the dashboard's embedded assets) on the same server. Patterns follow
// net/http.ServeMux; call before Serve.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Routes lists the patterns mounted so far, in order (a test walks the state-changing ones).
func (s *Server) Routes() []string { return append([]string(nil), s.mux.patterns...) }

// routeMux is a ServeMux that remembers its patterns.
type routeMux struct {
	*http.ServeMux
	patterns []string
}

func (m *routeMux) Handle(pattern string, h http.Handler) {
	m.patterns = append(m.patterns, pattern)
	m.ServeMux.Handle(pattern, h)
}

func (m *routeMux) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	m.Handle(pattern, http.HandlerFunc(h))
}

// Handler returns the server's handler (tests, or embedding in another server).
func (s *Server) Handler() http.Handler { return s.mux }

// Listen binds the address, so a port in use fails the daemon's start with a clear error.
func (s *Server) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("http: listen on %s: %w", addr, err)
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	s.log.Info("HTTP API listening", "addr", ln.Addr().String())
	return nil
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Serve serves until Shutdown.
func (s *Server) Serve() error { return s.srv.Serve(s.ln) }

// Shutdown stops the server, waiting for requests in progress until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if err := s.b.Ready(); err != nil {
		httpError(w, http.StatusServiceUnavailable, err)
		return
	}
	io.WriteString(w, "ready\n")
}

func (s *Server) writeImage(w http.ResponseWriter, data []byte, ct string, err error) {
	if err != nil {
		s.writeResult(w, nil, err)
		return
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Cache-Control", "no-store")
	w.Write(data)
}

func (s *Server) writeResult(w http.ResponseWriter, v any, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		httpError(w, http.StatusNotFound, err)
	case err != nil:
		s.log.Warn("http api", "err", err)
		httpError(w, http.StatusInternalServerError, err)
	default:
		writeJSON(w, v)
	}
}

func limitParam(r *http.Request, def int) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 10000 {
		return 0, fmt.Errorf("limit: want 1..10000, not %q", v)
	}
	return n, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func httpError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}
