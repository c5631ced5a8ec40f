package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vlmdiff/edge/agent"
	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/agent/internal/mqtttest"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
)

// fixtureDir is the committed tiny real bundle.
const fixtureDir = "../models/testdata/fixture"

// wait bounds every wait in these tests: a deadline against hangs, not a speed check.
const wait = 3 * time.Minute

// result is the documented result JSON (docs/operations.md).
type result struct {
	Camera         string    `json:"camera"`
	Seq            uint64    `json:"seq"`
	FrameTime      time.Time `json:"frame_time"`
	PublishedAt    time.Time `json:"published_at"`
	Score          float64   `json:"score"`
	RawScore       *float64  `json:"raw_score"`
	Threshold      float64   `json:"threshold"`
	Verdict        string    `json:"verdict"`
	Model          struct{ Name, Version string }
	LatencyMS      map[string]float64 `json:"latency_ms"`
	AnomalyAreaPct *float64           `json:"anomaly_area_pct"`
	Heatmap        *struct {
		Topic  string `json:"topic"`
		Format string `json:"format"`
		Bytes  int    `json:"bytes"`
	} `json:"heatmap"`
}

func decodeResults(t *testing.T, msgs []mqtttest.Message) []result {
	t.Helper()
	out := make([]result, 0, len(msgs))
	for _, m := range msgs {
		var r result
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			t.Fatalf("result payload %q: %v", m.Payload, err)
		}
		out = append(out, r)
	}
	return out
}

// firstSeen returns the seqs in order of first arrival (a QoS-1 redelivery repeats a seq; it is not a new
// result) and how many repeats there were.
func firstSeen(rs []result) (seqs []uint64, repeats int) {
	seen := map[uint64]bool{}
	for _, r := range rs {
		if seen[r.Seq] {
			repeats++
			continue
		}
		seen[r.Seq] = true
		seqs = append(seqs, r.Seq)
	}
	return seqs, repeats
}

func initORT(t testing.TB) {
	t.Helper()
	if err := pipeline.InitRuntime(""); err != nil {
		t.Skipf("ONNX Runtime not available (run .ci/deps.sh): %v", err)
	}
}

// copyBundle copies the fixture into dst, setting version and created, writing through a hidden temp dir
// renamed into place, as `vlmdiff train`'s register stage does.
func copyBundle(t testing.TB, dst, version string, created time.Time, corrupt bool) {
	copyBundleSteps(t, dst, version, created, corrupt, 0)
}

// copyBundleSteps is copyBundle with the DDIM step count overridden (0 = the fixture's), to keep tests that
// check behaviour rather than scores short on a loaded CPU.
func copyBundleSteps(t testing.TB, dst, version string, created time.Time, corrupt bool, steps int) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(fixtureDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(fixtureDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if e.Name() == models.ManifestFile {
			var m map[string]any
			if err := json.Unmarshal(data, &m); err != nil {
				t.Fatal(err)
			}
			m["version"] = version
			m["created"] = created.UTC().Format(time.RFC3339Nano)
			if steps > 0 {
				m["diffusion"].(map[string]any)["ddim_steps"] = steps
			}
			data, _ = json.MarshalIndent(m, "", "  ")
		} else if corrupt && strings.HasSuffix(e.Name(), ".onnx") {
			data[len(data)/2] ^= 0xff // checksum no longer matches
		}
		if err := os.WriteFile(filepath.Join(tmp, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// writeImages writes n small PNGs into dir (through a temp name, then rename: complete files only). Every
// 10th has a bright square so scores vary.
func writeImages(t testing.TB, dir string, from, n int) []string {
	t.Helper()
	var names []string
	for i := from; i < from+n; i++ {
		im := image.NewRGBA(image.Rect(0, 0, 64, 48))
		for y := 0; y < 48; y++ {
			for x := 0; x < 64; x++ {
				im.Set(x, y, color.RGBA{uint8(80 + x), uint8(90 + y), uint8(100 + (x*y+i)%40), 255})
			}
		}
		if i%10 == 0 {
			for y := 10; y < 20; y++ {
				for x := 20; x < 30; x++ {
					im.Set(x, y, color.RGBA{250, 250, 250, 255})
				}
			}
		}
		name := fmt.Sprintf("part-%04d.png", i)
		tmp := filepath.Join(dir, "."+name)
		f, err := os.Create(tmp)
		if err != nil {
			t.Fatal(err)
		}
		if err := png.Encode(f, im); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	return names
}

// env is one test's directories, broker and config.
type env struct {
	dir, folder, modelsDir string
	broker                 *mqtttest.Broker
	prefix                 string
}

func newEnv(t *testing.T, persist bool) *env {
	t.Helper()
	e := &env{dir: t.TempDir(), prefix: "vt"}
	e.folder = filepath.Join(e.dir, "incoming")
	e.modelsDir = filepath.Join(e.dir, "models")
	for _, d := range []string{e.folder, e.modelsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.broker = mqtttest.StartWith(t, mqtttest.Options{Persistence: persist})
	return e
}

func (e *env) yaml(extra string) string {
	return fmt.Sprintf(`
agent: {name: test, data_dir: %q, shutdown_timeout: 30s, log_level: info}
models: {dir: %q, threads: 1}
cameras:
  - name: line
    kind: folder
    path: %q
    folder: {settle: 50ms}
mqtt:
  broker: %q
  prefix: %s
  client_id: vlmdiff-test-agent
  stats_interval: 1s
%s`, e.dir, e.modelsDir, e.folder, e.broker.URL, e.prefix, extra)
}

func (e *env) config(t *testing.T, extra string) *config.Config {
	t.Helper()
	cfg, err := config.Parse(strings.NewReader(e.yaml(extra)), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startAgent runs the daemon in-process with the real pipeline; the returned stop shuts it down gracefully.
func startAgent(t *testing.T, cfg *config.Config) (stop func()) {
	t.Helper()
	return startAgentWith(t, cfg, nil)
}

// startAgentWith is startAgent with agent.Options.OnHTTP set (it receives the HTTP server before it starts).
func startAgentWith(t *testing.T, cfg *config.Config, onHTTP func(*httpapi.Server)) (stop func()) {
	t.Helper()
	initORT(t)
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	a, err := agent.New(cfg, agent.Options{
		Open:          func(dir string) (agent.Scorer, error) { return pipeline.Open(dir, pipeline.Options{Threads: 1}) },
		Logger:        log,
		ModelDebounce: 200 * time.Millisecond,
		OnHTTP:        onHTTP,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent.Run: %v", err)
			}
		case <-time.After(wait):
			t.Fatal("agent did not stop")
		}
	}
	t.Cleanup(stop)
	return stop
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestFolderHundred: 100 images dropped into a watched folder give 100 results and 100 heatmaps (with
// mqtt.heatmap.min_interval 0) with the documented fields, in seq order; the files end in processed/. It also
// prints the throughput line.
func TestFolderHundred(t *testing.T) {
	e := newEnv(t, false)
	copyBundle(t, filepath.Join(e.modelsDir, "fixture-1"), "1", time.Now(), false)
	sub := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/#")
	cfg := e.config(t, "")
	every := time.Duration(0) // every result's heatmap (the default rate-limits OK ones to one a second)
	cfg.MQTT.Heatmap.MinInterval = &every
	stop := startAgent(t, cfg)
	sub.WaitFor(e.prefix+"/model/status", wait, func(m []mqtttest.Message) bool {
		return len(m) > 0 && strings.Contains(string(m[len(m)-1].Payload), `"running"`)
	})
	start := time.Now()
	names := writeImages(t, e.folder, 1, 100)
	msgs := sub.WaitN(e.prefix+"/line/result", 100, wait)
	wall := time.Since(start)
	heat := sub.WaitN(e.prefix+"/line/heatmap", 100, wait)
	stop()

	rs := decodeResults(t, msgs)
	seqs, repeats := firstSeen(rs)
	if len(seqs) != 100 || repeats != 0 {
		t.Fatalf("got %d distinct results and %d repeats, want 100 and 0", len(seqs), repeats)
	}
	var model, overhead, c2p float64
	for i, r := range rs {
		if r.Seq != uint64(i+1) {
			t.Fatalf("result %d has seq %d, want %d (in order from 1)", i, r.Seq, i+1)
		}
		switch {
		case r.Camera != "line":
			t.Errorf("seq %d: camera %q", r.Seq, r.Camera)
		case r.RawScore == nil || r.AnomalyAreaPct == nil:
			t.Errorf("seq %d: raw_score or anomaly_area_pct missing", r.Seq)
		case r.Score < 0 || r.Score > 1:
			t.Errorf("seq %d: score %v outside 0..1", r.Seq, r.Score)
		case r.Verdict != "OK" && r.Verdict != "NG":
			t.Errorf("seq %d: verdict %q", r.Seq, r.Verdict)
		case (*r.RawScore >= r.Threshold) != (r.Verdict == "NG"):
			t.Errorf("seq %d: raw %v threshold %v verdict %s disagree", r.Seq, *r.RawScore, r.Threshold, r.Verdict)
		case r.Model.Version != "1" || r.Model.Name == "":
			t.Errorf("seq %d: model %+v", r.Seq, r.Model)
		case r.FrameTime.IsZero() || r.PublishedAt.IsZero():
			t.Errorf("seq %d: frame_time/published_at missing", r.Seq)
		case r.Heatmap == nil || r.Heatmap.Format != config.DefaultHeatmapFormat || r.Heatmap.Bytes == 0:
			t.Errorf("seq %d: heatmap reference %+v", r.Seq, r.Heatmap)
		}
		for _, k := range []string{agent.LatCaptureToPublish, agent.LatModel, agent.LatOverhead, agent.LatQueue, pipeline.StageDenoise} {
			if _, ok := r.LatencyMS[k]; !ok {
				t.Errorf("seq %d: latency_ms.%s missing (have %v)", r.Seq, k, r.LatencyMS)
			}
		}
		model += r.LatencyMS[agent.LatModel]
		overhead += r.LatencyMS[agent.LatOverhead]
		c2p += r.LatencyMS[agent.LatCaptureToPublish]
	}
	for i, h := range heat[:100] {
		if len(h.Payload) < 8 || string(h.Payload[:3]) != "\xff\xd8\xff" {
			t.Fatalf("heatmap %d is not a JPEG, the default format (%d bytes)", i, len(h.Payload))
		}
	}
	processed, _ := filepath.Glob(filepath.Join(e.folder, "processed", "*.png"))
	if len(processed) != len(names) {
		t.Errorf("%d files in processed/, want %d", len(processed), len(names))
	}
	t.Logf("STATS folder 100 frames, 1 worker, batch 1, fixture bundle: %.2f frames/s end to end; per frame mean model %.1f ms, overhead outside the model %.2f ms, capture_to_publish %.1f ms",
		100/wall.Seconds(), model/100, overhead/100, c2p/100)
}

// TestBrokerOutage: mosquitto stopped mid-stream and restarted; every result arrives, in order.
func TestBrokerOutage(t *testing.T) {
	outage := 5 * time.Second
	if os.Getenv("VLMDIFF_LONG_TESTS") == "1" {
		outage = 30 * time.Second
	}
	e := newEnv(t, true)
	copyBundleSteps(t, filepath.Join(e.modelsDir, "fixture-1"), "1", time.Now(), false, 2)
	sub := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1, Persistent: true, ClientID: "outage-sub"}, e.prefix+"/+/result")
	stop := startAgent(t, e.config(t, ""))
	writeImages(t, e.folder, 1, 40)
	sub.WaitN(e.prefix+"/line/result", 8, wait)
	e.broker.Stop()
	time.Sleep(outage) // the outage itself, not a timing assertion
	e.broker.Restart()
	msgs := sub.WaitFor(e.prefix+"/line/result", wait, func(m []mqtttest.Message) bool {
		s, _ := firstSeen(decodeResults(t, m))
		return len(s) >= 40
	})
	stop()
	seqs, repeats := firstSeen(decodeResults(t, msgs))
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("after the outage, result %d has seq %d, want %d: %v", i, s, i+1, seqs)
		}
	}
	t.Logf("outage %v: %d results, all in order, %d QoS-1 redeliveries", outage, len(seqs), repeats)
}

// TestCorruptImage: a corrupt image is reported on the camera's status topic and skipped; the others score.
func TestCorruptImage(t *testing.T) {
	e := newEnv(t, false)
	copyBundleSteps(t, filepath.Join(e.modelsDir, "fixture-1"), "1", time.Now(), false, 2)
	sub := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/#")
	httpAddr := freeAddr(t)
	cfg := e.config(t, "http: {listen: "+httpAddr+"}\n")
	every := time.Duration(0) // checkHTTP follows the newest result's heatmap URL
	cfg.MQTT.Heatmap.MinInterval = &every
	stop := startAgent(t, cfg)
	writeImages(t, e.folder, 1, 3)
	if err := os.WriteFile(filepath.Join(e.folder, "broken.png"), []byte("\x89PNG\r\n\x1a\nthis is not a png"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeImages(t, e.folder, 4, 3)
	sub.WaitN(e.prefix+"/line/result", 6, wait)
	st := sub.WaitFor(e.prefix+"/line/status", wait, func(m []mqtttest.Message) bool {
		for _, x := range m {
			if strings.Contains(string(x.Payload), "broken.png") {
				return true
			}
		}
		return false
	})
	checkHTTP(t, "http://"+httpAddr)
	stop()
	if len(st) == 0 || !st[0].Retained && len(st) == 1 {
		t.Errorf("status messages: %v", st)
	}
	if _, err := os.Stat(filepath.Join(e.folder, "failed", "broken.png")); err != nil {
		t.Errorf("broken.png not moved to failed/: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(sub.Messages(e.prefix + "/line/result")); n != 6 {
		t.Errorf("%d results, want 6 (the corrupt file must not produce one)", n)
	}
}

// TestHotSwap: a new bundle dropped into the models dir swaps in with no frame lost; a corrupt newer bundle
// is refused with the reason and the current model keeps scoring.
func TestHotSwap(t *testing.T) {
	e := newEnv(t, false)
	t0 := time.Now().Add(-time.Hour)
	copyBundleSteps(t, filepath.Join(e.modelsDir, "fixture-1"), "1", t0, false, 2)
	sub := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/#")
	stop := startAgent(t, e.config(t, ""))
	modelIs := func(state, version, reason string) {
		t.Helper()
		sub.WaitFor(e.prefix+"/model/status", wait, func(m []mqtttest.Message) bool {
			if len(m) == 0 {
				return false
			}
			var s struct{ State, Version, Reason string }
			_ = json.Unmarshal(m[len(m)-1].Payload, &s)
			return s.State == state && s.Version == version && strings.Contains(s.Reason, reason)
		})
	}
	modelIs("running", "1", "")

	writeImages(t, e.folder, 1, 20)
	sub.WaitN(e.prefix+"/line/result", 5, wait)
	copyBundleSteps(t, filepath.Join(e.modelsDir, "fixture-2"), "2", t0.Add(time.Minute), false, 2)
	modelIs("running", "2", "")
	writeImages(t, e.folder, 21, 5)

	// A corrupt, newer bundle: refused, version 2 keeps scoring.
	copyBundleSteps(t, filepath.Join(e.modelsDir, "fixture-3"), "3", t0.Add(2*time.Minute), true, 2)
	modelIs("running", "2", "fixture-3")
	writeImages(t, e.folder, 26, 5)

	msgs := sub.WaitN(e.prefix+"/line/result", 30, wait)
	stop()
	rs := decodeResults(t, msgs)
	seqs, _ := firstSeen(rs)
	if len(seqs) != 30 {
		t.Fatalf("%d distinct results, want 30", len(seqs))
	}
	versions := map[string]int{}
	for i, r := range rs {
		if r.Seq != uint64(i+1) {
			t.Fatalf("result %d has seq %d: a frame was lost or reordered across the swap", i, r.Seq)
		}
		versions[r.Model.Version]++
	}
	if versions["1"] == 0 || versions["2"] == 0 || versions["3"] != 0 {
		t.Errorf("results per model version: %v; want some of 1 and 2, none of 3", versions)
	}
	if rs[len(rs)-1].Model.Version != "2" {
		t.Errorf("last result scored by %q, want 2", rs[len(rs)-1].Model.Version)
	}
	t.Logf("results per model version: %v", versions)
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// checkHTTP exercises the HTTP API of a daemon that has scored 6 frames of camera "line".
func checkHTTP(t *testing.T, base string) {
	t.Helper()
	get := func(path string) (int, string, []byte) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), b
	}
	// The result reaches MQTT a moment before the daemon's counters move past it: wait for them.
	deadline := time.Now().Add(wait)
	for {
		_, _, b := get("/api/stats")
		if bytes.Contains(b, []byte(`"scored": 6`)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats never showed 6 scored: %s", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cases := []struct {
		path     string
		code     int
		ctype    string
		contains string
	}{
		{"/healthz", 200, "", "ok"},
		{"/readyz", 200, "", "ready"},
		{"/metrics", 200, "text/plain", `vlmdiff_scored_total{camera="line"} 6`},
		{"/metrics", 200, "text/plain", `vlmdiff_latency_seconds_bucket{camera="line",stage="model",le="+Inf"} 6`},
		{"/api/stats", 200, "application/json", `"decode_errors": 1`},
		{"/api/cameras", 200, "application/json", `"heatmap_url": "/api/cameras/line/heatmap.jpg"`},
		{"/api/model", 200, "application/json", `"state": "running"`},
		{"/api/model", 200, "application/json", `"provider": "cpu"`},
		{"/api/history?camera=line&limit=2", 200, "application/json", `"seq": 6`},
		{"/api/events?limit=1", 200, "application/json", `"heatmap_url": "/api/images/line/heatmap/`},
		{"/api/events?verdict=NG", 200, "application/json", `[`},
		{"/api/cameras/line/heatmap.jpg", 200, "image/jpeg", "\xff\xd8\xff"},
		{"/api/cameras/line/heatmap.png", 200, "image/jpeg", "\xff\xd8\xff"}, // the name older releases gave
		{"/api/cameras/line/frame.jpg", 200, "image/jpeg", "\xff\xd8\xff"},
		{"/api/cameras/nope/frame.jpg", 404, "application/json", "nope"},
		{"/api/history?camera=nope", 404, "application/json", "nope"},
		{"/api/events?verdict=maybe", 400, "application/json", "verdict"},
		{"/api/events?limit=0", 400, "application/json", "limit"},
	}
	for _, c := range cases {
		code, ct, body := get(c.path)
		if code != c.code || !strings.HasPrefix(ct, c.ctype) || !bytes.Contains(body, []byte(c.contains)) {
			t.Errorf("GET %s: %d %q %.300q; want %d %q containing %q", c.path, code, ct, body, c.code, c.ctype, c.contains)
		}
	}
	checkMetrics(t, base, map[string]float64{`vlmdiff_scored_total{camera="line"}`: 6, `vlmdiff_decode_errors_total{camera="line"}`: 1})
	// The events' heatmap URLs resolve.
	_, _, body := get("/api/events?limit=1")
	var evs []struct {
		HeatmapURL string `json:"heatmap_url"`
	}
	if err := json.Unmarshal(body, &evs); err != nil || len(evs) != 1 {
		t.Fatalf("events: %v %s", err, body)
	}
	if code, ct, _ := get(evs[0].HeatmapURL); code != 200 || ct != "image/jpeg" {
		t.Errorf("GET %s: %d %s", evs[0].HeatmapURL, code, ct)
	}
}

var _ = sort.Ints
