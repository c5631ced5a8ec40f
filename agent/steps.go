package agent

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/vlmdiff/edge/agent/broker"
	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/agent/mqttout"
	"github.com/vlmdiff/edge/agent/sdnotify"
	"github.com/vlmdiff/edge/agent/store"
	"github.com/vlmdiff/edge/capture"
)

// startStep is one part of the daemon. start brings it up and returns how to take it down again (nil: the
// part holds nothing that needs stopping). ctx is the daemon's lifetime without its cancellation: a part
// runs until its stop is called, so the order of the stops alone decides the shutdown.
type startStep struct {
	name  string
	start func(ctx context.Context) (stop func(context.Context) error, err error)
}

// stopStep is a started step's stop, kept for the shutdown.
type stopStep struct {
	name string
	stop func(context.Context) error
}

// steps lists the daemon's parts in start order; Run stops them in the reverse order, so the shutdown is:
//
//  1. sources: the cameras stop producing frames (nothing new enters the queues);
//  2. watchers: the model watcher, store housekeeping and the systemd watchdog stop;
//  3. workers: the queues drain: frames already queued are scored, bounded by agent.shutdown_timeout
//     (past it the rest stay unacknowledged with their sources);
//  4. http: the API and dashboard stop answering (they read the models, publisher and store below);
//  5. models: the current model closes after its in-flight batches;
//  6. publisher: the outbox is flushed to the broker, `stopped` is published, the client disconnects;
//  7. broker: the embedded broker closes (after the publisher's last message reached it);
//  8. store: the bbolt file closes last, after everything that writes to it.
//
// Each step may use what the steps before it started. The cameras are built (not started) before the broker
// because the publisher's config names them.
func (a *Agent) steps() []startStep {
	return []startStep{
		{"store", a.startStore},
		{"cameras", a.openCameras},
		{"broker", a.startBroker},
		{"publisher", a.startPublisher},
		{"models", a.startModels},
		{"http", a.startHTTP},
		{"workers", a.startWorkers},
		{"watchers", a.startWatchers},
		{"sources", a.startSources},
	}
}

// startStore opens the store; its stop closes it.
func (a *Agent) startStore(context.Context) (func(context.Context) error, error) {
	sc := a.cfg.Store
	st, err := store.Open(store.Options{Path: sc.Path, HistoryMaxAge: sc.Retention.MaxAge,
		HistoryMaxBytes: int64(sc.Retention.MaxSize), OutboxMaxMessages: sc.Outbox.MaxItems,
		OutboxMaxBytes: int64(sc.Outbox.MaxSize), MinFreeBytes: uint64(sc.Samples.MinFreeDisk),
		MaxSamples: sc.Samples.Max, OriginMaxAge: sc.Retention.MaxAge, Logger: a.log.With("component", "store"),
		ImagesPerCamera: sc.Images.OKPerCamera, NGImagesPerCamera: sc.Images.NGPerCamera})
	if err != nil {
		return nil, err
	}
	a.store = st
	a.committer = st.NewCommitter(a.cfg.StoreCommitInterval())
	a.storeOpen.Store(true)
	return func(context.Context) error {
		a.committer.Close() // what the publisher acknowledged last
		a.storeOpen.Store(false)
		if err := st.Close(); err != nil {
			return fmt.Errorf("closing the store: %w", err)
		}
		return nil
	}, nil
}

// openCameras builds each camera's source and state, its seq continuing from the store and its threshold
// override restored. The sources run later (startSources); nothing here needs stopping.
func (a *Agent) openCameras(context.Context) (func(context.Context) error, error) {
	for i := range a.cfg.Cameras {
		cc := a.cfg.Cameras[i]
		src, err := capture.New(cc.Source)
		if err != nil {
			return nil, fmt.Errorf("cameras[%d]: %w", i, err)
		}
		last, _, err := a.store.LastSeq(cc.CameraName())
		if err != nil {
			return nil, fmt.Errorf("camera %s: %w", cc.CameraName(), err)
		}
		c := newCamera(cc, src, last)
		if o, ok, err := a.store.Threshold(c.name); err == nil && ok {
			c.threshold.Store(math.Float64bits(o.Threshold))
		}
		a.cams = append(a.cams, c)
		a.byName[c.name] = c
	}
	if err := a.openEvidence(); err != nil {
		return nil, err
	}
	sc, err := a.newScoreCamera()
	if err != nil {
		return nil, err
	}
	a.scoreCam = sc
	a.byName[sc.name] = sc
	a.sched = newScheduler(append(slices.Clone(a.cams), sc))
	return nil, nil
}

// startBroker starts the embedded MQTT broker when no external one is named.
func (a *Agent) startBroker(ctx context.Context) (func(context.Context) error, error) {
	a.brokerURL = a.cfg.MQTT.Broker
	if !a.cfg.Embedded() {
		return nil, nil
	}
	bcfg, err := a.embeddedBrokerConfig() // accounts, ACL and TLS (broker_config.go)
	if err != nil {
		return nil, err
	}
	bctx, cancel := context.WithCancel(ctx)
	emb, err := broker.Start(bctx, bcfg)
	if err != nil {
		cancel()
		return nil, err
	}
	a.brokerURL = emb.URL()
	return func(context.Context) error {
		defer cancel()
		return emb.Close()
	}, nil
}

// startPublisher starts the MQTT publisher, which drains the store's outbox; its stop flushes the outbox,
// publishes `stopped` and disconnects.
func (a *Agent) startPublisher(ctx context.Context) (func(context.Context) error, error) {
	pc := a.publisherConfig(a.brokerURL)
	pc.Committer = a.committer
	pub, err := mqttout.New(pc, a.store)
	if err != nil {
		return nil, err
	}
	a.pub = pub
	a.submit = func(rec *store.Record, hm *mqttout.Heatmap, done func(error)) {
		pub.SubmitGrouped(rec, hm, store.CommitOptions{}, done)
	}
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = pub.Run(pctx) }()
	return func(context.Context) error { pub.SetStopReason(a.stopReason); cancel(); <-done; return nil }, nil
}

// startModels sets up the model manager (the models are loaded by startWatchers). The watched directory is
// created when missing, so a fresh install can start before its first bundle arrives (readyz says why it is
// not ready until then).
func (a *Agent) startModels(context.Context) (func(context.Context) error, error) {
	mc := a.cfg.Models
	if mc.Bundle == "" {
		if err := os.MkdirAll(mc.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("models dir: %w", err)
		}
	}
	pub := a.pub
	a.models = newModelManager(a.opts.Open, mc.Dir, mc.Bundle, a.log.With("component", "models"),
		func(s ModelStatus) {
			pub.SetModelStatus(mqttout.ModelStatus{Name: s.Name, Version: s.Version, State: s.State, Reason: s.Reason, Since: s.Since})
			a.refreshThresholdStates()
			// The threshold number's bounds follow the model's calibration.
			pub.RepublishDiscovery()
		})
	a.modelsUp.Store(true)
	a.models.setStatus(a.models.status)
	for _, c := range a.cams {
		a.refreshThresholdState(c)
	}
	return func(context.Context) error { a.models.close(); return nil }, nil
}

// startHTTP serves the API (and whatever Options.OnHTTP mounts) when http.listen is set.
func (a *Agent) startHTTP(context.Context) (func(context.Context) error, error) {
	if a.cfg.HTTP.Listen == "" {
		return nil, nil
	}
	auth, err := a.httpAuth()
	if err != nil {
		return nil, err
	}
	a.http = httpapi.New(a, a.log.With("component", "http"), auth)
	if auth == nil && !config.IsLoopback(a.cfg.HTTP.Listen) {
		a.log.Warn("the HTTP API listens beyond loopback without http.auth: anyone who reaches it can push images "+
			"and triggers (docs/operations.md, Securing the HTTP API)", "listen", a.cfg.HTTP.Listen)
	}
	if a.opts.OnHTTP != nil {
		a.opts.OnHTTP(a.http)
	}
	if err := a.http.Listen(a.cfg.HTTP.Listen); err != nil {
		return nil, err
	}
	go func() {
		if err := a.http.Serve(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("http server stopped", "err", err)
		}
	}()
	return func(ctx context.Context) error {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return a.http.Shutdown(sctx)
	}, nil
}

// startWorkers starts the scoring workers. Their stop drains the queues: the scheduler closes, the workers
// finish what is queued, and past agent.shutdown_timeout the frames still queued are abandoned (left
// unacknowledged with their sources) and in-flight scoring is cancelled.
func (a *Agent) startWorkers(ctx context.Context) (func(context.Context) error, error) {
	wctx, cancel := context.WithCancel(ctx)
	var workers sync.WaitGroup
	for i := 0; i < a.cfg.Models.Workers; i++ {
		workers.Add(1)
		go func(id int) { defer workers.Done(); a.worker(wctx, id) }(i)
	}
	return func(context.Context) error {
		defer cancel()
		a.sched.close()
		drained := make(chan struct{})
		// Drained means committed: the results the workers handed to the committer are on disk and their
		// frames acknowledged before the publisher's final flush.
		go func() { workers.Wait(); a.committer.Flush(); close(drained) }()
		select {
		case <-drained:
		case <-time.After(a.cfg.Agent.ShutdownTimeout):
			left := a.sched.abandon()
			for _, j := range left {
				j.trig.finish(scoreReply{err: errors.New("the daemon stopped before this frame was scored")})
			}
			a.log.Warn("drain timeout: frames left unscored stay with their sources (folder files are re-read at the next start)", "frames", len(left))
			cancel()
			<-drained
		}
		return nil
	}, nil
}

// startWatchers loads the first model and then watches the models directory for hot-swaps, prunes the store
// hourly and pets the systemd watchdog.
func (a *Agent) startWatchers(ctx context.Context) (func(context.Context) error, error) {
	mctx, cancel := context.WithCancel(ctx)
	notify := a.opts.Notifier
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
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
	go func() { defer wg.Done(); a.housekeeping(mctx) }()
	go func() { defer wg.Done(); notify.Watchdog(mctx, sdnotify.WatchdogInterval(), a.alive) }()
	return func(context.Context) error { cancel(); wg.Wait(); return nil }, nil
}

// startSources runs every camera's source; its stop ends them and waits until their last frame is queued.
func (a *Agent) startSources(ctx context.Context) (func(context.Context) error, error) {
	// Process-wide, before the first frame is converted; 0 asks OpenCV for its default back (a negative count).
	if n := a.cfg.Agent.CVThreads(); n > 0 {
		capture.SetOpenCVThreads(n)
	} else {
		capture.SetOpenCVThreads(-1)
	}
	sctx, cancel := context.WithCancel(ctx)
	var sources sync.WaitGroup
	for _, c := range a.cams {
		sources.Add(1)
		go func(c *camera) { defer sources.Done(); a.runCamera(sctx, c) }(c)
	}
	return func(context.Context) error { cancel(); sources.Wait(); return nil }, nil
}
