package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
)

// SampleRef names one collected sample.
type SampleRef struct {
	Camera string `json:"camera"`
	Seq    uint64 `json:"seq"`
}

// SampleStore is the optional part of a Backend that holds the collected normal samples. Server mounts
// GET /api/samples/export and POST /api/samples/delete when the Backend implements it, so `vlmdiff samples
// export --api` works while the daemon holds the store's file lock.
type SampleStore interface {
	// WriteSamples streams every sample as a tar (store.WriteSamplesTar) and returns how many it wrote.
	WriteSamples(ctx context.Context, w io.Writer) (int, error)
	// DeleteSamples removes the named samples and returns how many were there.
	DeleteSamples(refs []SampleRef) (int, error)
}

// mountSamples: both routes need a credential when http.auth is on (the export hands out the line's
// training data; the delete changes state). Without it the export is open like the other reads, and the
// delete, a new route that destroys training data, is taken from this machine (loopback) only.
func (s *Server) mountSamples(ss SampleStore) {
	s.mux.Handle("GET /api/samples/export", s.machine(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-tar")
		w.Header().Set("Content-Disposition", `attachment; filename="samples.tar"`)
		w.Header().Set("Cache-Control", "no-store")
		n, err := ss.WriteSamples(r.Context(), w)
		if err != nil {
			// The status is sent; the reader sees a stream without samples.jsonl and reports it cut short.
			s.log.Warn("samples export interrupted", "written", n, "err", err)
			return
		}
		s.log.Info("samples exported over HTTP", "samples", n, "remote", r.RemoteAddr)
	}))
	s.mux.Handle("POST /api/samples/delete", s.machineOrLocal(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Samples []SampleRef `json:"samples"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 8<<20)).Decode(&body); err != nil {
			s.writePush(w, nil, fmt.Errorf(`want {"samples": [{"camera": ..., "seq": ...}, ...]}: %v: %w`, err, ErrBadRequest))
			return
		}
		n, err := ss.DeleteSamples(body.Samples)
		s.writePush(w, map[string]int{"deleted": n}, err)
	}))
}

// machineOrLocal is machine, except that without http.auth only a client on this machine is let through.
func (s *Server) machineOrLocal(h http.HandlerFunc) http.Handler {
	if s.auth != nil {
		return s.auth.Machine(h)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			httpError(w, http.StatusForbidden, errors.New("from another machine this needs http.auth (docs/operations.md, Securing the HTTP API)"))
			return
		}
		h(w, r)
	})
}
