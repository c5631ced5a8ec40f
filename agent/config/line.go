package config

import (
	"fmt"
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

func (c *Config) setLineDefaults() {
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
	p := c.MQTT.DiscoveryPrefix
	if strings.ContainsAny(p, "+#") || strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") {
		bad("mqtt.discovery_prefix", "must be a topic without '+', '#' or a leading/trailing '/', not %q", p)
	}
}
