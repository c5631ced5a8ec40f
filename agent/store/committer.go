package store

import (
	"sync"
	"sync/atomic"
	"time"
)

// Committer groups results and outbox acknowledgements into shared transactions (group commit). Every
// bbolt transaction costs a page write-out and an fdatasync whatever it holds, so at 120 frames/s a
// transaction per result and one per delivered window were most of the daemon's CPU outside the model and
// heatmaps. The Committer commits what arrived since its last transaction at most once per interval: an
// isolated result is committed at once, a stream of them shares one transaction per interval.
//
// Durability is unchanged: a result's done callback runs only after the transaction holding it is on disk,
// and its outbox messages exist for the drainer only from then on, so nothing is acknowledged to a source
// or published before it is durable; a crash loses only results whose callbacks never ran, which their
// sources still own (a folder file stays where it is). Acknowledgements wait for the next transaction too:
// one lost in a crash means a message delivered twice, which QoS 1 allows, never a lost one.
type Committer struct {
	st       *Store
	interval time.Duration

	mu      sync.Mutex
	wake    *sync.Cond // signalled on new work and on close
	space   *sync.Cond // signalled when pending shrinks
	idle    *sync.Cond // signalled after each group, for Flush
	pending []committing
	acks    []uint64
	busy    bool // a group is being committed or its callbacks run
	closed  bool
	done    chan struct{}

	groups  atomic.Uint64
	results atomic.Uint64
}

type committing struct {
	Pending
	done func(error)
}

// maxPending bounds the results waiting for a transaction (each holds its frame until its callback): past
// it Submit waits, which holds the worker back, and a live camera's queue drops its oldest frames instead.
const maxPending = 64

// NewCommitter starts a Committer on s that commits at most once per interval (0: as soon as the previous
// transaction ended; results arriving during one still share the next). Close it before closing s.
func (s *Store) NewCommitter(interval time.Duration) *Committer {
	c := &Committer{st: s, interval: max(interval, 0), done: make(chan struct{})}
	c.wake = sync.NewCond(&c.mu)
	c.space = sync.NewCond(&c.mu)
	c.idle = sync.NewCond(&c.mu)
	go c.run()
	return c
}

// Submit queues a result for the next transaction; done is called with Commit's error for it once that
// transaction ended (nil: on disk). Results are committed in Submit order, so a caller that submits a
// camera's results in seq order gets its outbox messages in that order. Submit waits while maxPending
// results are queued. After Close, done is called at once with ErrClosed.
func (c *Committer) Submit(p Pending, done func(error)) {
	c.mu.Lock()
	for len(c.pending) >= maxPending && !c.closed {
		c.space.Wait()
	}
	if c.closed {
		c.mu.Unlock()
		done(ErrClosed)
		return
	}
	c.pending = append(c.pending, committing{Pending: p, done: done})
	c.wake.Signal()
	c.mu.Unlock()
}

// Ack queues delivered outbox messages for removal in the next transaction. Until then PeekAfter, not Peek,
// skips them. After Close they are removed at once.
func (c *Committer) Ack(ids ...uint64) error {
	if len(ids) == 0 {
		return nil
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.st.Ack(ids...)
	}
	c.acks = append(c.acks, ids...)
	c.wake.Signal()
	c.mu.Unlock()
	return nil
}

// Flush waits until everything submitted before it is committed and its callbacks have run.
func (c *Committer) Flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.pending) > 0 || len(c.acks) > 0 || c.busy {
		c.idle.Wait()
	}
}

// Close commits what is queued, runs its callbacks and stops; later Submits fail with ErrClosed and later
// Acks are committed at once. Safe to call more than once.
func (c *Committer) Close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		c.wake.Broadcast()
		c.space.Broadcast()
	}
	c.mu.Unlock()
	<-c.done
}

// CommitterStats count the transactions and the results they held since start.
type CommitterStats struct {
	Transactions uint64 `json:"transactions"`
	Results      uint64 `json:"results"`
}

// Stats returns the Committer's counters.
func (c *Committer) Stats() CommitterStats {
	return CommitterStats{Transactions: c.groups.Load(), Results: c.results.Load()}
}

func (c *Committer) run() {
	defer close(c.done)
	var last time.Time
	for {
		c.mu.Lock()
		for len(c.pending) == 0 && len(c.acks) == 0 && !c.closed {
			c.wake.Wait()
		}
		if len(c.pending) == 0 && len(c.acks) == 0 && c.closed {
			c.idle.Broadcast()
			c.mu.Unlock()
			return
		}
		if wait := c.interval - time.Since(last); wait > 0 && !c.closed && len(c.pending) < maxPending {
			// Let more arrive: the previous transaction was less than an interval ago.
			c.mu.Unlock()
			time.Sleep(wait)
			c.mu.Lock()
		}
		group, acks := c.pending, c.acks
		c.pending, c.acks = nil, nil
		c.busy = true
		c.space.Broadcast()
		c.mu.Unlock()

		items := make([]Pending, len(group))
		for i := range group {
			items[i] = group[i].Pending
		}
		last = time.Now()
		errs := c.st.CommitMany(items, acks)
		c.groups.Add(1)
		c.results.Add(uint64(len(items)))
		for i := range group {
			group[i].done(errs[i])
		}

		c.mu.Lock()
		c.busy = false
		c.idle.Broadcast()
		c.mu.Unlock()
	}
}
