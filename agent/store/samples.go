package store

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/vlmdiff/edge/internal/fsutil"
)

// Sample is a collected normal frame: the training data `vlmdiff train` reads after ExportSamples.
type Sample struct {
	Camera     string    `json:"camera"`
	Class      string    `json:"class"`
	Seq        uint64    `json:"seq"`
	CapturedAt time.Time `json:"captured_at"`
	Score      float64   `json:"score"`
	// Origin is how the sample came: "" for a collected OK frame (store.samples.every, sample/set),
	// OriginFalseAlarm for an NG result an operator marked as a false alarm; MarkedBy and MarkedAt say who
	// and when (the audit trail of a verdict overruled by hand).
	Origin   string    `json:"origin,omitempty"`
	MarkedBy string    `json:"marked_by,omitempty"`
	MarkedAt time.Time `json:"marked_at,omitzero"`
	PNG      []byte    `json:"-"`
}

// OriginFalseAlarm marks a sample that was an NG result an operator overruled.
const OriginFalseAlarm = "false_alarm"

// ExportLine is one line of samples.jsonl as ExportSamples writes it; File is relative to the export dir.
type ExportLine struct {
	File       string    `json:"file"`
	Camera     string    `json:"camera"`
	Class      string    `json:"class"`
	Seq        uint64    `json:"seq"`
	CapturedAt time.Time `json:"captured_at"`
	Score      float64   `json:"score"`
	Origin     string    `json:"origin,omitempty"`
	MarkedBy   string    `json:"marked_by,omitempty"`
	MarkedAt   time.Time `json:"marked_at,omitzero"`
}

const cSampleCount = "sample_count"

func sampleKey(camera string, seq uint64) []byte {
	return append(append([]byte(camera), 0), u64(seq)...)
}

// SampleGuard reports whether sample collection may go on: free space on the store's filesystem must stay
// at or above Options.MinFreeBytes after writing need more bytes. When not, reason says why (for the status
// topic and logs).
func (s *Store) SampleGuard(need int) (ok bool, reason string) {
	free, err := s.opts.Statfs(filepath.Dir(s.opts.Path))
	if err != nil {
		return false, fmt.Sprintf("cannot read free disk space: %v", err)
	}
	if free < uint64(need) || free-uint64(need) < s.opts.MinFreeBytes {
		return false, fmt.Sprintf("free disk space %d MiB below the %d MiB reserved for scoring (store %s)",
			free>>20, s.opts.MinFreeBytes>>20, filepath.Dir(s.opts.Path))
	}
	return true, ""
}

// AddSample stores a collected frame. It refuses with ErrDiskGuard when the free-disk guard trips and with
// ErrSamplesFull at Options.MaxSamples; a second sample for the same camera and seq replaces the first.
func (s *Store) AddSample(sm Sample) error {
	if err := ValidateCamera(sm.Camera); err != nil {
		return fmt.Errorf("add sample: %w", err)
	}
	if len(sm.PNG) == 0 {
		return fmt.Errorf("add sample %s/%d: %w: empty image", sm.Camera, sm.Seq, ErrInvalid)
	}
	if ok, reason := s.SampleGuard(len(sm.PNG)); !ok {
		return fmt.Errorf("add sample %s/%d: %w: %s", sm.Camera, sm.Seq, ErrDiskGuard, reason)
	}
	val, err := encodeBlob(&sm, sm.PNG)
	if err != nil {
		return fmt.Errorf("add sample %s/%d: %w", sm.Camera, sm.Seq, err)
	}
	return s.update("add sample", func(tx *bolt.Tx) error {
		b := tx.Bucket(bSamples)
		k := sampleKey(sm.Camera, sm.Seq)
		exists := b.Get(k) != nil
		if !exists && s.opts.MaxSamples > 0 && counter(tx, cSampleCount) >= uint64(s.opts.MaxSamples) {
			return fmt.Errorf("sample %s/%d: %w (%d samples)", sm.Camera, sm.Seq, ErrSamplesFull, s.opts.MaxSamples)
		}
		if err := b.Put(k, val); err != nil {
			return err
		}
		if !exists {
			return addCounter(tx, cSampleCount, 1)
		}
		return nil
	})
}

// SampleCount returns the number of stored samples.
func (s *Store) SampleCount() (int, error) {
	var n uint64
	err := s.view("sample count", func(tx *bolt.Tx) error { n = counter(tx, cSampleCount); return nil })
	return int(n), err
}

// DeleteSamples removes all samples of a camera ("" = all cameras) and returns how many.
func (s *Store) DeleteSamples(camera string) (int, error) {
	n := 0
	err := s.update("delete samples", func(tx *bolt.Tx) error {
		b := tx.Bucket(bSamples)
		var dead [][]byte
		prefix := []byte(nil)
		if camera != "" {
			prefix = append([]byte(camera), 0)
		}
		c := b.Cursor()
		for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
			dead = append(dead, append([]byte(nil), k...))
		}
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(dead)
		return addCounter(tx, cSampleCount, -int64(n))
	})
	return n, err
}

func hasPrefix(b, p []byte) bool { return len(b) >= len(p) && string(b[:len(p)]) == string(p) }

// ExportSamples writes the collected-samples dataset that `vlmdiff train` reads:
//
//	DIR/samples.jsonl                 one ExportLine per sample, ordered by camera then seq
//	DIR/images/<camera>/<seq>.png
//
// It reads in one read transaction (a consistent snapshot; collection may go on meanwhile) and returns the
// number of samples written. Existing files with the same names are overwritten.
func (s *Store) ExportSamples(dir string) (int, error) {
	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o755); err != nil {
		return 0, fmt.Errorf("export samples: create %s: %w", dir, wrapIO(err))
	}
	manifest := filepath.Join(dir, "samples.jsonl")
	n := 0
	err := fsutil.WriteAtomic(manifest, 0o644, func(f io.Writer) error {
		w := bufio.NewWriter(f)
		enc := json.NewEncoder(w)
		if err := s.view("export samples", func(tx *bolt.Tx) error {
			return tx.Bucket(bSamples).ForEach(func(k, v []byte) error {
				var sm Sample
				png, err := decodeBlob(v, &sm)
				if err != nil {
					return fmt.Errorf("sample %x: %w", k, err)
				}
				rel := filepath.ToSlash(filepath.Join("images", sm.Camera, fmt.Sprintf("%d.png", sm.Seq)))
				if err := os.MkdirAll(filepath.Join(dir, "images", sm.Camera), 0o755); err != nil {
					return wrapIO(err)
				}
				if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(rel)), png, 0o644); err != nil {
					return fmt.Errorf("write %s: %w", rel, wrapIO(err))
				}
				if err := enc.Encode(ExportLine{File: rel, Camera: sm.Camera, Class: sm.Class, Seq: sm.Seq,
					CapturedAt: sm.CapturedAt, Score: sm.Score, Origin: sm.Origin, MarkedBy: sm.MarkedBy,
					MarkedAt: sm.MarkedAt}); err != nil {
					return fmt.Errorf("write samples.jsonl: %w", wrapIO(err))
				}
				n++
				return nil
			})
		}); err != nil {
			return err
		}
		return w.Flush()
	})
	if err != nil {
		if !errors.Is(err, ErrDiskFull) {
			err = wrapIO(err) // the manifest's own write, sync or rename
		}
		return n, fmt.Errorf("export samples to %s: %w", dir, err)
	}
	return n, nil
}
