package mqttout

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/vlmdiff/edge/agent/internal/echo"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/vlmdiff/edge/agent/store"
)

// ResultPayload is the JSON on <prefix>/<camera>/result. Times are RFC 3339 with nanoseconds (UTC).
type ResultPayload struct {
	Camera    string    `json:"camera"`
	Seq       uint64    `json:"seq"`
	FrameTime time.Time `json:"frame_time"`
	// PublishedAt is when the agent produced the message (enqueued it); a message delivered late after a
	// broker outage keeps its original published_at, so consumers can see the delay.
	PublishedAt    time.Time          `json:"published_at"`
	Score          float64            `json:"score"`
	RawScore       float64            `json:"raw_score"`
	Threshold      float64            `json:"threshold"`
	Verdict        string             `json:"verdict"`
	Class          string             `json:"class"`
	Model          store.Model        `json:"model"`
	LatencyMS      map[string]float64 `json:"latency_ms"`
	AnomalyAreaPct float64            `json:"anomaly_area_pct"`
	// Heatmap is present when this frame's heatmap is published (see HeatmapConfig).
	Heatmap *HeatmapRef `json:"heatmap,omitempty"`
	// Source is the frame's file name (folder cameras).
	Source string `json:"source,omitempty"`
	// Trigger echoes the trigger that asked for this frame (trigger mode, POST /api/score with an id).
	Trigger json.RawMessage `json:"trigger,omitempty"`
}

// NewResultPayload is the result JSON for a committed record, produced at now (published_at).
func NewResultPayload(rec *store.Record, now time.Time) ResultPayload {
	pl := ResultPayload{Camera: rec.Camera, Seq: rec.Seq, FrameTime: rec.FrameTime.UTC(), PublishedAt: now.UTC(),
		Score: rec.Score, RawScore: rec.RawScore, Threshold: rec.Threshold, Verdict: rec.Verdict, Class: rec.Class,
		Model: rec.Model, LatencyMS: rec.LatencyMS, AnomalyAreaPct: rec.AnomalyAreaPct, Source: rec.Source,
		Trigger: rec.Trigger}
	if pl.LatencyMS == nil {
		pl.LatencyMS = map[string]float64{}
	}
	return pl
}

// HeatmapRef tells a result's consumer where its heatmap goes.
type HeatmapRef struct {
	Topic    string `json:"topic"`
	Format   string `json:"format"`   // png or jpeg
	Bytes    int    `json:"bytes"`    // size of the encoded image (before base64)
	Encoding string `json:"encoding"` // binary or json (base64 in HeatmapPayload)
}

// HeatmapPayload is the JSON form of <prefix>/<camera>/heatmap (mode json).
type HeatmapPayload struct {
	Camera string `json:"camera"`
	Seq    uint64 `json:"seq"`
	Format string `json:"format"`
	Data   []byte `json:"data"` // base64 in JSON
}

// Heatmap is an encoded anomaly map image from the pipeline.
type Heatmap struct {
	Format string // png or jpeg
	Data   []byte
}

// Camera states on <prefix>/<camera>/status.
const (
	StateOnline  = "online"
	StateOffline = "offline"
	StateError   = "error"
	StateFrozen  = "frozen"
)

// CameraStatus is the retained JSON on <prefix>/<camera>/status.
type CameraStatus struct {
	Camera string    `json:"camera"`
	State  string    `json:"state"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// ModelStatus is the retained JSON on <prefix>/model/status.
type ModelStatus struct {
	Name    string    `json:"name"`
	Version string    `json:"version"`
	State   string    `json:"state"` // loaded, loading, failed, none
	Reason  string    `json:"reason"`
	Since   time.Time `json:"since"`
}

// ThresholdCommand is a validated <prefix>/<camera>/threshold/set payload: either a new override or a reset.
type ThresholdCommand struct {
	Threshold float64
	Reset     bool
}

// ThresholdState is the retained JSON on <prefix>/<camera>/threshold/state.
type ThresholdState struct {
	Camera string `json:"camera"`
	// Threshold in effect (raw score units); Source says whether it is an "override" or the "model"'s.
	Threshold float64   `json:"threshold"`
	Source    string    `json:"source"`
	UpdatedAt time.Time `json:"updated_at"`
	// Error reports why the last command was refused (the state above is then unchanged).
	Error string `json:"error,omitempty"`
}

// ErrBadCommand marks a command payload that failed validation.
var ErrBadCommand = errors.New("bad command payload")

// ParseThresholdCommand accepts a bare number ("0.42"), {"threshold": 0.42} or {"reset": true}. The
// threshold must be a finite number >= 0.
func ParseThresholdCommand(payload []byte) (ThresholdCommand, error) {
	s := strings.TrimSpace(string(payload))
	if s == "" {
		return ThresholdCommand{}, fmt.Errorf("%w: empty; want a number, {\"threshold\": x} or {\"reset\": true}", ErrBadCommand)
	}
	var th float64
	if strings.HasPrefix(s, "{") {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(s), &obj); err != nil {
			return ThresholdCommand{}, fmt.Errorf("%w: invalid JSON %s: %s", ErrBadCommand, echo.String(s), echo.Clip(err.Error(), 120))
		}
		if r, ok := obj["reset"]; ok {
			var reset bool
			if err := json.Unmarshal(r, &reset); err != nil || !reset || len(obj) != 1 {
				return ThresholdCommand{}, fmt.Errorf("%w: want exactly {\"reset\": true}", ErrBadCommand)
			}
			return ThresholdCommand{Reset: true}, nil
		}
		raw, ok := obj["threshold"]
		if !ok || len(obj) != 1 {
			return ThresholdCommand{}, fmt.Errorf("%w: want exactly one key, threshold or reset", ErrBadCommand)
		}
		if err := json.Unmarshal(raw, &th); err != nil {
			return ThresholdCommand{}, fmt.Errorf("%w: threshold %s is not a number", ErrBadCommand, echo.Short(raw))
		}
	} else {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return ThresholdCommand{}, fmt.Errorf("%w: %s is not a number", ErrBadCommand, echo.String(s))
		}
		th = v
	}
	if math.IsNaN(th) || math.IsInf(th, 0) || th < 0 {
		return ThresholdCommand{}, fmt.Errorf("%w: threshold %v must be a finite number >= 0", ErrBadCommand, th)
	}
	return ThresholdCommand{Threshold: th}, nil
}
