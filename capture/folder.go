package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/vlmdiff/edge/imagelimit"
)

// folderSource watches a directory and emits each complete image file once; see the package doc for the
// rules. State lives in entries, guarded by mu, because Done runs on the consumer's goroutines and may come
// after Run has returned: a late Done still moves its file, so an acknowledged file is never re-emitted.
type folderSource struct {
	cfg Config
	dir string
	c   counters

	mu       sync.Mutex
	entries  map[string]*entry   // by path: files seen and not yet finished, and kept files
	ignored  map[string]struct{} // image-named entries that are not regular files, reported once
	ready    []readyRef          // complete files in emission order
	seen     uint64              // first-sight counter
	inflight int
	seq      uint64

	fsMu  sync.Mutex    // serialises moves, so two finishes never pick the same free name
	acks  chan struct{} // wakes Run when a Done freed a slot
	notes chan Event    // reports from Done (move failures) that Run forwards
}

type entryStatus int

const (
	stPending  entryStatus = iota // seen, maybe still being written
	stReady                       // complete, queued
	stInFlight                    // delivered (or being read), waiting for Done
	stKept                        // finished with After keep (or not movable): not emitted again as is
)

type entry struct {
	path       string
	status     entryStatus
	seen       uint64    // first-sight order, breaks ties between files complete at the same check
	firstSeen  time.Time // for empty files, which get a longer grace
	lastChange time.Time // last event or stat change
	size       int64
	mtime      time.Time
	gen        uint64 // bumped each time the entry becomes ready; stale queue refs are skipped
	reason     string // why the source failed the file (written next to it in failed/)
}

type readyRef struct {
	e   *entry
	gen uint64
}

func newFolder(cfg Config) *folderSource {
	s := &folderSource{
		cfg:     cfg,
		dir:     filepath.Clean(cfg.Path),
		entries: make(map[string]*entry),
		ignored: make(map[string]struct{}),
		acks:    make(chan struct{}, 1),
		notes:   make(chan Event, 64),
	}
	s.c.state = StateStarting
	return s
}

func (s *folderSource) Name() string { return s.cfg.Name }

func (s *folderSource) Stats() Stats {
	st := s.c.snapshot()
	s.mu.Lock()
	defer s.mu.Unlock()
	st.InFlight = s.inflight
	for _, e := range s.entries {
		if e.status == stPending || e.status == stReady {
			st.Backlog++
		}
	}
	return st
}

// Run watches the folder until ctx ends. A missing or vanished folder is reported offline and retried.
func (s *folderSource) Run(ctx context.Context, out chan<- Frame, events chan<- Event) error {
	rep := reporter{camera: s.cfg.Name, c: &s.c, emit: directEmit(ctx, events)}
	bo := newBackoff(s.cfg.RetryMin, s.cfg.RetryMax)
	for ctx.Err() == nil {
		err := s.watch(ctx, out, rep, bo)
		if ctx.Err() != nil {
			break
		}
		s.c.reconnects.Add(1)
		d := bo.delay()
		rep.state(StateOffline, retryIn(err.Error(), d))
		sleepCtx(ctx, d)
	}
	return nil
}

// watch runs one watcher session; it returns why it stopped (nil when ctx ended).
func (s *folderSource) watch(ctx context.Context, out chan<- Frame, rep reporter, bo *backoff) error {
	st, err := os.Stat(s.dir)
	if err != nil {
		return fmt.Errorf("watch folder: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("watch folder %s: not a directory", s.dir)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch folder %s: create watcher: %w", s.dir, err)
	}
	defer w.Close()
	// Watch first, then scan: a file arriving in between is seen twice, which add() tolerates, never zero times.
	if err := w.Add(s.dir); err != nil {
		return fmt.Errorf("watch folder %s: %w", s.dir, err)
	}
	s.resetQueue()
	if err := s.scan(); err != nil {
		return err
	}
	bo.reset()
	rep.state(StateOnline, "watching "+s.dir)

	settle := s.cfg.Folder.Settle
	tick := time.NewTicker(max(settle/4, 5*time.Millisecond))
	defer tick.Stop()
	var rescan <-chan time.Time
	if s.cfg.Folder.Rescan > 0 {
		t := time.NewTicker(s.cfg.Folder.Rescan)
		defer t.Stop()
		rescan = t.C
	}
	var next *Frame
	var nextEntry *entry
	defer func() {
		if next != nil { // read but not delivered: give the file back for the next run
			s.unload(nextEntry)
		}
	}()
	for {
		if next == nil {
			next, nextEntry = s.loadNext(rep)
		}
		var sendCh chan<- Frame
		var sendF Frame // select evaluates the send operand even when its channel is nil
		if next != nil {
			sendCh, sendF = out, *next
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return fmt.Errorf("watch folder %s: watcher closed", s.dir)
			}
			if filepath.Clean(ev.Name) == s.dir && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				return fmt.Errorf("watch folder %s: folder was removed or renamed", s.dir)
			}
			s.onEvent(ev)
		case err, ok := <-w.Errors:
			if !ok {
				return fmt.Errorf("watch folder %s: watcher closed", s.dir)
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				// The kernel dropped events: the directory listing is the truth.
				if err := s.scan(); err != nil {
					return err
				}
				continue
			}
			rep.transient(StateError, "", "watch folder: "+err.Error())
		case now := <-tick.C:
			s.check(now)
		case <-rescan:
			if err := s.scan(); err != nil {
				return err
			}
		case <-s.acks:
		case ev := <-s.notes:
			rep.emit(ev, false)
		case sendCh <- sendF:
			s.c.delivered(next.Time)
			next, nextEntry = nil, nil
		}
	}
}

// resetQueue forgets pending and queued files of an earlier session (the next scan finds them again); files
// in flight and kept files stay, so they are not emitted twice.
func (s *folderSource) resetQueue() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p, e := range s.entries {
		if e.status == stPending || e.status == stReady {
			delete(s.entries, p)
		}
	}
	s.ready = nil
}

// scan adds the folder's image files, oldest (mtime, then name) first.
func (s *folderSource) scan() error {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("scan folder %s: %w", s.dir, err)
	}
	type found struct {
		path string
		info os.FileInfo
	}
	var fs []found
	present := make(map[string]bool)
	for _, de := range ents {
		if !isImageName(de.Name()) {
			continue
		}
		if !de.Type().IsRegular() {
			p := filepath.Join(s.dir, de.Name())
			present[p] = true
			s.ignore(p, de.Type())
			continue
		}
		info, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		fs = append(fs, found{filepath.Join(s.dir, de.Name()), info})
	}
	sort.Slice(fs, func(i, j int) bool {
		a, b := fs[i].info.ModTime(), fs[j].info.ModTime()
		if !a.Equal(b) {
			return a.Before(b)
		}
		return fs[i].path < fs[j].path
	})
	s.mu.Lock()
	for p := range s.ignored { // gone, or replaced: report it again should it come back
		if !present[p] {
			delete(s.ignored, p)
		}
	}
	s.mu.Unlock()
	now := time.Now()
	for _, f := range fs {
		s.add(f.path, f.info, now, false)
	}
	return nil
}

// ignore reports, once per appearance, an entry with an image name that is not a regular file (a symlink, a
// directory, a device): it is never read (a symlink could point anywhere, a FIFO would block) and stays
// where it is, so without this it would sit in the folder unexplained.
func (s *folderSource) ignore(path string, mode os.FileMode) {
	s.mu.Lock()
	_, known := s.ignored[path]
	if !known {
		s.ignored[path] = struct{}{}
	}
	s.mu.Unlock()
	if known {
		return
	}
	s.c.ignored.Add(1)
	kind := "not a regular file"
	switch {
	case mode&os.ModeSymlink != 0:
		kind = "a symbolic link"
	case mode.IsDir():
		kind = "a directory"
	}
	slog.Warn("capture: folder entry ignored", "camera", s.cfg.Name, "file", path, "reason", kind)
	select {
	case s.notes <- Event{Camera: s.cfg.Name, State: StateError, Reason: fmt.Sprintf("%s ignored: %s", path, kind),
		Time: time.Now(), Transient: true, File: path}:
	default:
	}
}

func (s *folderSource) onEvent(ev fsnotify.Event) {
	name := filepath.Clean(ev.Name)
	if filepath.Dir(name) != s.dir || !isImageName(filepath.Base(name)) {
		return
	}
	if ev.Has(fsnotify.Create) || ev.Has(fsnotify.Write) {
		info, err := os.Lstat(name)
		if err == nil && info.Mode().IsRegular() {
			s.add(name, info, time.Now(), true)
		} else if err == nil {
			s.ignore(name, info.Mode())
		}
		return
	}
	if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
		if _, err := os.Lstat(name); err == nil {
			return // a new file already took the name
		}
		s.mu.Lock()
		delete(s.ignored, name)
		if e := s.entries[name]; e != nil && (e.status == stPending || e.status == stReady || e.status == stKept) {
			delete(s.entries, name)
		}
		s.mu.Unlock()
	}
}

// add records a sighting of path; changed says it came from a create/write event (the file is changing now).
func (s *folderSource) add(path string, info os.FileInfo, now time.Time, changed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[path]
	if e != nil {
		switch e.status {
		case stInFlight:
			return
		case stKept:
			if e.size == info.Size() && e.mtime.Equal(info.ModTime()) {
				return
			}
			e = nil // rewritten: a new file under an old name
		case stPending, stReady:
			if changed || e.size != info.Size() || !e.mtime.Equal(info.ModTime()) {
				e.status = stPending // written again after it looked complete: wait again
				e.lastChange, e.size, e.mtime = now, info.Size(), info.ModTime()
			}
			return
		}
	}
	s.seen++
	s.entries[path] = &entry{path: path, status: stPending, seen: s.seen, firstSeen: now, lastChange: now,
		size: info.Size(), mtime: info.ModTime()}
}

// check promotes pending files whose size and mtime held still for Settle to ready, in first-sight order.
func (s *folderSource) check(now time.Time) {
	settle := s.cfg.Folder.Settle
	s.mu.Lock()
	var due []*entry
	for _, e := range s.entries {
		if e.status == stPending && now.Sub(e.lastChange) >= settle {
			due = append(due, e)
		}
	}
	s.mu.Unlock()
	if len(due) == 0 {
		return
	}
	type stat struct {
		info os.FileInfo
		err  error
	}
	stats := make([]stat, len(due))
	for i, e := range due { // stat without the lock: the file system may be slow
		info, err := os.Lstat(e.path)
		stats[i] = stat{info, err}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var promoted []*entry
	for i, e := range due {
		if s.entries[e.path] != e || e.status != stPending {
			continue
		}
		st := stats[i]
		if st.err != nil || !st.info.Mode().IsRegular() {
			delete(s.entries, e.path) // gone (or replaced by something else) before it was complete
			continue
		}
		if st.info.Size() != e.size || !st.info.ModTime().Equal(e.mtime) {
			e.size, e.mtime, e.lastChange = st.info.Size(), st.info.ModTime(), now
			continue
		}
		// An empty file is usually one whose writer has not started: give it ten Settles before taking it
		// (it then fails to decode and goes to failed/).
		if e.size == 0 && now.Sub(e.firstSeen) < 10*settle {
			continue
		}
		promoted = append(promoted, e)
	}
	sort.Slice(promoted, func(i, j int) bool { return promoted[i].seen < promoted[j].seen })
	for _, e := range promoted {
		e.status = stReady
		e.gen++
		s.ready = append(s.ready, readyRef{e, e.gen})
	}
}

// loadNext reads and decodes the next ready file when a slot is free; unreadable files are reported and
// finished as failed on the way. It returns nil when nothing can be delivered now.
func (s *folderSource) loadNext(rep reporter) (*Frame, *entry) {
	for {
		s.mu.Lock()
		if s.inflight >= s.cfg.Folder.MaxInFlight {
			s.mu.Unlock()
			return nil, nil
		}
		var e *entry
		for len(s.ready) > 0 && e == nil {
			r := s.ready[0]
			s.ready = s.ready[1:]
			if s.entries[r.e.path] == r.e && r.e.status == stReady && r.gen == r.e.gen {
				e = r.e
			}
		}
		if e == nil {
			s.mu.Unlock()
			return nil, nil
		}
		e.status = stInFlight
		s.inflight++
		s.mu.Unlock()

		data, _, err := imagelimit.ReadFile(e.path, s.cfg.ImageLimits)
		if errors.Is(err, imagelimit.ErrRefused) {
			// Too large, or a header no decoder we trust reads: never handed to OpenCV, moved to failed/ with
			// the reason beside it, so a restart does not meet it again.
			s.c.refused.Add(1)
			s.c.decodeErrors.Add(1) // a refusal is a file that was not decoded; Refused tells why
			reason := fmt.Sprintf("image %s refused: %v", e.path, err)
			slog.Warn("capture: image refused before decoding", "camera", s.cfg.Name, "file", e.path, "err", err)
			rep.transient(StateError, e.path, reason)
			e.reason = reason
			s.finish(e, false)
			continue
		}
		if errors.Is(err, os.ErrNotExist) {
			s.unload(e)
			rep.transient(StateError, e.path, "file vanished before it was read: "+e.path)
			continue
		}
		if err != nil {
			// Permission problems and the like: leave the file alone, report it, do not retry in this run.
			s.c.decodeErrors.Add(1)
			rep.transient(StateError, e.path, fmt.Sprintf("read %s: %v", e.path, err))
			s.mu.Lock()
			s.inflight--
			e.status = stKept
			s.mu.Unlock()
			continue
		}
		w, h, pix, err := decodeImage(data, s.cfg.ImageLimits)
		if err != nil {
			s.c.decodeErrors.Add(1)
			reason := fmt.Sprintf("image %s is unreadable: %v", e.path, err)
			rep.transient(StateError, e.path, reason)
			e.reason = reason
			s.finish(e, false)
			continue
		}
		id := fileIdentity(e.path, data)
		s.mu.Lock()
		s.seq++
		seq := s.seq
		s.mu.Unlock()
		var once sync.Once
		f := &Frame{Camera: s.cfg.Name, Seq: seq, Time: e.mtime, Width: w, Height: h, Pix: pix, Origin: e.path,
			OriginID: id,
			Done:     func(ok bool) { once.Do(func() { s.finish(e, ok) }) }}
		return f, e
	}
}

// unload forgets an entry that was taken but not delivered; its file stays for a later scan.
func (s *folderSource) unload(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inflight--
	if s.entries[e.path] == e {
		delete(s.entries, e.path)
	}
}

// finish applies the After policy to an in-flight file: ok files are moved to processed/ (or deleted), failed
// ones moved to failed/; with keep both stay. It runs on whatever goroutine calls Done.
func (s *folderSource) finish(e *entry, ok bool) {
	after := s.cfg.Folder.After
	var err error
	switch {
	case after == AfterKeep:
	case replacedSince(e):
		// The camera wrote a new file under this name while this one was being scored: the scored version is
		// already gone, and moving (or deleting) the path now would take the new, unscored one with it.
	case ok && after == AfterDelete:
		if err = os.Remove(e.path); err != nil {
			err = fmt.Errorf("delete processed file: %w", err)
		}
	case ok:
		_, err = s.moveUnique(e.path, s.cfg.Folder.ProcessedDir)
	default:
		var dst string
		dst, err = s.moveUnique(e.path, s.cfg.Folder.FailedDir)
		if err == nil && e.reason != "" {
			// The reason travels with the file, for whoever empties failed/.
			if werr := os.WriteFile(dst+".reason.txt", []byte(e.reason+"\n"), 0o644); werr != nil {
				slog.Warn("capture: reason of a failed file not written", "camera", s.cfg.Name, "file", dst, "err", werr)
			}
		}
	}
	s.mu.Lock()
	s.inflight--
	gone := false
	if s.entries[e.path] == e {
		if after == AfterKeep || err != nil {
			// Kept, or could not be moved: remember it so this run does not emit it again; a later run (or
			// a rewrite of the file) takes it anew.
			e.status = stKept
		} else {
			delete(s.entries, e.path)
			gone = true
		}
	}
	s.mu.Unlock()
	if gone {
		// A camera that reuses the name may write the next file between the move above and the delete: its
		// create event found this entry in flight and was dropped (add skips in-flight paths). The old file
		// has left the path, so whatever is there now is new: take it, or it would wait for a rescan.
		if info, lerr := os.Lstat(e.path); lerr == nil && info.Mode().IsRegular() {
			s.add(e.path, info, time.Now(), true)
		}
	}
	if err != nil {
		slog.Warn("capture: folder file not finished", "camera", s.cfg.Name, "file", e.path, "err", err)
		select {
		case s.notes <- Event{Camera: s.cfg.Name, State: StateError, Reason: err.Error(), Time: time.Now(),
			Transient: true, File: e.path}:
		default:
		}
	}
	select {
	case s.acks <- struct{}{}:
	default:
	}
}

// replacedSince says whether the file now at e.path is not the version that was read (a different size or
// modification time): a camera reused the name while it was in flight.
func replacedSince(e *entry) bool {
	info, err := os.Lstat(e.path)
	return err == nil && (info.Size() != e.size || !info.ModTime().Equal(e.mtime))
}

// moveUnique moves src into dir, adding "-1", "-2", ... before the extension rather than overwriting.
func (s *folderSource) moveUnique(src, dir string) (string, error) {
	s.fsMu.Lock()
	defer s.fsMu.Unlock()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("move %s: create %s: %w", src, dir, err)
	}
	base := filepath.Base(src)
	ext := filepath.Ext(base)
	stem := strings.TrimSuffix(base, ext)
	dst := filepath.Join(dir, base)
	for i := 1; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, os.ErrNotExist) {
			break
		}
		dst = filepath.Join(dir, stem+"-"+strconv.Itoa(i)+ext)
	}
	err := os.Rename(src, dst)
	if errors.Is(err, syscall.EXDEV) {
		err = copyRemove(src, dst)
	}
	if err != nil {
		return "", fmt.Errorf("move %s to %s: %w", src, dir, err)
	}
	return dst, nil
}

// copyRemove moves a file across file systems: copy, sync, then remove the source.
func copyRemove(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(dst)
		return err
	}
	return os.Remove(src)
}
