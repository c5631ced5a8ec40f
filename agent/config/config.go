// Package config reads, checks and completes the daemon's YAML configuration (docs/config.md lists every
// field). It refuses unknown keys and invalid values at start, naming the field path and the reason, because a
// line that silently runs with a typo'd threshold is worse than one that does not start.
package config

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/vlmdiff/edge/internal/yamlconf"
)

// Config is the whole daemon configuration.
type Config struct {
	Agent   Agent    `yaml:"agent"`
	Models  Models   `yaml:"models"`
	Cameras []Camera `yaml:"cameras"`
	MQTT    MQTT     `yaml:"mqtt"`
	Store   Store    `yaml:"store"`
	HTTP    HTTP     `yaml:"http"`
	// Evidence keeps NG frames as files (line.go).
	Evidence Evidence `yaml:"evidence"`
}

// Agent holds process-wide settings.
type Agent struct {
	// Name identifies this agent (MQTT client id, topic prefix default, stats). Default: the host name.
	Name string `yaml:"name"`
	// DataDir holds the store and collected samples unless their paths are set. Default /var/lib/vlmdiff.
	DataDir string `yaml:"data_dir"`
	// LogLevel is debug, info, warn or error. Default info.
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json. Default text.
	LogFormat string `yaml:"log_format"`
	// LogResults logs every result (camera, seq, verdict, score) at info level: for demos and commissioning,
	// too noisy for a line running for months. Default false.
	LogResults bool `yaml:"log_results"`
	// ShutdownTimeout bounds draining queues and flushing the outbox on SIGTERM. Default 10s; keep it under
	// systemd's TimeoutStopSec.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// OpenCVThreads is how many threads OpenCV's own parallel loops may use (colour conversion of camera
	// frames, heatmap resizing and encoding). Default 1: each camera already converts on its own goroutine
	// and the cores belong to the model; OpenCV's thread pool cost 0.15-0.2 ms of CPU per 640x480 frame on
	// 2 cores for no gain (docs/operations.md, "Overhead outside the model"). 0 = OpenCV's own choice (all cores).
	OpenCVThreads *int `yaml:"opencv_threads"`
}

// DefaultOpenCVThreads is agent.opencv_threads when unset.
const DefaultOpenCVThreads = 1

// CVThreads is OpenCVThreads, or DefaultOpenCVThreads when unset.
func (a Agent) CVThreads() int {
	if a.OpenCVThreads == nil {
		return DefaultOpenCVThreads
	}
	return *a.OpenCVThreads
}

// DefaultSpinMicros is models.spin_us when unset, and the commands' --spin-us default: how long a spinning
// ONNX Runtime thread waits for work before it sleeps. On the 2-core test machine 100 us bridged the
// denoiser's operators and let its threads sleep before the decoder's began (docs/operations.md, "Tuning
// scoring speed").
const DefaultSpinMicros = 100

// Models says where bundles come from and how they run.
type Models struct {
	// Dir is watched for bundle directories; the newest valid one (manifest created time) is used and
	// hot-swapped. Either Dir or Bundle is required.
	Dir string `yaml:"dir"`
	// Bundle pins one bundle directory; it disables the choice (Dir is then ignored).
	Bundle string `yaml:"bundle"`
	// Providers in order of preference: cuda, cpu. Default [cpu].
	Providers []string `yaml:"providers"`
	// Threads per ONNX Runtime session (intra-op); 0 = ONNX Runtime's choice.
	Threads int `yaml:"threads"`
	// DenoiserThreads, when > 0, replaces Threads for the denoiser's sessions: a small denoiser's thousand
	// short operators per step may run faster on one thread (docs/operations.md, "Tuning scoring speed"). 0 = Threads.
	DenoiserThreads int `yaml:"denoiser_threads"`
	// Spin lets ONNX Runtime's idle threads spin-wait between operators (lower latency only when the cores
	// are otherwise idle; slower on small CPUs). Default false.
	Spin bool `yaml:"spin"`
	// DenoiserSpin lets only the denoiser's threads spin-wait: its thousand short operators per step need a
	// second thread awake between them, the other graphs do not. Default true (DenoiserSpinOn).
	DenoiserSpin *bool `yaml:"denoiser_spin"`
	// SpinMicros is how long a spinning thread waits for work before it sleeps (ONNX Runtime >= 1.26).
	// Default 100; 0 = ONNX Runtime's own count.
	SpinMicros *int `yaml:"spin_us"`
	// Memory is how ONNX Runtime holds tensor memory: MemoryShared (default; one arena for all sessions grown
	// as asked, no memory pattern), MemoryLean (no arena, large blocks back to the system after each run) or
	// MemoryORT (ONNX Runtime's defaults: an arena per session, memory pattern). See docs/operations.md, "Memory".
	Memory string `yaml:"memory"`
	// DeviceID is the CUDA device.
	DeviceID int `yaml:"device_id"`
	// Batch is the largest micro-batch a worker scores at once. Default 1.
	Batch int `yaml:"batch"`
	// BatchWait is how long a worker waits to fill a batch once it has one frame. Default 0 (never waits).
	BatchWait time.Duration `yaml:"batch_wait"`
	// Workers is the number of scoring goroutines sharing the model. Default 1.
	Workers int `yaml:"workers"`
	// ONNXRuntime is the path of libonnxruntime.so; empty = ONNXRUNTIME_LIB, then .deps/lib, then system paths.
	ONNXRuntime string `yaml:"onnxruntime"`
}

// DenoiserSpinOn is DenoiserSpin, true when unset: on the 2-core test machine, with ONNX Runtime 1.30, the small
// preset ran 5% faster per frame at batch 1 and 18% at batch 4 than the old best setting (ONNX Runtime 1.24, one
// denoiser thread); the library upgrade alone gave 0% and 10% (docs/operations.md, "Tuning scoring speed").
func (m Models) DenoiserSpinOn() bool {
	return m.DenoiserSpin == nil || *m.DenoiserSpin
}

// SpinUS is SpinMicros, or DefaultSpinMicros when unset.
func (m Models) SpinUS() int {
	if m.SpinMicros == nil {
		return DefaultSpinMicros
	}
	return *m.SpinMicros
}

// MQTT configures the publisher and, when Broker is empty, the embedded broker.
type MQTT struct {
	// Broker is tcp://, ssl://, mqtt://, mqtts://, ws:// or wss:// host:port; empty = run the embedded broker.
	Broker string `yaml:"broker"`
	// Listen is the embedded broker's TCP address. Default 127.0.0.1:1883.
	Listen string `yaml:"listen"`
	// Prefix of every topic. Default "vlmdiff/<agent.name>".
	Prefix   string     `yaml:"prefix"`
	ClientID string     `yaml:"client_id"`
	Username string     `yaml:"username"`
	Password string     `yaml:"password"`
	TLS      TLS        `yaml:"tls"`
	QoS      QoS        `yaml:"qos"`
	Heatmap  HeatmapOut `yaml:"heatmap"`
	// StatsInterval is the period of <prefix>/stats. Default 10s; 0 after defaults is impossible.
	StatsInterval time.Duration `yaml:"stats_interval"`
	// Embedded secures the embedded broker (used when Broker is empty); see docs/operations.md, "Securing MQTT".
	Embedded EmbeddedBroker `yaml:"embedded"`
	// Discovery publishes Home Assistant MQTT discovery configs (retained) for every camera. Default false.
	Discovery bool `yaml:"discovery"`
	// DiscoveryPrefix is Home Assistant's discovery prefix. Default "homeassistant".
	DiscoveryPrefix string `yaml:"discovery_prefix"`
}

// EmbeddedBroker holds the embedded broker's access control. The agent's own connection uses a random
// per-start credential and may publish everything; every other client is one of Users or anonymous.
type EmbeddedBroker struct {
	// AllowAnonymous lets clients without a username connect (read-only unless no Users are configured).
	// Default: allowed when Listen is a loopback address, refused otherwise.
	AllowAnonymous *bool `yaml:"allow_anonymous"`
	// Users are the accounts the broker accepts.
	Users []BrokerUser `yaml:"users"`
	// TLS, when Cert and Key are set, makes the embedded broker speak MQTT over TLS on Listen.
	TLS ServerTLS `yaml:"tls"`
}

// BrokerUser is one embedded-broker account. Every user may subscribe to everything; only the agent may
// publish under the prefix, except the commands a user is allowed here.
type BrokerUser struct {
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// Commands this user may publish: threshold (<prefix>/<camera>/threshold/set), sample (.../sample/set).
	Commands []string `yaml:"commands"`
}

// ServerTLS is a server certificate and key (PEM files).
type ServerTLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// TLS holds client TLS settings.
type TLS struct {
	CA       string `yaml:"ca"`
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	Insecure bool   `yaml:"insecure"`
}

// Enabled says whether any TLS setting is present.
func (t TLS) Enabled() bool { return t.CA != "" || t.Cert != "" || t.Key != "" || t.Insecure }

// QoS per message kind. NG results are published at max(NG, Result).
type QoS struct {
	Result  *int `yaml:"result"`  // default 1
	NG      *int `yaml:"ng"`      // default 1; never below 1
	Heatmap *int `yaml:"heatmap"` // default 0
	Status  *int `yaml:"status"`  // default 1
	Stats   *int `yaml:"stats"`   // default 0
}

// models.memory values.
const (
	MemoryShared = "shared"
	MemoryLean   = "lean"
	MemoryORT    = "ort"
)

// HeatmapOut is how heatmaps are published.
type HeatmapOut struct {
	// Format is png or jpeg. Default DefaultHeatmapFormat (jpeg): a heatmap is a picture for people (the
	// numbers are in the result), and at 640x480 a JPEG took about a fifth of the PNG's render and encode
	// time and a sixth of its bytes (docs/operations.md, "Overhead per frame"), on the daemon's CPU, the
	// broker, the store and every subscriber. png keeps it lossless.
	Format string `yaml:"format"`
	// Base64 wraps the image in JSON {"camera","seq","format","data"} for string-only clients.
	Base64 bool `yaml:"base64"`
	// MinInterval rate-limits OK frames' heatmaps per camera (NG frames always get theirs): at most one
	// per interval is rendered, stored and published. Default DefaultHeatmapInterval (1s): rendering and
	// encoding a heatmap costs several times everything else the daemon does per frame, and a live camera's
	// consecutive OK heatmaps are near copies. An explicit 0 gives every result its heatmap.
	MinInterval *time.Duration `yaml:"min_interval"`
	// MaxSize bounds the heatmap's longer side in pixels: larger frames are shrunk (aspect kept) before the
	// map is blended over them. Default 0: the frame's size. Encoding dominates the daemon's per-frame cost
	// outside the model and grows with the pixels (docs/operations.md, "Overhead per frame").
	MaxSize int `yaml:"max_size"`
}

// Store configures the bbolt file.
type Store struct {
	// Path of the bbolt file. Default <data_dir>/vlmdiff.db.
	Path      string    `yaml:"path"`
	Retention Retention `yaml:"retention"`
	Outbox    Outbox    `yaml:"outbox"`
	Samples   Samples   `yaml:"samples"`
	// Images bounds the heatmaps kept in the store per camera (line.go).
	Images StoreImages `yaml:"images"`
	// CommitInterval is the least time between two store transactions of results (group commit): results,
	// and the outbox's delivery acknowledgements, that arrive meanwhile share the next transaction and its one
	// fsync. An isolated result is committed at once; nothing is published or acknowledged to its source
	// before its transaction is on disk. Default DefaultCommitInterval (20ms); an explicit 0 commits as soon
	// as the previous transaction ended.
	CommitInterval *time.Duration `yaml:"commit_interval"`
}

// Retention bounds history.
type Retention struct {
	MaxAge  time.Duration `yaml:"max_age"`  // default 720h (30 days)
	MaxSize ByteSize      `yaml:"max_size"` // default 1GiB of history
}

// Outbox bounds the store-and-forward queue; past the bounds the oldest OK results go first, NG are kept.
type Outbox struct {
	MaxItems int      `yaml:"max_items"` // default 100000
	MaxSize  ByteSize `yaml:"max_size"`  // default 256MiB
}

// Samples configures normal-sample collection for retraining.
type Samples struct {
	// Every keeps every Nth OK frame per camera (0 = off). Default 0; a camera's sample_every overrides it.
	Every int `yaml:"every"`
	// MinFreeDisk stops collection (never scoring) when the store's file system has less free space.
	// Default 1GiB.
	MinFreeDisk ByteSize `yaml:"min_free_disk"`
	// Max bounds the number of stored samples (oldest dropped). Default 10000.
	Max int `yaml:"max"`
}

// HTTP configures the HTTP API.
type HTTP struct {
	// Listen address, e.g. 127.0.0.1:8080; empty = HTTP off.
	Listen string `yaml:"listen"`
	// Score configures POST /api/score (line.go).
	Score Score `yaml:"score"`
	// Auth configures logins and machine tokens (auth.go).
	Auth HTTPAuth `yaml:"auth"`
}

// Load reads, substitutes, decodes, completes and validates a config file.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	cfg, err := Parse(f, os.LookupEnv)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes YAML from r; lookup resolves ${VAR} references (os.LookupEnv in production). The result has
// defaults filled and is valid, or the error lists every problem as "field.path: reason".
func Parse(r io.Reader, lookup func(string) (string, bool)) (*Config, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	cfg := &Config{}
	// An empty file is an empty config (and fails validation for what it lacks).
	if err := yamlconf.Decode(data, cfg, lookup); err != nil {
		return nil, err
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}
