package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/agent/httpauth"
	"github.com/vlmdiff/edge/agent/mqttout"
	"github.com/vlmdiff/edge/agent/store"
)

// The agent's side of the dashboard's operator actions (httpapi.Operator). The HTTP layer has already
// checked the login and CSRF token; who names the user for the log and the sample's audit fields.

// httpAuth builds the HTTP API's guard from http.auth; nil when nothing is configured (the API as before
// logins existed).
func (a *Agent) httpAuth() (*httpauth.Auth, error) {
	ac := a.cfg.HTTP.Auth
	if !ac.Enabled() {
		return nil, nil
	}
	cfg := httpauth.Config{SessionTTL: ac.SessionTTL, SecureCookie: ac.CookieSecure, Logger: a.log.With("component", "http-auth")}
	for _, u := range ac.Users {
		cfg.Users = append(cfg.Users, httpauth.User{Name: u.Username, Hash: []byte(u.PasswordHash)})
	}
	for _, t := range ac.Tokens {
		cfg.Tokens = append(cfg.Tokens, httpauth.Token{Name: t.Name, Secret: t.Token})
	}
	auth, err := httpauth.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("http.auth: %w", err)
	}
	return auth, nil
}

// SetThreshold applies a threshold change from the dashboard through the same guard as the MQTT command
// (threshold_guard.go): remote_threshold and the allowed range apply alike, so a login is no way around
// them. The new state goes out on <prefix>/<camera>/threshold/state as for an MQTT command.
func (a *Agent) SetThreshold(camera string, threshold float64, reset bool, who string) (any, error) {
	c, ok := a.byName[camera]
	if !ok || c == a.scoreCam {
		return nil, fmt.Errorf("camera %q: %w", camera, httpapi.ErrNotFound)
	}
	if !c.cfg.RemoteThresholdOn() {
		return nil, fmt.Errorf("camera %s: remote threshold control is disabled (cameras[].remote_threshold: false): %w", camera, httpapi.ErrForbidden)
	}
	cmd := mqttout.ThresholdCommand{Threshold: threshold, Reset: reset}
	if err := a.checkThreshold(c, cmd); err != nil {
		a.log.Warn("threshold change refused", "camera", camera, "user", who, "threshold", threshold, "err", err)
		return nil, fmt.Errorf("camera %s: %w: %w", camera, err, httpapi.ErrBadRequest)
	}
	st, err := a.onThreshold(camera, cmd)
	if err != nil {
		return nil, fmt.Errorf("camera %s: %w", camera, err)
	}
	st.UpdatedAt = time.Now().UTC()
	if a.pub != nil {
		a.pub.SetThresholdState(st)
	}
	a.log.Info("threshold changed from the dashboard", "camera", camera, "user", who, "reset", reset, "threshold", st.Threshold)
	return st, nil
}

// FalseAlarm is the answer to POST /api/events/{cam}/{seq}/false-alarm.
type FalseAlarm struct {
	Camera   string    `json:"camera"`
	Seq      uint64    `json:"seq"`
	Sample   bool      `json:"sample"`
	MarkedBy string    `json:"marked_by"`
	MarkedAt time.Time `json:"marked_at"`
	// FrameFrom says where the frame was found: "evidence" (the evidence tree) or "latest" (the camera's
	// latest frame, still in memory).
	FrameFrom string `json:"frame_from"`
}

// MarkFalseAlarm keeps an NG result's frame as a normal sample (the same samples `vlmdiff samples export`
// exports), with who and when. WHY: an NG an operator overrules is the most useful normal sample there is,
// the frame the model got wrong. The frame comes from the evidence tree (evidence.enabled), or from memory
// when it is the camera's latest; older frames are not kept anywhere else.
func (a *Agent) MarkFalseAlarm(camera string, seq uint64, who string) (any, error) {
	c, ok := a.byName[camera]
	if !ok {
		return nil, fmt.Errorf("camera %q: %w", camera, httpapi.ErrNotFound)
	}
	rec, err := a.store.FindResult(camera, seq)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("no result %s #%d in the history: %w", camera, seq, httpapi.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if rec.Verdict != store.VerdictNG {
		return nil, fmt.Errorf("result %s #%d is %s: only an NG result can be a false alarm: %w", camera, seq, rec.Verdict, httpapi.ErrConflict)
	}
	png, from, err := a.resultFrame(c, seq)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	err = a.store.AddSample(store.Sample{Camera: camera, Class: rec.Class, Seq: seq, CapturedAt: rec.FrameTime,
		Score: rec.Score, Origin: store.OriginFalseAlarm, MarkedBy: who, MarkedAt: now, PNG: png})
	if errors.Is(err, store.ErrDiskGuard) || errors.Is(err, store.ErrSamplesFull) {
		return nil, fmt.Errorf("%w: %w", err, httpapi.ErrUnavailable)
	}
	if err != nil {
		return nil, fmt.Errorf("mark %s #%d as a false alarm: %w", camera, seq, err)
	}
	c.samples.Add(1)
	a.log.Info("NG result marked as a false alarm: its frame is now a normal sample", "camera", camera, "seq", seq,
		"user", who, "frame_from", from)
	return FalseAlarm{Camera: camera, Seq: seq, Sample: true, MarkedBy: who, MarkedAt: now, FrameFrom: from}, nil
}

// resultFrame finds a result's frame as PNG: the evidence tree first (the frame as scored, lossless), then
// the camera's latest frame when seq is the latest.
func (a *Agent) resultFrame(c *camera, seq uint64) ([]byte, string, error) {
	if a.evidence != nil {
		// <dir>/<camera>/<day>/<seq>-NG.png: the day is the frame's, so look in every day of the camera.
		// Camera names hold no glob characters (config validation).
		matches, _ := filepath.Glob(filepath.Join(a.evidence.Dir(), c.name, "*", fmt.Sprintf("%010d-NG.png", seq)))
		for _, m := range matches {
			if data, err := os.ReadFile(m); err == nil {
				return data, "evidence", nil
			}
		}
	}
	c.mu.Lock()
	frame, last := c.lastFrame, c.lastFrameSeq
	frame.Retain() // encoded outside the lock, while a newer result may replace (and release) lastFrame
	c.mu.Unlock()
	defer frame.Release()
	if last == seq && frame.Pix != nil {
		png, err := encodePNG(frameImage(&job{frame: frame}))
		if err != nil {
			return nil, "", fmt.Errorf("encode the frame of %s #%d: %w", c.name, seq, err)
		}
		return png, "latest", nil
	}
	hint := "it is no longer the camera's latest"
	if a.evidence == nil {
		hint += "; turn on evidence (evidence.enabled) to keep NG frames"
	} else {
		hint += " and the evidence tree has no " + fmt.Sprintf("%010d-NG.png", seq) + " (pruned?)"
	}
	return nil, "", fmt.Errorf("the frame of %s #%d is not kept (%s): %w", c.name, seq, hint, httpapi.ErrNotFound)
}
