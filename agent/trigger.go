package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/agent/store"
	"github.com/vlmdiff/edge/capture"
)

// Trigger mode: a camera with `trigger: true` scores a frame only when asked, the way a PLC asks a smart
// camera for one inspection per part. The trigger's JSON (an `id` for the part, lot or serial plus any user
// fields) travels with the frame and comes back unchanged in the result's `trigger`, so the PLC gateway pairs
// each answer with its request without relying on timing. A trigger that finds no frame within the camera's
// trigger_timeout is refused on <prefix>/<camera>/trigger/rejected, so a gateway never waits forever.

// MaxTriggerBytes bounds a trigger payload: it is echoed in a result, and results must stay small.
const MaxTriggerBytes = 4096

// maxPendingTriggers bounds the triggers waiting for a frame per camera; more are refused (429 over HTTP).
const maxPendingTriggers = 64

// LatTrigger is the latency_ms key for trigger (or /api/score request) -> result committed.
const LatTrigger = "trigger_to_result"

// Errors of triggers and pushed images; the HTTP API maps them onto status codes.
var (
	errNotTriggerMode = errors.New("camera is not in trigger mode (set trigger: true in its config)")
)

// trigger is one request for a scored frame.
type trigger struct {
	payload  json.RawMessage // the trigger's JSON object, compacted; nil = nothing to echo
	at       time.Time
	deadline time.Time
	reply    chan scoreReply // nil, or buffered(1): who waits for the result (HTTP)
}

// scoreReply is what a waiting requester gets: the committed record and heatmap, or why there is none.
type scoreReply struct {
	rec     *store.Record
	heatmap []byte
	format  string
	err     error
}

func (t *trigger) finish(r scoreReply) {
	if t != nil && t.reply != nil {
		select {
		case t.reply <- r:
		default:
		}
	}
}

// ParseTrigger checks a trigger payload and returns it compacted: empty means `{}`; otherwise it must be a
// JSON object of at most MaxTriggerBytes whose `id`, if present, is a string or a number. The errors are
// short and quote the offending input, so they can be logged and echoed safely.
func ParseTrigger(payload []byte) (json.RawMessage, error) {
	if len(payload) > MaxTriggerBytes {
		return nil, fmt.Errorf("trigger payload is %d bytes; at most %d", len(payload), MaxTriggerBytes)
	}
	p := bytes.TrimSpace(payload)
	if len(p) == 0 {
		return json.RawMessage("{}"), nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(p, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("trigger payload %s is not a JSON object", quoteShort(p))
	}
	if id, ok := obj["id"]; ok {
		var v any
		_ = json.Unmarshal(id, &v)
		switch v.(type) {
		case string, float64:
		default:
			return nil, fmt.Errorf("trigger id %s must be a string or a number", quoteShort(id))
		}
	}
	var b bytes.Buffer
	if err := json.Compact(&b, p); err != nil {
		return nil, fmt.Errorf("trigger payload %s: %v", quoteShort(p), err)
	}
	return json.RawMessage(b.Bytes()), nil
}

// quoteShort quotes at most 64 bytes of untrusted input for an error message.
func quoteShort(b []byte) string {
	if len(b) > 64 {
		return fmt.Sprintf("%q...", b[:64])
	}
	return fmt.Sprintf("%q", b)
}

// triggerQueue holds a camera's triggers waiting for a frame, oldest first.
type triggerQueue struct {
	mu       sync.Mutex
	pending  []*trigger
	notify   chan struct{} // poked when a trigger is added
	timeouts atomic.Uint64
	accepted atomic.Uint64
	idle     atomic.Uint64 // frames discarded because no trigger was waiting (live sources)
}

func (q *triggerQueue) init() { q.notify = make(chan struct{}, 1) }

func (q *triggerQueue) add(t *trigger) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) >= maxPendingTriggers {
		return fmt.Errorf("%d triggers already wait for a frame: %w", len(q.pending), httpapi.ErrBusy)
	}
	q.pending = append(q.pending, t)
	q.accepted.Add(1)
	select {
	case q.notify <- struct{}{}:
	default:
	}
	return nil
}

// pop takes the oldest trigger issued at or before frameTime (zero: any), nil if none.
func (q *triggerQueue) pop(frameTime time.Time) *trigger {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) == 0 || (!frameTime.IsZero() && q.pending[0].at.After(frameTime)) {
		return nil
	}
	t := q.pending[0]
	q.pending[0] = nil
	q.pending = q.pending[1:]
	return t
}

// expired removes and returns the triggers past their deadline.
func (q *triggerQueue) expired(now time.Time) []*trigger {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []*trigger
	kept := q.pending[:0]
	for _, t := range q.pending {
		if now.After(t.deadline) {
			out = append(out, t)
		} else {
			kept = append(kept, t)
		}
	}
	clear(q.pending[len(kept):])
	q.pending = kept
	return out
}

// drainAll removes every pending trigger (shutdown).
func (q *triggerQueue) drainAll() []*trigger {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.pending
	q.pending = nil
	return out
}

// enqueueTrigger asks a trigger-mode camera for one scored frame. payload is the trigger JSON (see
// ParseTrigger). With reply set, the result (or the reason there is none) is sent there once.
func (a *Agent) enqueueTrigger(camera string, payload []byte, reply chan scoreReply) error {
	c, ok := a.byName[camera]
	if !ok {
		return fmt.Errorf("camera %q: %w", camera, httpapi.ErrNotFound)
	}
	if !c.cfg.Trigger {
		return fmt.Errorf("camera %q: %w: %w", camera, errNotTriggerMode, httpapi.ErrBadRequest)
	}
	p, err := ParseTrigger(payload)
	if err != nil {
		return fmt.Errorf("%w: %w", err, httpapi.ErrBadRequest)
	}
	now := time.Now()
	return c.trig.add(&trigger{payload: p, at: now, deadline: now.Add(c.cfg.TriggerTimeout), reply: reply})
}

// rejectTrigger tells the requester (MQTT <prefix>/<camera>/trigger/rejected, and an HTTP waiter) that a
// trigger got no result.
func (a *Agent) rejectTrigger(c *camera, t *trigger, reason error) {
	a.log.Warn("trigger refused", "camera", c.name, "trigger", string(t.payload), "err", reason)
	if a.pub != nil {
		a.pub.RejectTrigger(c.name, t.payload, reason.Error())
	}
	t.finish(scoreReply{err: reason})
}

var errTriggerTimeout = errors.New("no frame arrived within the camera's trigger_timeout")

// forwardTriggered is forward for a trigger-mode camera. A live source (device, stream) keeps running and
// its frames are discarded until a trigger waits; the first frame captured after the trigger is scored. A
// replayable source (folder, file, synthetic) is paused instead: its next frame is held, unacknowledged,
// until a trigger comes, so no folder file is lost between triggers.
func (a *Agent) forwardTriggered(ctx context.Context, c *camera, in <-chan capture.Frame) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	defer func() {
		for _, t := range c.trig.drainAll() {
			a.rejectTrigger(c, t, errors.New("the daemon is stopping"))
		}
	}()
	expire := func() {
		for _, t := range c.trig.expired(time.Now()) {
			c.trig.timeouts.Add(1)
			a.rejectTrigger(c, t, errTriggerTimeout)
		}
	}
	var held *capture.Frame
loop:
	for {
		if held != nil {
			if t := c.trig.pop(time.Time{}); t != nil {
				f := *held
				held = nil
				if !a.pushTriggered(ctx, c, f, t) {
					break loop
				}
				continue
			}
			select {
			case <-ctx.Done():
				// Not acknowledged: a folder file stays for the next start.
				break loop
			case <-c.trig.notify:
			case <-tick.C:
				expire()
			}
			continue
		}
		select {
		case f, ok := <-in:
			if !ok {
				return
			}
			c.frames.Add(1)
			if a.skipProcessed(c, f) {
				continue
			}
			if !c.dropOldest {
				held = &f
				continue
			}
			ft := f.Time
			if ft.IsZero() {
				ft = time.Now()
			}
			t := c.trig.pop(ft)
			if t == nil {
				c.trig.idle.Add(1)
				f.Ack(true)
				f.Release()
				continue
			}
			if !a.pushTriggered(ctx, c, f, t) {
				break loop
			}
		case <-tick.C:
			expire()
		case <-ctx.Done():
			break loop
		}
	}
	// Shutting down: let the source finish without scoring more.
	for range in {
	}
}

// pushTriggered queues a frame with its trigger; false when the daemon is stopping.
func (a *Agent) pushTriggered(ctx context.Context, c *camera, f capture.Frame, t *trigger) bool {
	j := &job{cam: c, frame: f, received: time.Now(), trig: t}
	ev, ok := a.sched.push(ctx, j)
	if ev != nil {
		c.drops.Add(1)
		ev.frame.Ack(false)
		ev.frame.Release()
		if ev.trig != nil {
			a.rejectTrigger(c, ev.trig, errors.New("the camera's queue was full; the frame for this trigger was dropped"))
		}
	}
	if !ok {
		a.rejectTrigger(c, t, errors.New("the daemon is stopping"))
		return false
	}
	return true
}

// skipProcessed acknowledges and skips a folder file that an earlier run already committed (a crash between
// commit and the file's move).
func (a *Agent) skipProcessed(c *camera, f capture.Frame) bool {
	if f.Origin == "" {
		return false
	}
	done, err := a.store.Processed(c.name, originKey(f)) // the file version, not its name: names are reused
	if err != nil {
		a.log.Warn("checking processed origins", "camera", c.name, "file", f.Origin, "err", err)
		return false
	}
	if done {
		c.skipped.Add(1)
		a.log.Info("file already scored by an earlier run; not scoring it twice", "camera", c.name, "file", f.Origin)
		f.Ack(true)
	}
	return done
}

// annotate fills what a result carries about its request: the source file name, the echoed trigger and the
// trigger-to-result latency (measured at commit).
func annotate(rec *store.Record, j *job, lat map[string]float64, now time.Time) {
	if j.frame.Origin != "" {
		rec.Source = filepath.Base(j.frame.Origin)
	}
	if j.trig != nil {
		if len(j.trig.payload) > 0 {
			rec.Trigger = j.trig.payload
		}
		lat[LatTrigger] = ms(now.Sub(j.trig.at))
	}
}
