package agent_test

import (
	"bytes"
	binenc "encoding/binary"
	"encoding/json"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vlmdiff/edge/agent"
	"github.com/vlmdiff/edge/agent/internal/mqtttest"
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
	stop := startAgent(t, cfg)
	base := "http://" + httpAddr
	waitModelRunning(t, sub, e.prefix)

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
	if r.HeatmapF != "png" || len(r.Heatmap64) < 8 || string(r.Heatmap64[1:4]) != "PNG" {
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
	stop()
}
