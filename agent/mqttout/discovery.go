package mqttout

import (
	"encoding/json"
	"slices"
	"strings"
)

// Home Assistant MQTT discovery: with Discovery.Enabled the publisher announces, retained, one set of
// entities per camera under <discovery prefix>/<component>/<node_id>/<object_id>/config, all reading the
// topics the agent already publishes (no extra messages per result) and all tied to <prefix>/available, so
// Home Assistant marks them unavailable when the agent stops or vanishes. docs/mqtt.md has the schema; the
// test checks these payloads against it.

// DiscoveryConfig configures Home Assistant discovery.
type DiscoveryConfig struct {
	Enabled bool
	// Prefix is Home Assistant's discovery prefix (default "homeassistant").
	Prefix string
	// NodeID names this agent in the discovery topics and unique ids: [a-zA-Z0-9_-], others become '_'.
	NodeID string
	// DeviceName is the device Home Assistant shows (default "vlmdiff <NodeID>"); SWVersion its software.
	DeviceName string
	SWVersion  string
	// HeatmapFormat is the binary heatmap's format (png or jpeg), for the image entity's content type.
	HeatmapFormat string
	// NoHeatmap names cameras whose heatmaps are off (no image entity for them).
	NoHeatmap []string
	// ThresholdRange returns the range a camera's threshold command must fall in (the agent's threshold
	// guard: cameras[].threshold_range, or derived from the loaded bundle's calibration); the number entity's
	// min and max follow it, so Home Assistant offers only values the agent accepts. ok false (no model
	// loaded yet and no configured range) or a nil func: 0..1e6 until RepublishDiscovery is called.
	ThresholdRange func(camera string) (lo, hi float64, ok bool)
}

// Fallback bounds of the threshold number entity while no range is known.
const (
	discoveryMinDefault = 0
	discoveryMaxDefault = 1e6
)

// Discovery payload fields (Home Assistant's MQTT discovery keys, unabbreviated).
type haDevice struct {
	Identifiers  []string `json:"identifiers"`
	Name         string   `json:"name"`
	Manufacturer string   `json:"manufacturer"`
	Model        string   `json:"model"`
	SWVersion    string   `json:"sw_version,omitempty"`
}

type haOrigin struct {
	Name      string `json:"name"`
	SWVersion string `json:"sw_version,omitempty"`
}

// haEntity is one discovery config; fields a component does not use are omitted.
type haEntity struct {
	Name                string   `json:"name"`
	UniqueID            string   `json:"unique_id"`
	AvailabilityTopic   string   `json:"availability_topic"`
	PayloadAvailable    string   `json:"payload_available"`
	PayloadNotAvailable string   `json:"payload_not_available"`
	Device              haDevice `json:"device"`
	Origin              haOrigin `json:"origin"`

	StateTopic          string `json:"state_topic,omitempty"`
	ValueTemplate       string `json:"value_template,omitempty"`
	JSONAttributesTopic string `json:"json_attributes_topic,omitempty"`
	PayloadOn           string `json:"payload_on,omitempty"`
	PayloadOff          string `json:"payload_off,omitempty"`
	DeviceClass         string `json:"device_class,omitempty"`
	StateClass          string `json:"state_class,omitempty"`
	UnitOfMeasurement   string `json:"unit_of_measurement,omitempty"`
	EntityCategory      string `json:"entity_category,omitempty"`
	Icon                string `json:"icon,omitempty"`

	// image
	ImageTopic  string `json:"image_topic,omitempty"`
	ContentType string `json:"content_type,omitempty"`

	// number
	CommandTopic string   `json:"command_topic,omitempty"`
	Min          *float64 `json:"min,omitempty"`
	Max          *float64 `json:"max,omitempty"`
	Step         float64  `json:"step,omitempty"`
	Mode         string   `json:"mode,omitempty"`
}

// haID keeps what Home Assistant accepts in node and object ids.
func haID(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, s)
}

// DiscoveryMessage is one retained discovery config.
type DiscoveryMessage struct {
	Topic   string
	Payload any
}

// DiscoveryMessages returns the discovery configs for every camera (empty when discovery is off).
func (p *Publisher) DiscoveryMessages() []DiscoveryMessage {
	d := p.cfg.Discovery
	if !d.Enabled {
		return nil
	}
	node := haID(d.NodeID)
	dev := haDevice{Identifiers: []string{"vlmdiff_" + node}, Name: d.DeviceName, Manufacturer: "vlmdiff",
		Model: "vlmdiff edge inspection agent", SWVersion: d.SWVersion}
	if dev.Name == "" {
		dev.Name = "vlmdiff " + d.NodeID
	}
	base := haEntity{AvailabilityTopic: p.topic("available"), PayloadAvailable: AvailableOnline,
		PayloadNotAvailable: AvailableOffline, Device: dev, Origin: haOrigin{Name: "vlmdiff", SWVersion: d.SWVersion}}
	var out []DiscoveryMessage
	add := func(component, cam, object string, e haEntity) {
		obj := haID(cam) + "_" + object
		e.UniqueID = "vlmdiff_" + node + "_" + obj
		out = append(out, DiscoveryMessage{Topic: d.Prefix + "/" + component + "/" + node + "/" + obj + "/config", Payload: e})
	}
	for _, cam := range p.cfg.Cameras {
		result := p.topic(cam, "result")
		e := base
		e.Name, e.StateTopic, e.ValueTemplate = cam+" NG", result, "{{ value_json.verdict }}"
		e.PayloadOn, e.PayloadOff, e.DeviceClass, e.JSONAttributesTopic = "NG", "OK", "problem", result
		add("binary_sensor", cam, "ng", e)

		e = base
		e.Name, e.StateTopic, e.ValueTemplate = cam+" score", result, "{{ value_json.score }}"
		e.StateClass, e.Icon = "measurement", "mdi:gauge"
		add("sensor", cam, "score", e)

		e = base
		e.Name, e.StateTopic = cam+" latency", result
		e.ValueTemplate = "{{ value_json.latency_ms.capture_to_publish }}"
		e.StateClass, e.DeviceClass, e.UnitOfMeasurement, e.EntityCategory = "measurement", "duration", "ms", "diagnostic"
		add("sensor", cam, "latency", e)

		if p.cfg.Heatmap.Mode == HeatmapBinary && !slices.Contains(d.NoHeatmap, cam) {
			e = base
			e.Name, e.ImageTopic, e.ContentType = cam+" heatmap", p.topic(cam, "heatmap"), "image/"+d.HeatmapFormat
			add("image", cam, "heatmap", e)
		}

		e = base
		minT, maxT := thresholdBounds(d, cam)
		e.Name, e.CommandTopic, e.StateTopic = cam+" threshold", p.topic(cam, "threshold", "set"), p.topic(cam, "threshold", "state")
		e.ValueTemplate, e.Min, e.Max, e.Step, e.Mode, e.EntityCategory = "{{ value_json.threshold }}", &minT, &maxT, 0.0001, "box", "config"
		add("number", cam, "threshold", e)
	}
	return out
}

func thresholdBounds(d DiscoveryConfig, cam string) (lo, hi float64) {
	if d.ThresholdRange != nil {
		if lo, hi, ok := d.ThresholdRange(cam); ok && hi > lo {
			return lo, hi
		}
	}
	return discoveryMinDefault, discoveryMaxDefault
}

// publishDiscovery announces the discovery configs (retained, QoS 1). On every connect (all: a Home
// Assistant that lost its retained configs, a broker without persistence, gets them back) and from
// RepublishDiscovery (only the configs that changed).
func (p *Publisher) publishDiscovery(all bool) {
	for _, m := range p.DiscoveryMessages() {
		data, err := json.Marshal(m.Payload)
		if err != nil {
			p.log.Error("mqtt encode discovery config", "topic", m.Topic, "err", err)
			continue
		}
		p.mu.Lock()
		same := string(p.discovered[m.Topic]) == string(data)
		p.discovered[m.Topic] = data
		p.mu.Unlock()
		if all || !same {
			p.publishNow(m.Topic, 1, true, data)
		}
	}
}

// RepublishDiscovery publishes the discovery configs that changed since they were last published: the
// agent calls it when a model is loaded, since the threshold number's bounds follow the model's
// calibration. Without a connection it does nothing; the next connect publishes every config.
func (p *Publisher) RepublishDiscovery() {
	if !p.cfg.Discovery.Enabled || !p.client.IsConnectionOpen() {
		return
	}
	p.publishDiscovery(false)
}
