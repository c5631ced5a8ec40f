package mqttout

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vlmdiff/edge/agent/internal/mqtttest"
	"github.com/vlmdiff/edge/agent/store"
)

const wait = 20 * time.Second // liveness deadline for waits, not a speed check

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func openStore(t *testing.T, path string) *store.Store {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "vlmdiff.db")
	}
	st, err := store.Open(store.Options{Path: path, Logger: quiet(),
		Statfs: func(string) (uint64, error) { return 100 << 30, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// runPub starts a publisher on url; the returned stop cancels Run and waits for it.
func runPub(t *testing.T, st *store.Store, url string, edit func(*Config)) (*Publisher, func()) {
	t.Helper()
	cfg := DefaultConfig(url)
	cfg.Prefix = "plant"
	cfg.Logger = quiet()
	cfg.ConnectRetryInterval = 100 * time.Millisecond
	cfg.MaxReconnectInterval = 300 * time.Millisecond
	cfg.StatsInterval = -1
	if edit != nil {
		edit(&cfg)
	}
	p, err := New(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return p, stop
}

func result(camera string, seq uint64, verdict string) *store.Record {
	return &store.Record{Camera: camera, Seq: seq, Verdict: verdict, FrameTime: time.Unix(1700000000, int64(seq)).UTC(),
		Score: 0.25, RawScore: 1.25, Threshold: 2.5, Class: "bottle", Model: store.Model{Name: "tiny", Version: "3"},
		LatencyMS: map[string]float64{"denoise": 40, "total": 55.5}, AnomalyAreaPct: 1.5}
}

func verdictOf(seq uint64) string {
	if seq%7 == 0 {
		return store.VerdictNG
	}
	return store.VerdictOK
}

// checkResult decodes one result message and checks every documented field and its JSON type.
func checkResult(t *testing.T, m mqtttest.Message) ResultPayload {
	t.Helper()
	var raw map[string]any
	if err := json.Unmarshal(m.Payload, &raw); err != nil {
		t.Fatalf("result payload is not JSON: %v: %s", err, m.Payload)
	}
	types := map[string]string{"camera": "string", "seq": "number", "frame_time": "string", "published_at": "string",
		"score": "number", "raw_score": "number", "threshold": "number", "verdict": "string", "class": "string",
		"model": "object", "latency_ms": "object", "anomaly_area_pct": "number"}
	for k, want := range types {
		v, ok := raw[k]
		if !ok {
			t.Fatalf("result lacks %q: %s", k, m.Payload)
		}
		got := map[bool]string{true: "x"}[false]
		switch v.(type) {
		case string:
			got = "string"
		case float64:
			got = "number"
		case map[string]any:
			got = "object"
		}
		if got != want {
			t.Fatalf("result field %q is %T, want %s", k, v, want)
		}
	}
	var p ResultPayload
	if err := json.Unmarshal(m.Payload, &p); err != nil {
		t.Fatal(err)
	}
	if p.Model.Name != "tiny" || p.Model.Version != "3" || p.LatencyMS["total"] != 55.5 || p.Threshold != 2.5 ||
		p.PublishedAt.IsZero() || p.FrameTime.IsZero() {
		t.Fatalf("result fields wrong: %s", m.Payload)
	}
	return p
}

func TestResultsInOrderWithHeatmapsAndStatus(t *testing.T) {
	b := mqtttest.Start(t)
	sub := mqtttest.Subscribe(t, b.URL, mqtttest.SubOptions{QoS: 1}, "plant/#")
	st := openStore(t, "")
	clk := &fakeClock{t: time.Date(2025, 3, 1, 8, 0, 0, 0, time.UTC)}
	p, stop := runPub(t, st, b.URL, func(c *Config) {
		c.Now = clk.Now
		c.Heatmap.MinInterval = time.Hour // within this test only the first OK heatmap passes the limit
	})
	p.SetCameraStatus("cam1", StateOnline, "")
	p.SetModelStatus(ModelStatus{Name: "tiny", Version: "3", State: "loaded"})
	const n = 100
	ngCount := 0
	for seq := uint64(1); seq <= n; seq++ {
		v := verdictOf(seq)
		if v == store.VerdictNG {
			ngCount++
		}
		hm := &Heatmap{Format: "png", Data: []byte(fmt.Sprintf("PNG%d", seq))}
		if err := p.Submit(result("cam1", seq, v), hm, store.CommitOptions{}); err != nil {
			t.Fatal(err)
		}
		clk.Add(time.Second)
	}
	msgs := sub.WaitN("plant/cam1/result", n, wait)
	for i, m := range msgs {
		r := checkResult(t, m)
		if r.Seq != uint64(i+1) || r.Camera != "cam1" || r.Verdict != verdictOf(r.Seq) {
			t.Fatalf("result %d: seq %d verdict %s", i, r.Seq, r.Verdict)
		}
		if r.Verdict == store.VerdictNG && m.QoS < 1 {
			t.Fatalf("NG result seq %d delivered at QoS %d", r.Seq, m.QoS)
		}
		wantHeatmap := r.Verdict == store.VerdictNG || r.Seq == 1
		if (r.Heatmap != nil) != wantHeatmap {
			t.Fatalf("seq %d: heatmap ref %+v, want present=%v", r.Seq, r.Heatmap, wantHeatmap)
		}
		if r.Heatmap != nil && (r.Heatmap.Topic != "plant/cam1/heatmap" || r.Heatmap.Format != "png" ||
			r.Heatmap.Bytes != len(fmt.Sprintf("PNG%d", r.Seq)) || r.Heatmap.Encoding != HeatmapBinary) {
			t.Fatalf("seq %d heatmap ref %+v", r.Seq, r.Heatmap)
		}
	}
	// Each heatmap arrives right after its result (both go through the ordered outbox).
	all := sub.WaitN("plant/cam1/heatmap", 1+ngCount, wait)
	var lastSeq uint64
	for _, m := range sub.Messages("") {
		switch m.Topic {
		case "plant/cam1/result":
			var r ResultPayload
			_ = json.Unmarshal(m.Payload, &r)
			lastSeq = r.Seq
		case "plant/cam1/heatmap":
			if m.QoS < 1 {
				t.Fatalf("heatmap %q delivered at QoS %d, below its result's", m.Payload, m.QoS)
			}
			if want := fmt.Sprintf("PNG%d", lastSeq); string(m.Payload) != want {
				t.Fatalf("heatmap %q follows result %d", m.Payload, lastSeq)
			}
		}
	}
	if len(all) != 1+ngCount {
		t.Fatalf("%d heatmaps, want %d", len(all), 1+ngCount)
	}
	stored, err := st.Images("cam1", store.KindHeatmap, store.VerdictNG, 100)
	if err != nil || len(stored) != ngCount {
		t.Fatalf("stored NG heatmaps = %d, %v; want %d", len(stored), err, ngCount)
	}
	stop() // acks are written after the PUBACKs: check the outbox once Run has returned
	if stats, _ := st.OutboxStats(); stats.Messages != 0 {
		t.Fatalf("outbox not empty after delivery: %+v", stats)
	}
	// A new subscriber sees the retained state: clean stop, camera status, model status.
	fresh := mqtttest.Subscribe(t, b.URL, mqtttest.SubOptions{}, "plant/available", "plant/available/reason", "plant/cam1/status", "plant/model/status")
	got := fresh.WaitN("", 4, wait)
	for _, m := range got {
		if !m.Retained {
			t.Fatalf("%s not retained", m.Topic)
		}
		switch m.Topic {
		case "plant/available":
			if string(m.Payload) != AvailableOffline {
				t.Fatalf("available = %q after clean stop, want offline", m.Payload)
			}
		case "plant/available/reason":
			var r AvailableReason
			if err := json.Unmarshal(m.Payload, &r); err != nil || r.State != AvailableOffline || r.Reason != "clean shutdown" || r.Since.IsZero() {
				t.Fatalf("available/reason = %s after clean stop", m.Payload)
			}
		case "plant/cam1/status":
			var s CameraStatus
			if err := json.Unmarshal(m.Payload, &s); err != nil || s.State != StateOnline || s.Camera != "cam1" || s.Since.IsZero() {
				t.Fatalf("status = %s", m.Payload)
			}
		case "plant/model/status":
			var s ModelStatus
			if err := json.Unmarshal(m.Payload, &s); err != nil || s.State != "loaded" || s.Version != "3" {
				t.Fatalf("model status = %s", m.Payload)
			}
		}
	}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestBrokerOutageKeepsOrder stops the broker mid-stream and restarts it on the same port: every result
// arrives, first occurrences in seq order with no gaps, and any duplicate is byte-identical to the first
// delivery (a QoS-1 redelivery of the stored payload, same seq and published_at). With a store.Committer
// (results and acknowledgements grouped into shared transactions) the same holds, every result is committed,
// and after the stop the outbox is empty: the last acknowledgements were committed too.
func TestBrokerOutageKeepsOrder(t *testing.T) {
	for _, grouped := range []bool{false, true} {
		t.Run(fmt.Sprintf("grouped=%v", grouped), func(t *testing.T) { brokerOutage(t, grouped) })
	}
}

func brokerOutage(t *testing.T, grouped bool) {
	b := mqtttest.StartWith(t, mqtttest.Options{Persistence: true})
	sub := mqtttest.Subscribe(t, b.URL, mqtttest.SubOptions{ClientID: "outage-sub", Persistent: true, QoS: 1}, "plant/+/result")
	st := openStore(t, "")
	var com *store.Committer
	if grouped {
		com = st.NewCommitter(20 * time.Millisecond)
		t.Cleanup(com.Close)
	}
	p, stop := runPub(t, st, b.URL, func(c *Config) {
		c.ClientID = "outage-pub"
		c.AckTimeout = 2 * time.Second
		c.Window = 8
		c.Committer = com
	})
	var (
		mu     sync.Mutex
		failed []error
		stored int
	)
	submit := func(from, to uint64) {
		for seq := from; seq <= to; seq++ {
			p.SubmitGrouped(result("cam1", seq, verdictOf(seq)), nil, store.CommitOptions{}, func(err error) {
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failed = append(failed, err)
				}
				stored++
			})
		}
	}
	submit(1, 30)
	sub.WaitN("plant/cam1/result", 30, wait)
	b.Stop()
	submit(31, 70) // scoring goes on: Submit only writes the outbox
	if com != nil {
		com.Flush()
	}
	ob, _ := st.OutboxStats()
	if ob.Messages == 0 {
		t.Fatal("results submitted during the outage are not in the outbox")
	}
	time.Sleep(2 * time.Second) // the outage
	b.Restart()
	submit(71, 100)
	firsts := map[uint64][]byte{}
	msgs := sub.WaitFor("plant/cam1/result", wait, func(ms []mqtttest.Message) bool {
		seen := map[uint64]bool{}
		for _, m := range ms {
			var r ResultPayload
			_ = json.Unmarshal(m.Payload, &r)
			seen[r.Seq] = true
		}
		return len(seen) == 100
	})
	var order []uint64
	dups := 0
	for _, m := range msgs {
		r := checkResult(t, m)
		if first, ok := firsts[r.Seq]; ok {
			dups++
			if !bytes.Equal(first, m.Payload) {
				t.Fatalf("redelivery of seq %d differs:\n%s\n%s", r.Seq, first, m.Payload)
			}
			continue
		}
		firsts[r.Seq] = m.Payload
		order = append(order, r.Seq)
	}
	for i, seq := range order {
		if seq != uint64(i+1) {
			t.Fatalf("first deliveries out of order or with a gap at %d: %v", i, order)
		}
	}
	stop()
	mu.Lock()
	if stored != 100 || len(failed) > 0 {
		t.Errorf("%d results stored, failures %v", stored, failed)
	}
	mu.Unlock()
	if ob, _ := st.OutboxStats(); ob.Messages != 0 {
		t.Errorf("after the stop %d messages are left in the outbox, want 0", ob.Messages)
	}
	if com != nil {
		if cs := com.Stats(); cs.Results != 100 {
			t.Errorf("committer stats %+v, want 100 results", cs)
		}
		t.Logf("committer: %+v", com.Stats())
	}
	t.Logf("100 results delivered across a broker restart; %d QoS-1 duplicates", dups)
}

// TestLastWill kills a publisher process with SIGKILL: the broker must publish the retained Last Will.
func TestLastWill(t *testing.T) {
	if url := os.Getenv("MQTTOUT_WILL_CHILD"); url != "" {
		willChild(t, url)
		return
	}
	b := mqtttest.Start(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestLastWill$")
	cmd.Env = append(os.Environ(), "MQTTOUT_WILL_CHILD="+b.URL, "MQTTOUT_WILL_DIR="+t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "READY" {
				ready <- true
				return
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("child exited before connecting")
		}
	case <-time.After(wait):
		t.Fatal("child did not connect")
	}
	watch := mqtttest.Subscribe(t, b.URL, mqtttest.SubOptions{}, "will/available")
	watch.WaitFor("will/available", wait, func(ms []mqtttest.Message) bool {
		return len(ms) > 0 && string(ms[len(ms)-1].Payload) == AvailableOnline
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	watch.WaitFor("will/available", wait, func(ms []mqtttest.Message) bool {
		return string(ms[len(ms)-1].Payload) == AvailableOffline
	})
	fresh := mqtttest.Subscribe(t, b.URL, mqtttest.SubOptions{QoS: 1}, "will/available")
	m := fresh.WaitN("will/available", 1, wait)[0]
	if string(m.Payload) != AvailableOffline || !m.Retained || m.QoS != 1 {
		t.Fatalf("new subscriber got %q retained=%v qos=%d, want retained offline at QoS 1", m.Payload, m.Retained, m.QoS)
	}
}

func willChild(t *testing.T, url string) {
	st := openStore(t, filepath.Join(os.Getenv("MQTTOUT_WILL_DIR"), "db"))
	p, _ := runPub(t, st, url, func(c *Config) { c.Prefix = "will" })
	for !p.Connected() {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("READY")
	select {} // until SIGKILL
}

// TestThresholdRoundTrip sends threshold commands over MQTT; the agent-side callback persists them in the
// store and the publisher answers on threshold/state. The last override survives a store reopen.
func TestThresholdRoundTrip(t *testing.T) {
	b := mqtttest.Start(t)
	path := filepath.Join(t.TempDir(), "db")
	st := openStore(t, path)
	const modelThreshold = 2.0
	sampled := make(chan string, 4)
	onThreshold := func(camera string, cmd ThresholdCommand) (ThresholdState, error) {
		if cmd.Reset {
			if err := st.ClearThreshold(camera); err != nil {
				return ThresholdState{}, err
			}
			return ThresholdState{Threshold: modelThreshold, Source: "model"}, nil
		}
		if err := st.SetThreshold(camera, cmd.Threshold); err != nil {
			return ThresholdState{}, err
		}
		return ThresholdState{Threshold: cmd.Threshold, Source: "override"}, nil
	}
	_, stop := runPub(t, st, b.URL, func(c *Config) {
		c.Cameras = []string{"cam1"}
		c.OnThreshold = onThreshold
		c.OnSample = func(camera string) error { sampled <- camera; return nil }
	})
	sub := mqtttest.Subscribe(t, b.URL, mqtttest.SubOptions{}, "plant/cam1/threshold/state")
	cli := paho.NewClient(paho.NewClientOptions().AddBroker(b.URL).SetClientID("operator"))
	if tok := cli.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer cli.Disconnect(100)
	// The publisher subscribes in its connect handler; a retained-free way to know it is listening is to
	// wait for the first state it answers. Send the first command until it is answered.
	send := func(topic, payload string) {
		if tok := cli.Publish(topic, 1, false, payload); !tok.WaitTimeout(wait) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	tests := []struct {
		payload   string
		threshold float64
		source    string
		wantErr   bool
	}{
		{"0.42", 0.42, "override", false},
		{"abc", 0.42, "override", true},
		{`{"reset": true}`, modelThreshold, "model", false},
		{"-3", modelThreshold, "model", true},
		{`{"threshold": 0.5}`, 0.5, "override", false},
	}
	deadline := time.Now().Add(wait)
	for len(sub.Messages("plant/cam1/threshold/state")) == 0 && time.Now().Before(deadline) {
		send("plant/cam1/threshold/set", tests[0].payload)
		time.Sleep(100 * time.Millisecond)
	}
	for i, tc := range tests {
		if i > 0 {
			send("plant/cam1/threshold/set", tc.payload)
		}
		ms := sub.WaitFor("plant/cam1/threshold/state", wait, func(ms []mqtttest.Message) bool {
			var s ThresholdState
			return len(ms) > 0 && json.Unmarshal(ms[len(ms)-1].Payload, &s) == nil &&
				(s.Error != "") == tc.wantErr && s.Threshold == tc.threshold && s.Source == tc.source
		})
		var s ThresholdState
		_ = json.Unmarshal(ms[len(ms)-1].Payload, &s)
		if s.Camera != "cam1" || s.UpdatedAt.IsZero() {
			t.Fatalf("%q: state %+v", tc.payload, s)
		}
	}
	send("plant/cam1/sample/set", "")
	send("plant/other/sample/set", "") // not a configured camera: refused
	select {
	case cam := <-sampled:
		if cam != "cam1" {
			t.Fatalf("sample callback for %q", cam)
		}
	case <-time.After(wait):
		t.Fatal("sample/set did not reach the callback")
	}
	stop()
	st.Close()
	st2 := openStore(t, path)
	o, ok, err := st2.Threshold("cam1")
	if err != nil || !ok || o.Threshold != 0.5 {
		t.Fatalf("override after reopen = %+v %v %v, want 0.5", o, ok, err)
	}
}

func TestParseThresholdCommand(t *testing.T) {
	tests := []struct {
		in   string
		want ThresholdCommand
		err  bool
	}{
		{"0.42", ThresholdCommand{Threshold: 0.42}, false},
		{" 3 \n", ThresholdCommand{Threshold: 3}, false},
		{`{"threshold": 1.5}`, ThresholdCommand{Threshold: 1.5}, false},
		{`{"reset": true}`, ThresholdCommand{Reset: true}, false},
		{`{"reset": false}`, ThresholdCommand{}, true},
		{`{"threshold": "1"}`, ThresholdCommand{}, true},
		{`{"threshold": 1, "reset": true}`, ThresholdCommand{}, true},
		{`{"other": 1}`, ThresholdCommand{}, true},
		{`{bad json`, ThresholdCommand{}, true},
		{"", ThresholdCommand{}, true},
		{"NaN", ThresholdCommand{}, true},
		{"Inf", ThresholdCommand{}, true},
		{"-0.1", ThresholdCommand{}, true},
		{"1e400", ThresholdCommand{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseThresholdCommand([]byte(tc.in))
			if (err != nil) != tc.err || (err != nil && !errors.Is(err, ErrBadCommand)) {
				t.Fatalf("error = %v, want error %v", err, tc.err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestHeatmapJSONMode(t *testing.T) {
	st := openStore(t, "")
	cfg := DefaultConfig("tcp://127.0.0.1:1")
	cfg.Heatmap.Mode = HeatmapJSON
	cfg.QoS.Result = 0
	p, err := New(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := p.Messages(result("cam1", 9, store.VerdictNG), &Heatmap{Format: "jpeg", Data: []byte{0xff, 0xd8, 1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 || msgs[0].QoS != 1 || msgs[1].Topic != "vlmdiff/cam1/heatmap" {
		t.Fatalf("messages = %+v (NG result must be QoS >= 1 even with qos.result 0)", msgs)
	}
	if msgs[1].QoS < msgs[0].QoS {
		t.Fatalf("heatmap at QoS %d below its result's %d: it could overtake the result", msgs[1].QoS, msgs[0].QoS)
	}
	var hp HeatmapPayload
	if err := json.Unmarshal(msgs[1].Payload, &hp); err != nil || hp.Seq != 9 || hp.Format != "jpeg" ||
		!bytes.Equal(hp.Data, []byte{0xff, 0xd8, 1, 2}) {
		t.Fatalf("heatmap JSON = %s (%v)", msgs[1].Payload, err)
	}
}

func TestConfigErrors(t *testing.T) {
	st := openStore(t, "")
	tests := []struct {
		name string
		edit func(*Config)
	}{
		{"no broker", func(c *Config) { c.Broker = "" }},
		{"wildcard prefix", func(c *Config) { c.Prefix = "a/+" }},
		{"trailing slash", func(c *Config) { c.Prefix = "a/" }},
		{"qos 3", func(c *Config) { c.QoS.Result = 3 }},
		{"heatmap mode", func(c *Config) { c.Heatmap.Mode = "gif" }},
		{"missing CA file", func(c *Config) { c.TLS.CAFile = "/nonexistent/ca.pem" }},
		{"cert without key", func(c *Config) { c.TLS.CertFile = "/x.pem" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig("tcp://127.0.0.1:1883")
			tc.edit(&cfg)
			if _, err := New(cfg, st); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
}
