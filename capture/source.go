package capture

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Frame is one captured picture. Pix is packed RGB8, row-major, Width*Height*3 bytes, in Go memory.
type Frame struct {
	Camera string
	// Seq counts the frames one Source emitted, from 1; it keeps counting across reconnects and loops.
	Seq uint64
	// Time is when the frame was captured: the read time for streams, the file's mtime for folder sources.
	Time   time.Time
	Width  int
	Height int
	Pix    []byte
	// Origin is the file a folder source read the frame from; empty for other kinds.
	Origin string
	// OriginID identifies the file's content at the time it was read (name, size, mtime, inode and a content
	// hash), so a file rewritten under the same name is a new origin while the very same file met again after
	// a crash is not. Empty for other kinds.
	OriginID string
	// Truth is the ground truth when the source knows it (synthetic): "good" or the defect kind ("blob",
	// "scratch"). Empty when unknown.
	Truth string
	// Done, when not nil, must be called once the consumer has taken responsibility for the frame's result
	// (ok) or given up on it (!ok). Folder sources move or delete the file only then, and hold at most
	// MaxInFlight frames without Done. Calls after the first do nothing. Use Ack, which tolerates nil.
	Done func(ok bool)
	// buf is Pix's pooled memory (stream sources), nil when Pix is an ordinary slice; see Retain and Release.
	buf *pixBuffer
}

// Ack calls f.Done when there is one.
func (f Frame) Ack(ok bool) {
	if f.Done != nil {
		f.Done(ok)
	}
}

// State is a source's condition as reported in events and Stats.
type State string

// States. A source starts in StateStarting, which is never sent as an event.
const (
	StateStarting State = "starting"
	StateOnline   State = "online"
	StateOffline  State = "offline"
	StateError    State = "error"
	StateFrozen   State = "frozen"
)

// Event reports a source's state change or, when Transient, one frame or file that could not be read.
type Event struct {
	Camera string
	State  State
	Reason string
	Time   time.Time
	// Transient marks a report about a single frame or file (decode error, file vanished, move failed); the
	// source's state (Stats.State) did not change. Agents log these and keep the status topic as it was.
	Transient bool
	// File names the file a Transient folder event is about.
	File string
}

// Stats are a source's counters for the agent's metrics. All counts are since New.
type Stats struct {
	State State
	// Frames counts frames delivered on out.
	Frames uint64
	// DecodeErrors counts frames or files that could not be decoded.
	DecodeErrors uint64
	// Reconnects counts failed opens and re-opens after a lost stream.
	Reconnects uint64
	// Dropped counts frames a live source dropped because the consumer was busy.
	Dropped uint64
	// Refused counts image files refused before decoding (over the image limits, or no readable header);
	// they are counted in DecodeErrors too.
	Refused uint64
	// Ignored counts entries of a watched folder that carry an image name but are not regular files
	// (symlinks, directories, devices); each is reported once and left alone.
	Ignored uint64
	// InFlight is the number of folder frames delivered but not yet acknowledged; Backlog the number of files
	// seen and waiting (being written, or complete and queued). Zero for other kinds.
	InFlight int
	Backlog  int
	// LastFrame is the capture time of the last delivered frame.
	LastFrame time.Time
}

// Source is one camera or camera-like input.
type Source interface {
	// Name is the camera name frames and events carry (Config.Name).
	Name() string
	// Run captures until ctx is done or a finite source is exhausted; see the package doc for the contract.
	// Only one Run may be active per Source at a time.
	Run(ctx context.Context, out chan<- Frame, events chan<- Event) error
	// Stats returns the current counters; safe to call from any goroutine.
	Stats() Stats
}

// counters is the shared Stats implementation.
type counters struct {
	frames, decodeErrors, reconnects, dropped atomic.Uint64
	refused, ignored                          atomic.Uint64
	mu                                        sync.Mutex
	state                                     State
	reason                                    string
	lastFrame                                 time.Time
}

func (c *counters) snapshot() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{
		State:        c.state,
		Frames:       c.frames.Load(),
		DecodeErrors: c.decodeErrors.Load(),
		Reconnects:   c.reconnects.Load(),
		Dropped:      c.dropped.Load(),
		Refused:      c.refused.Load(),
		Ignored:      c.ignored.Load(),
		LastFrame:    c.lastFrame,
	}
}

// setState records s and its reason and reports whether the state changed or, for a state other than
// online, its reason did: a camera that stays offline for a new reason (a missing video file replaced by
// garbage) must not keep reporting the old one, while an online camera's wording ("receiving frames",
// "picture moving again") is not news.
func (c *counters) setState(s State, reason string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == s && (s == StateOnline || c.reason == reason) {
		return false
	}
	c.state, c.reason = s, reason
	return true
}

func (c *counters) delivered(t time.Time) {
	c.frames.Add(1)
	c.mu.Lock()
	c.lastFrame = t
	c.mu.Unlock()
}

// reporter turns state changes into events: a state change is sent only when the state differs from the
// recorded one, and blocks (until the run's context ends); transient reports never block.
type reporter struct {
	camera string
	c      *counters
	emit   func(ev Event, block bool)
}

// directEmit sends events straight to a consumer channel, which may be nil.
func directEmit(ctx context.Context, events chan<- Event) func(Event, bool) {
	return func(ev Event, block bool) {
		if events == nil {
			return
		}
		if !block {
			select {
			case events <- ev:
			default:
			}
			return
		}
		select {
		case events <- ev:
		case <-ctx.Done():
		}
	}
}

// state records s and sends an event when it or its reason differs from the current one.
func (r reporter) state(s State, reason string) {
	if !r.c.setState(s, reason) {
		return
	}
	r.emit(Event{Camera: r.camera, State: s, Reason: reason, Time: time.Now()}, true)
}

// transient sends a per-frame or per-file report; the state stays as it is.
func (r reporter) transient(s State, file, reason string) {
	r.emit(Event{Camera: r.camera, State: s, Reason: reason, Time: time.Now(), Transient: true, File: file}, false)
}

// sleepCtx waits d or until ctx is done; it reports whether the full wait elapsed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// retryIn appends when the next attempt comes to an offline reason, as docs/mqtt.md shows it.
func retryIn(reason string, d time.Duration) string {
	return fmt.Sprintf("%s, retry in %s", reason, d.Round(100*time.Millisecond))
}
