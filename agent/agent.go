// Package agent is the inspection daemon behind `vlmdiff run`: per camera a capture source feeding a bounded
// queue, shared scoring workers on the current model (hot-swapped from the models directory), and result
// handling that commits each result with its MQTT messages to the store in one transaction before the frame
// is acknowledged. The MQTT publisher drains that outbox, so scoring never waits on the broker and a crash
// loses nothing that was acknowledged.
//
// Lifetimes follow one context: Run returns after a graceful shutdown (sources stopped, queues drained within
// agent.shutdown_timeout, outbox flushed, `stopped` published, store closed). docs/operations.md describes the
// daemon from the outside.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vlmdiff/edge/agent/broker"
	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/agent/mqttout"
	"github.com/vlmdiff/edge/agent/sdnotify"
	"github.com/vlmdiff/edge/agent/store"
	"github.com/vlmdiff/edge/capture"
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
	http    *httpapi.Server
	started time.Time
	embUser *broker.User // the agent's own account on the embedded broker (nil: external broker)

	submit    func(rec *store.Record, hm *mqttout.Heatmap) error
	heartbeat atomic.Int64 // unix nanos of the last scoring progress
	sampleReq sync.Map     // camera -> true: collect the next OK frame (sample/set command)
	storeOpen atomic.Bool
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
	return &Agent{cfg: cfg, opts: opts, log: opts.Logger, byName: map[string]*camera{}, metrics: newMetrics()}, nil
}

// Run runs the daemon until ctx ends, then shuts down gracefully. It returns an error only when the daemon
// cannot start (store, broker, HTTP listener, camera config); trouble while running is reported, not fatal.
func (a *Agent) Run(ctx context.Context) (err error) {
	a.started = time.Now()
	a.heartbeat.Store(a.started.UnixNano())
	cfg := a.cfg
	notify := a.opts.Notifier
	_ = notify.Status("starting")

	st, err := store.Open(store.Options{Path: cfg.Store.Path, HistoryMaxAge: cfg.Store.Retention.MaxAge,
		HistoryMaxBytes: int64(cfg.Store.Retention.MaxSize), OutboxMaxMessages: cfg.Store.Outbox.MaxItems,
		OutboxMaxBytes: int64(cfg.Store.Outbox.MaxSize), MinFreeBytes: uint64(cfg.Store.Samples.MinFreeDisk),
		MaxSamples: cfg.Store.Samples.Max, OriginMaxAge: cfg.Store.Retention.MaxAge, Logger: a.log.With("component", "store")})
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	a.store = st
	a.storeOpen.Store(true)
	defer func() {
		a.storeOpen.Store(false)
		if cerr := st.Close(); cerr != nil {
			a.log.Error("closing the store", "err", cerr)
		}
	}()

	// Cameras: sources and their state, seq continuing from the store.
	for i := range cfg.Cameras {
		cc := cfg.Cameras[i]
		src, err := capture.New(cc.Source)
		if err != nil {
			return fmt.Errorf("start: cameras[%d]: %w", i, err)
		}
		last, _, err := st.LastSeq(cc.CameraName())
		if err != nil {
			return fmt.Errorf("start: camera %s: %w", cc.CameraName(), err)
		}
		c := newCamera(cc, src, last)
		if o, ok, err := st.Threshold(c.name); err == nil && ok {
			c.threshold.Store(math.Float64bits(o.Threshold))
		}
		a.cams = append(a.cams, c)
		a.byName[c.name] = c
	}
	a.sched = newScheduler(a.cams)

	// MQTT: the embedded broker when no external one is named, then the publisher.
	brokerURL := cfg.MQTT.Broker
	var emb *broker.Broker
	bctx, bcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer bcancel()
	if cfg.Embedded() {
		bcfg, err := a.embeddedBrokerConfig()
		if err != nil {
			return fmt.Errorf("start: %w", err)
		}
		emb, err = broker.Start(bctx, bcfg)
		if err != nil {
			return fmt.Errorf("start: %w", err)
		}
		brokerURL = emb.URL()
		defer emb.Close()
	}
	pub, err := mqttout.New(a.publisherConfig(brokerURL), st)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	a.pub = pub
	a.submit = func(rec *store.Record, hm *mqttout.Heatmap) error { return pub.Submit(rec, hm, store.CommitOptions{}) }
	pctx, pcancel := context.WithCancel(context.WithoutCancel(ctx))
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); _ = pub.Run(pctx) }()
	defer func() { pcancel(); <-pubDone }() // flush the outbox, publish stopped, disconnect

	// Models. The watched directory is created when missing, so a fresh install can start before its first
	// bundle arrives (readyz says why it is not ready until then).
	if cfg.Models.Bundle == "" {
		if err := os.MkdirAll(cfg.Models.Dir, 0o755); err != nil {
			return fmt.Errorf("start: models dir: %w", err)
		}
	}
	a.models = newModelManager(a.opts.Open, cfg.Models.Dir, cfg.Models.Bundle, a.log.With("component", "models"),
		func(s ModelStatus) {
			pub.SetModelStatus(mqttout.ModelStatus{Name: s.Name, Version: s.Version, State: s.State, Reason: s.Reason, Since: s.Since})
			a.refreshThresholdStates()
		})
	a.models.setStatus(a.models.status)
	defer a.models.close()

	// HTTP.
	if cfg.HTTP.Listen != "" {
		a.http = httpapi.New(a, a.log.With("component", "http"))
		if a.opts.OnHTTP != nil {
			a.opts.OnHTTP(a.http)
		}
		if err := a.http.Listen(cfg.HTTP.Listen); err != nil {
			return fmt.Errorf("start: %w", err)
		}
		go func() {
			if err := a.http.Serve(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("http server stopped", "err", err)
			}
		}()
		defer func() {
			sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
			defer c()
			_ = a.http.Shutdown(sctx)
		}()
	}

	for _, c := range a.cams {
		a.refreshThresholdState(c)
	}

	// Workers.
	var workers sync.WaitGroup
	wctx, wcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer wcancel()
	for i := 0; i < cfg.Models.Workers; i++ {
		workers.Add(1)
		go func(id int) { defer workers.Done(); a.worker(wctx, id) }(i)
	}

	// Sources.
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	var sources sync.WaitGroup
	for _, c := range a.cams {
		sources.Add(1)
		go func(c *camera) { defer sources.Done(); a.runCamera(sctx, c) }(c)
	}

	// Model load and watch.
	mctx, mcancel := context.WithCancel(ctx)
	defer mcancel()
	var watchers sync.WaitGroup
	watchers.Add(1)
	go func() {
		defer watchers.Done()
		a.models.refresh(mctx)
		if a.models.cur.Load() != nil {
			_ = notify.Ready(a.statusLine())
		} else {
			_ = notify.Ready("no model: " + a.models.Status().Reason)
		}
		if err := a.models.watch(mctx, a.opts.ModelDebounce); err != nil {
			a.log.Error("model hot-swap disabled", "err", err)
		}
	}()
	watchers.Add(1)
	go func() { defer watchers.Done(); a.housekeeping(mctx) }()
	watchers.Add(1)
	go func() {
		defer watchers.Done()
		notify.Watchdog(mctx, sdnotify.WatchdogInterval(), a.alive)
	}()

	a.log.Info("vlmdiff running", "cameras", len(a.cams), "broker", brokerURL, "http", cfg.HTTP.Listen, "store", cfg.Store.Path)
	if cfg.HTTP.Listen != "" {
		a.log.Info("dashboard: open http://" + dashboardHost(cfg.HTTP.Listen) + "/ in a browser")
	}
	<-ctx.Done()

	// Graceful shutdown: stop sources, drain queues (bounded), then the deferred steps: model, HTTP, outbox
	// flush + stopped, broker, store.
	a.log.Info("shutting down", "drain_timeout", cfg.Agent.ShutdownTimeout)
	_ = notify.Stopping()
	scancel()
	mcancel()
	sources.Wait()
	watchers.Wait()
	a.sched.close()
	drained := make(chan struct{})
	go func() { workers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(cfg.Agent.ShutdownTimeout):
		left := a.sched.abandon()
		a.log.Warn("drain timeout: frames left unscored stay with their sources (folder files are re-read at the next start)", "frames", len(left))
		wcancel()
		<-drained
	}
	a.log.Info("stopped scoring", "uptime", time.Since(a.started).Round(time.Second))
	return nil
}

// runCamera runs one source and its forwarder and event handler until ctx ends or the source is exhausted.
func (a *Agent) runCamera(ctx context.Context, c *camera) {
	out := make(chan capture.Frame, 1)
	events := make(chan capture.Event, 16)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.forward(ctx, c, out) }()
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
	for _, c := range a.cams {
		if _, ok := c.thresholdOverride(); !ok {
			a.refreshThresholdState(c)
		}
	}
}

// housekeeping prunes the store hourly.
func (a *Agent) housekeeping(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
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
		}
	}
}

// alive is the watchdog's liveness check: false when frames wait but no worker has made progress for a
// minute (a wedged model or deadlock); systemd then restarts the daemon.
func (a *Agent) alive() bool {
	pending := 0
	for _, c := range a.cams {
		pending += a.sched.depth(c)
	}
	if pending == 0 || a.models.cur.Load() == nil {
		return true
	}
	last := time.Unix(0, a.heartbeat.Load())
	return time.Since(last) < time.Minute
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
