package store

import (
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Outbox message kinds; the kind and verdict decide which messages a full outbox drops first.
const (
	MsgResult  = "result"
	MsgHeatmap = "heatmap"
	MsgOther   = "other"
)

// Message is one outgoing MQTT message waiting in the outbox. The payload is stored as it will go on the
// wire and is never rebuilt, so a redelivery after a restart carries the same seq and published_at.
type Message struct {
	ID         uint64    `json:"id"` // set by the store; order of delivery
	Topic      string    `json:"topic"`
	Payload    []byte    `json:"-"`
	QoS        byte      `json:"qos"`
	Retain     bool      `json:"retain"`
	Kind       string    `json:"kind"`
	Camera     string    `json:"camera,omitempty"`
	Seq        uint64    `json:"seq,omitempty"`
	Verdict    string    `json:"verdict,omitempty"`
	EnqueuedAt time.Time `json:"enqueued_at"`
}

func (m *Message) validate() error {
	if m.Topic == "" {
		return fmt.Errorf("%w: empty topic", ErrInvalid)
	}
	if m.QoS > 2 {
		return fmt.Errorf("%w: qos %d", ErrInvalid, m.QoS)
	}
	switch m.Kind {
	case MsgResult, MsgHeatmap, MsgOther:
	case "":
		m.Kind = MsgOther
	default:
		return fmt.Errorf("%w: message kind %q", ErrInvalid, m.Kind)
	}
	return nil
}

// Priorities run from 0 to maxPriority; noPriority names none (deleteOutbox then leaves the index alone).
const (
	maxPriority byte = 3
	noPriority  byte = 255
)

// priority orders what a full outbox drops: lowest first.
func (m *Message) priority() byte {
	ng := m.Verdict == VerdictNG
	switch {
	case m.Kind == MsgHeatmap && !ng:
		return 0
	case m.Kind == MsgHeatmap && ng:
		return 2
	case ng:
		return 3
	default:
		return 1
	}
}

// dropCounter names the counter a dropped message increments.
func (m *Message) dropCounter() string {
	ng := m.Verdict == VerdictNG
	switch {
	case m.Kind == MsgHeatmap:
		return cDropHeatmap
	case m.Kind == MsgResult && ng:
		return cDropNG
	case m.Kind == MsgResult:
		return cDropOK
	default:
		return cDropOther
	}
}

const (
	cOutboxBytes = "outbox_bytes"
	cOutboxCount = "outbox_count"
	cDropOK      = "outbox_dropped_ok_results"
	cDropNG      = "outbox_dropped_ng_results"
	cDropHeatmap = "outbox_dropped_heatmaps"
	cDropOther   = "outbox_dropped_other"
)

// OutboxStats describe the outbox now and since the file was created.
type OutboxStats struct {
	Messages         uint64    `json:"messages"`
	Bytes            uint64    `json:"bytes"`
	DroppedOKResults uint64    `json:"dropped_ok_results"`
	DroppedNGResults uint64    `json:"dropped_ng_results"`
	DroppedHeatmaps  uint64    `json:"dropped_heatmaps"`
	DroppedOther     uint64    `json:"dropped_other"`
	OldestEnqueuedAt time.Time `json:"oldest_enqueued_at,omitempty"`
}

// Enqueue adds messages to the outbox (for messages that belong to no result; results use Commit).
func (s *Store) Enqueue(msgs ...Message) error {
	for i := range msgs {
		if err := msgs[i].validate(); err != nil {
			return fmt.Errorf("enqueue message %d (%s): %w", i, msgs[i].Topic, err)
		}
	}
	now := s.opts.Now()
	if err := s.update("enqueue", func(tx *bolt.Tx) error { return s.enqueue(tx, now, msgs) }); err != nil {
		return err
	}
	if len(msgs) > 0 {
		s.wake()
	}
	return nil
}

func msgSize(m *Message, encoded int) int64 { return int64(8 + encoded) }

func (s *Store) enqueue(tx *bolt.Tx, now time.Time, msgs []Message) error {
	ob := tx.Bucket(bOutbox)
	pri := tx.Bucket(bOutboxPri)
	for i := range msgs {
		m := msgs[i]
		if m.EnqueuedAt.IsZero() {
			m.EnqueuedAt = now
		}
		id, err := ob.NextSequence()
		if err != nil {
			return err
		}
		m.ID = id
		val, err := encodeBlob(&m, m.Payload)
		if err != nil {
			return err
		}
		size := msgSize(&m, len(val))
		if size > s.opts.OutboxMaxBytes {
			return fmt.Errorf("outbox message %s (%d bytes) > bound %d bytes: %w", m.Topic, size, s.opts.OutboxMaxBytes, ErrTooLarge)
		}
		// Make room: drop lowest-priority oldest entries until the new one fits.
		for counter(tx, cOutboxCount)+1 > uint64(s.opts.OutboxMaxMessages) ||
			int64(counter(tx, cOutboxBytes))+size > s.opts.OutboxMaxBytes {
			dropped, err := s.dropOne(tx)
			if err != nil {
				return err
			}
			if !dropped {
				break
			}
		}
		if err := ob.Put(u64(id), val); err != nil {
			return err
		}
		pb, err := pri.CreateBucketIfNotExists([]byte{m.priority()})
		if err != nil {
			return err
		}
		if err := pb.Put(u64(id), nil); err != nil {
			return err
		}
		if err := addCounter(tx, cOutboxCount, 1); err != nil {
			return err
		}
		if err := addCounter(tx, cOutboxBytes, size); err != nil {
			return err
		}
	}
	return nil
}

// dropOne removes the oldest message of the lowest priority present and counts it.
func (s *Store) dropOne(tx *bolt.Tx) (bool, error) {
	pri := tx.Bucket(bOutboxPri)
	for p := byte(0); p <= maxPriority; p++ {
		pb := pri.Bucket([]byte{p})
		if pb == nil {
			continue
		}
		k, _ := pb.Cursor().First()
		if k == nil {
			continue
		}
		k = append([]byte(nil), k...)
		v := tx.Bucket(bOutbox).Get(k)
		var m Message
		if v != nil {
			if _, err := decodeBlob(v, &m); err != nil {
				return false, fmt.Errorf("outbox entry %d: %w", getU64(k), err)
			}
		}
		if err := deleteOutbox(tx, k, v, p); err != nil {
			return false, err
		}
		if err := addCounter(tx, m.dropCounter(), 1); err != nil {
			return false, err
		}
		s.log.Warn("outbox full: dropped message", "topic", m.Topic, "kind", m.Kind, "verdict", m.Verdict,
			"camera", m.Camera, "seq", m.Seq)
		return true, nil
	}
	return false, nil
}

func deleteOutbox(tx *bolt.Tx, k, v []byte, p byte) error {
	if pb := tx.Bucket(bOutboxPri).Bucket([]byte{p}); pb != nil {
		if err := pb.Delete(k); err != nil {
			return err
		}
	}
	if v == nil {
		return nil
	}
	if err := tx.Bucket(bOutbox).Delete(k); err != nil {
		return err
	}
	if err := addCounter(tx, cOutboxCount, -1); err != nil {
		return err
	}
	return addCounter(tx, cOutboxBytes, -msgSize(nil, len(v)))
}

// Peek returns up to n messages from the head of the outbox, oldest first, without removing them.
func (s *Store) Peek(n int) ([]Message, error) { return s.PeekAfter(0, n) }

// PeekAfter is Peek from the first message whose id is above after: a drainer whose acknowledgements are
// not committed yet (Committer.Ack) goes on from the last message it delivered. Ids grow in commit order.
func (s *Store) PeekAfter(after uint64, n int) ([]Message, error) {
	var out []Message
	err := s.view("outbox peek", func(tx *bolt.Tx) error {
		c := tx.Bucket(bOutbox).Cursor()
		for k, v := c.Seek(u64(after + 1)); k != nil && len(out) < n; k, v = c.Next() {
			var m Message
			p, err := decodeBlob(v, &m)
			if err != nil {
				return fmt.Errorf("outbox entry %d: %w", getU64(k), err)
			}
			m.Payload = p
			out = append(out, m)
		}
		return nil
	})
	return out, err
}

// Ack removes delivered messages by id. Ids no longer present (dropped by the bound meanwhile) are ignored.
func (s *Store) Ack(ids ...uint64) error {
	if len(ids) == 0 {
		return nil
	}
	return s.update("outbox ack", func(tx *bolt.Tx) error { return s.ackTx(tx, ids) })
}

// ackTx removes the messages ids in tx (ids no longer present are ignored). The message's priority index
// entry is removed from whichever priority holds it (deleting a missing key costs a lookup and writes
// nothing), which spares decoding each header.
func (s *Store) ackTx(tx *bolt.Tx, ids []uint64) error {
	for _, id := range ids {
		k := u64(id)
		v := tx.Bucket(bOutbox).Get(k)
		if v == nil {
			continue
		}
		v = append([]byte(nil), v...)
		for p := byte(0); p <= maxPriority; p++ {
			if err := deleteOutbox(tx, k, nil, p); err != nil {
				return err
			}
		}
		if err := deleteOutbox(tx, k, v, noPriority); err != nil {
			return err
		}
	}
	return nil
}

// OutboxStats returns the outbox's size and drop counters.
func (s *Store) OutboxStats() (OutboxStats, error) {
	var st OutboxStats
	err := s.view("outbox stats", func(tx *bolt.Tx) error {
		st.Messages = counter(tx, cOutboxCount)
		st.Bytes = counter(tx, cOutboxBytes)
		st.DroppedOKResults = counter(tx, cDropOK)
		st.DroppedNGResults = counter(tx, cDropNG)
		st.DroppedHeatmaps = counter(tx, cDropHeatmap)
		st.DroppedOther = counter(tx, cDropOther)
		if _, v := tx.Bucket(bOutbox).Cursor().First(); v != nil {
			var m Message
			if _, err := decodeBlob(v, &m); err == nil {
				st.OldestEnqueuedAt = m.EnqueuedAt
			}
		}
		return nil
	})
	return st, err
}
