package config

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// The line-integration settings: triggered cameras, pushed scoring (POST /api/score) and Home Assistant
// discovery. They live here, apart from the core config, because they are what a factory integrator tunes.

// Defaults of the line-integration settings.
const (
	DefaultTriggerTimeout  = 10 * time.Second
	DefaultScoreCamera     = "api"
	DefaultScoreMaxPending = 4
	DefaultScoreMaxBytes   = 64 << 20
	DefaultScoreMaxPixels  = 50_000_000
	DefaultDiscoveryPrefix = "homeassistant"
)

// Score configures POST /api/score: images pushed by a client, scored through the cameras' scheduler and
// model, answered synchronously and kept in the history under their own camera name.
type Score struct {
	// Camera is the name pushed results carry (history, MQTT topics <prefix>/<camera>/result). It must not be
	// a configured camera's name. Default "api".
	Camera string `yaml:"camera"`
	// Class is the bundle class used when a request names none. Default: the bundle's defaults.
	Class string `yaml:"class"`
	// MaxPending bounds the images queued or being scored at once; one more is answered 429. Default 4.
	MaxPending int `yaml:"max_pending"`
	// MaxBytes bounds the request body (the encoded image); larger is answered 413. Default 64MiB.
	MaxBytes ByteSize `yaml:"max_bytes"`
	// MaxPixels bounds width*height as the image header claims it, checked before decoding. Default 50e6.
	MaxPixels int64 `yaml:"max_pixels"`
}

// Evidence keeps NG frames (and sampled OK frames) as files: frame, heatmap and result JSON in
// <dir>/<camera>/<YYYY-MM-DD>/<seq>-NG.* (agent/evidence), pruned by age and total size.
type Evidence struct {
	// Enabled turns evidence on. Default false.
	Enabled bool `yaml:"enabled"`
	// Dir is the tree's root. Default <data_dir>/evidence.
	Dir string `yaml:"dir"`
	// MaxAge removes days older than this (hourly). Default 720h.
	MaxAge time.Duration `yaml:"max_age"`
	// MaxSize bounds the tree, oldest files first (hourly). Default 10GiB.
	MaxSize ByteSize `yaml:"max_size"`
	// OKEvery also keeps every Nth OK frame per camera (0 = NG only). Default 0.
	OKEvery int `yaml:"ok_every"`
}

// StoreImages bounds the heatmaps the store keeps per camera for the dashboard and /api/images: NG and OK
// counted apart, so a flood of OK frames never pushes the NG ones out.
type StoreImages struct {
	// NGPerCamera: NG heatmaps kept per camera. Default 100.
	NGPerCamera int `yaml:"ng_per_camera"`
	// OKPerCamera: OK heatmaps kept per camera. Default 20.
	OKPerCamera int `yaml:"ok_per_camera"`
}

func (c *Config) setLineDefaults() {
	e := &c.Evidence
	if e.Dir == "" {
		e.Dir = filepath.Join(c.Agent.DataDir, "evidence")
	}
	if e.MaxAge == 0 {
		e.MaxAge = 30 * 24 * time.Hour
	}
	if e.MaxSize == 0 {
		e.MaxSize = 10 << 30
	}
	if c.Store.Images.NGPerCamera == 0 {
		c.Store.Images.NGPerCamera = 100
	}
	if c.Store.Images.OKPerCamera == 0 {
		c.Store.Images.OKPerCamera = 20
	}
	for i := range c.Cameras {
		if c.Cameras[i].TriggerTimeout == 0 {
			c.Cameras[i].TriggerTimeout = DefaultTriggerTimeout
		}
	}
	s := &c.HTTP.Score
	if s.Camera == "" {
		s.Camera = DefaultScoreCamera
	}
	if s.MaxPending == 0 {
		s.MaxPending = DefaultScoreMaxPending
	}
	if s.MaxBytes == 0 {
		s.MaxBytes = DefaultScoreMaxBytes
	}
	if s.MaxPixels == 0 {
		s.MaxPixels = DefaultScoreMaxPixels
	}
	if c.MQTT.DiscoveryPrefix == "" {
		c.MQTT.DiscoveryPrefix = DefaultDiscoveryPrefix
	}
}

func (c *Config) validateLine(bad func(path, format string, args ...any)) {
	for i, cam := range c.Cameras {
		if cam.TriggerTimeout < 100*time.Millisecond || cam.TriggerTimeout > time.Hour {
			bad(fmt.Sprintf("cameras[%d].trigger_timeout", i), "must be 100ms..1h, not %s", cam.TriggerTimeout)
		}
	}
	s := c.HTTP.Score
	switch {
	case !nameRe.MatchString(s.Camera):
		bad("http.score.camera", "%q must be 1-63 letters, digits, '_', '.' or '-' (it is an MQTT topic level)", s.Camera)
	case s.Camera == "available" || s.Camera == "stats" || s.Camera == "model":
		bad("http.score.camera", "%q is reserved (it is an MQTT topic of its own under the prefix)", s.Camera)
	default:
		for i, cam := range c.Cameras {
			if cam.CameraName() == s.Camera {
				bad("http.score.camera", "%q is cameras[%d]'s name; pushed images need a name of their own", s.Camera, i)
			}
		}
	}
	if s.MaxPending < 1 || s.MaxPending > 1024 {
		bad("http.score.max_pending", "must be 1..1024, not %d", s.MaxPending)
	}
	if s.MaxBytes < 1024 {
		bad("http.score.max_bytes", "must be at least 1KiB, not %s", s.MaxBytes)
	}
	if s.MaxPixels < 1 || s.MaxPixels > 1<<30 {
		bad("http.score.max_pixels", "must be 1..%d (OpenCV's hard limit), not %d", 1<<30, s.MaxPixels)
	}
	if c.Evidence.MaxAge < time.Hour {
		bad("evidence.max_age", "must be at least 1h, not %s", c.Evidence.MaxAge)
	}
	if c.Evidence.MaxSize < 1<<20 {
		bad("evidence.max_size", "must be at least 1MiB, not %s", c.Evidence.MaxSize)
	}
	if c.Evidence.OKEvery < 0 {
		bad("evidence.ok_every", "must be >= 0 (0 = NG only)")
	}
	if im := c.Store.Images; im.NGPerCamera < 1 || im.NGPerCamera > 100000 || im.OKPerCamera < 1 || im.OKPerCamera > 100000 {
		bad("store.images", "ng_per_camera and ok_per_camera must be 1..100000, not %d and %d", im.NGPerCamera, im.OKPerCamera)
	}
	p := c.MQTT.DiscoveryPrefix
	if strings.ContainsAny(p, "+#") || strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") {
		bad("mqtt.discovery_prefix", "must be a topic without '+', '#' or a leading/trailing '/', not %q", p)
	}
}
