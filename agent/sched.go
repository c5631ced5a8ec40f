package agent

import (
	"context"
	"sync"
	"time"

	"github.com/vlmdiff/edge/capture"
)

// job is a frame on its way through the daemon.
type job struct {
	cam      *camera
	frame    capture.Frame
	seq      uint64    // the daemon's per-camera seq, assigned when a worker takes the frame
	received time.Time // when the frame left its source
	taken    time.Time // when a worker took it
	// trig is the trigger this frame answers (trigger-mode cameras, POST /api/score), nil for free-running.
	trig *trigger
	// class overrides the camera's class (POST /api/score's class); heatmap forces a heatmap (heatmap=1).
	class   string
	heatmap bool
}

// scheduler holds one bounded queue per camera and hands frames to the scoring workers round-robin across
// cameras, so a fast camera cannot starve a slow one. Live cameras' queues drop their oldest frame when full
// (the newest picture is the useful one); replayable sources (folder, file, synthetic) block instead, because
// a dropped folder file would be a lost part.
//
// One mutex guards everything: the critical sections are a few pointer moves, far below a model's
// milliseconds.
type scheduler struct {
	mu     sync.Mutex
	avail  *sync.Cond // signalled when a frame is queued or the scheduler closes
	space  *sync.Cond // signalled when a frame leaves a queue
	cams   []*camera
	next   int // round-robin position
	closed bool
}

func newScheduler(cams []*camera) *scheduler {
	s := &scheduler{cams: cams}
	s.avail = sync.NewCond(&s.mu)
	s.space = sync.NewCond(&s.mu)
	return s
}

// push queues a frame for its camera. For a dropping queue it evicts the oldest frame when full and returns it
// (the caller counts it and gives the frame back to its source); for a blocking queue it waits for space until
// ctx ends (then it returns the frame itself as not queued). ok reports whether f was queued.
func (s *scheduler) push(ctx context.Context, j *job) (evicted *job, ok bool) {
	c := j.cam
	s.mu.Lock()
	defer s.mu.Unlock()
	if !c.dropOldest {
		// Wake the wait when ctx ends: a blocked source must not hold up shutdown.
		stop := context.AfterFunc(ctx, func() {
			s.mu.Lock()
			s.space.Broadcast()
			s.mu.Unlock()
		})
		defer stop()
		for len(c.queue) >= c.queueCap && !s.closed && ctx.Err() == nil {
			s.space.Wait()
		}
		if s.closed || ctx.Err() != nil {
			return nil, false
		}
	} else if len(c.queue) >= c.queueCap {
		evicted = c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
	}
	if s.closed {
		return evicted, false
	}
	c.queue = append(c.queue, j)
	s.avail.Signal()
	return evicted, true
}

// take waits for at least one frame and returns up to max frames, round-robin over cameras, with their seqs
// assigned in queue order. It returns nil once the scheduler is closed and, when drain is set, empty.
// batchWait > 0 lets a batch fill: after the first frame it waits up to that long for more.
func (s *scheduler) take(max int, batchWait time.Duration) []*job {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.empty() && !s.closed {
		s.avail.Wait()
	}
	if s.empty() {
		return nil
	}
	out := s.popLocked(max, nil)
	if len(out) < max && batchWait > 0 && !s.closed {
		deadline := time.Now().Add(batchWait)
		for len(out) < max && !s.closed {
			left := time.Until(deadline)
			if left <= 0 {
				break
			}
			t := time.AfterFunc(left, func() { s.mu.Lock(); s.avail.Broadcast(); s.mu.Unlock() })
			s.avail.Wait()
			t.Stop()
			out = s.popLocked(max, out)
		}
	}
	s.space.Broadcast()
	return out
}

func (s *scheduler) empty() bool {
	for _, c := range s.cams {
		if len(c.queue) > 0 {
			return false
		}
	}
	return true
}

// popLocked takes frames one camera at a time, round-robin, and assigns each its camera's next seq. The seq
// is given here, not at capture, so that frames dropped from a full queue leave no hole: a gap in a camera's
// seq means a frame that was taken but failed (counted and reported), nothing else.
func (s *scheduler) popLocked(max int, out []*job) []*job {
	now := time.Now()
	for len(out) < max && !s.empty() {
		c := s.cams[s.next%len(s.cams)]
		s.next++
		if len(c.queue) == 0 {
			continue
		}
		j := c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		j.seq = c.nextSeq()
		j.taken = now
		out = append(out, j)
	}
	return out
}

// close wakes every waiter; take keeps returning queued frames until the queues are empty.
func (s *scheduler) close() {
	s.mu.Lock()
	s.closed = true
	s.avail.Broadcast()
	s.space.Broadcast()
	s.mu.Unlock()
}

// abandon empties every queue and returns the frames that never reached a worker (shutdown past its drain
// deadline); their sources are not acknowledged, so a folder file stays and is read again next start.
func (s *scheduler) abandon() []*job {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*job
	for _, c := range s.cams {
		out = append(out, c.queue...)
		c.queue = nil
	}
	s.space.Broadcast()
	return out
}

// depth returns a camera's queue length.
func (s *scheduler) depth(c *camera) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(c.queue)
}
