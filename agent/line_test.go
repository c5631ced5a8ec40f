package agent_test

import (
	"bytes"
	"context"
	binenc "encoding/binary"
	"encoding/json"
	"hash/crc32"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vlmdiff/edge/agent"
	"github.com/vlmdiff/edge/agent/internal/mqtttest"
	"github.com/vlmdiff/edge/pipeline"
)

// lineResult is the result JSON's line-integration fields (docs/mqtt.md).
type lineResult struct {
	Camera    string             `json:"camera"`
	Seq       uint64             `json:"seq"`
	Verdict   string             `json:"verdict"`
	Source    string             `json:"source"`
	Trigger   map[string]any     `json:"trigger"`
	LatencyMS map[string]float64 `json:"latency_ms"`
	Heatmap64 []byte             `json:"heatmap_base64"`
	HeatmapF  string             `json:"heatmap_format"`
}

func mosquittoPub(t *testing.T, b *mqtttest.Broker, topic, payload string) {
	t.Helper()
	out, err := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", strconv.Itoa(b.Port), "-q", "1", "-t", topic, "-m", payload).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub %s: %v: %s", topic, err, out)
	}
}

func post(t *testing.T, url, ctype string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := http.Post(url, ctype, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func waitModelRunning(t *testing.T, sub *mqtttest.Subscriber, prefix string) {
	t.Helper()
	sub.WaitFor(prefix+"/model/status", wait, func(m []mqtttest.Message) bool {
		return len(m) > 0 && strings.Contains(string(m[len(m)-1].Payload), `"running"`)
	})
}

// TestTriggerHandshake: a trigger-mode folder camera scores nothing until triggered; each trigger (MQTT or
// HTTP) gives exactly one result carrying its id and fields, the file name and the trigger latency; bad
// payloads and a trigger that finds no frame are refused on trigger/rejected.
func TestTriggerHandshake(t *testing.T) {
	e := newEnv(t, false)
	copyBundleSteps(t, filepath.Join(e.modelsDir, "fixture-1"), "1", time.Now(), false, 2)
	sub := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/#")
	httpAddr := freeAddr(t)
	cfg := e.config(t, "http: {listen: "+httpAddr+"}\n")
	cfg.Cameras[0].Trigger = true
	cfg.Cameras[0].TriggerTimeout = time.Second
	cfg.MQTT.Discovery = true
	// Every frame NG (threshold 0), kept as evidence.
	zero := 0.0
	cfg.Cameras[0].Threshold = &zero
	cfg.Evidence.Enabled = true
	ha := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, "homeassistant/#")
	stop := startAgent(t, cfg)
	base := "http://" + httpAddr
	waitModelRunning(t, sub, e.prefix)
	// The daemon announces its camera to Home Assistant (payloads checked against the schema in mqttout).
	ng := ha.WaitN("homeassistant/binary_sensor/test/line_ng/config", 1, wait)
	if !bytes.Contains(ng[0].Payload, []byte(`"availability_topic":"vt/available"`)) || !bytes.Contains(ng[0].Payload, []byte(`"state_topic":"vt/line/result"`)) {
		t.Errorf("binary_sensor discovery config: %s", ng[0].Payload)
	}

	writeImages(t, e.folder, 1, 3)
	// Nothing is scored before a trigger (the files wait in the folder).
	time.Sleep(time.Second)
	if n := len(sub.Messages(e.prefix + "/line/result")); n != 0 {
		t.Fatalf("%d results before any trigger", n)
	}

	mosquittoPub(t, e.broker, e.prefix+"/line/trigger", `{"id": "P-1", "lot": "L7"}`)
	first := decodeLine(t, sub.WaitN(e.prefix+"/line/result", 1, wait))[0]
	if first.Trigger["id"] != "P-1" || first.Trigger["lot"] != "L7" {
		t.Errorf("result trigger %v, want id P-1 and lot L7 echoed", first.Trigger)
	}
	if first.Source != "part-0001.png" {
		t.Errorf("result source %q, want part-0001.png", first.Source)
	}
	if _, ok := first.LatencyMS[agent.LatTrigger]; !ok {
		t.Errorf("latency_ms has no %s: %v", agent.LatTrigger, first.LatencyMS)
	}

	// HTTP, waiting for the result: the answer is the result itself.
	code, body := post(t, base+"/api/cameras/line/trigger?wait=1", "application/json", []byte(`{"id": 42}`))
	var second lineResult
	if code != 200 || json.Unmarshal(body, &second) != nil || second.Trigger["id"] != float64(42) || second.Source != "part-0002.png" {
		t.Fatalf("POST trigger?wait=1: %d %s", code, body)
	}
	// Without wait: 202, then the result arrives on MQTT.
	code, body = post(t, base+"/api/cameras/line/trigger", "application/json", []byte(`{"id": "P-3"}`))
	if code != http.StatusAccepted {
		t.Fatalf("POST trigger: %d %s", code, body)
	}
	sub.WaitN(e.prefix+"/line/result", 3, wait)

	// Refusals: bad JSON (MQTT and HTTP), an unknown camera, and a trigger with no frame left to score.
	mosquittoPub(t, e.broker, e.prefix+"/line/trigger", `{"id": "P-4"`)
	if code, body := post(t, base+"/api/cameras/line/trigger", "application/json", []byte(`[1,2]`)); code != 400 || !bytes.Contains(body, []byte("not a JSON object")) {
		t.Errorf("bad trigger over HTTP: %d %s", code, body)
	}
	if code, body := post(t, base+"/api/cameras/nope/trigger", "application/json", nil); code != 404 {
		t.Errorf("trigger of an unknown camera: %d %s", code, body)
	}
	mosquittoPub(t, e.broker, e.prefix+"/line/trigger", `{"id": "P-5"}`)
	rej := sub.WaitFor(e.prefix+"/line/trigger/rejected", wait, func(m []mqtttest.Message) bool { return len(m) >= 2 })
	if !bytes.Contains(rej[0].Payload, []byte("not a JSON object")) {
		t.Errorf("first rejection %s, want the bad JSON refused", rej[0].Payload)
	}
	var timeout struct {
		Trigger map[string]any `json:"trigger"`
		Error   string         `json:"error"`
	}
	if err := json.Unmarshal(rej[1].Payload, &timeout); err != nil || timeout.Trigger["id"] != "P-5" || !strings.Contains(timeout.Error, "trigger_timeout") {
		t.Errorf("second rejection %s, want P-5 refused for the timeout", rej[1].Payload)
	}
	checkEvidence(t, base, cfg.Evidence.Dir, 3)
	stop()

	// Exactly one result per trigger id.
	ids := map[string]int{}
	for _, r := range decodeLine(t, sub.Messages(e.prefix+"/line/result")) {
		ids[toString(r.Trigger["id"])]++
	}
	want := map[string]int{"P-1": 1, "42": 1, "P-3": 1}
	if len(ids) != len(want) || ids["P-1"] != 1 || ids["42"] != 1 || ids["P-3"] != 1 {
		t.Errorf("results per trigger id %v, want %v", ids, want)
	}
}

func toString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	}
	return ""
}

func decodeLine(t *testing.T, msgs []mqtttest.Message) []lineResult {
	t.Helper()
	var out []lineResult
	for _, m := range msgs {
		var r lineResult
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			t.Fatalf("result %q: %v", m.Payload, err)
		}
		out = append(out, r)
	}
	return out
}

// pipedImage is a PIPED test image when ../shared is present, else a generated part image.
func pipedImage(t *testing.T) []byte {
	t.Helper()
	if m, _ := filepath.Glob("../../shared/datasets/piped/PA_BDP01_TL/test/*/*.png"); len(m) > 0 {
		data, err := os.ReadFile(m[0])
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("pushing PIPED image %s", filepath.Base(m[0]))
		return data
	}
	t.Log("../shared absent: pushing a generated image")
	dir := t.TempDir()
	writeImages(t, dir, 1, 1)
	data, err := os.ReadFile(filepath.Join(dir, "part-0001.png"))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// pngHeaderClaiming is a PNG signature and IHDR chunk claiming w x h pixels, with no image data: what a
// decompression bomb's header looks like.
func pngHeaderClaiming(w, h uint32) []byte {
	ihdr := make([]byte, 13)
	binenc.BigEndian.PutUint32(ihdr[0:], w)
	binenc.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 2 // 8-bit RGB
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	binenc.Write(&b, binenc.BigEndian, uint32(len(ihdr)))
	chunk := append([]byte("IHDR"), ihdr...)
	b.Write(chunk)
	binenc.Write(&b, binenc.BigEndian, crc32.ChecksumIEEE(chunk))
	return b.Bytes()
}

// TestScoreAPI: POST /api/score answers 503 before a model is loaded, then scores a PIPED image through
// the daemon's scheduler and model (result with its id, the heatmap inline, in the history and on MQTT),
// refuses bad and oversized images, and answers 429 when saturated.
func TestScoreAPI(t *testing.T) {
	e := newEnv(t, false)
	sub := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/#")
	httpAddr := freeAddr(t)
	stop := startAgent(t, e.config(t, "http: {listen: "+httpAddr+", score: {max_pending: 1}}\n"))
	base := "http://" + httpAddr
	img := pipedImage(t)

	// No model yet.
	deadline := time.Now().Add(wait)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("HTTP never came up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Without http.auth the machine routes stay open (as below) and operator actions are refused.
	if code, body := post(t, base+"/api/cameras/line/threshold", "application/json", []byte(`{"threshold": 0.5}`)); code != 403 || !bytes.Contains(body, []byte("http.auth")) {
		t.Errorf("threshold without http.auth: %d %s, want 403 naming http.auth", code, body)
	}
	if code, body := post(t, base+"/api/auth/login", "application/json", []byte(`{"username":"a","password":"b"}`)); code != 403 {
		t.Errorf("login without http.auth: %d %s, want 403", code, body)
	}
	if code, body := post(t, base+"/api/score", "image/png", img); code != 503 || !bytes.Contains(body, []byte("no model")) {
		t.Fatalf("score before a model: %d %s, want 503", code, body)
	}
	copyBundleSteps(t, filepath.Join(e.modelsDir, "fixture-1"), "1", time.Now(), false, 2)
	waitModelRunning(t, sub, e.prefix)

	code, body := post(t, base+"/api/score?id=SN-7&heatmap=1", "image/png", img)
	var r lineResult
	if code != 200 || json.Unmarshal(body, &r) != nil {
		t.Fatalf("score: %d %.300s", code, body)
	}
	if r.Camera != "api" || r.Seq != 1 || (r.Verdict != "OK" && r.Verdict != "NG") || r.Trigger["id"] != "SN-7" {
		t.Errorf("score result %+v", r)
	}
	if r.HeatmapF != "jpeg" || len(r.Heatmap64) < 8 || string(r.Heatmap64[:3]) != "\xff\xd8\xff" {
		t.Errorf("inline heatmap: format %q, %d bytes", r.HeatmapF, len(r.Heatmap64))
	}
	if _, ok := r.LatencyMS[agent.LatModel]; !ok {
		t.Errorf("latency_ms %v has no model time", r.LatencyMS)
	}
	// In the history and on MQTT like any result.
	resp, err := http.Get(base + "/api/events?camera=api")
	if err != nil {
		t.Fatal(err)
	}
	ev, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(ev, []byte(`"id":"SN-7"`)) && !bytes.Contains(ev, []byte(`"id": "SN-7"`)) {
		t.Errorf("/api/events?camera=api does not show the pushed result: %.400s", ev)
	}
	if m := decodeLine(t, sub.WaitN(e.prefix+"/api/result", 1, wait)); m[0].Trigger["id"] != "SN-7" {
		t.Errorf("MQTT result %+v", m[0])
	}

	// Refusals.
	if code, body := post(t, base+"/api/score", "image/png", []byte("not an image")); code != 400 {
		t.Errorf("garbage: %d %s, want 400", code, body)
	}
	if code, body := post(t, base+"/api/score", "image/png", pngHeaderClaiming(60000, 60000)); code != 413 || !bytes.Contains(body, []byte("max_pixels")) {
		t.Errorf("60000x60000 header: %d %s, want 413", code, body)
	}
	if code, body := post(t, base+"/api/score", "image/png", nil); code != 400 {
		t.Errorf("empty body: %d %s, want 400", code, body)
	}

	// Saturation: with max_pending 1, concurrent requests see 429 (with Retry-After) while one is scored.
	// Rounds repeat until one is seen; every answer is 200 or 429.
	saw429, saw200 := false, false
	for round := 0; round < 50 && !saw429; round++ {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := http.Post(base+"/api/score", "image/png", bytes.NewReader(img))
				if err != nil {
					t.Errorf("POST: %v", err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				mu.Lock()
				defer mu.Unlock()
				switch resp.StatusCode {
				case 200:
					saw200 = true
				case 429:
					saw429 = true
					if resp.Header.Get("Retry-After") == "" {
						t.Errorf("429 without Retry-After")
					}
				default:
					t.Errorf("concurrent score: %d %s", resp.StatusCode, b)
				}
			}()
		}
		wg.Wait()
	}
	if !saw429 || !saw200 {
		t.Errorf("under saturation saw 200: %v, 429: %v; want both", saw200, saw429)
	}
	checkMetrics(t, base, map[string]float64{`vlmdiff_score_pending`: 0})
	if resp, err := http.Get(base + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Errorf("/healthz: %v %v", resp, err)
	}
	stop()
}

// checkMetrics parses /metrics with the Prometheus text parser and checks the conventions: the process and
// Go collectors, vlmdiff_build_info, latency as a _seconds histogram, counters as counters, and the values
// in want (keyed name{label="value"}).
func checkMetrics(t *testing.T, base string, want map[string]float64) {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse as Prometheus text: %v", err)
	}
	types := map[string]dto.MetricType{
		"process_resident_memory_bytes": dto.MetricType_GAUGE,
		"go_goroutines":                 dto.MetricType_GAUGE,
		"vlmdiff_build_info":            dto.MetricType_GAUGE,
		"vlmdiff_latency_seconds":       dto.MetricType_HISTOGRAM,
		"vlmdiff_scored_total":          dto.MetricType_COUNTER,
		"vlmdiff_frames_total":          dto.MetricType_COUNTER,
		"vlmdiff_outbox_dropped_total":  dto.MetricType_COUNTER,
		"vlmdiff_model_info":            dto.MetricType_GAUGE,
	}
	scored := 0.0
	if f := fams["vlmdiff_scored_total"]; f != nil {
		for _, m := range f.Metric {
			scored += m.GetCounter().GetValue()
		}
	}
	for name, typ := range types {
		f := fams[name]
		if f == nil && name == "vlmdiff_latency_seconds" && scored == 0 {
			continue // a histogram appears with its first observation
		}
		if f == nil {
			t.Errorf("/metrics has no %s", name)
			continue
		}
		if f.GetType() != typ {
			t.Errorf("%s is a %v, want %v", name, f.GetType(), typ)
		}
	}
	if f := fams["process_resident_memory_bytes"]; f != nil && f.Metric[0].GetGauge().GetValue() <= 0 {
		t.Errorf("process_resident_memory_bytes = %v", f.Metric[0].GetGauge().GetValue())
	}
	for name := range fams {
		if strings.HasSuffix(name, "_ms") || strings.Contains(name, "_ms_") || name == "vlmdiff_fps" {
			t.Errorf("%s: not in base units / a precomputed rate", name)
		}
	}
	got := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.Metric {
			key := name
			for _, l := range m.Label {
				key += "{" + l.GetName() + "=\"" + l.GetValue() + "\"}"
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				got[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				got[key] = m.GetGauge().GetValue()
			}
		}
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("/metrics %s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}

// wedgedScorer is the real pipeline scorer with a gate in front of Score: closed, it scores; open, it
// holds every batch, as a wedged model or a deadlocked driver would (which cannot be produced on demand).
type wedgedScorer struct {
	agent.Scorer
	gate chan struct{}
}

func (w *wedgedScorer) Score(ctx context.Context, reqs []pipeline.Request) ([]pipeline.Result, error) {
	<-w.gate
	return w.Scorer.Score(ctx, reqs)
}

// TestHealthzStall: /healthz answers the watchdog's progress check: 503 naming the stall while frames wait
// and no batch finishes, 200 again once scoring moves; /readyz stays ready (model loaded, store open).
func TestHealthzStall(t *testing.T) {
	initORT(t)
	e := newEnv(t, false)
	copyBundleSteps(t, filepath.Join(e.modelsDir, "fixture-1"), "1", time.Now(), false, 2)
	sub := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/#")
	httpAddr := freeAddr(t)
	cfg := e.config(t, "http: {listen: "+httpAddr+"}\n")
	gate := make(chan struct{})
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	a, err := agent.New(cfg, agent.Options{
		Open: func(dir string) (agent.Scorer, error) {
			s, err := pipeline.Open(dir, pipeline.Options{Threads: 1})
			if err != nil {
				return nil, err
			}
			return &wedgedScorer{Scorer: s, gate: gate}, nil
		},
		Logger: log, ModelDebounce: 200 * time.Millisecond, StallAfter: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	base := "http://" + httpAddr
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(wait)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitModelRunning(t, sub, e.prefix)
	if code, body := get("/healthz"); code != 200 {
		t.Fatalf("/healthz before any frame: %d %s", code, body)
	}
	writeImages(t, e.folder, 1, 3)
	waitFor("/healthz 503", func() bool {
		code, body := get("/healthz")
		return code == 503 && strings.Contains(body, "scoring stalled")
	})
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz during the stall: %d %s, want 200 (model loaded, store open)", code, body)
	}
	checkMetrics(t, base, map[string]float64{"vlmdiff_stalled": 1})
	close(gate)
	sub.WaitN(e.prefix+"/line/result", 3, wait)
	waitFor("/healthz 200 after the stall", func() bool { code, _ := get("/healthz"); return code == 200 })
}

// checkEvidence: n NG results of camera line are in the evidence tree as frame, heatmap and result JSON
// under line/<day>/<seq>-NG.*, and GET /api/evidence lists them with URLs that serve the files.
func checkEvidence(t *testing.T, base, dir string, n int) {
	t.Helper()
	frames, _ := filepath.Glob(filepath.Join(dir, "line", "*", "*-NG.png"))
	heatmaps, _ := filepath.Glob(filepath.Join(dir, "line", "*", "*-NG.heatmap.jpg"))
	results, _ := filepath.Glob(filepath.Join(dir, "line", "*", "*-NG.json"))
	if len(frames) != n || len(heatmaps) != n || len(results) != n {
		t.Fatalf("evidence: %d frames, %d heatmaps, %d results; want %d each", len(frames), len(heatmaps), len(results), n)
	}
	var r lineResult
	if data, err := os.ReadFile(results[0]); err != nil || json.Unmarshal(data, &r) != nil || r.Verdict != "NG" || r.Trigger["id"] != "P-1" {
		t.Errorf("evidence result %s: %+v %v", results[0], r, err)
	}
	if day := filepath.Base(filepath.Dir(frames[0])); day != time.Now().UTC().Format("2006-01-02") {
		t.Errorf("evidence day folder %s", day)
	}
	resp, err := http.Get(base + "/api/evidence?camera=line")
	if err != nil {
		t.Fatal(err)
	}
	var list []struct {
		Path string `json:"path"`
		URL  string `json:"url"`
	}
	err = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if err != nil || len(list) != 3*n {
		t.Fatalf("/api/evidence: %d entries, %v; want %d", len(list), err, 3*n)
	}
	for _, e := range list {
		if !strings.HasSuffix(e.Path, "-NG.png") {
			continue
		}
		resp, err := http.Get(base + e.URL)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(b) < 8 || string(b[1:4]) != "PNG" {
			t.Errorf("GET %s: %d, %d bytes", e.URL, resp.StatusCode, len(b))
		}
		break
	}
	if resp, err := http.Get(base + "/api/evidence/files/../../etc/passwd"); err == nil {
		if resp.StatusCode == 200 {
			t.Errorf("the evidence route served a path outside its tree")
		}
		resp.Body.Close()
	}
}
