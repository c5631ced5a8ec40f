package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ByteSize is a size in bytes written as a number or with a unit: 512MiB, 1GiB, 10GB, 4096.
type ByteSize int64

// UnmarshalYAML parses a size with an optional unit (B, KB, MB, GB, TB powers of 1000; KiB, MiB, GiB, TiB
// powers of 1024).
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// ParseByteSize parses "1GiB", "500MB", "4096".
func ParseByteSize(s string) (ByteSize, error) {
	m := sizeRe.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("%q is not a size (examples: 4096, 512MiB, 1GiB, 10GB)", s)
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size: %w", s, err)
	}
	mult := map[string]float64{"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
		"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
		"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}[strings.ToLower(m[2])]
	return ByteSize(f * mult), nil
}

var sizeRe = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([KMGTkmgt]i?[Bb]?|[Bb]|)$`)

func (b ByteSize) String() string {
	switch {
	case b >= 1<<30 && b%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", b>>30)
	case b >= 1<<20 && b%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", b>>20)
	default:
		return strconv.FormatInt(int64(b), 10)
	}
}

// Defaults.
const (
	DefaultDataDir = "/var/lib/vlmdiff"
	DefaultQueue   = 4
	// DefaultHeatmapFormat is mqtt.heatmap.format's default (see HeatmapOut.Format).
	DefaultHeatmapFormat = "jpeg"
	// DefaultHeatmapInterval is mqtt.heatmap.min_interval's default (see HeatmapOut.MinInterval).
	DefaultHeatmapInterval = time.Second
	// DefaultCommitInterval is store.commit_interval's default (see Store.CommitInterval): at 120 frames/s
	// about 2-3 results share a transaction, and a result waits at most this long for its commit.
	DefaultCommitInterval = 20 * time.Millisecond
	DefaultEmbeddedListen = "127.0.0.1:1883"
)

func intp(v int) *int { return &v }

// SetDefaults fills every unset field with its documented default (docs/config.md).
func (c *Config) SetDefaults() {
	a := &c.Agent
	if a.Name == "" {
		a.Name, _ = os.Hostname()
		if a.Name == "" {
			a.Name = "vlmdiff"
		}
	}
	if a.DataDir == "" {
		a.DataDir = DefaultDataDir
	}
	if a.LogLevel == "" {
		a.LogLevel = "info"
	}
	if a.LogFormat == "" {
		a.LogFormat = "text"
	}
	if a.ShutdownTimeout == 0 {
		a.ShutdownTimeout = 10 * time.Second
	}
	c.setAuthDefaults()
	m := &c.Models
	if len(m.Providers) == 0 {
		m.Providers = []string{"cpu"}
	}
	if m.Memory == "" {
		m.Memory = MemoryShared
	}
	if m.Batch == 0 {
		m.Batch = 1
	}
	if m.Workers == 0 {
		m.Workers = 1
	}
	for i := range c.Cameras {
		if c.Cameras[i].Queue == 0 {
			c.Cameras[i].Queue = DefaultQueue
		}
	}
	q := &c.MQTT
	if q.Broker == "" && q.Listen == "" {
		q.Listen = DefaultEmbeddedListen
	}
	if q.Prefix == "" {
		q.Prefix = "vlmdiff/" + topicSafe(a.Name)
	}
	if q.ClientID == "" {
		q.ClientID = "vlmdiff-" + topicSafe(a.Name)
	}
	def := func(p **int, v int) {
		if *p == nil {
			*p = intp(v)
		}
	}
	def(&q.QoS.Result, 1)
	def(&q.QoS.NG, 1)
	def(&q.QoS.Heatmap, 0)
	def(&q.QoS.Status, 1)
	def(&q.QoS.Stats, 0)
	if q.Heatmap.Format == "" {
		q.Heatmap.Format = DefaultHeatmapFormat
	}
	if q.Heatmap.MinInterval == nil {
		iv := DefaultHeatmapInterval
		q.Heatmap.MinInterval = &iv
	}
	if q.StatsInterval == 0 {
		q.StatsInterval = 10 * time.Second
	}
	s := &c.Store
	if s.Path == "" {
		s.Path = filepath.Join(a.DataDir, "vlmdiff.db")
	}
	if s.Retention.MaxAge == 0 {
		s.Retention.MaxAge = 30 * 24 * time.Hour
	}
	if s.Retention.MaxSize == 0 {
		s.Retention.MaxSize = 1 << 30
	}
	if s.Outbox.MaxItems == 0 {
		s.Outbox.MaxItems = 100000
	}
	if s.Outbox.MaxSize == 0 {
		s.Outbox.MaxSize = 256 << 20
	}
	if s.Samples.MinFreeDisk == 0 {
		s.Samples.MinFreeDisk = 1 << 30
	}
	if s.Samples.Max == 0 {
		s.Samples.Max = 10000
	}
	if s.CommitInterval == nil {
		iv := DefaultCommitInterval
		s.CommitInterval = &iv
	}
	c.setLineDefaults()
}

// topicSafe replaces characters that MQTT topics or client ids must not carry.
func topicSafe(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '/', '+', '#', ' ', 0:
			return '-'
		}
		return r
	}, s)
}

var nameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// Validate checks every field and returns all problems at once, each as "field.path: reason".
func (c *Config) Validate() error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}
	if !oneOf(c.Agent.LogLevel, "debug", "info", "warn", "error") {
		bad("agent.log_level", "must be debug, info, warn or error, not %q", c.Agent.LogLevel)
	}
	if !oneOf(c.Agent.LogFormat, "text", "json") {
		bad("agent.log_format", "must be text or json, not %q", c.Agent.LogFormat)
	}
	if strings.ContainsAny(c.Agent.Name, "/+#") {
		bad("agent.name", "must not contain '/', '+' or '#' (it is part of MQTT topics)")
	}
	if c.Agent.ShutdownTimeout < 0 {
		bad("agent.shutdown_timeout", "must not be negative")
	}
	if n := c.Agent.OpenCVThreads; n != nil && (*n < 0 || *n > 1024) {
		bad("agent.opencv_threads", "must be 0..1024 (0 = OpenCV's own choice), not %d", *n)
	}

	c.validateModels(bad)
	c.validateCameras(bad, func(err error) { errs = append(errs, err) })

	q := c.MQTT
	if q.Broker != "" {
		u, err := url.Parse(q.Broker)
		switch {
		case err != nil:
			bad("mqtt.broker", "not a URL: %v", err)
		case !oneOf(u.Scheme, "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss"):
			bad("mqtt.broker", "must be tcp://, ssl://, mqtt://, mqtts://, ws:// or wss:// host:port, not %q", q.Broker)
		case u.Host == "":
			bad("mqtt.broker", "has no host:port: %q", q.Broker)
		}
	} else if _, _, err := net.SplitHostPort(q.Listen); err != nil {
		bad("mqtt.listen", "must be host:port for the embedded broker: %v", err)
	}
	if q.Prefix == "" || strings.ContainsAny(q.Prefix, "+#") || strings.HasPrefix(q.Prefix, "/") || strings.HasSuffix(q.Prefix, "/") {
		bad("mqtt.prefix", "must be a non-empty topic without '+', '#' or a leading/trailing '/', not %q", q.Prefix)
	}
	if q.ClientID == "" || len(q.ClientID) > 128 {
		bad("mqtt.client_id", "must be 1..128 characters")
	}
	if q.Password != "" && q.Username == "" {
		bad("mqtt.password", "is set but mqtt.username is empty")
	}
	if (q.TLS.Cert == "") != (q.TLS.Key == "") {
		bad("mqtt.tls", "cert and key must be set together")
	}
	for _, f := range []struct{ path, file string }{{"mqtt.tls.ca", q.TLS.CA}, {"mqtt.tls.cert", q.TLS.Cert}, {"mqtt.tls.key", q.TLS.Key}} {
		if f.file != "" && !strings.Contains(f.file, "${") {
			if _, err := os.Stat(f.file); err != nil {
				bad(f.path, "cannot read %s: %v", f.file, errors.Unwrap(err))
			}
		}
	}
	for _, k := range []struct {
		path string
		v    *int
	}{{"mqtt.qos.result", q.QoS.Result}, {"mqtt.qos.ng", q.QoS.NG}, {"mqtt.qos.heatmap", q.QoS.Heatmap},
		{"mqtt.qos.status", q.QoS.Status}, {"mqtt.qos.stats", q.QoS.Stats}} {
		if k.v != nil && (*k.v < 0 || *k.v > 2) {
			bad(k.path, "must be 0, 1 or 2, not %d", *k.v)
		}
	}
	if q.QoS.NG != nil && *q.QoS.NG < 1 {
		bad("mqtt.qos.ng", "must be at least 1: NG results must not be lost")
	}
	if !oneOf(q.Heatmap.Format, "png", "jpeg") {
		bad("mqtt.heatmap.format", "must be png or jpeg, not %q", q.Heatmap.Format)
	}
	if q.Heatmap.MinInterval != nil && *q.Heatmap.MinInterval < 0 {
		bad("mqtt.heatmap.min_interval", "must not be negative")
	}
	if q.Heatmap.MaxSize != 0 && (q.Heatmap.MaxSize < 16 || q.Heatmap.MaxSize > 16384) {
		bad("mqtt.heatmap.max_size", "must be 0 (the frame's size) or 16..16384 pixels, not %d", q.Heatmap.MaxSize)
	}
	if q.StatsInterval < time.Second {
		bad("mqtt.stats_interval", "must be at least 1s, not %s", q.StatsInterval)
	}

	c.validateStore(bad)
	c.validateLine(bad)
	c.validateAuth(bad)

	if c.HTTP.Listen != "" {
		if _, _, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
			bad("http.listen", "must be host:port (e.g. 127.0.0.1:8080) or empty for off: %v", err)
		}
	}
	errs = append(errs, c.validateHardening()...)
	return errors.Join(errs...)
}

// validateModels checks the models section.
func (c *Config) validateModels(bad func(path, format string, args ...any)) {
	m := c.Models
	if m.Dir == "" && m.Bundle == "" {
		bad("models", "set dir (a directory of bundles, watched) or bundle (one pinned bundle directory)")
	}
	for i, p := range m.Providers {
		if !oneOf(p, "cuda", "cpu") {
			bad(fmt.Sprintf("models.providers[%d]", i), "must be cuda or cpu, not %q", p)
		}
	}
	if m.Threads < 0 {
		bad("models.threads", "must be >= 0 (0 = ONNX Runtime's choice)")
	}
	if m.DenoiserThreads < 0 {
		bad("models.denoiser_threads", "must be >= 0 (0 = models.threads)")
	}
	if m.SpinMicros != nil && (*m.SpinMicros < 0 || *m.SpinMicros > 1_000_000) {
		bad("models.spin_us", "must be 0..1000000 microseconds (0 = ONNX Runtime's own spin count), not %d", *m.SpinMicros)
	}
	if m.Batch < 1 || m.Batch > 64 {
		bad("models.batch", "must be 1..64, not %d", m.Batch)
	}
	if !oneOf(m.Memory, MemoryShared, MemoryLean, MemoryORT) {
		bad("models.memory", "must be shared, lean or ort, not %q", m.Memory)
	}
	if m.Workers < 1 || m.Workers > 64 {
		bad("models.workers", "must be 1..64, not %d", m.Workers)
	}
	if m.BatchWait < 0 || m.BatchWait > time.Second {
		bad("models.batch_wait", "must be 0..1s, not %s", m.BatchWait)
	}
	if m.DeviceID < 0 {
		bad("models.device_id", "must be >= 0")
	}
}

// validateCameras checks the cameras list: unique topic-safe names, sources, per-camera settings. add takes
// errors that already carry their field path.
func (c *Config) validateCameras(bad func(path, format string, args ...any), add func(error)) {
	if len(c.Cameras) == 0 {
		bad("cameras", "at least one camera is required")
	}
	names := map[string]int{}
	for i := range c.Cameras {
		cam := &c.Cameras[i]
		p := fmt.Sprintf("cameras[%d]", i)
		name := cam.CameraName()
		switch {
		case name == "":
			bad(p+".name", "is required")
		case !nameRe.MatchString(name):
			bad(p+".name", "%q must be 1-63 letters, digits, '_', '.' or '-' (it is an MQTT topic level)", name)
		case name == "available" || name == "stats" || name == "model":
			bad(p+".name", "%q is reserved (it is an MQTT topic of its own under the prefix)", name)
		default:
			if j, dup := names[name]; dup {
				bad(p+".name", "%q is already used by cameras[%d]", name, j)
			}
			names[name] = i
		}
		if err := validateSource(&cam.Source); err != nil {
			for _, e := range unjoin(err) {
				add(fmt.Errorf("%s.%w", p, e))
			}
		}
		if cam.Threshold != nil && (isNaN(*cam.Threshold) || *cam.Threshold < 0) {
			bad(p+".threshold", "must be a raw score >= 0")
		}
		if cam.RateLimit < 0 {
			bad(p+".rate_limit", "must be >= 0 frames/s (0 = no limit)")
		}
		if cam.Queue < 1 || cam.Queue > 10000 {
			bad(p+".queue", "must be 1..10000, not %d", cam.Queue)
		}
		if cam.HeatmapInterval != nil && *cam.HeatmapInterval < 0 {
			bad(p+".heatmap_interval", "must not be negative")
		}
		if cam.SampleEvery != nil && *cam.SampleEvery < 0 {
			bad(p+".sample_every", "must be >= 0 (0 = off)")
		}
		for _, e := range cam.ROI.Validate() {
			add(fmt.Errorf("%s.roi.%w (camera %q)", p, e, name))
		}
	}
}

// validateStore checks the store's retention, outbox and sample limits.
func (c *Config) validateStore(bad func(path, format string, args ...any)) {
	s := c.Store
	if s.Retention.MaxAge < time.Minute {
		bad("store.retention.max_age", "must be at least 1m, not %s", s.Retention.MaxAge)
	}
	if s.Retention.MaxSize < 1<<20 {
		bad("store.retention.max_size", "must be at least 1MiB, not %s", s.Retention.MaxSize)
	}
	if s.Outbox.MaxItems < 1 {
		bad("store.outbox.max_items", "must be >= 1")
	}
	if s.Outbox.MaxSize < 1<<20 {
		bad("store.outbox.max_size", "must be at least 1MiB, not %s", s.Outbox.MaxSize)
	}
	if s.Samples.Every < 0 {
		bad("store.samples.every", "must be >= 0 (0 = off)")
	}
	if s.Samples.Max < 1 {
		bad("store.samples.max", "must be >= 1")
	}
	if s.Samples.MinFreeDisk < 0 {
		bad("store.samples.min_free_disk", "must not be negative")
	}
	if s.CommitInterval != nil && (*s.CommitInterval < 0 || *s.CommitInterval > time.Second) {
		bad("store.commit_interval", "must be 0..1s (0: commit as soon as the previous commit ended), not %s", *s.CommitInterval)
	}
}

func oneOf(s string, opts ...string) bool {
	for _, o := range opts {
		if s == o {
			return true
		}
	}
	return false
}

func isNaN(f float64) bool { return f != f }

// unjoin splits an errors.Join result into its parts.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// SampleEvery is the camera's sampling period after overrides.
func (c *Config) SampleEvery(cam *Camera) int {
	if cam.SampleEvery != nil {
		return *cam.SampleEvery
	}
	return c.Store.Samples.Every
}

// StoreCommitInterval is store.commit_interval after defaults.
func (c *Config) StoreCommitInterval() time.Duration {
	if c.Store.CommitInterval == nil { // a Config built without defaults
		return DefaultCommitInterval
	}
	return *c.Store.CommitInterval
}

// HeatmapInterval is the camera's heatmap period after overrides.
func (c *Config) HeatmapInterval(cam *Camera) time.Duration {
	if cam.HeatmapInterval != nil {
		return *cam.HeatmapInterval
	}
	if c.MQTT.Heatmap.MinInterval == nil { // a Config built without defaults
		return DefaultHeatmapInterval
	}
	return *c.MQTT.Heatmap.MinInterval
}

// Embedded reports whether the daemon runs its own broker.
func (c *Config) Embedded() bool { return c.MQTT.Broker == "" }
