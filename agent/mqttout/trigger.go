package mqttout

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/vlmdiff/edge/agent/internal/echo"
)

// TriggerRejected is the JSON on <prefix>/<camera>/trigger/rejected: a trigger that got no result (bad
// payload, unknown or free-running camera, too many pending, no frame within trigger_timeout, shutdown).
// Trigger echoes the trigger when it was valid JSON, so a PLC gateway can fail the right request.
type TriggerRejected struct {
	Camera  string          `json:"camera"`
	Trigger json.RawMessage `json:"trigger,omitempty"`
	Error   string          `json:"error"`
	Time    time.Time       `json:"time"`
}

// handleTrigger passes a <prefix>/<camera>/trigger message to the agent and reports a refusal.
func (p *Publisher) handleTrigger(camera string, payload []byte) {
	var err error
	if p.cfg.OnTrigger == nil {
		err = errors.New("triggers are not enabled")
	} else {
		err = p.cfg.OnTrigger(camera, payload)
	}
	if err != nil {
		reason := echo.Clip(err.Error(), maxReason)
		p.log.Warn("mqtt trigger refused", "camera", echo.String(camera), "payload", echo.Short(payload), "err", reason)
		p.RejectTrigger(camera, payload, reason)
	}
}

// RejectTrigger publishes a refused trigger on <prefix>/<camera>/trigger/rejected (QoS 1, not retained).
func (p *Publisher) RejectTrigger(camera string, trigger []byte, reason string) {
	r := TriggerRejected{Camera: camera, Error: reason, Time: p.cfg.Now().UTC()}
	// echoed whole only when small and valid JSON (an id and a few fields): a refusal never amplifies a large payload
	if len(trigger) > 0 && len(trigger) <= 512 && json.Valid(trigger) {
		r.Trigger = json.RawMessage(trigger)
	}
	p.publishJSON(p.topic(camera, "trigger", "rejected"), 1, false, r)
}
