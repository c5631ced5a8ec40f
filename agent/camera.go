package agent

import (
	"context"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/capture"
)

// camera is one configured camera's runtime state: its source, its queue, its counters and the latest
// frame/heatmap for the HTTP API.
type camera struct {
	name       string
	cfg        config.Camera
	src        capture.Source
	dropOldest bool // live sources drop the oldest queued frame; replayable ones block
	queueCap   int
	queue      []*job // guarded by scheduler.mu

	seq atomic.Uint64 // last seq given out; continues the store's after a restart

	// Commit order: results are committed in seq order even with several workers, so consumers see each
	// camera's results in order. turn is the last seq whose result was committed or given up.
	turnMu sync.Mutex
	turnC  *sync.Cond
	turn   uint64

	threshold atomic.Uint64 // math.Float64bits of the runtime override; NaN = none

	trig triggerQueue // trigger mode: triggers waiting for a frame (trigger.go)

	// evidence (keep_evidence.go): OK results seen (for ok_every), files kept, failed writes
	evidenceOK, evidenceKept, evidenceErrs atomic.Uint64

	// counters
	frames, scored, ng, drops, decodeErrs, scoreErrs, skipped, rateLimited, samples atomic.Uint64
	lastScore                                                                       atomic.Uint64 // Float64bits
	fps                                                                             rateMeter

	mu            sync.Mutex
	state         string
	reason        string
	since         time.Time
	lastJPEG      []byte // latest frame, JPEG (encoded lazily)
	lastFrame     capture.Frame
	lastFrameSeq  uint64 // lastFrame's seq (a false alarm on the latest result takes its frame from here)
	lastHeatmap   []byte
	lastHMTime    time.Time
	lastTransient time.Time
	sampleN       int
	errLog        burstLogger
}

func newCamera(cfg config.Camera, src capture.Source, lastSeq uint64) *camera {
	c := &camera{name: cfg.CameraName(), cfg: cfg, src: src, queueCap: cfg.Queue,
		dropOldest: cfg.Kind == capture.KindDevice || cfg.Kind == capture.KindURL,
		state:      "starting", since: time.Now()}
	c.seq.Store(lastSeq)
	c.turn = lastSeq
	c.turnC = sync.NewCond(&c.turnMu)
	c.threshold.Store(math.Float64bits(math.NaN()))
	c.trig.init()
	return c
}

func (c *camera) nextSeq() uint64 { return c.seq.Add(1) }

// waitTurn blocks until every lower seq of this camera is committed or given up.
func (c *camera) waitTurn(seq uint64) {
	c.turnMu.Lock()
	for c.turn < seq-1 {
		c.turnC.Wait()
	}
	c.turnMu.Unlock()
}

// doneTurn marks seq finished and lets the next one commit.
func (c *camera) doneTurn(seq uint64) {
	c.turnMu.Lock()
	if seq > c.turn {
		c.turn = seq
	}
	c.turnC.Broadcast()
	c.turnMu.Unlock()
}

// thresholdOverride returns the runtime override, if any.
func (c *camera) thresholdOverride() (float64, bool) {
	v := math.Float64frombits(c.threshold.Load())
	if math.IsNaN(v) {
		if c.cfg.Threshold != nil {
			return *c.cfg.Threshold, true
		}
		return 0, false
	}
	return v, true
}

func (c *camera) setState(state, reason string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == state && c.reason == reason {
		return false
	}
	c.state, c.reason, c.since = state, reason, time.Now()
	return true
}

// rateMeter is an exponentially smoothed events-per-second meter.
type rateMeter struct {
	mu   sync.Mutex
	last time.Time
	rate float64
}

func (r *rateMeter) tick(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() {
		dt := now.Sub(r.last).Seconds()
		if dt > 0 {
			inst := 1 / dt
			a := 1 - math.Exp(-dt/5) // ~5 s time constant
			r.rate += a * (inst - r.rate)
		}
	} else {
		r.rate = 0
	}
	r.last = now
}

func (r *rateMeter) value(now time.Time) float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last.IsZero() || now.Sub(r.last) > 10*time.Second {
		return 0
	}
	return r.rate
}

// burstLogger logs the first error of a burst and then a summary, so a camera spewing corrupt frames cannot
// flood the journal: at most one line per interval, carrying how many were suppressed.
type burstLogger struct {
	last       time.Time
	suppressed int
}

func (b *burstLogger) log(log *slog.Logger, interval time.Duration, msg string, args ...any) {
	now := time.Now()
	if !b.last.IsZero() && now.Sub(b.last) < interval {
		b.suppressed++
		return
	}
	if b.suppressed > 0 {
		args = append(args, "suppressed_since_last", b.suppressed)
	}
	b.suppressed = 0
	b.last = now
	log.Warn(msg, args...)
}

// forward moves frames from the source to the scheduler, applying the rate limit and skipping folder files
// that an earlier run already committed (a crash between commit and the file's move).
func (a *Agent) forward(ctx context.Context, c *camera, in <-chan capture.Frame) {
	var lastAccepted time.Time
	minGap := time.Duration(0)
	if c.cfg.RateLimit > 0 {
		minGap = time.Duration(float64(time.Second) / c.cfg.RateLimit)
	}
	for f := range in {
		now := time.Now()
		c.frames.Add(1)
		if minGap > 0 && !lastAccepted.IsZero() && now.Sub(lastAccepted) < minGap && f.Origin == "" {
			c.rateLimited.Add(1)
			f.Ack(true)
			f.Release()
			continue
		}
		if a.skipProcessed(c, f) {
			continue
		}
		lastAccepted = now
		j := &job{cam: c, frame: f, received: now}
		ev, ok := a.sched.push(ctx, j)
		if ev != nil {
			c.drops.Add(1)
			ev.frame.Ack(false)
			ev.frame.Release()
		}
		if !ok {
			// Shutting down before the frame was queued: not acknowledged, so a folder file stays for the
			// next start. Drain the channel so the source can return.
			continue
		}
	}
}

// originKey is what the store remembers a scored folder file by: the file version's identity (name, size,
// mtime, inode, content hash) when the source gives one, so a camera that reuses a file name is scored
// every time and only the very same file met again after a crash is skipped.
func originKey(f capture.Frame) string {
	if f.OriginID != "" {
		return f.OriginID
	}
	return f.Origin
}
