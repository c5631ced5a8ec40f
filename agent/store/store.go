// Package store keeps the daemon's durable state in one bbolt file: result history, the latest and NG
// heatmaps/thumbnails, the MQTT outbox (store-and-forward), collected normal samples, runtime overrides and
// the per-camera bookkeeping (last seq, processed origins) that lets a restarted daemon continue where it
// stopped.
//
// One file, one process: the daemon opens the Store once at start and shares it between goroutines (bbolt
// serialises writers). Every write that must be atomic with a result (history, outbox, images, seq, origin)
// happens in one transaction in Commit, so a crash (even kill -9) leaves either all of it or none of it: bbolt
// fsyncs each commit and never overwrites the live meta page before the data is on disk, so a failed write
// (ENOSPC included) rolls back and leaves the file readable.
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Errors callers can test with errors.Is.
var (
	// ErrNotFound: no record, image or setting under that key.
	ErrNotFound = errors.New("not found")
	// ErrDiskFull: the filesystem returned ENOSPC; the transaction was rolled back, the file is intact.
	ErrDiskFull = errors.New("disk full")
	// ErrDiskGuard: sample collection refused because free disk space is below Options.MinFreeBytes.
	ErrDiskGuard = errors.New("sample collection stopped by free-disk guard")
	// ErrSamplesFull: sample collection refused because Options.MaxSamples samples are stored.
	ErrSamplesFull = errors.New("sample store full")
	// ErrTooLarge: a single outbox message is larger than the whole outbox bound.
	ErrTooLarge = errors.New("message larger than the outbox bound")
	// ErrAlreadyProcessed: Commit was given an origin that an earlier commit already recorded.
	ErrAlreadyProcessed = errors.New("origin already processed")
	// ErrInvalid: a caller-supplied value (camera name, seq, kind) is not acceptable.
	ErrInvalid = errors.New("invalid argument")
	// ErrClosed: a result was submitted to a Committer after its Close.
	ErrClosed = errors.New("committer closed")
	// ErrLocked: another process (a running daemon) holds the file's lock.
	ErrLocked = errors.New("store file is locked by another process")
)

// StatfsFunc reports the bytes available to an unprivileged writer on the filesystem holding path.
type StatfsFunc func(path string) (free uint64, err error)

// Options configure a Store. Zero values mean the documented defaults.
type Options struct {
	// Path of the bbolt file; its directory is created if missing.
	Path string
	// HistoryMaxAge: Prune deletes results older than this (by StoredAt). 0 keeps them forever.
	HistoryMaxAge time.Duration
	// HistoryMaxBytes bounds the summed size of stored result records (keys + JSON values); Commit and Prune
	// delete the oldest until under it. 0 means no size bound. It is a logical size: bbolt reuses freed pages
	// but never shrinks the file.
	HistoryMaxBytes int64
	// ImagesPerCamera bounds the stored images per camera, kind (heatmap/thumbnail) and verdict OK
	// (default 20); NGImagesPerCamera the same for NG frames (default 100), so a flood of OK frames never
	// pushes the NG evidence out.
	ImagesPerCamera   int
	NGImagesPerCamera int
	// OutboxMaxMessages and OutboxMaxBytes bound the outbox (defaults 100000 messages, 256 MiB). When a new
	// message does not fit, the oldest entries are dropped in this order: OK heatmaps, OK results (and other
	// messages), NG heatmaps, NG results. Drops are counted per kind (OutboxStats).
	OutboxMaxMessages int
	OutboxMaxBytes    int64
	// MinFreeBytes: AddSample refuses (ErrDiskGuard) when the store's filesystem has less free space than this
	// after the write (default 512 MiB). Scoring writes are never refused by the guard: sample collection stops
	// first, so the disk keeps headroom for history and outbox.
	MinFreeBytes uint64
	// MaxSamples bounds the number of stored samples (0: no count bound).
	MaxSamples int
	// OriginMaxAge: Prune forgets processed origins older than this. 0 keeps them forever (a file that stays
	// in the watched folder is then never rescored).
	OriginMaxAge time.Duration
	// Statfs is injectable for tests; default uses statfs(2).
	Statfs StatfsFunc
	// Now is injectable for tests; default time.Now.
	Now func() time.Time
	// Logger; default slog.Default().
	Logger *slog.Logger
	// OpenTimeout bounds the wait for the file lock held by another process (default 2s).
	OpenTimeout time.Duration
}

func (o *Options) defaults() {
	if o.ImagesPerCamera <= 0 {
		o.ImagesPerCamera = 20
	}
	if o.NGImagesPerCamera <= 0 {
		o.NGImagesPerCamera = 100
	}
	if o.OutboxMaxMessages <= 0 {
		o.OutboxMaxMessages = 100000
	}
	if o.OutboxMaxBytes <= 0 {
		o.OutboxMaxBytes = 256 << 20
	}
	if o.MinFreeBytes == 0 {
		o.MinFreeBytes = 512 << 20
	}
	if o.Statfs == nil {
		o.Statfs = statfsFree
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.OpenTimeout <= 0 {
		o.OpenTimeout = 2 * time.Second
	}
}

// Store is the daemon's bbolt file. Safe for concurrent use.
type Store struct {
	db     *bolt.DB
	opts   Options
	log    *slog.Logger
	notify chan struct{}

	closeOnce sync.Once
}

// Bucket names.
var (
	bHistory   = []byte("history")   // id(8) -> Record JSON
	bHistCam   = []byte("hist_cam")  // camera -> {id(8) -> nil}
	bHistNG    = []byte("hist_ng")   // id(8) -> nil
	bImages    = []byte("images")    // camera\0kind\0verdict -> {id(8) -> blob}
	bOutbox    = []byte("outbox")    // id(8) -> blob(header JSON, payload)
	bOutboxPri = []byte("outbox_p")  // priority(1) -> {id(8) -> nil}
	bSamples   = []byte("samples")   // camera\0seq(8) -> blob(header JSON, PNG)
	bOverrides = []byte("overrides") // camera -> Override JSON
	bSettings  = []byte("settings")  // key -> value
	bSeq       = []byte("seq")       // camera -> last seq(8)
	bOrigins   = []byte("origins")   // camera\0origin -> unix nanos(8)
	bCounters  = []byte("counters")  // name -> uint64(8)
)

var allBuckets = [][]byte{bHistory, bHistCam, bHistNG, bImages, bOutbox, bOutboxPri, bSamples, bOverrides,
	bSettings, bSeq, bOrigins, bCounters}

// Open opens (creating if needed) the store file. Close it once at exit.
func Open(opts Options) (*Store, error) {
	opts.defaults()
	if opts.Path == "" {
		return nil, fmt.Errorf("open store: %w: empty path", ErrInvalid)
	}
	if err := os.MkdirAll(filepath.Dir(opts.Path), 0o755); err != nil {
		return nil, fmt.Errorf("open store %s: create directory: %w", opts.Path, err)
	}
	db, err := bolt.Open(opts.Path, 0o600, &bolt.Options{Timeout: opts.OpenTimeout, FreelistType: bolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: %w (another vlmdiff running?): %w", opts.Path, ErrLocked, err)
		}
		return nil, fmt.Errorf("open store %s: %w", opts.Path, wrapIO(err))
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", opts.Path, wrapIO(err))
	}
	return &Store{db: db, opts: opts, log: opts.Logger, notify: make(chan struct{}, 1)}, nil
}

// Close closes the file. Safe to call more than once.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if e := s.db.Close(); e != nil {
			err = fmt.Errorf("close store %s: %w", s.opts.Path, e)
		}
	})
	return err
}

// Path returns the file's path.
func (s *Store) Path() string { return s.opts.Path }

// Notify returns a channel that receives a value (coalesced) whenever messages are added to the outbox, so a
// drainer can sleep instead of polling.
func (s *Store) Notify() <-chan struct{} { return s.notify }

func (s *Store) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// update runs fn in a write transaction and classifies I/O failures.
func (s *Store) update(what string, fn func(tx *bolt.Tx) error) error {
	if err := s.db.Update(fn); err != nil {
		return fmt.Errorf("store %s: %w", what, wrapIO(err))
	}
	return nil
}

func (s *Store) view(what string, fn func(tx *bolt.Tx) error) error {
	if err := s.db.View(fn); err != nil {
		return fmt.Errorf("store %s: %w", what, err)
	}
	return nil
}

// wrapIO marks ENOSPC (and EDQUOT) as ErrDiskFull while keeping the original error in the chain.
func wrapIO(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w (transaction rolled back, file intact): %w", ErrDiskFull, err)
	}
	return err
}

func statfsFree(path string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

var cameraRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// reservedCameras are topic segments the MQTT surface uses directly under the prefix.
var reservedCameras = map[string]bool{"available": true, "stats": true, "model": true}

// ValidateCamera reports whether name can be a camera name: 1-64 characters of [A-Za-z0-9_.-], starting with
// a letter or digit, and not one of the reserved MQTT segments (available, stats, model). The name becomes an
// MQTT topic level, a store key and a directory name, so it must be safe in all three.
func ValidateCamera(name string) error {
	if !cameraRE.MatchString(name) {
		return fmt.Errorf("%w: camera name %q: want 1-64 characters of [A-Za-z0-9_.-] starting with a letter or digit", ErrInvalid, name)
	}
	if reservedCameras[name] {
		return fmt.Errorf("%w: camera name %q is reserved (MQTT topic %s)", ErrInvalid, name, name)
	}
	return nil
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func getU64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// counter helpers: counters live in bCounters as 8-byte big-endian values.
func addCounter(tx *bolt.Tx, name string, delta int64) error {
	b := tx.Bucket(bCounters)
	v := int64(getU64(b.Get([]byte(name)))) + delta
	if v < 0 {
		v = 0
	}
	return b.Put([]byte(name), u64(uint64(v)))
}

func counter(tx *bolt.Tx, name string) uint64 { return getU64(tx.Bucket(bCounters).Get([]byte(name))) }

// blob encoding: uvarint(len(header)) + header JSON + data. Keeps binary payloads (PNG, MQTT payloads) out of
// JSON so they are not inflated by base64.
func encodeBlob(header any, data []byte) ([]byte, error) {
	h, err := json.Marshal(header)
	if err != nil {
		return nil, fmt.Errorf("encode header: %w", err)
	}
	out := make([]byte, 0, binary.MaxVarintLen64+len(h)+len(data))
	out = binary.AppendUvarint(out, uint64(len(h)))
	out = append(out, h...)
	return append(out, data...), nil
}

func decodeBlob(b []byte, header any) (data []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < n {
		return nil, fmt.Errorf("corrupt blob: bad header length")
	}
	if err := json.Unmarshal(b[k:k+int(n)], header); err != nil {
		return nil, fmt.Errorf("corrupt blob header: %w", err)
	}
	rest := b[k+int(n):]
	return append([]byte(nil), rest...), nil
}
