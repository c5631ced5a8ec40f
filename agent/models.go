package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
)

// Scorer is what the daemon needs of a loaded model; *pipeline.Scorer is the production one.
type Scorer interface {
	Score(ctx context.Context, reqs []pipeline.Request) ([]pipeline.Result, error)
	Heatmap(img pipeline.Image, r *pipeline.Result, format string) ([]byte, error)
	Manifest() *models.Manifest
	Warmup(ctx context.Context) error
	Close() error
}

// OpenFunc verifies a bundle directory and builds its sessions.
type OpenFunc func(dir string) (Scorer, error)

// Model states on <prefix>/model/status and /api/model.
const (
	ModelStarting = "starting"
	ModelRunning  = "running"
	ModelFailed   = "failed"
)

// ModelStatus describes the model in use and the last load attempt.
type ModelStatus struct {
	State   string    `json:"state"` // starting, running, failed
	Name    string    `json:"name"`
	Version string    `json:"version"`
	Dir     string    `json:"dir"`
	Created time.Time `json:"created"`
	// Reason says why the last load failed (State failed), or why a newer bundle was refused while an older
	// one keeps running (State running).
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since"`
	Swaps  uint64    `json:"swaps"`
	// Provider is the ONNX Runtime execution provider the model's sessions got (cuda or cpu). A GPU machine
	// whose CUDA provider failed to load (wrong CUDA/cuDNN, CPU-only library) scores on the CPU and says so
	// here, besides the one warning in the log.
	Provider string `json:"provider,omitempty"`
}

// loaded is one open model shared by the workers. inflight counts the batches using it; the model is closed
// only after it has been replaced and inflight has fallen to zero, so no frame ever sees a closed session.
type loaded struct {
	scorer   Scorer
	dir      string
	manifest *models.Manifest
	inflight atomic.Int64
	mu       sync.Mutex
	idle     *sync.Cond
}

func newLoaded(s Scorer, dir string) *loaded {
	l := &loaded{scorer: s, dir: dir, manifest: s.Manifest()}
	l.idle = sync.NewCond(&l.mu)
	return l
}

func (l *loaded) release() {
	if l.inflight.Add(-1) == 0 {
		l.mu.Lock()
		l.idle.Broadcast()
		l.mu.Unlock()
	}
}

// retire waits for the last in-flight batch, then closes the model.
func (l *loaded) retire(log *slog.Logger) {
	l.mu.Lock()
	for l.inflight.Load() > 0 {
		l.idle.Wait()
	}
	l.mu.Unlock()
	if err := l.scorer.Close(); err != nil {
		log.Warn("closing the replaced model", "dir", l.dir, "err", err)
	}
}

// modelManager owns the current model: it chooses, opens, warms up and hot-swaps bundles.
type modelManager struct {
	open    OpenFunc
	dir     string // watched directory ("" when pinned)
	pinned  string // pinned bundle directory
	log     *slog.Logger
	onState func(ModelStatus)

	cur    atomic.Pointer[loaded]
	ready  chan struct{} // closed when the first model is in place
	once   sync.Once
	mu     sync.Mutex // serialises loads and guards status and failed
	status ModelStatus
	failed map[string]time.Time // bundle dir -> mtime of its manifest when it failed (not retried until it changes)
}

func newModelManager(open OpenFunc, dir, pinned string, log *slog.Logger, onState func(ModelStatus)) *modelManager {
	m := &modelManager{open: open, dir: dir, pinned: pinned, log: log, onState: onState,
		ready: make(chan struct{}), failed: map[string]time.Time{}}
	m.status = ModelStatus{State: ModelStarting, Since: time.Now()}
	return m
}

// acquire returns the current model with its in-flight count raised, or nil when none is loaded. The
// re-check after raising the count closes the race with a swap: if the model was replaced in between, the
// count is given back and the new one is taken.
func (m *modelManager) acquire() *loaded {
	for {
		l := m.cur.Load()
		if l == nil {
			return nil
		}
		l.inflight.Add(1)
		if m.cur.Load() == l {
			return l
		}
		l.release()
	}
}

// Status returns the model status.
func (m *modelManager) Status() ModelStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status
}

func (m *modelManager) setStatus(s ModelStatus) {
	s.Since = time.Now()
	m.status = s
	if m.onState != nil {
		m.onState(s)
	}
}

// candidate is a bundle directory with its manifest's created time.
type candidate struct {
	dir     string
	created time.Time
	mtime   time.Time
	err     error
}

// candidates lists the bundles of the models directory, newest first (manifest created time, ties by
// directory name, later name first). Hidden and *.tmp/*.partial directories are skipped: they are bundles
// being written (the trainer renames its temp dir into place when complete).
func (m *modelManager) candidates() ([]candidate, error) {
	if m.pinned != "" {
		return []candidate{readCandidate(m.pinned)}, nil
	}
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		return nil, fmt.Errorf("models dir %s: %w", m.dir, err)
	}
	var out []candidate
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") || strings.HasSuffix(n, ".tmp") || strings.HasSuffix(n, ".partial") {
			continue
		}
		p := filepath.Join(m.dir, n)
		if st, err := os.Stat(p); err != nil || !st.IsDir() {
			continue
		}
		out = append(out, readCandidate(p))
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].created.Equal(out[j].created) {
			return out[i].created.After(out[j].created)
		}
		return filepath.Base(out[i].dir) > filepath.Base(out[j].dir)
	})
	return out, nil
}

func readCandidate(dir string) candidate {
	c := candidate{dir: dir}
	st, err := os.Stat(filepath.Join(dir, models.ManifestFile))
	if err != nil {
		c.err = fmt.Errorf("bundle %s: no %s: %w", dir, models.ManifestFile, err)
		return c
	}
	c.mtime = st.ModTime()
	mf, err := models.ReadManifest(dir)
	if err != nil {
		c.err = err
		return c
	}
	c.created = mf.Created
	return c
}

// refresh loads the newest bundle if it is not the one in use. On failure the current model stays and the
// status says why; with no model yet, older bundles are tried in turn so the daemon starts on the best one
// that works.
func (m *modelManager) refresh(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cands, err := m.candidates()
	if err != nil {
		m.fail(err)
		return
	}
	cur := m.cur.Load()
	defer m.reportUnreadable(cands) // after the choice, so the status that stays names them
	var firstErr error
	for _, c := range cands {
		if cur != nil && c.dir == cur.dir {
			return // the newest valid bundle is already in use
		}
		if t, seen := m.failed[c.dir]; seen && t.Equal(c.mtime) {
			if cur != nil {
				continue // already refused, unchanged since: an older bundle may be the current one
			}
			if firstErr == nil {
				firstErr = fmt.Errorf("bundle %s was refused earlier and has not changed", c.dir)
			}
			continue
		}
		err := c.err
		if err == nil {
			err = m.load(ctx, c.dir)
		}
		if err == nil {
			return
		}
		m.failed[c.dir] = c.mtime
		if cur != nil {
			m.log.Error("model bundle refused; keeping the current model", "dir", c.dir, "err", err)
		} else {
			m.log.Error("model bundle refused; no model loaded", "dir", c.dir, "err", err)
		}
		if firstErr == nil {
			firstErr = err
		}
		m.fail(err)
		if cur != nil {
			// Keep the running model rather than fall back to an older bundle than it.
			if !c.created.After(cur.manifest.Created) {
				return
			}
			continue
		}
	}
	if cur == nil && firstErr == nil {
		m.fail(fmt.Errorf("no bundle in %s", m.dir))
	}
}

// fail records a failed load: the state stays running (with the reason) when a model is in use.
func (m *modelManager) fail(err error) {
	s := m.status
	s.Reason = err.Error()
	if m.cur.Load() == nil {
		s.State = ModelFailed
	}
	m.setStatus(s)
}

// load opens, warms up and swaps in one bundle.
func (m *modelManager) load(ctx context.Context, dir string) error {
	start := time.Now()
	sc, err := m.open(dir)
	if err != nil {
		return fmt.Errorf("open bundle %s: %w", dir, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := sc.Warmup(wctx); err != nil {
		sc.Close()
		return fmt.Errorf("bundle %s: %w", dir, err)
	}
	l := newLoaded(sc, dir)
	old := m.cur.Swap(l)
	if old != nil {
		go old.retire(m.log)
	}
	mf := l.manifest
	swaps := m.status.Swaps
	if old != nil {
		swaps++
	}
	provider := ""
	if p, ok := sc.(interface{ Provider() string }); ok { // *pipeline.Scorer; test scorers may not say
		provider = p.Provider()
	}
	m.setStatus(ModelStatus{State: ModelRunning, Name: mf.Name, Version: mf.Version, Dir: dir, Created: mf.Created, Swaps: swaps, Provider: provider})
	m.log.Info("model in use", "name", mf.Name, "version", mf.Version, "dir", dir, "provider", provider, "load_ms", time.Since(start).Milliseconds(), "replaced", old != nil)
	m.once.Do(func() { close(m.ready) })
	return nil
}

// watch reloads on changes to the models directory until ctx ends. Events are debounced: a bundle arrives as
// many file events (or one rename), and is looked at once things are quiet.
func (m *modelManager) watch(ctx context.Context, debounce time.Duration) error {
	if m.pinned != "" {
		return nil
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch models dir: %w", err)
	}
	defer w.Close()
	if err := w.Add(m.dir); err != nil {
		return fmt.Errorf("watch models dir %s: %w", m.dir, err)
	}
	// Also watch each bundle directory, so a bundle written in place (not renamed) is seen when complete.
	addSubdirs := func() {
		ents, _ := os.ReadDir(m.dir)
		for _, e := range ents {
			if e.IsDir() {
				_ = w.Add(filepath.Join(m.dir, e.Name()))
			}
		}
	}
	addSubdirs()
	var timer *time.Timer
	fire := make(chan struct{}, 1)
	for {
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Op&(fsnotify.Create|fsnotify.Rename|fsnotify.Write|fsnotify.Remove) == 0 {
				continue
			}
			if timer != nil {
				timer.Stop()
			}
			timer = time.AfterFunc(debounce, func() {
				select {
				case fire <- struct{}{}:
				default:
				}
			})
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			m.log.Warn("models dir watch", "err", err)
		case <-fire:
			addSubdirs()
			m.refresh(ctx)
		}
	}
}

// close closes the current model after its in-flight batches.
func (m *modelManager) close() {
	if l := m.cur.Swap(nil); l != nil {
		l.retire(m.log)
	}
}
