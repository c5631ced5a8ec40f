// Package mqttout is the daemon's MQTT output: it publishes results, heatmaps, statuses and stats under one
// topic prefix, and receives threshold and sample commands. Results never go to the broker directly: the
// agent commits them to the store's outbox (Submit), and one drainer goroutine publishes the outbox in order,
// waiting for each PUBACK before removing an entry. Scoring therefore never blocks on the broker, a broker
// outage only fills the (bounded) outbox, and a redelivery carries the stored payload unchanged (same seq).
//
// The topic reference is docs/mqtt.md.
package mqttout

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/vlmdiff/edge/agent/store"
)

// TLS configures an encrypted connection (broker URL scheme ssl://, tls://, mqtts:// or wss://).
type TLS struct {
	// CAFile: PEM bundle of CAs trusted for the broker's certificate; empty uses the system pool.
	CAFile string
	// CertFile and KeyFile: client certificate and key (PEM) for brokers that authenticate clients by
	// certificate; both or neither.
	CertFile string
	KeyFile  string
	// InsecureSkipVerify disables server certificate verification (tests and lab networks only).
	InsecureSkipVerify bool
	// ServerName overrides the name checked against the broker's certificate.
	ServerName string
}

// Enabled reports whether any TLS setting is given.
func (t TLS) Enabled() bool {
	return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.InsecureSkipVerify || t.ServerName != ""
}

// Build returns the tls.Config for these settings.
func (t TLS) Build() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: t.InsecureSkipVerify, ServerName: t.ServerName}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt tls: read ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("mqtt tls: ca_file %s: no PEM certificates found", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, fmt.Errorf("mqtt tls: cert_file and key_file must be given together")
	}
	if t.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt tls: load client certificate %s / %s: %w", t.CertFile, t.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// QoS per kind of message. NG results always go at QoS 1 at least; `available` is always QoS 1.
type QoS struct {
	Result  byte // default 1
	NG      byte // NG results go at max(NG, Result, 1); default 1
	Heatmap byte // heatmaps go at max(Heatmap, their result's QoS), so they cannot overtake it; default 0
	Status  byte // retained state topics (status, threshold/state, model/status); default 1
	Stats   byte // default 0
	Command byte // subscriptions to */threshold/set and */sample/set; default 1
}

// Heatmap modes.
const (
	HeatmapBinary = "binary" // raw PNG/JPEG bytes on <prefix>/<camera>/heatmap
	HeatmapJSON   = "json"   // {"camera","seq","format","data"(base64)} for string-only clients
	HeatmapOff    = "off"
)

// HeatmapConfig says whether and how heatmaps are published.
type HeatmapConfig struct {
	Mode string // HeatmapBinary (default), HeatmapJSON or HeatmapOff
	// MinInterval rate-limits OK frames' heatmaps per camera (DefaultConfig: 1s; 0: every heatmap); NG
	// heatmaps always go.
	MinInterval time.Duration
	// PerCamera overrides MinInterval for the cameras it names.
	PerCamera map[string]time.Duration
}

// Config configures a Publisher. Start from DefaultConfig.
type Config struct {
	// Broker URL: tcp://host:1883, ssl://host:8883, ws://host/path, wss://...
	Broker string
	// ClientID must be unique per agent on a broker. Empty: vlmdiff-<hostname>-<random>, new at each start;
	// configure a stable one so the broker keeps this agent's session (CleanSession is false) across restarts.
	ClientID string
	Username string
	Password string
	TLS      TLS
	// Prefix is the first topic level(s), default "vlmdiff"; no wildcards, no leading/trailing '/'.
	Prefix  string
	QoS     QoS
	Heatmap HeatmapConfig
	// Window is how many outbox messages may await their PUBACK at once (default 16). 1 makes delivery
	// strictly one at a time.
	Window int
	// AckTimeout bounds the wait for one PUBACK before the drainer retries from the outbox head (default 10s).
	AckTimeout time.Duration
	// KeepAlive (default 30s), ConnectTimeout (default 10s), reconnect backoff bounds (defaults 1s .. 30s).
	KeepAlive            time.Duration
	ConnectTimeout       time.Duration
	ConnectRetryInterval time.Duration
	MaxReconnectInterval time.Duration
	// FlushTimeout bounds the outbox flush at clean exit (default 5s); what is left stays in the outbox for
	// the next start.
	FlushTimeout time.Duration
	// StatsInterval: how often <prefix>/stats is published (default 30s; < 0 disables). Stats, when set,
	// supplies the agent's part of the payload.
	StatsInterval time.Duration
	Stats         func() any
	// Cameras, when set, limits commands to these cameras; commands for others are rejected and logged.
	Cameras []string
	// OnThreshold handles <prefix>/<camera>/threshold/set after validation. The agent persists the override
	// (store.SetThreshold/ClearThreshold) and returns the camera's effective state, which is published
	// retained on <prefix>/<camera>/threshold/state. Nil: threshold commands are rejected.
	OnThreshold func(camera string, cmd ThresholdCommand) (ThresholdState, error)
	// OnSample handles <prefix>/<camera>/sample/set: collect the camera's next frame as a sample.
	OnSample func(camera string) error
	// OnTrigger handles <prefix>/<camera>/trigger (trigger-mode cameras); an error refuses the trigger on
	// <prefix>/<camera>/trigger/rejected. Nil: the trigger topic is not subscribed.
	OnTrigger func(camera string, payload []byte) error
	// Discovery announces the cameras to Home Assistant (discovery.go).
	Discovery DiscoveryConfig
	// Committer, when set, groups the results of SubmitGrouped and the drainer's delivery acknowledgements
	// into shared store transactions (store.Committer); its owner closes it after the Publisher's Run
	// returned. Nil: each result and each delivered window is its own transaction.
	Committer *store.Committer
	// Now is injectable for tests (heatmap rate limit, timestamps); default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// DefaultConfig returns the documented defaults with the given broker URL.
func DefaultConfig(broker string) Config {
	return Config{
		Broker:  broker,
		Prefix:  "vlmdiff",
		QoS:     QoS{Result: 1, NG: 1, Heatmap: 0, Status: 1, Stats: 0, Command: 1},
		Heatmap: HeatmapConfig{Mode: HeatmapBinary, MinInterval: time.Second},
	}
}

func (c *Config) fill() error {
	if c.Broker == "" {
		return fmt.Errorf("mqtt config: broker: empty URL")
	}
	if c.Prefix == "" {
		c.Prefix = "vlmdiff"
	}
	if strings.ContainsAny(c.Prefix, "+#\x00") || strings.HasPrefix(c.Prefix, "/") || strings.HasSuffix(c.Prefix, "/") {
		return fmt.Errorf("mqtt config: prefix %q: no wildcards (+ #) and no leading or trailing '/'", c.Prefix)
	}
	for name, q := range map[string]byte{"result": c.QoS.Result, "ng": c.QoS.NG, "heatmap": c.QoS.Heatmap, "status": c.QoS.Status,
		"stats": c.QoS.Stats, "command": c.QoS.Command} {
		if q > 2 {
			return fmt.Errorf("mqtt config: qos.%s: %d is not 0, 1 or 2", name, q)
		}
	}
	switch c.Heatmap.Mode {
	case "":
		c.Heatmap.Mode = HeatmapBinary
	case HeatmapBinary, HeatmapJSON, HeatmapOff:
	default:
		return fmt.Errorf("mqtt config: heatmap.mode %q: want binary, json or off", c.Heatmap.Mode)
	}
	if c.ClientID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "host"
		}
		var r [3]byte
		_, _ = rand.Read(r[:])
		c.ClientID = "vlmdiff-" + host + "-" + hex.EncodeToString(r[:])
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.Window <= 0 {
		c.Window = 16
	}
	def(&c.AckTimeout, 10*time.Second)
	def(&c.KeepAlive, 30*time.Second)
	def(&c.ConnectTimeout, 10*time.Second)
	def(&c.ConnectRetryInterval, time.Second)
	def(&c.MaxReconnectInterval, 30*time.Second)
	def(&c.FlushTimeout, 5*time.Second)
	def(&c.StatsInterval, 30*time.Second)
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Discovery.Prefix == "" {
		c.Discovery.Prefix = "homeassistant"
	}
	if c.Discovery.NodeID == "" {
		c.Discovery.NodeID = c.ClientID
	}
	if c.Discovery.HeatmapFormat == "" {
		c.Discovery.HeatmapFormat = "png"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}
