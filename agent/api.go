package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/vlmdiff/edge/agent/evidence"
	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/agent/store"
)

// The agent's side of the HTTP API (httpapi.Backend).

// Ready reports whether the daemon can score: store open and a model loaded.
func (a *Agent) Ready() error {
	if !a.storeOpen.Load() {
		return errors.New("store not open")
	}
	if a.models == nil || a.models.cur.Load() == nil {
		reason := "no model loaded yet"
		if a.models != nil {
			if r := a.models.Status().Reason; r != "" {
				reason = "no model loaded: " + r
			}
		}
		return errors.New(reason)
	}
	return nil
}

// Healthy is /healthz: the watchdog's progress check (nil until the daemon's parts are up).
func (a *Agent) Healthy() error {
	if a.sched == nil || a.models == nil {
		return nil
	}
	return a.progress()
}

// StatsJSON is /api/stats.
func (a *Agent) StatsJSON() any { return a.Stats() }

// ModelJSON is /api/model.
func (a *Agent) ModelJSON() any {
	if a.models == nil {
		return ModelStatus{State: ModelStarting}
	}
	return a.models.Status()
}

// CameraInfo is one entry of /api/cameras.
type CameraInfo struct {
	CameraStats
	Class      string    `json:"class,omitempty"`
	Since      time.Time `json:"since"`
	FrameURL   string    `json:"frame_url"`
	HeatmapURL string    `json:"heatmap_url"`
	// ThresholdRange is the range a threshold change must fall in (threshold_guard.go), absent before a
	// model is loaded when the config sets none; ThresholdEditable is false with remote_threshold: false.
	ThresholdRange    []float64 `json:"threshold_range,omitempty"`
	ThresholdEditable bool      `json:"threshold_editable"`
}

// CamerasJSON is /api/cameras.
func (a *Agent) CamerasJSON() any {
	now := time.Now()
	out := []CameraInfo{}
	for _, c := range a.cams {
		c.mu.Lock()
		since := c.since
		c.mu.Unlock()
		ci := CameraInfo{CameraStats: a.cameraStats(c, now), Class: c.cfg.Class, Since: since,
			FrameURL: "/api/cameras/" + c.name + "/frame.jpg", HeatmapURL: "/api/cameras/" + c.name + "/heatmap" + evidence.HeatmapExt(a.cfg.MQTT.Heatmap.Format),
			ThresholdEditable: c.cfg.RemoteThresholdOn()}
		if lo, hi, _, err := a.thresholdBounds(c); err == nil {
			ci.ThresholdRange = []float64{lo, hi}
		}
		out = append(out, ci)
	}
	return out
}

// LatestFrameJPEG encodes the camera's last scored frame (once per frame).
func (a *Agent) LatestFrameJPEG(camera string) ([]byte, error) {
	c, ok := a.byName[camera]
	if !ok {
		return nil, fmt.Errorf("camera %q: %w", camera, httpapi.ErrNotFound)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lastJPEG != nil {
		return c.lastJPEG, nil
	}
	if c.lastFrame.Pix == nil {
		return nil, fmt.Errorf("camera %q has no scored frame yet: %w", camera, httpapi.ErrNotFound)
	}
	j, err := encodeJPEG(frameImage(&job{frame: c.lastFrame}))
	if err != nil {
		return nil, fmt.Errorf("camera %q: encode frame: %w", camera, err)
	}
	c.lastJPEG = j
	return j, nil
}

// LatestHeatmap returns the camera's last heatmap, from memory or (after a restart) the store.
func (a *Agent) LatestHeatmap(camera string) ([]byte, string, error) {
	c, ok := a.byName[camera]
	if !ok {
		return nil, "", fmt.Errorf("camera %q: %w", camera, httpapi.ErrNotFound)
	}
	c.mu.Lock()
	data := c.lastHeatmap
	c.mu.Unlock()
	if data != nil {
		return data, contentType(a.cfg.MQTT.Heatmap.Format), nil
	}
	ims, err := a.store.Images(camera, store.KindHeatmap, "", 1)
	if err != nil {
		return nil, "", err
	}
	if len(ims) == 0 {
		return nil, "", fmt.Errorf("camera %q has no heatmap yet: %w", camera, httpapi.ErrNotFound)
	}
	return ims[0].Data, contentType(ims[0].Format), nil
}

func contentType(format string) string {
	if format == "jpeg" {
		return "image/jpeg"
	}
	return "image/png"
}

// Image returns a stored image.
func (a *Agent) Image(key string) ([]byte, string, error) {
	im, err := a.store.Image(key)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalid) {
		return nil, "", fmt.Errorf("image %q: %w", key, httpapi.ErrNotFound)
	}
	if err != nil {
		return nil, "", err
	}
	return im.Data, contentType(im.Format), nil
}

// Event is one entry of /api/events.
type Event struct {
	store.Record
	HeatmapURL   string `json:"heatmap_url,omitempty"`
	ThumbnailURL string `json:"thumbnail_url,omitempty"`
}

// Events lists results newest first (NG only with verdict "NG").
func (a *Agent) Events(verdict, camera string, limit int) (any, error) {
	if camera != "" {
		if _, ok := a.byName[camera]; !ok {
			return nil, fmt.Errorf("camera %q: %w", camera, httpapi.ErrNotFound)
		}
	}
	var recs []store.Record
	var err error
	if verdict == store.VerdictNG {
		recs, err = a.store.NG(store.NGQuery{Camera: camera, Limit: limit})
	} else {
		recs, err = a.store.Latest(camera, limit)
		if verdict == store.VerdictOK {
			kept := recs[:0]
			for _, r := range recs {
				if r.Verdict == store.VerdictOK {
					kept = append(kept, r)
				}
			}
			recs = kept
		}
	}
	if err != nil {
		return nil, err
	}
	out := make([]Event, 0, len(recs))
	for _, r := range recs {
		e := Event{Record: r}
		if r.HeatmapKey != "" {
			e.HeatmapURL = "/api/images/" + r.HeatmapKey
		}
		if r.ThumbnailKey != "" {
			e.ThumbnailURL = "/api/images/" + r.ThumbnailKey
		}
		out = append(out, e)
	}
	return out, nil
}

// HistoryPoint is one entry of /api/history.
type HistoryPoint struct {
	Camera    string    `json:"camera"`
	Seq       uint64    `json:"seq"`
	FrameTime time.Time `json:"frame_time"`
	Score     float64   `json:"score"`
	RawScore  float64   `json:"raw_score"`
	Threshold float64   `json:"threshold"`
	Verdict   string    `json:"verdict"`
}

// History lists scores over time, newest first.
func (a *Agent) History(camera string, limit int) (any, error) {
	if camera != "" {
		if _, ok := a.byName[camera]; !ok {
			return nil, fmt.Errorf("camera %q: %w", camera, httpapi.ErrNotFound)
		}
	}
	recs, err := a.store.Latest(camera, limit)
	if err != nil {
		return nil, err
	}
	out := make([]HistoryPoint, 0, len(recs))
	for _, r := range recs {
		out = append(out, HistoryPoint{Camera: r.Camera, Seq: r.Seq, FrameTime: r.FrameTime, Score: r.Score,
			RawScore: r.RawScore, Threshold: r.Threshold, Verdict: r.Verdict})
	}
	return out, nil
}
