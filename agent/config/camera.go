package config

import (
	"time"

	"github.com/vlmdiff/edge/pipeline/roi"
)

// Camera is one frame source plus the agent's per-camera settings. The source fields (kind, url, path, ...)
// are capture.Config's, inlined, so the same YAML drives `vlmdiff run` and the capture package's own tools.
type Camera struct {
	Source `yaml:",inline"`

	// Class selects the bundle's per-class calibration and conditioning. Empty = the bundle's defaults.
	Class string `yaml:"class"`
	// Threshold overrides the bundle's raw-score threshold for this camera (raw_score >= threshold is NG;
	// the calibrated score is recomputed so that the threshold still maps to 0.5). A runtime override set over
	// MQTT (<prefix>/<camera>/threshold/set) wins over this one.
	Threshold *float64 `yaml:"threshold"`
	// RemoteThreshold allows threshold commands over MQTT for this camera. Default true; false refuses them
	// (the refusal is published on <prefix>/<camera>/threshold/state).
	RemoteThreshold *bool `yaml:"remote_threshold"`
	// ThresholdRange is [min, max], the raw-score range a remote threshold must fall in. Default: derived
	// from the bundle's calibration for the camera's class (see agent.ThresholdBounds).
	ThresholdRange []float64 `yaml:"threshold_range"`
	// RateLimit caps the frames per second this camera sends to scoring; extra frames are skipped at the
	// source (counted as rate-limited, not as drops). 0 = no limit.
	RateLimit float64 `yaml:"rate_limit"`
	// Queue is the bounded queue between the source and the scorers; when full the oldest frame is dropped
	// (counted). Default 4.
	Queue int `yaml:"queue"`
	// Heatmap turns heatmap publishing on or off for this camera. Default on.
	Heatmap *bool `yaml:"heatmap"`
	// HeatmapInterval overrides mqtt.heatmap.min_interval for this camera.
	HeatmapInterval *time.Duration `yaml:"heatmap_interval"`
	// SampleEvery keeps every Nth OK frame as a normal sample; overrides store.samples.every. 0 = off.
	SampleEvery *int `yaml:"sample_every"`
	// Trigger puts the camera in trigger mode: a frame is scored only for a trigger received on
	// <prefix>/<camera>/trigger (MQTT) or POST /api/cameras/<camera>/trigger (HTTP), and the trigger's JSON is
	// echoed in that frame's result. Default false (free-running).
	Trigger bool `yaml:"trigger"`
	// TriggerTimeout is how long a trigger waits for its frame before it is refused on
	// <prefix>/<camera>/trigger/rejected. Default 10s.
	TriggerTimeout time.Duration `yaml:"trigger_timeout"`
	// ROI is the camera's region of interest (pipeline/roi): a crop before the model, squash or letterbox to
	// the model's aspect, and a polygon outside which the anomaly map is zeroed. The map, heatmap and
	// anomaly_area_pct stay in frame coordinates. Nil = the whole frame, squashed. Whether the crop fits is
	// checked on each frame (its size is not known before): a frame it does not fit is not scored.
	ROI *roi.Config `yaml:"roi"`
}

// HeatmapOn reports whether heatmaps are published for the camera.
func (c *Camera) HeatmapOn() bool { return c.Heatmap == nil || *c.Heatmap }

// RemoteThresholdOn reports whether MQTT threshold commands are accepted for the camera.
func (c *Camera) RemoteThresholdOn() bool { return c.RemoteThreshold == nil || *c.RemoteThreshold }
