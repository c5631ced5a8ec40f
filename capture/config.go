package capture

import (
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/vlmdiff/edge/imagelimit"
)

// Source kinds.
const (
	KindDevice    = "device"
	KindURL       = "url"
	KindFile      = "file"
	KindFolder    = "folder"
	KindSynthetic = "synthetic"
)

// Backends for device, url and file kinds.
const (
	BackendAny       = "any"
	BackendFFmpeg    = "ffmpeg"
	BackendGStreamer = "gstreamer"
	BackendV4L2      = "v4l2"
)

// After-actions of a folder source.
const (
	AfterMove   = "move"
	AfterDelete = "delete"
	AfterKeep   = "keep"
)

// Config describes one source. The agent's YAML config embeds it (one entry per camera), hence the tags.
// Zero values take the defaults documented per field.
type Config struct {
	// Name identifies the camera in frames, events and MQTT topics: letters, digits, '_', '-', '.'.
	Name string `yaml:"name"`
	// Kind is device, url, file, folder or synthetic.
	Kind string `yaml:"kind"`
	// Device is the camera index for kind device.
	Device int `yaml:"device"`
	// URL is an RTSP/HTTP URL or a GStreamer pipeline (contains " ! ") for kind url.
	URL string `yaml:"url"`
	// Path is the video file (file), the watched directory (folder), or an optional directory of sample
	// images (synthetic).
	Path string `yaml:"path"`
	// Loop replays a video file from its start when it ends.
	Loop bool `yaml:"loop"`
	// FPS limits the frame rate. 0: a file's own rate (files), 10 (synthetic), unlimited (device, url; the
	// camera's own rate). < 0: as fast as possible (file, synthetic; for benchmarks).
	FPS float64 `yaml:"fps"`
	// Width and Height request a capture size from devices and URLs (the camera may ignore it) and set the
	// synthetic frame size (default 256x256, or the sample images' size). 0 means the source's own size.
	Width  int `yaml:"width"`
	Height int `yaml:"height"`
	// Backend picks OpenCV's videoio backend: any, ffmpeg, gstreamer, v4l2 (device only). Default: any for
	// devices, gstreamer for pipeline strings, ffmpeg for other URLs and files.
	Backend string `yaml:"backend"`
	// FrozenAfter reports "frozen" when the picture has not changed for this long; 0 disables the check.
	FrozenAfter time.Duration `yaml:"frozen_after"`
	// RetryMin and RetryMax bound the reconnect backoff (defaults 500ms and 30s).
	RetryMin time.Duration `yaml:"retry_min"`
	RetryMax time.Duration `yaml:"retry_max"`

	// ImageLimits bound the image files a folder (or synthetic samples) source decodes: max_pixels (default
	// 50000000) and max_bytes (default 64MiB). Files over them, or whose header cannot be read, are refused
	// before decoding and moved to failed/ with a .reason.txt; see package imagelimit.
	ImageLimits imagelimit.Limits `yaml:"image_limits"`

	Folder    FolderConfig    `yaml:"folder"`
	Synthetic SyntheticConfig `yaml:"synthetic"`
}

// FolderConfig holds the options of kind folder.
type FolderConfig struct {
	// After is what Done does with a file: move (default), delete or keep.
	After string `yaml:"after"`
	// ProcessedDir and FailedDir receive moved files; relative paths are inside Path. Defaults "processed"
	// and "failed".
	ProcessedDir string `yaml:"processed_dir"`
	FailedDir    string `yaml:"failed_dir"`
	// Settle is the wait between the two size/mtime checks that decide a file is complete (default 300ms).
	Settle time.Duration `yaml:"settle"`
	// MaxInFlight bounds frames delivered but not yet acknowledged with Done (default 4).
	MaxInFlight int `yaml:"max_in_flight"`
	// Rescan, when > 0, rescans the directory at this interval in addition to fsnotify: for network file
	// systems whose changes inotify does not see. The directory is always rescanned after an event overflow.
	Rescan time.Duration `yaml:"rescan"`
}

// SyntheticConfig holds the options of kind synthetic.
type SyntheticConfig struct {
	// Seed makes the frames reproducible: the same seed gives the same frames, frame by frame.
	Seed uint64 `yaml:"seed"`
	// DefectRate is the share of frames (0..1) that get a synthetic defect.
	DefectRate float64 `yaml:"defect_rate"`
	// Count stops the source after this many frames; 0 runs until cancelled.
	Count int `yaml:"count"`
}

// ConfigError is a refused configuration; Field is the YAML name of the offending field.
type ConfigError struct {
	Camera string
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("capture: camera %q: field %s: %s", e.Camera, e.Field, e.Reason)
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// Validate checks c without touching the file system or devices (a missing camera is a runtime condition,
// reported as offline, not a config error). It returns the first problem as a *ConfigError.
func (c Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return &ConfigError{Camera: c.Name, Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	if c.Name == "" {
		return bad("name", "required")
	}
	if !nameRE.MatchString(c.Name) {
		return bad("name", "%q may hold only letters, digits, '_', '-' and '.' (it becomes an MQTT topic level)",
			c.Name)
	}
	switch c.Kind {
	case KindDevice:
		if c.Device < 0 {
			return bad("device", "camera index %d is negative", c.Device)
		}
	case KindURL:
		if strings.TrimSpace(c.URL) == "" {
			return bad("url", "required for kind url")
		}
	case KindFile, KindFolder:
		if c.Path == "" {
			return bad("path", "required for kind %s", c.Kind)
		}
	case KindSynthetic:
	case "":
		return bad("kind", "required: one of device, url, file, folder, synthetic")
	default:
		return bad("kind", "%q is not one of device, url, file, folder, synthetic", c.Kind)
	}
	if math.IsNaN(c.FPS) || math.IsInf(c.FPS, 0) {
		return bad("fps", "%v is not a number", c.FPS)
	}
	if c.FPS < 0 && (c.Kind == KindDevice || c.Kind == KindURL) {
		return bad("fps", "negative (as fast as possible) is only for file and synthetic sources")
	}
	if c.Width < 0 || c.Height < 0 {
		return bad("width", "size %dx%d is negative", c.Width, c.Height)
	}
	if (c.Width == 0) != (c.Height == 0) {
		return bad("height", "width and height must be given together (got %dx%d)", c.Width, c.Height)
	}
	if c.Width > 16384 || c.Height > 16384 {
		return bad("width", "size %dx%d exceeds 16384", c.Width, c.Height)
	}
	switch c.Backend {
	case "", BackendAny, BackendFFmpeg, BackendGStreamer:
	case BackendV4L2:
		if c.Kind != KindDevice {
			return bad("backend", "v4l2 is only for kind device")
		}
	default:
		return bad("backend", "%q is not one of any, ffmpeg, gstreamer, v4l2", c.Backend)
	}
	if c.FrozenAfter < 0 {
		return bad("frozen_after", "%v is negative", c.FrozenAfter)
	}
	if c.RetryMin < 0 {
		return bad("retry_min", "%v is negative", c.RetryMin)
	}
	if c.RetryMax < 0 {
		return bad("retry_max", "%v is negative", c.RetryMax)
	}
	if c.RetryMin > 0 && c.RetryMax > 0 && c.RetryMax < c.RetryMin {
		return bad("retry_max", "%v is below retry_min %v", c.RetryMax, c.RetryMin)
	}
	if err := c.ImageLimits.Validate(); err != nil {
		return bad("image_limits", "%v", err)
	}
	f := c.Folder
	switch f.After {
	case "", AfterMove, AfterDelete, AfterKeep:
	default:
		return bad("folder.after", "%q is not one of move, delete, keep", f.After)
	}
	if f.Settle < 0 {
		return bad("folder.settle", "%v is negative", f.Settle)
	}
	if f.MaxInFlight < 0 {
		return bad("folder.max_in_flight", "%d is negative", f.MaxInFlight)
	}
	if f.Rescan < 0 {
		return bad("folder.rescan", "%v is negative", f.Rescan)
	}
	for field, d := range map[string]string{"folder.processed_dir": f.ProcessedDir, "folder.failed_dir": f.FailedDir} {
		if d != "" && !filepath.IsAbs(d) && (d == "." || strings.HasPrefix(filepath.Clean(d), "..")) {
			return bad(field, "%q must be a subfolder of path or an absolute path", d)
		}
	}
	s := c.Synthetic
	if math.IsNaN(s.DefectRate) || s.DefectRate < 0 || s.DefectRate > 1 {
		return bad("synthetic.defect_rate", "%v is outside 0..1", s.DefectRate)
	}
	if s.Count < 0 {
		return bad("synthetic.count", "%d is negative", s.Count)
	}
	return nil
}

// withDefaults returns c with zero values replaced by their defaults; c must be valid.
func (c Config) withDefaults() Config {
	if c.RetryMin == 0 {
		c.RetryMin = 500 * time.Millisecond
	}
	if c.RetryMax == 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.RetryMax < c.RetryMin {
		c.RetryMax = c.RetryMin
	}
	if c.Backend == "" {
		switch {
		case c.Kind == KindDevice:
			c.Backend = BackendAny
		case c.Kind == KindURL && isPipeline(c.URL):
			c.Backend = BackendGStreamer
		default:
			c.Backend = BackendFFmpeg
		}
	}
	f := &c.Folder
	if f.After == "" {
		f.After = AfterMove
	}
	if f.ProcessedDir == "" {
		f.ProcessedDir = "processed"
	}
	if f.FailedDir == "" {
		f.FailedDir = "failed"
	}
	if !filepath.IsAbs(f.ProcessedDir) {
		f.ProcessedDir = filepath.Join(c.Path, f.ProcessedDir)
	}
	if !filepath.IsAbs(f.FailedDir) {
		f.FailedDir = filepath.Join(c.Path, f.FailedDir)
	}
	if f.Settle == 0 {
		f.Settle = 300 * time.Millisecond
	}
	if f.MaxInFlight == 0 {
		f.MaxInFlight = 4
	}
	if c.Kind == KindSynthetic && c.FPS == 0 {
		c.FPS = 10
	}
	return c
}

// isPipeline tells a GStreamer pipeline description from a URL.
func isPipeline(s string) bool { return strings.Contains(s, " ! ") || strings.Contains(s, "appsink") }

// New validates cfg and builds its source. It opens nothing: devices, URLs and folders are opened by Run, which
// keeps retrying, so a camera that is absent at start does not stop the agent.
func New(cfg Config) (Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	switch cfg.Kind {
	case KindFolder:
		return newFolder(cfg), nil
	case KindSynthetic:
		return newSynthetic(cfg), nil
	default:
		return newVideo(cfg), nil
	}
}
