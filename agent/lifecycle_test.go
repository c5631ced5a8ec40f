package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vlmdiff/edge/agent"
	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/agent/internal/mqtttest"
	"github.com/vlmdiff/edge/agent/store"
	"github.com/vlmdiff/edge/pipeline"
)

// stopLog records the "stopped" lines the daemon logs per shutdown step, in order, and passes every line to
// the test log.
type stopLog struct {
	slog.Handler
	mu    *sync.Mutex
	steps *[]string
}

func newStopLog(t *testing.T) stopLog {
	return stopLog{Handler: slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}), mu: &sync.Mutex{}, steps: new([]string)}
}

func (h stopLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "stopped" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "step" {
				h.mu.Lock()
				*h.steps = append(*h.steps, a.Value.String())
				h.mu.Unlock()
			}
			return true
		})
	}
	return h.Handler.Handle(ctx, r)
}

func (h stopLog) WithAttrs(as []slog.Attr) slog.Handler {
	return stopLog{Handler: h.Handler.WithAttrs(as), mu: h.mu, steps: h.steps}
}

func (h stopLog) WithGroup(name string) slog.Handler {
	return stopLog{Handler: h.Handler.WithGroup(name), mu: h.mu, steps: h.steps}
}

func (h stopLog) got() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(*h.steps)
}

func runAgent(t *testing.T, cfg *config.Config, h stopLog) (cancel func(), done <-chan error) {
	t.Helper()
	initORT(t)
	a, err := agent.New(cfg, agent.Options{
		Open:          func(dir string) (agent.Scorer, error) { return pipeline.Open(dir, pipeline.Options{Threads: 1}) },
		Logger:        slog.New(h),
		ModelDebounce: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, c := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- a.Run(ctx) }()
	t.Cleanup(c)
	return c, ch
}

func waitRun(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(wait):
		t.Fatal("agent.Run did not return")
		return nil
	}
}

// storeIsClosed: the daemon released the bbolt file (its lock), so another opener gets it at once.
func storeIsClosed(t *testing.T, path string) {
	t.Helper()
	st, err := store.Open(store.Options{Path: path, OpenTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatalf("the store is still held after Run returned: %v", err)
	}
	st.Close()
}

// TestShutdownOrder: a daemon with frames still queued shuts down in the documented order (sources, watchers,
// workers, http, models, publisher, store), and the order shows in what it leaves behind: every frame taken
// from the folder was scored and its result published before the publisher said `stopped`, and the store
// file is closed.
func TestShutdownOrder(t *testing.T) {
	e := newEnv(t, false)
	copyBundleSteps(t, filepath.Join(e.modelsDir, "fixture-1"), "1", time.Now(), false, 2)
	sub := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/#")
	cfg := e.config(t, "http: {listen: "+freeAddr(t)+"}\n")
	h := newStopLog(t)
	cancel, done := runAgent(t, cfg, h)
	writeImages(t, e.folder, 1, 12)
	sub.WaitN(e.prefix+"/line/result", 1, wait)
	cancel() // frames are still queued or being read
	if err := waitRun(t, done); err != nil {
		t.Fatalf("Run: %v", err)
	}

	want := []string{"sources", "watchers", "workers", "http", "models", "publisher", "store"}
	if got := h.got(); !slices.Equal(got, want) {
		t.Fatalf("shutdown steps %v, want %v", got, want)
	}
	// Drain before flush: each file the daemon acknowledged (moved to processed/) has its result on the
	// broker, published before `offline`.
	processed, _ := filepath.Glob(filepath.Join(e.folder, "processed", "*.png"))
	sub.WaitFor(e.prefix+"/available", wait, func(m []mqtttest.Message) bool {
		return len(m) > 0 && string(m[len(m)-1].Payload) == "offline"
	})
	seqs, _ := firstSeen(decodeResults(t, sub.Messages(e.prefix+"/line/result")))
	if len(processed) == 0 || len(seqs) != len(processed) {
		t.Errorf("%d files acknowledged, %d results published before offline; want the same, at least 1", len(processed), len(seqs))
	}
	storeIsClosed(t, cfg.Store.Path)
	t.Logf("shut down with %d of 12 frames scored, %d left in the folder", len(processed), 12-len(processed))
}

// TestStartFailureStopsWhatStarted: when a later step cannot start (the HTTP address is taken), Run returns
// an error naming it and first stops the steps already started, in reverse: models, publisher, the embedded
// broker, the store.
func TestStartFailureStopsWhatStarted(t *testing.T) {
	dir := t.TempDir()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	brokerAddr := freeAddr(t)
	yaml := fmt.Sprintf(`
agent: {name: test, data_dir: %q, shutdown_timeout: 5s}
models: {dir: %q, threads: 1}
cameras:
  - {name: line, kind: folder, path: %q}
mqtt: {listen: %q, prefix: vt}
http: {listen: %q}
`, dir, filepath.Join(dir, "models"), filepath.Join(dir, "in"), brokerAddr, taken.Addr().String())
	if err := os.MkdirAll(filepath.Join(dir, "in"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(strings.NewReader(yaml), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	h := newStopLog(t)
	_, done := runAgent(t, cfg, h)
	err = waitRun(t, done)
	if err == nil || !strings.Contains(err.Error(), taken.Addr().String()) {
		t.Fatalf("Run with a taken HTTP address: %v, want an error naming %s", err, taken.Addr())
	}
	want := []string{"models", "publisher", "broker", "store"}
	if got := h.got(); !slices.Equal(got, want) {
		t.Fatalf("steps stopped after the failed start: %v, want %v", got, want)
	}
	storeIsClosed(t, cfg.Store.Path)
	// The embedded broker's port is free again.
	ln, err := net.Listen("tcp", brokerAddr)
	if err != nil {
		t.Fatalf("the embedded broker still holds %s: %v", brokerAddr, err)
	}
	ln.Close()
}
