package mqttout

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vlmdiff/edge/agent/internal/mqtttest"
)

// haSchema is the discovery schema written in docs/mqtt.md.
type haSchema map[string]struct {
	Required map[string]string `json:"required"`
	Optional map[string]string `json:"optional"`
	Const    map[string]any    `json:"const"`
}

func loadHASchema(t *testing.T) haSchema {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "mqtt.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(data), "<!-- ha-discovery-schema -->\n```json\n")
	block, _, closed := strings.Cut(after, "```")
	if !ok || !closed {
		t.Fatal("docs/mqtt.md has no ha-discovery-schema json block")
	}
	var s haSchema
	if err := json.Unmarshal([]byte(block), &s); err != nil {
		t.Fatalf("the schema in docs/mqtt.md is not JSON: %v", err)
	}
	return s
}

func jsonType(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "boolean"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return "null"
}

// checkAgainst checks obj against the schema's parts: every required key with its type, optional keys with
// theirs, fixed values, and no key the schema does not name.
func checkAgainst(s haSchema, obj map[string]any, parts ...string) []string {
	var errs []string
	known := map[string]string{}
	for _, p := range parts {
		sp, ok := s[p]
		if !ok {
			return []string{fmt.Sprintf("the schema has no %q", p)}
		}
		for k, typ := range sp.Required {
			known[k] = typ
			v, ok := obj[k]
			if !ok {
				errs = append(errs, fmt.Sprintf("%s: required key %q missing", p, k))
			} else if jsonType(v) != typ {
				errs = append(errs, fmt.Sprintf("%s: %q is %s, want %s", p, k, jsonType(v), typ))
			}
		}
		for k, typ := range sp.Optional {
			known[k] = typ
			if v, ok := obj[k]; ok && jsonType(v) != typ {
				errs = append(errs, fmt.Sprintf("%s: %q is %s, want %s", p, k, jsonType(v), typ))
			}
		}
		for k, want := range sp.Const {
			if obj[k] != want {
				errs = append(errs, fmt.Sprintf("%s: %q = %v, want %v", p, k, obj[k], want))
			}
		}
	}
	for k := range obj {
		if _, ok := known[k]; !ok {
			errs = append(errs, fmt.Sprintf("key %q is not in the documented schema", k))
		}
	}
	return errs
}

// TestHomeAssistantDiscovery: with discovery on, a Home Assistant subscriber finds retained configs for
// every camera's entities, each valid against the schema in docs/mqtt.md, tied to <prefix>/available and
// reading the topics the agent publishes; the threshold number's bounds are the camera's threshold range
// (0..1e6 while none is known) and a changed range is republished, alone; the number's bare-number command
// sets the threshold; a clean stop leaves available = offline. A camera with heatmaps off gets no image
// entity.
func TestHomeAssistantDiscovery(t *testing.T) {
	schema := loadHASchema(t)
	b := mqtttest.Start(t)
	st := openStore(t, "")
	var thresholds []float64
	var sideRange atomic.Value
	sideRange.Store([2]float64{0.1, 2.5})
	pub, stop := runPub(t, st, b.URL, func(c *Config) {
		c.Cameras = []string{"press.top", "side"}
		c.Discovery = DiscoveryConfig{Enabled: true, NodeID: "line 3", SWVersion: "1.2.3", NoHeatmap: []string{"side"},
			ThresholdRange: func(cam string) (float64, float64, bool) {
				r := sideRange.Load().([2]float64)
				return r[0], r[1], cam == "side"
			}}
		c.OnThreshold = func(camera string, cmd ThresholdCommand) (ThresholdState, error) {
			thresholds = append(thresholds, cmd.Threshold)
			return ThresholdState{Camera: camera, Threshold: cmd.Threshold, Source: "override"}, nil
		}
	})
	// Wait until every config was published, then subscribe afresh: a broker sets the retained flag only on
	// messages it delivers from its store to a new subscription, so only this second look shows retention.
	first := mqtttest.Subscribe(t, b.URL, mqtttest.SubOptions{QoS: 1}, "homeassistant/#")
	first.WaitN("", 9, wait)
	ha := mqtttest.Subscribe(t, b.URL, mqtttest.SubOptions{QoS: 1}, "homeassistant/#")
	msgs := ha.WaitN("", 9, wait)

	var topics []string
	for _, m := range msgs {
		topics = append(topics, m.Topic)
		if !m.Retained {
			t.Errorf("%s is not retained", m.Topic)
		}
		parts := strings.Split(m.Topic, "/")
		if len(parts) != 5 || parts[0] != "homeassistant" || parts[2] != "line_3" || parts[4] != "config" {
			t.Errorf("discovery topic %s: want homeassistant/<component>/line_3/<object>/config", m.Topic)
			continue
		}
		var obj map[string]any
		if err := json.Unmarshal(m.Payload, &obj); err != nil {
			t.Fatalf("%s: %v", m.Topic, err)
		}
		for _, e := range checkAgainst(schema, obj, "all", parts[1]) {
			t.Errorf("%s: %s", m.Topic, e)
		}
		dev, _ := obj["device"].(map[string]any)
		for _, e := range checkAgainst(schema, dev, "device") {
			t.Errorf("%s device: %s", m.Topic, e)
		}
		origin, _ := obj["origin"].(map[string]any)
		for _, e := range checkAgainst(schema, origin, "origin") {
			t.Errorf("%s origin: %s", m.Topic, e)
		}
		if obj["availability_topic"] != "plant/available" || obj["unique_id"] != "vlmdiff_line_3_"+parts[3] {
			t.Errorf("%s: availability_topic %v, unique_id %v", m.Topic, obj["availability_topic"], obj["unique_id"])
		}
		for _, k := range []string{"state_topic", "command_topic", "image_topic", "json_attributes_topic"} {
			if v, ok := obj[k].(string); ok && !strings.HasPrefix(v, "plant/press.top/") && !strings.HasPrefix(v, "plant/side/") {
				t.Errorf("%s: %s %q is not one of the agent's camera topics", m.Topic, k, v)
			}
		}
	}
	sort.Strings(topics)
	want := []string{
		"homeassistant/binary_sensor/line_3/press_top_ng/config", "homeassistant/binary_sensor/line_3/side_ng/config",
		"homeassistant/image/line_3/press_top_heatmap/config",
		"homeassistant/number/line_3/press_top_threshold/config", "homeassistant/number/line_3/side_threshold/config",
		"homeassistant/sensor/line_3/press_top_latency/config", "homeassistant/sensor/line_3/press_top_score/config",
		"homeassistant/sensor/line_3/side_latency/config", "homeassistant/sensor/line_3/side_score/config",
	}
	if !slices.Equal(topics[:min(len(topics), len(want))], want) || len(topics) != len(want) {
		t.Errorf("discovery topics\n%v\nwant\n%v", topics, want)
	}

	bounds := func(m mqtttest.Message) [2]any {
		var obj map[string]any
		_ = json.Unmarshal(m.Payload, &obj)
		return [2]any{obj["min"], obj["max"]}
	}
	for _, m := range msgs {
		want, ok := map[string][2]any{
			"homeassistant/number/line_3/side_threshold/config":      {0.1, 2.5},
			"homeassistant/number/line_3/press_top_threshold/config": {0.0, 1e6},
		}[m.Topic]
		if ok && bounds(m) != want {
			t.Errorf("%s: min/max %v, want %v", m.Topic, bounds(m), want)
		}
	}
	// A new model moves the range: only the changed config goes out again.
	sideRange.Store([2]float64{0.2, 4})
	pub.RepublishDiscovery()
	sideCfg := "homeassistant/number/line_3/side_threshold/config"
	again := ha.WaitFor(sideCfg, wait, func(m []mqtttest.Message) bool { return len(m) >= 2 })
	if got := bounds(again[len(again)-1]); got != [2]any{0.2, 4.0} {
		t.Errorf("republished side threshold min/max %v, want [0.2 4]", got)
	}
	if n := len(ha.Messages("")); n != 10 {
		t.Errorf("%d discovery messages after the range change, want 9 + the changed one", n)
	}

	// The number entity's command: Home Assistant publishes the bare number.
	state := mqtttest.Subscribe(t, b.URL, mqtttest.SubOptions{QoS: 1}, "plant/side/threshold/state")
	pubRaw(t, b, "plant/side/threshold/set", "0.625")
	state.WaitFor("plant/side/threshold/state", wait, func(m []mqtttest.Message) bool {
		return len(m) > 0 && strings.Contains(string(m[len(m)-1].Payload), `"threshold":0.625`)
	})

	stop()
	late := mqtttest.Subscribe(t, b.URL, mqtttest.SubOptions{QoS: 1}, "plant/available")
	if m := late.WaitN("plant/available", 1, wait); string(m[0].Payload) != AvailableOffline {
		t.Errorf("available after a clean stop = %q, want offline", m[0].Payload)
	}
}

// pubRaw publishes one QoS-1 message with mosquitto_pub, as an outside client (Home Assistant) would.
func pubRaw(t *testing.T, b *mqtttest.Broker, topic, payload string) {
	t.Helper()
	out, err := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", strconv.Itoa(b.Port), "-q", "1", "-t", topic, "-m", payload).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub %s: %v: %s", topic, err, out)
	}
}
