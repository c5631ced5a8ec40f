package agent_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/agent/internal/mqtttest"
	"github.com/vlmdiff/edge/agent/store"
)

// lastHas waits until the last message on topic contains every want.
func lastHas(t *testing.T, sub *mqtttest.Subscriber, topic string, want ...string) mqtttest.Message {
	t.Helper()
	m := sub.WaitFor(topic, wait, func(m []mqtttest.Message) bool {
		if len(m) == 0 {
			return false
		}
		for _, w := range want {
			if !strings.Contains(string(m[len(m)-1].Payload), w) {
				return false
			}
		}
		return true
	})
	return m[len(m)-1]
}

func solidPNG(t *testing.T, v uint8) []byte {
	t.Helper()
	im := image.NewRGBA(image.Rect(0, 0, 64, 48))
	for i := range im.Pix {
		im.Pix[i] = v
	}
	im.Set(3, 3, color.RGBA{255, 0, 0, 255})
	var b bytes.Buffer
	if err := png.Encode(&b, im); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestHardening runs the daemon on an external mosquitto with a real folder camera and checks the defects
// of issue 11 stay fixed: a file name written three times is scored three times; a non-JSON bundle in the
// models directory is logged and named on model/status; threshold commands out of range (1e300), NaN or
// negative are refused on threshold/state, a 1 MB garbage payload is echoed in under 1 KB, and a camera
// with remote_threshold: false refuses them all.
func TestHardening(t *testing.T) {
	e := newEnv(t, false)
	copyBundleSteps(t, filepath.Join(e.modelsDir, "fixture-1"), "1", time.Now().Add(-time.Hour), false, 2)
	broken := filepath.Join(e.modelsDir, "broken-manifest")
	if err := os.MkdirAll(broken, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(broken, "bundle.json"), []byte("this is { not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	locked := filepath.Join(e.dir, "locked")
	if err := os.MkdirAll(locked, 0o755); err != nil {
		t.Fatal(err)
	}
	yml := fmt.Sprintf(`
agent: {name: test, data_dir: %q, shutdown_timeout: 30s}
models: {dir: %q, threads: 1}
cameras:
  - {name: line, kind: folder, path: %q, folder: {settle: 50ms}}
  - {name: locked, kind: folder, path: %q, remote_threshold: false}
mqtt: {broker: %q, prefix: %s, client_id: vlmdiff-hardening}
`, e.dir, e.modelsDir, e.folder, locked, e.broker.URL, e.prefix)
	cfg, err := config.Parse(strings.NewReader(yml), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	sub := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/#")
	startAgent(t, cfg)
	st := lastHas(t, sub, e.prefix+"/model/status", `"running"`, "broken-manifest", "invalid JSON")
	t.Logf("model/status: %s", st.Payload)

	t.Run("name reused three times, scored three times", func(t *testing.T) {
		for i := 1; i <= 3; i++ {
			if err := os.WriteFile(filepath.Join(e.folder, ".part.png"), solidPNG(t, uint8(40*i)), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(filepath.Join(e.folder, ".part.png"), filepath.Join(e.folder, "part.png")); err != nil {
				t.Fatal(err)
			}
			sub.WaitN(e.prefix+"/line/result", i, wait)
			deadline := time.Now().Add(wait)
			for _, err := os.Stat(filepath.Join(e.folder, "part.png")); err == nil; _, err = os.Stat(filepath.Join(e.folder, "part.png")) {
				if time.Now().After(deadline) {
					t.Fatal("part.png not moved")
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		time.Sleep(300 * time.Millisecond)
		if n := len(sub.Messages(e.prefix + "/line/result")); n != 3 {
			t.Errorf("%d results, want 3", n)
		}
		got, _ := filepath.Glob(filepath.Join(e.folder, "processed", "part*.png"))
		if len(got) != 3 {
			t.Errorf("processed/ holds %v, want three versions of part.png", got)
		}
	})

	pub := paho.NewClient(paho.NewClientOptions().AddBroker(e.broker.URL).SetClientID("hardening-pub"))
	if tok := pub.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(100)
	send := func(camera string, payload []byte) mqtttest.Message {
		t.Helper()
		before := len(sub.Messages(e.prefix + "/" + camera + "/threshold/state"))
		if tok := pub.Publish(e.prefix+"/"+camera+"/threshold/set", 1, false, payload); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		m := sub.WaitN(e.prefix+"/"+camera+"/threshold/state", before+1, wait)
		return m[len(m)-1]
	}
	type state struct {
		Threshold float64
		Source    string
		Error     string
	}
	parse := func(m mqtttest.Message) state {
		var s state
		if err := json.Unmarshal(m.Payload, &s); err != nil {
			t.Fatalf("state %q: %v", m.Payload, err)
		}
		return s
	}
	t.Run("threshold commands refused", func(t *testing.T) {
		for _, tc := range []struct{ payload, want string }{
			{"1e300", "outside the allowed range"},
			{`{"threshold": 1e300}`, "outside the allowed range"},
			{"NaN", "finite"},
			{"-1", "finite number >= 0"},
		} {
			s := parse(send("line", []byte(tc.payload)))
			if !strings.Contains(s.Error, tc.want) || s.Threshold == 1e300 || s.Source == "override" {
				t.Errorf("payload %s: state %+v, want refused with %q", tc.payload, s, tc.want)
			}
		}
		garbage := bytes.Repeat([]byte("\x00garbage\xff\n"), 1<<20/10)
		m := send("line", garbage)
		if len(m.Payload) >= 1024 {
			t.Errorf("1 MB payload echoed as %d bytes on threshold/state", len(m.Payload))
		}
		t.Logf("1 MB garbage -> %d byte state: %s", len(m.Payload), m.Payload)
		if s := parse(send("locked", []byte("0.01"))); !strings.Contains(s.Error, "disabled") {
			t.Errorf("locked camera: %+v", s)
		}
	})
	t.Run("threshold in range accepted", func(t *testing.T) {
		var mf struct {
			Calibration struct{ Global struct{ Threshold float64 } }
		}
		data, _ := os.ReadFile(filepath.Join(fixtureDir, "bundle.json"))
		if err := json.Unmarshal(data, &mf); err != nil {
			t.Fatal(err)
		}
		v := mf.Calibration.Global.Threshold * 1.01
		s := parse(send("line", []byte(fmt.Sprint(v))))
		if s.Error != "" || s.Source != "override" || s.Threshold != v {
			t.Errorf("threshold %v: state %+v, want the override", v, s)
		}
	})
}

// TestStoredOverrideOutOfRangeDropped: an override of 1e300 stored before the range check existed (every frame
// OK, and it persisted across restarts) is cleared once a model loads: the camera's threshold state says the
// model's calibrated threshold applies, and the store no longer holds the override.
func TestStoredOverrideOutOfRangeDropped(t *testing.T) {
	e := newEnv(t, false)
	copyBundleSteps(t, filepath.Join(e.modelsDir, "fixture-1"), "1", time.Now().Add(-time.Hour), false, 2)
	dbPath := filepath.Join(e.dir, "vlmdiff.db")
	st, err := store.Open(store.Options{Path: dbPath})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetThreshold("line", 1e300); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	yml := fmt.Sprintf(`
agent: {name: test, data_dir: %q, shutdown_timeout: 30s}
models: {dir: %q, threads: 1}
store: {path: %q}
cameras:
  - {name: line, kind: folder, path: %q}
mqtt: {broker: %q, prefix: %s, client_id: vlmdiff-stored-override}
`, e.dir, e.modelsDir, dbPath, e.folder, e.broker.URL, e.prefix)
	cfg, err := config.Parse(strings.NewReader(yml), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	sub := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/#")
	stop := startAgent(t, cfg)
	m := lastHas(t, sub, e.prefix+"/line/threshold/state", `"model"`)
	var s struct {
		Threshold float64
		Source    string
	}
	if err := json.Unmarshal(m.Payload, &s); err != nil {
		t.Fatal(err)
	}
	if s.Source != "model" || s.Threshold == 1e300 || !(s.Threshold > 0) {
		t.Fatalf("threshold state %s: want the model's calibrated threshold", m.Payload)
	}
	stop()
	st, err = store.Open(store.Options{Path: dbPath})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if o, ok, err := st.Threshold("line"); err != nil || ok {
		t.Fatalf("the store still holds the override %+v (%v)", o, err)
	}
}
