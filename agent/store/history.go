package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Verdicts as stored (same strings as pipeline.VerdictOK/NG).
const (
	VerdictOK = "OK"
	VerdictNG = "NG"
)

// Model names the bundle that produced a result.
type Model struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// Record is one scored frame as the agent fills it. ID, StoredAt, HeatmapKey and ThumbnailKey are set by
// Commit.
type Record struct {
	ID        uint64    `json:"id"`
	Camera    string    `json:"camera"`
	Seq       uint64    `json:"seq"`
	FrameTime time.Time `json:"frame_time"`
	StoredAt  time.Time `json:"stored_at"`
	// Score is calibrated 0..1 (threshold maps to 0.5); RawScore and Threshold are in the model's raw units.
	Score          float64            `json:"score"`
	RawScore       float64            `json:"raw_score"`
	Threshold      float64            `json:"threshold"`
	Verdict        string             `json:"verdict"`
	Class          string             `json:"class,omitempty"`
	Model          Model              `json:"model"`
	LatencyMS      map[string]float64 `json:"latency_ms,omitempty"`
	AnomalyAreaPct float64            `json:"anomaly_area_pct"`
	HeatmapKey     string             `json:"heatmap_key,omitempty"`
	ThumbnailKey   string             `json:"thumbnail_key,omitempty"`
	// Origin identifies the frame's source object (a folder source's file name).
	Origin string `json:"origin,omitempty"`
	// Source is the base name of the frame's file (folder camera): what a consumer pairs a result with.
	Source string `json:"source,omitempty"`
	// Trigger is the JSON object of the trigger that asked for this frame (trigger-mode cameras, POST
	// /api/score with an id), echoed unchanged so a PLC gateway can pair request and answer.
	Trigger json.RawMessage `json:"trigger,omitempty"`
	// OriginKey is what is recorded as processed (see Processed): the origin's version identity, so a file
	// name that is reused is a new origin. Empty: Origin is recorded.
	OriginKey string `json:"origin_key,omitempty"`
}

// processedKey is the key Commit records as processed.
func (r *Record) processedKey() string {
	if r.OriginKey != "" {
		return r.OriginKey
	}
	return r.Origin
}

func (r *Record) validate() error {
	if err := ValidateCamera(r.Camera); err != nil {
		return err
	}
	if r.Verdict != VerdictOK && r.Verdict != VerdictNG {
		return fmt.Errorf("%w: verdict %q: want OK or NG", ErrInvalid, r.Verdict)
	}
	return nil
}

// CommitOptions carry what is stored with a result in the same transaction.
type CommitOptions struct {
	// Images (heatmap and/or thumbnail, already encoded) kept in the bounded per-camera image store; their
	// keys are written into the Record.
	Images []Image
}

// Commit stores rec, its images and the outbox messages in one transaction, and records rec.Seq as the
// camera's last seq and rec.Origin (if set) as processed. It fills rec.ID, rec.StoredAt and the image keys.
// Outbox messages that do not fit the bound push older entries out (see Options); a single message larger
// than the bound fails the whole commit with ErrTooLarge. A commit whose origin was already processed fails
// with ErrAlreadyProcessed and writes nothing.
func (s *Store) Commit(rec *Record, msgs []Message, opts CommitOptions) error {
	return s.CommitMany([]Pending{{Rec: rec, Msgs: msgs, Opts: opts}}, nil)[0]
}

// Pending is one result for CommitMany: what Commit takes.
type Pending struct {
	Rec  *Record
	Msgs []Message
	Opts CommitOptions
}

// CommitMany commits several results, and removes delivered outbox messages (acks, as Ack does), in one
// transaction: one fsync for all of them. Each result is all-or-nothing exactly as with Commit, and errs[i]
// is what Commit would have returned for items[i]: a result refused on its own (invalid, origin already
// processed, a message over the bound) costs the others nothing. When the shared transaction fails (I/O, disk
// full) nothing of it is kept and each result is committed again in its own transaction, so each gets its own
// outcome; the acks then go in one more. Results are written in the order given, so their outbox messages are
// delivered in that order.
func (s *Store) CommitMany(items []Pending, acks []uint64) (errs []error) {
	errs = make([]error, len(items))
	for i := range items {
		errs[i] = items[i].validate()
	}
	now := s.opts.Now()
	recs := make([]Record, len(items))
	woken := false
	err := s.update("commit", func(tx *bolt.Tx) error {
		for i, it := range items {
			if errs[i] != nil {
				continue
			}
			recs[i] = *it.Rec
			recs[i].StoredAt = now
			if processed(tx, &recs[i]) {
				errs[i] = it.errorf("camera %s origin %q: %w", recs[i].Camera, recs[i].Origin, ErrAlreadyProcessed)
				continue
			}
			if err := s.commitTx(tx, &recs[i], it.Msgs, it.Opts, now); err != nil {
				return err
			}
			woken = woken || len(it.Msgs) > 0
		}
		return s.ackTx(tx, acks)
	})
	if err != nil {
		if len(items) == 1 && len(acks) == 0 {
			errs[0] = items[0].errorf("%w", err)
			return errs
		}
		// One of them failed the shared transaction, or the disk did: find out which, each on its own.
		for i := range items {
			if errs[i] == nil || errors.Is(errs[i], ErrAlreadyProcessed) {
				errs[i] = s.Commit(items[i].Rec, items[i].Msgs, items[i].Opts)
			}
		}
		if len(acks) > 0 {
			if err := s.Ack(acks...); err != nil {
				s.log.Warn("outbox acknowledgements not stored; the messages go out again", "messages", len(acks), "err", err)
			}
		}
		return errs
	}
	for i := range items {
		if errs[i] == nil {
			*items[i].Rec = recs[i]
		}
	}
	if woken {
		s.wake()
	}
	return errs
}

func (p *Pending) validate() error {
	if err := p.Rec.validate(); err != nil {
		return fmt.Errorf("commit result: %w", err)
	}
	for i := range p.Msgs {
		if err := p.Msgs[i].validate(); err != nil {
			return p.errorf("outbox message %d: %w", i, err)
		}
	}
	return nil
}

// errorf wraps err as Commit's error for this result.
func (p *Pending) errorf(format string, args ...any) error {
	return fmt.Errorf("commit result %s/%d: %w", p.Rec.Camera, p.Rec.Seq, fmt.Errorf(format, args...))
}

// processed reports whether r's origin was committed before (by an earlier transaction or earlier in this one).
func processed(tx *bolt.Tx, r *Record) bool {
	key := r.processedKey()
	return key != "" && tx.Bucket(bOrigins).Get(originKey(r.Camera, key)) != nil
}

// commitTx writes one result (r, its images and messages; r.StoredAt set) in tx and fills r's ID and image
// keys.
func (s *Store) commitTx(tx *bolt.Tx, r *Record, msgs []Message, opts CommitOptions, now time.Time) error {
	if key := r.processedKey(); key != "" {
		if err := tx.Bucket(bOrigins).Put(originKey(r.Camera, key), u64(uint64(now.UnixNano()))); err != nil {
			return err
		}
	}
	for _, im := range opts.Images {
		key, err := s.putImage(tx, r.Camera, r.Seq, r.Verdict, now, im)
		if err != nil {
			return fmt.Errorf("image %s: %w", im.Kind, err)
		}
		switch im.Kind {
		case KindHeatmap:
			r.HeatmapKey = key
		case KindThumbnail:
			r.ThumbnailKey = key
		}
	}
	h := tx.Bucket(bHistory)
	id, err := h.NextSequence()
	if err != nil {
		return err
	}
	r.ID = id
	val, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode record: %w", err)
	}
	if err := h.Put(u64(id), val); err != nil {
		return err
	}
	cb, err := tx.Bucket(bHistCam).CreateBucketIfNotExists([]byte(r.Camera))
	if err != nil {
		return err
	}
	if err := cb.Put(u64(id), nil); err != nil {
		return err
	}
	if r.Verdict == VerdictNG {
		if err := tx.Bucket(bHistNG).Put(u64(id), nil); err != nil {
			return err
		}
	}
	if err := addCounter(tx, cHistoryBytes, int64(8+len(val))); err != nil {
		return err
	}
	if err := addCounter(tx, cHistoryCount, 1); err != nil {
		return err
	}
	sb := tx.Bucket(bSeq)
	if getU64(sb.Get([]byte(r.Camera))) < r.Seq || sb.Get([]byte(r.Camera)) == nil {
		if err := sb.Put([]byte(r.Camera), u64(r.Seq)); err != nil {
			return err
		}
	}
	if s.opts.HistoryMaxBytes > 0 {
		if _, err := s.pruneSize(tx, 0); err != nil {
			return err
		}
	}
	return s.enqueue(tx, now, msgs)
}

const (
	cHistoryBytes = "history_bytes"
	cHistoryCount = "history_count"
)

func originKey(camera, origin string) []byte {
	return append(append([]byte(camera), 0), origin...)
}

// Get returns the record with that id.
func (s *Store) Get(id uint64) (Record, error) {
	var r Record
	err := s.view("get result", func(tx *bolt.Tx) error {
		v := tx.Bucket(bHistory).Get(u64(id))
		if v == nil {
			return fmt.Errorf("result %d: %w", id, ErrNotFound)
		}
		return json.Unmarshal(v, &r)
	})
	return r, err
}

// FindResult returns a camera's result with that seq. It walks the camera's history from the newest
// record back and stops once past seq (a camera's seqs grow with its records), so recent results, the ones
// an operator looks at, are found quickly.
func (s *Store) FindResult(camera string, seq uint64) (Record, error) {
	var out Record
	found := false
	err := s.view("find result", func(tx *bolt.Tx) error {
		cb := tx.Bucket(bHistCam).Bucket([]byte(camera))
		if cb == nil {
			return nil
		}
		h := tx.Bucket(bHistory)
		c := cb.Cursor()
		for k, _ := c.Last(); k != nil; k, _ = c.Prev() {
			var r Record
			if err := json.Unmarshal(h.Get(k), &r); err != nil {
				return fmt.Errorf("decode result %d: %w", getU64(k), err)
			}
			if r.Seq == seq {
				out, found = r, true
				return nil
			}
			if r.Seq < seq {
				return nil
			}
		}
		return nil
	})
	if err == nil && !found {
		err = fmt.Errorf("result %s/%d: %w", camera, seq, ErrNotFound)
	}
	return out, err
}

// Latest returns up to n records of a camera (all cameras when camera is ""), newest first.
func (s *Store) Latest(camera string, n int) ([]Record, error) {
	var out []Record
	err := s.view("latest results", func(tx *bolt.Tx) error {
		h := tx.Bucket(bHistory)
		var c *bolt.Cursor
		if camera == "" {
			c = h.Cursor()
		} else {
			cb := tx.Bucket(bHistCam).Bucket([]byte(camera))
			if cb == nil {
				return nil
			}
			c = cb.Cursor()
		}
		for k, _ := c.Last(); k != nil && len(out) < n; k, _ = c.Prev() {
			var r Record
			if err := json.Unmarshal(h.Get(k), &r); err != nil {
				return fmt.Errorf("decode result %d: %w", getU64(k), err)
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// NGQuery selects NG records: of Camera ("" = all), stored at or after Since (zero = any time), at most Limit
// (<= 0: no limit).
type NGQuery struct {
	Camera string
	Since  time.Time
	Limit  int
}

// NG returns NG records matching q, newest first.
func (s *Store) NG(q NGQuery) ([]Record, error) {
	var out []Record
	err := s.view("NG results", func(tx *bolt.Tx) error {
		h := tx.Bucket(bHistory)
		c := tx.Bucket(bHistNG).Cursor()
		for k, _ := c.Last(); k != nil && (q.Limit <= 0 || len(out) < q.Limit); k, _ = c.Prev() {
			var r Record
			if err := json.Unmarshal(h.Get(k), &r); err != nil {
				return fmt.Errorf("decode result %d: %w", getU64(k), err)
			}
			if !q.Since.IsZero() && r.StoredAt.Before(q.Since) {
				break
			}
			if q.Camera != "" && r.Camera != q.Camera {
				continue
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// PruneStats says what a Prune removed.
type PruneStats struct {
	ByAge   int // records older than HistoryMaxAge
	BySize  int // records removed to get under HistoryMaxBytes
	Origins int // processed origins older than OriginMaxAge
}

// pruneBatch bounds one Prune transaction so a large backlog does not hold the writer lock for long.
const pruneBatch = 2000

// Prune applies the retention rules: age, then size, then origin age. Call it periodically; it works in
// batches and stops early when ctx is done.
func (s *Store) Prune(ctx context.Context) (PruneStats, error) {
	var st PruneStats
	now := s.opts.Now()
	if s.opts.HistoryMaxAge > 0 {
		cutoff := now.Add(-s.opts.HistoryMaxAge)
		for {
			if err := ctx.Err(); err != nil {
				return st, fmt.Errorf("prune: %w", err)
			}
			n := 0
			err := s.update("prune by age", func(tx *bolt.Tx) error {
				c := tx.Bucket(bHistory).Cursor()
				for k, v := c.First(); k != nil && n < pruneBatch; k, v = c.First() {
					var r Record
					if err := json.Unmarshal(v, &r); err == nil && !r.StoredAt.Before(cutoff) {
						break
					}
					if err := deleteRecord(tx, k, v); err != nil {
						return err
					}
					n++
				}
				return nil
			})
			if err != nil {
				return st, err
			}
			st.ByAge += n
			if n < pruneBatch {
				break
			}
		}
	}
	if s.opts.HistoryMaxBytes > 0 {
		for {
			if err := ctx.Err(); err != nil {
				return st, fmt.Errorf("prune: %w", err)
			}
			var n int
			err := s.update("prune by size", func(tx *bolt.Tx) error {
				var err error
				n, err = s.pruneSize(tx, pruneBatch)
				return err
			})
			if err != nil {
				return st, err
			}
			st.BySize += n
			if n < pruneBatch {
				break
			}
		}
	}
	if s.opts.OriginMaxAge > 0 {
		cutoff := uint64(now.Add(-s.opts.OriginMaxAge).UnixNano())
		err := s.update("prune origins", func(tx *bolt.Tx) error {
			b := tx.Bucket(bOrigins)
			var dead [][]byte
			if err := b.ForEach(func(k, v []byte) error {
				if getU64(v) < cutoff {
					dead = append(dead, append([]byte(nil), k...))
				}
				return nil
			}); err != nil {
				return err
			}
			for _, k := range dead {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			st.Origins = len(dead)
			return nil
		})
		if err != nil {
			return st, err
		}
	}
	if st.ByAge+st.BySize+st.Origins > 0 {
		s.log.Debug("store pruned", "by_age", st.ByAge, "by_size", st.BySize, "origins", st.Origins)
	}
	return st, nil
}

// pruneSize deletes oldest records until the history is under HistoryMaxBytes; limit <= 0 means no limit.
func (s *Store) pruneSize(tx *bolt.Tx, limit int) (int, error) {
	n := 0
	c := tx.Bucket(bHistory).Cursor()
	for counter(tx, cHistoryBytes) > uint64(s.opts.HistoryMaxBytes) && (limit <= 0 || n < limit) {
		k, v := c.First()
		if k == nil {
			break
		}
		if err := deleteRecord(tx, k, v); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

func deleteRecord(tx *bolt.Tx, k, v []byte) error {
	k = append([]byte(nil), k...)
	size := int64(len(k) + len(v))
	var r Record
	if err := json.Unmarshal(v, &r); err == nil {
		if cb := tx.Bucket(bHistCam).Bucket([]byte(r.Camera)); cb != nil {
			if err := cb.Delete(k); err != nil {
				return err
			}
		}
	}
	if err := tx.Bucket(bHistNG).Delete(k); err != nil {
		return err
	}
	if err := tx.Bucket(bHistory).Delete(k); err != nil {
		return err
	}
	if err := addCounter(tx, cHistoryBytes, -size); err != nil {
		return err
	}
	return addCounter(tx, cHistoryCount, -1)
}
