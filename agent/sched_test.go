package agent

import (
	"context"
	"testing"
	"time"

	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/capture"
)

func testCamera(name, kind string, queue int, lastSeq uint64) *camera {
	cc := config.Camera{Queue: queue}
	cc.Name, cc.Kind = name, kind
	return newCamera(cc, nil, lastSeq)
}

// TestSchedulerQueues: live cameras drop the oldest frame when full, replayable ones block until space or
// cancellation; seqs continue from the store's last seq in queue order; cameras are served round-robin.
func TestSchedulerQueues(t *testing.T) {
	live := testCamera("live", capture.KindURL, 2, 0)
	folder := testCamera("folder", capture.KindFolder, 2, 41)
	s := newScheduler([]*camera{live, folder})
	ctx := context.Background()
	mk := func(c *camera, n uint64) *job { return &job{cam: c, frame: capture.Frame{Seq: n}} }

	var dropped []uint64
	for i := uint64(1); i <= 4; i++ {
		ev, ok := s.push(ctx, mk(live, i))
		if !ok {
			t.Fatalf("live push %d refused", i)
		}
		if ev != nil {
			dropped = append(dropped, ev.frame.Seq)
		}
	}
	if len(dropped) != 2 || dropped[0] != 1 || dropped[1] != 2 {
		t.Fatalf("dropped %v, want the oldest two [1 2]", dropped)
	}
	for i := uint64(1); i <= 2; i++ {
		if _, ok := s.push(ctx, mk(folder, i)); !ok {
			t.Fatalf("folder push %d refused", i)
		}
	}
	// A third folder frame must wait; with a cancelled context it gives up without queueing.
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if ev, ok := s.push(cctx, mk(folder, 3)); ok || ev != nil {
		t.Fatalf("blocking queue accepted a frame beyond its bound (ok=%v)", ok)
	}

	got := s.take(10, 0)
	type want struct {
		cam       string
		capSeq    uint64
		daemonSeq uint64
	}
	exp := []want{{"live", 3, 1}, {"folder", 1, 42}, {"live", 4, 2}, {"folder", 2, 43}}
	if len(got) != len(exp) {
		t.Fatalf("took %d frames, want %d", len(got), len(exp))
	}
	for i, w := range exp {
		if got[i].cam.name != w.cam || got[i].frame.Seq != w.capSeq || got[i].seq != w.daemonSeq {
			t.Errorf("frame %d: %s capture seq %d daemon seq %d; want %+v", i, got[i].cam.name, got[i].frame.Seq, got[i].seq, w)
		}
	}

	// A blocked producer is released by space.
	for i := uint64(5); i <= 6; i++ {
		s.push(ctx, mk(folder, i))
	}
	done := make(chan bool)
	go func() { _, ok := s.push(ctx, mk(folder, 7)); done <- ok }()
	if b := s.take(1, 0); len(b) != 1 || b[0].frame.Seq != 5 {
		t.Fatalf("take: %v", b)
	}
	if !<-done {
		t.Fatal("blocked push not released by take")
	}
	// Closing: take drains what is queued, then returns nil.
	s.close()
	n := 0
	for b := s.take(1, 0); b != nil; b = s.take(1, 0) {
		n += len(b)
	}
	if n != 2 {
		t.Fatalf("drained %d after close, want 2", n)
	}
}

// TestCommitTurns: results commit in seq order even when workers finish out of order.
func TestCommitTurns(t *testing.T) {
	c := testCamera("c", capture.KindFolder, 4, 10)
	order := make(chan uint64, 3)
	var started = make(chan struct{}, 3)
	for _, seq := range []uint64{13, 12, 11} {
		go func(seq uint64) {
			started <- struct{}{}
			c.waitTurn(seq)
			order <- seq
			c.doneTurn(seq)
		}(seq)
	}
	for i := 0; i < 3; i++ {
		<-started
	}
	for _, want := range []uint64{11, 12, 13} {
		if got := <-order; got != want {
			t.Fatalf("committed %d, want %d", got, want)
		}
	}
}

func TestHistogramQuantile(t *testing.T) {
	var h histogram
	for i := 0; i < 100; i++ {
		h.observe(3) // bucket (2,5]
	}
	cases := []struct{ q, lo, hi float64 }{{0.5, 2, 5}, {0.95, 2, 5}}
	for _, c := range cases {
		if v := h.quantile(c.q); v < c.lo || v > c.hi {
			t.Errorf("q%.2f = %v, want within [%v, %v]", c.q, v, c.lo, c.hi)
		}
	}
	var empty histogram
	if empty.quantile(0.5) != 0 {
		t.Error("empty histogram quantile not 0")
	}
}
