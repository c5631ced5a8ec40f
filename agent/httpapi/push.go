package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
)

// Errors a Pusher returns to choose the status code.
var (
	// ErrBadRequest: the request itself is wrong (400).
	ErrBadRequest = errors.New("bad request")
	// ErrTooLarge: the image is over the byte or pixel limit (413).
	ErrTooLarge = errors.New("too large")
	// ErrBusy: saturated; try again shortly (429 with Retry-After).
	ErrBusy = errors.New("busy")
	// ErrUnavailable: cannot score now, e.g. no model loaded or shutting down (503).
	ErrUnavailable = errors.New("unavailable")
	// ErrForbidden: the action is switched off for this target, e.g. cameras[].remote_threshold: false (403).
	ErrForbidden = errors.New("forbidden")
	// ErrConflict: the target is not in a state the action applies to, e.g. an OK result marked as a false
	// alarm (409).
	ErrConflict = errors.New("conflict")
)

// ScoreRequest is one image pushed to POST /api/score.
type ScoreRequest struct {
	Image   []byte
	Class   string // optional: the bundle class
	ID      string // optional: echoed in the result's trigger.id
	Heatmap bool   // return the heatmap inline (base64)
}

// Pusher is the optional part of a Backend that scores on request: pushed images and camera triggers.
// Server mounts POST /api/score and POST /api/cameras/{cam}/trigger when the Backend implements it.
type Pusher interface {
	// ScoreMaxBytes bounds a pushed image's encoded size.
	ScoreMaxBytes() int64
	// Score scores one image and returns the result JSON value once it is committed.
	Score(ctx context.Context, req ScoreRequest) (any, error)
	// Trigger asks a trigger-mode camera for one scored frame; with wait it returns the result, else an
	// acknowledgement as soon as the trigger is queued.
	Trigger(ctx context.Context, camera string, payload []byte, wait bool) (any, error)
}

func (s *Server) mountPush(p Pusher) {
	s.mux.Handle("POST /api/score", s.machine(func(w http.ResponseWriter, r *http.Request) {
		req, err := readScoreRequest(w, r, p.ScoreMaxBytes())
		if err != nil {
			s.writePush(w, nil, err)
			return
		}
		v, err := p.Score(r.Context(), req)
		s.writePush(w, v, err)
	}))
	s.mux.Handle("POST /api/cameras/{cam}/trigger", s.machine(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
		if err != nil {
			s.writePush(w, nil, fmt.Errorf("read trigger body: %w", ErrTooLarge))
			return
		}
		wait, err := boolParam(r.URL.Query().Get("wait"))
		if err != nil {
			s.writePush(w, nil, fmt.Errorf("wait: %w: %w", err, ErrBadRequest))
			return
		}
		v, err := p.Trigger(r.Context(), r.PathValue("cam"), body, wait)
		if err == nil && !wait {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusAccepted)
			writeJSONBody(w, v)
			return
		}
		s.writePush(w, v, err)
	}))
}

// readScoreRequest takes the image either as the raw body (any Content-Type but multipart) or as the
// `image` part of a multipart form; class, id and heatmap come from the query or the form.
func readScoreRequest(w http.ResponseWriter, r *http.Request, maxBytes int64) (ScoreRequest, error) {
	// The multipart envelope adds a little; the image itself is held to maxBytes below.
	r.Body = http.MaxBytesReader(w, r.Body, maxBytes+64<<10)
	q := r.URL.Query()
	req := ScoreRequest{Class: q.Get("class"), ID: q.Get("id")}
	hm := q.Get("heatmap")
	ct, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "multipart/form-data" {
		mr := multipart.NewReader(r.Body, params["boundary"])
		for {
			part, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return req, bodyErr(err)
			}
			data, err := io.ReadAll(io.LimitReader(part, maxBytes+1))
			if err != nil {
				return req, bodyErr(err)
			}
			switch part.FormName() {
			case "image":
				req.Image = data
			case "class":
				req.Class = string(data)
			case "id":
				req.ID = string(data)
			case "heatmap":
				hm = string(data)
			}
		}
	} else {
		data, err := io.ReadAll(io.LimitReader(r.Body, maxBytes+1))
		if err != nil {
			return req, bodyErr(err)
		}
		req.Image = data
	}
	if int64(len(req.Image)) > maxBytes {
		return req, fmt.Errorf("image is over %d bytes: %w", maxBytes, ErrTooLarge)
	}
	if len(req.Image) == 0 {
		return req, fmt.Errorf("no image: send the image bytes as the body, or as the form field \"image\": %w", ErrBadRequest)
	}
	var err error
	if req.Heatmap, err = boolParam(hm); err != nil {
		return req, fmt.Errorf("heatmap: %w: %w", err, ErrBadRequest)
	}
	if len(req.ID) > 256 || len(req.Class) > 256 {
		return req, fmt.Errorf("id and class are at most 256 bytes: %w", ErrBadRequest)
	}
	return req, nil
}

func bodyErr(err error) error {
	var mb *http.MaxBytesError
	if errors.As(err, &mb) {
		return fmt.Errorf("request body over %d bytes: %w", mb.Limit, ErrTooLarge)
	}
	return fmt.Errorf("read request body: %v: %w", err, ErrBadRequest)
}

func boolParam(v string) (bool, error) {
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(strings.ToLower(v))
	if err != nil {
		return false, fmt.Errorf("want 1/0 or true/false, not %q", v)
	}
	return b, nil
}

func (s *Server) writePush(w http.ResponseWriter, v any, err error) {
	switch {
	case err == nil:
		writeJSON(w, v)
	case errors.Is(err, ErrBadRequest):
		httpError(w, http.StatusBadRequest, err)
	case errors.Is(err, ErrForbidden):
		httpError(w, http.StatusForbidden, err)
	case errors.Is(err, ErrConflict):
		httpError(w, http.StatusConflict, err)
	case errors.Is(err, ErrTooLarge):
		httpError(w, http.StatusRequestEntityTooLarge, err)
	case errors.Is(err, ErrBusy):
		w.Header().Set("Retry-After", "1")
		httpError(w, http.StatusTooManyRequests, err)
	case errors.Is(err, ErrUnavailable):
		w.Header().Set("Retry-After", "5")
		httpError(w, http.StatusServiceUnavailable, err)
	case errors.Is(err, context.Canceled):
		// The client went away; nobody reads the answer.
	default:
		s.writeResult(w, nil, err)
	}
}

func writeJSONBody(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
