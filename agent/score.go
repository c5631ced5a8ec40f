package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/agent/mqttout"
	"github.com/vlmdiff/edge/capture"
)

// Pushed scoring (POST /api/score), the client-pushed counterpart of the cameras, as Lookout for Vision's
// DetectAnomalies: the image goes through the same scheduler and model as the camera frames (so it neither
// jumps the queue nor runs a second model copy), is committed to the history and the outbox under its own
// camera name (http.score.camera, default "api"), and the result JSON is the answer.

var _ httpapi.Pusher = (*Agent)(nil)

// newScoreCamera is the pseudo camera that pushed images are queued and recorded under. It has no source;
// the scheduler serves it round-robin with the real cameras. Sample collection is off for it.
func (a *Agent) newScoreCamera() (*camera, error) {
	sc := a.cfg.HTTP.Score
	last, _, err := a.store.LastSeq(sc.Camera)
	if err != nil {
		return nil, fmt.Errorf("camera %s (http.score): %w", sc.Camera, err)
	}
	zero := 0
	cc := config.Camera{Source: config.Source{Name: sc.Camera}, Class: sc.Class, Queue: sc.MaxPending, SampleEvery: &zero}
	return newCamera(cc, nil, last), nil
}

// ScoreMaxBytes is http.score.max_bytes.
func (a *Agent) ScoreMaxBytes() int64 { return int64(a.cfg.HTTP.Score.MaxBytes) }

// ScoreResponse is the answer of POST /api/score and of a waited trigger: the result JSON as published on
// MQTT, plus the heatmap inline when asked for.
type ScoreResponse struct {
	mqttout.ResultPayload
	HeatmapFormat string `json:"heatmap_format,omitempty"`
	HeatmapBase64 []byte `json:"heatmap_base64,omitempty"`
}

// Score scores one pushed image and waits for its committed result.
func (a *Agent) Score(ctx context.Context, req httpapi.ScoreRequest) (any, error) {
	c := a.scoreCam
	if c == nil || a.models == nil || a.models.cur.Load() == nil {
		return nil, fmt.Errorf("no model loaded: %w", httpapi.ErrUnavailable)
	}
	limit := int64(a.cfg.HTTP.Score.MaxPending)
	if n := a.scorePending.Add(1); n > limit {
		a.scorePending.Add(-1)
		c.drops.Add(1)
		return nil, fmt.Errorf("%d images already wait or are being scored (http.score.max_pending): %w", limit, httpapi.ErrBusy)
	}
	release := true
	defer func() {
		if release {
			a.scorePending.Add(-1)
		}
	}()
	img, err := decodePushed(req.Image, a.ScoreMaxBytes(), a.cfg.HTTP.Score.MaxPixels)
	if err != nil {
		return nil, err
	}
	var payload json.RawMessage
	if req.ID != "" {
		payload, _ = json.Marshal(map[string]string{"id": req.ID})
	}
	now := time.Now()
	reply := make(chan scoreReply, 1)
	j := &job{cam: c, received: now, class: req.Class, heatmap: req.Heatmap,
		frame: capture.Frame{Camera: c.name, Time: now, Width: img.Width, Height: img.Height, Pix: img.Pix},
		trig:  &trigger{payload: payload, at: now, reply: reply}}
	c.frames.Add(1)
	if !a.sched.tryPush(j) {
		return nil, fmt.Errorf("the daemon is stopping: %w", httpapi.ErrUnavailable)
	}
	select {
	case r := <-reply:
		return a.scoreResponse(r, req.Heatmap)
	case <-ctx.Done():
		// The client left: the image is still scored and recorded; its slot frees when it is.
		release = false
		go func() { <-reply; a.scorePending.Add(-1) }()
		return nil, ctx.Err()
	}
}

// Trigger is POST /api/cameras/{cam}/trigger: queue a trigger and, with wait, answer with its result.
func (a *Agent) Trigger(ctx context.Context, camera string, payload []byte, wait bool) (any, error) {
	var reply chan scoreReply
	if wait {
		reply = make(chan scoreReply, 1)
	}
	if err := a.enqueueTrigger(camera, payload, reply); err != nil {
		return nil, err
	}
	if !wait {
		p, _ := ParseTrigger(payload)
		return map[string]any{"camera": camera, "accepted": true, "trigger": p}, nil
	}
	select {
	case r := <-reply:
		return a.scoreResponse(r, false)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (a *Agent) scoreResponse(r scoreReply, withHeatmap bool) (any, error) {
	if r.err != nil {
		if errors.Is(r.err, errTriggerTimeout) {
			return nil, fmt.Errorf("%w: %w", r.err, httpapi.ErrUnavailable)
		}
		return nil, r.err
	}
	resp := ScoreResponse{ResultPayload: mqttout.NewResultPayload(r.rec, r.rec.StoredAt)}
	if withHeatmap && len(r.heatmap) > 0 {
		resp.HeatmapFormat, resp.HeatmapBase64 = r.format, r.heatmap
	}
	return resp, nil
}

// tryPush queues a job without waiting; false when the camera's queue is full or the scheduler is closed.
func (s *scheduler) tryPush(j *job) bool {
	c := j.cam
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || len(c.queue) >= c.queueCap {
		return false
	}
	c.queue = append(c.queue, j)
	s.avail.Signal()
	return true
}
