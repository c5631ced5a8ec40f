package store

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Override is a camera's persisted runtime threshold override.
type Override struct {
	Threshold float64   `json:"threshold"`
	UpdatedAt time.Time `json:"updated_at"`
}

// SetThreshold persists a camera's threshold override (raw score units; finite, >= 0).
func (s *Store) SetThreshold(camera string, threshold float64) error {
	if err := ValidateCamera(camera); err != nil {
		return fmt.Errorf("set threshold: %w", err)
	}
	if math.IsNaN(threshold) || math.IsInf(threshold, 0) || threshold < 0 {
		return fmt.Errorf("set threshold %s: %w: %v is not a finite number >= 0", camera, ErrInvalid, threshold)
	}
	v, err := json.Marshal(Override{Threshold: threshold, UpdatedAt: s.opts.Now()})
	if err != nil {
		return fmt.Errorf("set threshold %s: %w", camera, err)
	}
	return s.update("set threshold", func(tx *bolt.Tx) error { return tx.Bucket(bOverrides).Put([]byte(camera), v) })
}

// ClearThreshold removes a camera's override (the model's calibrated threshold applies again).
func (s *Store) ClearThreshold(camera string) error {
	return s.update("clear threshold", func(tx *bolt.Tx) error { return tx.Bucket(bOverrides).Delete([]byte(camera)) })
}

// Threshold returns a camera's override; ok is false when there is none.
func (s *Store) Threshold(camera string) (o Override, ok bool, err error) {
	err = s.view("threshold", func(tx *bolt.Tx) error {
		v := tx.Bucket(bOverrides).Get([]byte(camera))
		if v == nil {
			return nil
		}
		ok = true
		return json.Unmarshal(v, &o)
	})
	return o, ok, err
}

// Thresholds returns every camera's override.
func (s *Store) Thresholds() (map[string]Override, error) {
	out := map[string]Override{}
	err := s.view("thresholds", func(tx *bolt.Tx) error {
		return tx.Bucket(bOverrides).ForEach(func(k, v []byte) error {
			var o Override
			if err := json.Unmarshal(v, &o); err != nil {
				return fmt.Errorf("override %s: %w", k, err)
			}
			out[string(k)] = o
			return nil
		})
	})
	return out, err
}

// SetSetting persists a small named value (other runtime settings the agent wants to survive restarts).
func (s *Store) SetSetting(key string, value []byte) error {
	if key == "" {
		return fmt.Errorf("set setting: %w: empty key", ErrInvalid)
	}
	return s.update("set setting "+key, func(tx *bolt.Tx) error { return tx.Bucket(bSettings).Put([]byte(key), value) })
}

// Setting returns a named value; ErrNotFound when unset.
func (s *Store) Setting(key string) ([]byte, error) {
	var out []byte
	err := s.view("setting "+key, func(tx *bolt.Tx) error {
		v := tx.Bucket(bSettings).Get([]byte(key))
		if v == nil {
			return fmt.Errorf("setting %q: %w", key, ErrNotFound)
		}
		out = append([]byte(nil), v...)
		return nil
	})
	return out, err
}

// DeleteSetting removes a named value.
func (s *Store) DeleteSetting(key string) error {
	return s.update("delete setting "+key, func(tx *bolt.Tx) error { return tx.Bucket(bSettings).Delete([]byte(key)) })
}

// LastSeq returns the highest seq committed for a camera; ok is false for a camera never seen, so a
// restarted daemon continues numbering at LastSeq+1.
func (s *Store) LastSeq(camera string) (seq uint64, ok bool, err error) {
	err = s.view("last seq", func(tx *bolt.Tx) error {
		v := tx.Bucket(bSeq).Get([]byte(camera))
		ok = v != nil
		seq = getU64(v)
		return nil
	})
	return seq, ok, err
}

// Processed reports whether a commit (or MarkProcessed) already recorded origin for camera.
func (s *Store) Processed(camera, origin string) (bool, error) {
	var ok bool
	err := s.view("processed", func(tx *bolt.Tx) error {
		ok = tx.Bucket(bOrigins).Get(originKey(camera, origin)) != nil
		return nil
	})
	return ok, err
}

// MarkProcessed records origin as processed without a result (e.g. a file that cannot be decoded), so it is
// not retried after a restart.
func (s *Store) MarkProcessed(camera, origin string) error {
	if origin == "" {
		return fmt.Errorf("mark processed %s: %w: empty origin", camera, ErrInvalid)
	}
	now := s.opts.Now()
	return s.update("mark processed", func(tx *bolt.Tx) error {
		return tx.Bucket(bOrigins).Put(originKey(camera, origin), u64(uint64(now.UnixNano())))
	})
}

// Stats summarise the store for /stats and the HTTP API.
type Stats struct {
	HistoryRecords uint64      `json:"history_records"`
	HistoryBytes   uint64      `json:"history_bytes"`
	Samples        uint64      `json:"samples"`
	Outbox         OutboxStats `json:"outbox"`
	FileBytes      int64       `json:"file_bytes"`
}

// Stats returns counts and sizes.
func (s *Store) Stats() (Stats, error) {
	var st Stats
	ob, err := s.OutboxStats()
	if err != nil {
		return st, err
	}
	st.Outbox = ob
	err = s.view("stats", func(tx *bolt.Tx) error {
		st.HistoryRecords = counter(tx, cHistoryCount)
		st.HistoryBytes = counter(tx, cHistoryBytes)
		st.Samples = counter(tx, cSampleCount)
		st.FileBytes = tx.Size()
		return nil
	})
	return st, err
}
