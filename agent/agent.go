// Package agent is the inspection daemon behind `vlmdiff run`: per camera a capture source feeding a bounded
// queue, shared scoring workers on the current model (hot-swapped from the models directory), and result
// handling that commits each result with its MQTT messages to the store in one transaction before the frame
// is acknowledged. The MQTT publisher drains that outbox, so scoring never waits on the broker and a crash
// loses nothing that was acknowledged.
//
// Lifetimes follow one context: Run starts the daemon's parts as a list of steps (steps.go), each returning
// its stop, and after ctx ends stops them in reverse: sources stopped, queues drained within
// agent.shutdown_timeout, outbox flushed, `stopped` published, store closed. docs/operations.md describes the
// daemon from the outside.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vlmdiff/edge/agent/broker"
	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/agent/evidence"
	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/agent/mqttout"
	"github.com/vlmdiff/edge/agent/sdnotify"
	"github.com/vlmdiff/edge/agent/store"
	"github.com/vlmdiff/edge/capture"
	"github.com/vlmdiff/edge/internal/buildinfo"
)

// Options are the daemon's dependencies that are not configuration.
type Options struct {
	// Open builds a scorer from a bundle directory (pipeline.Open with the configured providers in
	// production).
	Open   OpenFunc
	Logger *slog.Logger
	// Notifier reports to systemd; nil = sdnotify.New() (a no-op without $NOTIFY_SOCKET).
	Notifier *sdnotify.Notifier
	// ModelDebounce is the quiet time after a models-dir change before it is looked at (default 500ms).
	ModelDebounce time.Duration
	// OnHTTP, when set, receives the HTTP server before it starts, to mount more routes (the dashboard).
	OnHTTP func(*httpapi.Server)
	// StallAfter is how long frames may wait with no scoring progress before /healthz answers 503 and the
	// systemd watchdog stops being petted (default 1 minute).
	StallAfter time.Duration
}

// Agent is one running daemon.
type Agent struct {
	cfg     *config.Config
	opts    Options
	log     *slog.Logger
	store   *store.Store
	pub     *mqttout.Publisher
	models  *modelManager
	sched   *scheduler
	cams    []*camera
	byName  map[string]*camera
	metrics *metrics
	prom    *promMetrics // /metrics (prom.go)
	http    *httpapi.Server
	started time.Time
	// brokerURL is the broker the publisher talks to: mqtt.broker, or the embedded one's address.
	brokerURL string
	embUser   *broker.User // the agent's own account on the embedded broker (nil: external broker)

	// committer groups the results' store transactions (store.commit_interval); submit hands it a result
	// and calls done once the result is on disk (or refused).
	committer *store.Committer
	submit    func(rec *store.Record, hm *mqttout.Heatmap, done func(error))
	heartbeat atomic.Int64 // unix nanos of the last scoring progress
	sampleReq sync.Map     // camera -> true: collect the next OK frame (sample/set command)
	storeOpen atomic.Bool
	// modelsUp is set once a.models exists: the publisher's connect (its own goroutine) may ask for a
	// camera's threshold range before startModels has run.
	modelsUp atomic.Bool
	// stopReason is published on <prefix>/available/reason at the clean stop (set before the stops run).
	stopReason string

	// scoreCam is the pseudo camera of POST /api/score (score.go); scorePending counts its images queued or
	// being scored, bounded by http.score.max_pending.
	scoreCam     *camera
	scorePending atomic.Int64
	// evidence is the evidence tree (nil when evidence.enabled is off).
	evidence *evidence.Tree
}

// New checks the wiring; nothing starts until Run.
func New(cfg *config.Config, opts Options) (*Agent, error) {
	if cfg == nil {
		return nil, errors.New("agent: nil config")
	}
	if opts.Open == nil {
		return nil, errors.New("agent: no scorer constructor (Options.Open)")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Notifier == nil {
		opts.Notifier = sdnotify.New()
	}
	if opts.ModelDebounce <= 0 {
		opts.ModelDebounce = 500 * time.Millisecond
	}
	if opts.StallAfter <= 0 {
		opts.StallAfter = time.Minute
	}
	a := &Agent{cfg: cfg, opts: opts, log: opts.Logger, byName: map[string]*camera{}, metrics: newMetrics()}
	a.prom = newPromMetrics(a)
	return a, nil
}

// Run runs the daemon until ctx ends, then shuts down gracefully. It returns an error only when the daemon
// cannot start (store, broker, HTTP listener, camera config); trouble while running is reported, not fatal.
//
// The daemon is the list of start steps in [Agent.steps]: Run starts them in order and, when ctx ends, stops
// them in the reverse order. A step that fails to start stops the steps already started, in reverse, before
// Run returns its error.
func (a *Agent) Run(ctx context.Context) error {
	a.started = time.Now()
	a.heartbeat.Store(a.started.UnixNano())
	_ = a.opts.Notifier.Status("starting")

	// The parts live until their stop runs, not until ctx ends: the publisher must outlive the drain, the
	// store must outlive the publisher.
	life := context.WithoutCancel(ctx)
	var started []stopStep
	stopAll := func() {
		for i := len(started) - 1; i >= 0; i-- {
			s := started[i]
			t0 := time.Now()
			if err := s.stop(context.Background()); err != nil {
				a.log.Error("stopping", "step", s.name, "err", err)
			}
			a.log.Info("stopped", "step", s.name, "took", time.Since(t0).Round(time.Millisecond))
		}
	}
	for _, st := range a.steps() {
		stop, err := st.start(life)
		if err != nil {
			stopAll()
			return fmt.Errorf("start: %w", err)
		}
		if stop != nil {
			started = append(started, stopStep{st.name, stop})
		}
	}

	a.log.Info("vlmdiff running", "cameras", len(a.cams), "broker", a.brokerURL, "http", a.cfg.HTTP.Listen, "store", a.cfg.Store.Path,
		"heatmap_format", a.cfg.MQTT.Heatmap.Format) // jpeg since 2026-11-30 (png before): say which
	if a.cfg.HTTP.Listen != "" {
		a.log.Info("dashboard: open http://" + dashboardHost(a.cfg.HTTP.Listen) + "/ in a browser")
	}
	<-ctx.Done()

	a.stopReason = "clean shutdown"
	// A signal's cause (os/signal.NotifyContext) also matches errors.Is(context.Canceled): compare the value.
	if c := context.Cause(ctx); c != nil && c != context.Canceled { //nolint:errorlint // the plain cancel, exactly
		a.stopReason = "clean shutdown: " + c.Error()
	}
	a.log.Info("shutting down", "drain_timeout", a.cfg.Agent.ShutdownTimeout, "reason", a.stopReason)
	_ = a.opts.Notifier.Stopping()
	stopAll()
	a.log.Info("stopped scoring", "uptime", time.Since(a.started).Round(time.Second))
	return nil
}

// runCamera runs one source and its forwarder and event handler until ctx ends or the source is exhausted.
func (a *Agent) runCamera(ctx context.Context, c *camera) {
	out := make(chan capture.Frame, 1)
	events := make(chan capture.Event, 16)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if c.cfg.Trigger {
			a.forwardTriggered(ctx, c, out)
		} else {
			a.forward(ctx, c, out)
		}
	}()
	go func() { defer wg.Done(); a.cameraEvents(c, events) }()
	err := c.src.Run(ctx, out, events)
	close(out)
	close(events)
	wg.Wait()
	if err != nil {
		a.log.Error("camera cannot run as configured", "camera", c.name, "err", err)
		c.setState(string(capture.StateError), err.Error())
		a.pub.SetCameraStatus(c.name, string(capture.StateError), err.Error())
	}
}

// cameraEvents turns capture events into the retained status topic (state changes) and counted, rate-limited
// reports (a single unreadable frame or file).
func (a *Agent) cameraEvents(c *camera, events <-chan capture.Event) {
	for ev := range events {
		if ev.Transient {
			c.decodeErrs.Add(1)
			c.mu.Lock()
			c.errLog.log(a.log, 10*time.Second, "frame not readable", "camera", c.name, "file", ev.File, "reason", ev.Reason)
			c.mu.Unlock()
			a.cameraTransient(c, ev.Reason)
			continue
		}
		if c.setState(string(ev.State), ev.Reason) {
			a.log.Info("camera state", "camera", c.name, "state", ev.State, "reason", ev.Reason)
			a.pub.SetCameraStatus(c.name, string(ev.State), ev.Reason)
		}
	}
}

// cameraTransient reports a per-frame problem on the camera's status topic, keeping its state, at most once
// per 5 s per camera so a stream of corrupt frames does not become a stream of status messages.
func (a *Agent) cameraTransient(c *camera, reason string) {
	c.mu.Lock()
	now := time.Now()
	if !c.lastTransient.IsZero() && now.Sub(c.lastTransient) < 5*time.Second {
		c.mu.Unlock()
		return
	}
	c.lastTransient = now
	state := c.state
	if state == "starting" {
		state = string(capture.StateOnline)
	}
	c.mu.Unlock()
	a.pub.SetCameraStatus(c.name, state, reason)
}

// publisherConfig maps the daemon config onto mqttout's.
func (a *Agent) publisherConfig(brokerURL string) mqttout.Config {
	q := a.cfg.MQTT
	pc := mqttout.DefaultConfig(brokerURL)
	pc.ClientID, pc.Username, pc.Password, pc.Prefix = q.ClientID, q.Username, q.Password, q.Prefix
	pc.TLS = mqttout.TLS{CAFile: q.TLS.CA, CertFile: q.TLS.Cert, KeyFile: q.TLS.Key, InsecureSkipVerify: q.TLS.Insecure}
	a.useEmbeddedAccount(&pc)
	pc.QoS = mqttout.QoS{Result: byte(*q.QoS.Result), Heatmap: byte(*q.QoS.Heatmap), Status: byte(*q.QoS.Status),
		Stats: byte(*q.QoS.Stats), Command: 1}
	pc.Heatmap.Mode = mqttout.HeatmapBinary
	if q.Heatmap.Base64 {
		pc.Heatmap.Mode = mqttout.HeatmapJSON
	}
	// The agent rate-limits heatmaps per camera itself (heatmapDue), before rendering them.
	pc.Heatmap.MinInterval = time.Nanosecond
	pc.StatsInterval = q.StatsInterval
	pc.Stats = func() any { return a.Stats() }
	for _, c := range a.cams {
		pc.Cameras = append(pc.Cameras, c.name)
	}
	pc.OnThreshold = a.onThreshold
	pc.OnSample = func(camera string) error {
		if _, ok := a.byName[camera]; !ok {
			return fmt.Errorf("unknown camera %q", camera)
		}
		a.sampleReq.Store(camera, true)
		return nil
	}
	pc.Discovery = mqttout.DiscoveryConfig{Enabled: q.Discovery, Prefix: q.DiscoveryPrefix, NodeID: a.cfg.Agent.Name,
		SWVersion: buildinfo.Get().Version, HeatmapFormat: q.Heatmap.Format}
	for _, c := range a.cams {
		if !c.cfg.HeatmapOn() {
			pc.Discovery.NoHeatmap = append(pc.Discovery.NoHeatmap, c.name)
		}
	}
	pc.Discovery.ThresholdRange = a.discoveryThresholdRange
	pc.OnTrigger = func(camera string, payload []byte) error { return a.enqueueTrigger(camera, payload, nil) }
	pc.Logger = a.log
	return pc
}

// onThreshold applies and persists a threshold command from MQTT.
func (a *Agent) onThreshold(camera string, cmd mqttout.ThresholdCommand) (mqttout.ThresholdState, error) {
	c, ok := a.byName[camera]
	if !ok {
		return mqttout.ThresholdState{}, fmt.Errorf("unknown camera %q", camera)
	}
	if err := a.checkThreshold(c, cmd); err != nil {
		return mqttout.ThresholdState{}, err
	}
	if cmd.Reset {
		if err := a.store.ClearThreshold(camera); err != nil {
			return mqttout.ThresholdState{}, fmt.Errorf("clear threshold of %s: %w", camera, err)
		}
		c.threshold.Store(math.Float64bits(math.NaN()))
	} else {
		if err := a.store.SetThreshold(camera, cmd.Threshold); err != nil {
			return mqttout.ThresholdState{}, fmt.Errorf("set threshold of %s: %w", camera, err)
		}
		c.threshold.Store(math.Float64bits(cmd.Threshold))
	}
	a.log.Info("threshold changed", "camera", camera, "reset", cmd.Reset, "threshold", cmd.Threshold)
	return a.thresholdState(c), nil
}

// discoveryThresholdRange is the threshold guard's range for Home Assistant's number entity (mqttout
// DiscoveryConfig.ThresholdRange); ok false while it is not known yet.
func (a *Agent) discoveryThresholdRange(camera string) (lo, hi float64, ok bool) {
	c, found := a.byName[camera]
	if !found {
		return 0, 0, false
	}
	if len(c.cfg.ThresholdRange) != 2 && !a.modelsUp.Load() {
		return 0, 0, false
	}
	lo, hi, _, err := a.thresholdBounds(c)
	return lo, hi, err == nil
}

// thresholdState is a camera's effective threshold and where it comes from.
func (a *Agent) thresholdState(c *camera) mqttout.ThresholdState {
	if v, ok := c.thresholdOverride(); ok {
		return mqttout.ThresholdState{Camera: c.name, Threshold: v, Source: "override"}
	}
	s := mqttout.ThresholdState{Camera: c.name, Source: "model"}
	if m := a.models.acquire(); m != nil {
		s.Threshold = m.manifest.CalibrationFor(c.cfg.Class).Threshold
		m.release()
	}
	return s
}

func (a *Agent) refreshThresholdState(c *camera) {
	if a.pub != nil {
		a.pub.SetThresholdState(a.thresholdState(c))
	}
}

func (a *Agent) refreshThresholdStates() {
	a.dropImplausibleOverrides()
	for _, c := range a.cams {
		if _, ok := c.thresholdOverride(); !ok {
			a.refreshThresholdState(c)
		}
	}
}

// housekeeping prunes the store hourly, and the evidence tree at start and hourly.
func (a *Agent) housekeeping(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	a.pruneEvidence()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if ps, err := a.store.Prune(ctx); err != nil {
				a.log.Warn("store prune", "err", err)
			} else {
				a.log.Debug("store pruned", "stats", ps)
			}
			a.pruneEvidence()
		}
	}
}

// alive is the watchdog's liveness check: false when frames wait but no worker has made progress for a
// minute (a wedged model or deadlock); systemd then restarts the daemon. /healthz answers the same check.
func (a *Agent) alive() bool { return a.progress() == nil }

// progress says why scoring is stalled, nil when it is not.
func (a *Agent) progress() error {
	pending := 0
	for _, c := range a.sched.cams {
		pending += a.sched.depth(c)
	}
	if pending == 0 || a.models.cur.Load() == nil {
		return nil
	}
	last := time.Unix(0, a.heartbeat.Load())
	if since := time.Since(last); since >= a.opts.StallAfter {
		return fmt.Errorf("scoring stalled: %d frames wait and no worker has made progress for %s", pending, since.Round(time.Second))
	}
	return nil
}

func (a *Agent) statusLine() string {
	s := a.models.Status()
	return fmt.Sprintf("scoring %d camera(s) with %s %s", len(a.cams), s.Name, s.Version)
}

// dashboardHost turns a listen address into one a browser can open (":8080" -> "localhost:8080").
func dashboardHost(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}
