package httpapi

import (
	"net/http"
	"os"
)

// EvidenceSource is the optional part of a Backend that keeps evidence files; Server mounts
// GET /api/evidence (the list) and GET /api/evidence/files/... (the files) when the Backend implements it.
type EvidenceSource interface {
	// EvidenceList lists the evidence files newest first; camera and day (YYYY-MM-DD) narrow it ("" = all).
	EvidenceList(camera, day string) (any, error)
	// EvidenceDir is the evidence root; "" when evidence is off.
	EvidenceDir() string
}

func (s *Server) mountEvidence(e EvidenceSource) {
	s.mux.HandleFunc("GET /api/evidence", func(w http.ResponseWriter, r *http.Request) {
		v, err := e.EvidenceList(r.URL.Query().Get("camera"), r.URL.Query().Get("day"))
		s.writeResult(w, v, err)
	})
	s.mux.HandleFunc("GET /api/evidence/files/", func(w http.ResponseWriter, r *http.Request) {
		dir := e.EvidenceDir()
		if dir == "" {
			httpError(w, http.StatusNotFound, errEvidenceOff)
			return
		}
		// os.DirFS refuses paths that leave the root (.., absolute), and FileServerFS serves only files
		// under it: the evidence tree, nothing else on the disk.
		http.StripPrefix("/api/evidence/files/", http.FileServerFS(os.DirFS(dir))).ServeHTTP(w, r)
	})
}

var errEvidenceOff = errorString("evidence is off (evidence.enabled)")

type errorString string

func (e errorString) Error() string { return string(e) }
