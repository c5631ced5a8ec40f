package mqttout

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/vlmdiff/edge/agent/internal/echo"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/vlmdiff/edge/agent/store"
)

// Availability payloads on <prefix>/available: only these two, because Home Assistant's availability
// understands only online/offline. Why the agent is offline goes to <prefix>/available/reason.
const (
	AvailableOnline  = "online"
	AvailableOffline = "offline" // on a clean stop, and the Last Will when the agent vanishes
)

// Publisher is the MQTT side of the agent. Create with New, run with Run; Submit and the Set* methods are
// safe from any goroutine and never block on the broker.
type Publisher struct {
	cfg    Config
	st     *store.Store
	log    *slog.Logger
	client mqtt.Client

	connected atomic.Bool
	connCh    chan struct{} // poked on every connect
	cmds      chan command

	mu          sync.Mutex
	statuses    map[string]CameraStatus
	thresholds  map[string]ThresholdState
	model       *ModelStatus
	lastHeatmap map[string]time.Time
	discovered  map[string][]byte // discovery topic -> the config last published there

	stopReason atomic.Value // string: why Run is stopping (SetStopReason)

	// sent is the id of the last outbox message delivered whose acknowledgement waits in Config.Committer:
	// the drainer goes on after it (store.PeekAfter). Only the drainer touches it.
	sent uint64

	published  atomic.Uint64
	failures   atomic.Uint64
	reconnects atomic.Uint64
}

type command struct {
	camera, kind string
	payload      []byte
}

// New validates cfg and prepares the client; nothing connects until Run.
func New(cfg Config, st *store.Store) (*Publisher, error) {
	if st == nil {
		return nil, fmt.Errorf("mqtt publisher: nil store")
	}
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	p := &Publisher{cfg: cfg, st: st, log: cfg.Logger.With("component", "mqtt"), connCh: make(chan struct{}, 1),
		cmds: make(chan command, 64), statuses: map[string]CameraStatus{}, thresholds: map[string]ThresholdState{},
		lastHeatmap: map[string]time.Time{}, discovered: map[string][]byte{}}
	o := mqtt.NewClientOptions().AddBroker(cfg.Broker).SetClientID(cfg.ClientID).
		SetUsername(cfg.Username).SetPassword(cfg.Password).
		// A persistent session: the broker keeps our subscriptions and queued commands, and paho resends
		// in-flight QoS-1 publishes after a reconnect.
		SetCleanSession(false).
		SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(cfg.ConnectRetryInterval).SetMaxReconnectInterval(cfg.MaxReconnectInterval).
		SetKeepAlive(cfg.KeepAlive).SetConnectTimeout(cfg.ConnectTimeout).
		SetWriteTimeout(cfg.AckTimeout).
		SetOrderMatters(true).
		SetWill(p.topic("available"), AvailableOffline, 1, true).
		SetOnConnectHandler(p.onConnect).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			p.connected.Store(false)
			p.log.Warn("mqtt connection lost; results wait in the outbox", "broker", cfg.Broker, "err", err)
		}).
		SetReconnectingHandler(func(mqtt.Client, *mqtt.ClientOptions) { p.reconnects.Add(1) })
	if cfg.TLS.Enabled() {
		tc, err := cfg.TLS.Build()
		if err != nil {
			return nil, err
		}
		o.SetTLSConfig(tc)
	}
	p.client = mqtt.NewClient(o)
	return p, nil
}

// ClientID returns the MQTT client id in use.
func (p *Publisher) ClientID() string { return p.cfg.ClientID }

// Connected reports whether the broker connection is up.
func (p *Publisher) Connected() bool { return p.connected.Load() }

func (p *Publisher) topic(parts ...string) string {
	return p.cfg.Prefix + "/" + strings.Join(parts, "/")
}

// onConnect runs in its own goroutine (paho) on every (re)connect: announce, subscribe, republish state.
func (p *Publisher) onConnect(c mqtt.Client) {
	p.log.Info("mqtt connected", "broker", p.cfg.Broker, "client_id", p.cfg.ClientID)
	p.publishNow(p.topic("available", "reason"), 1, true, p.reasonPayload(AvailableOnline, "connected"))
	p.publishNow(p.topic("available"), 1, true, []byte(AvailableOnline))
	p.publishDiscovery(true)
	filters := map[string]byte{
		p.topic("+", "threshold", "set"): p.cfg.QoS.Command,
		p.topic("+", "sample", "set"):    p.cfg.QoS.Command,
	}
	if p.cfg.OnTrigger != nil {
		filters[p.topic("+", "trigger")] = p.cfg.QoS.Command
	}
	tok := c.SubscribeMultiple(filters, p.onMessage)
	if !tok.WaitTimeout(p.cfg.AckTimeout) || tok.Error() != nil {
		p.log.Error("mqtt subscribe to command topics failed", "err", tokenErr(tok))
	}
	p.mu.Lock()
	var retained []struct {
		topic string
		v     any
	}
	for cam, s := range p.statuses {
		retained = append(retained, struct {
			topic string
			v     any
		}{p.topic(cam, "status"), s})
	}
	for cam, s := range p.thresholds {
		retained = append(retained, struct {
			topic string
			v     any
		}{p.topic(cam, "threshold", "state"), s})
	}
	if p.model != nil {
		retained = append(retained, struct {
			topic string
			v     any
		}{p.topic("model", "status"), *p.model})
	}
	p.mu.Unlock()
	for _, r := range retained {
		p.publishJSON(r.topic, p.cfg.QoS.Status, true, r.v)
	}
	p.connected.Store(true)
	select {
	case p.connCh <- struct{}{}:
	default:
	}
}

func tokenErr(t mqtt.Token) error {
	if err := t.Error(); err != nil {
		return err
	}
	return errors.New("timed out waiting for the broker")
}

// publishNow sends a message straight to the client (not through the outbox): retained state that is
// republished on every connect anyway, commands' answers and stats.
func (p *Publisher) publishNow(topic string, qos byte, retain bool, payload []byte) {
	if !p.client.IsConnectionOpen() {
		return
	}
	tok := p.client.Publish(topic, qos, retain, payload)
	go func() {
		if !tok.WaitTimeout(p.cfg.AckTimeout) || tok.Error() != nil {
			p.failures.Add(1)
			p.log.Debug("mqtt publish failed", "topic", topic, "err", tokenErr(tok))
			return
		}
		p.published.Add(1)
	}()
}

func (p *Publisher) publishJSON(topic string, qos byte, retain bool, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		p.log.Error("mqtt encode payload", "topic", topic, "err", err)
		return
	}
	p.publishNow(topic, qos, retain, data)
}

// onMessage is paho's handler for command topics; it only queues, so paho's router never blocks on the
// agent's callbacks.
func (p *Publisher) onMessage(_ mqtt.Client, m mqtt.Message) {
	rest, ok := strings.CutPrefix(m.Topic(), p.cfg.Prefix+"/")
	if !ok {
		return
	}
	parts := strings.Split(rest, "/")
	switch {
	case len(parts) == 3 && parts[2] == "set":
	case len(parts) == 2 && parts[1] == "trigger":
	default:
		return
	}
	select {
	case p.cmds <- command{camera: parts[0], kind: parts[1], payload: append([]byte(nil), m.Payload()...)}:
	default:
		p.log.Warn("mqtt command dropped: too many pending commands", "topic", m.Topic())
	}
}

func (p *Publisher) knownCamera(camera string) error {
	if err := store.ValidateCamera(camera); err != nil {
		return err
	}
	if len(p.cfg.Cameras) > 0 && !slices.Contains(p.cfg.Cameras, camera) {
		return fmt.Errorf("unknown camera %q", camera)
	}
	return nil
}

func (p *Publisher) handleCommand(c command) {
	if err := p.knownCamera(c.camera); err != nil {
		// The camera level of the topic is the sender's text: echo a short escaped prefix only.
		p.log.Warn("mqtt command rejected", "camera", echo.String(c.camera), "command", c.kind,
			"err", echo.Clip(err.Error(), maxReason))
		if c.kind == "trigger" {
			p.RejectTrigger(c.camera, c.payload, echo.Clip(err.Error(), maxReason))
		}
		return
	}
	log := p.log.With("camera", c.camera, "command", c.kind)
	switch c.kind {
	case "threshold":
		cmd, err := ParseThresholdCommand(c.payload)
		if err == nil && p.cfg.OnThreshold == nil {
			err = errors.New("threshold overrides are not enabled")
		}
		var st ThresholdState
		if err == nil {
			st, err = p.cfg.OnThreshold(c.camera, cmd)
		}
		if err != nil {
			reason := echo.Clip(err.Error(), maxReason)
			log.Warn("mqtt threshold command refused", "payload", echo.Short(c.payload), "err", reason)
			p.mu.Lock()
			prev, ok := p.thresholds[c.camera]
			p.mu.Unlock()
			if !ok {
				prev = ThresholdState{Camera: c.camera}
			}
			prev.Error = reason
			p.publishJSON(p.topic(c.camera, "threshold", "state"), p.cfg.QoS.Status, true, prev)
			return
		}
		st.Camera = c.camera
		log.Info("threshold changed", "threshold", st.Threshold, "source", st.Source)
		p.SetThresholdState(st)
	case "trigger":
		p.handleTrigger(c.camera, c.payload)
	case "sample":
		if p.cfg.OnSample == nil {
			log.Warn("mqtt sample command refused: sample collection not enabled")
			return
		}
		if err := p.cfg.OnSample(c.camera); err != nil {
			log.Warn("mqtt sample command refused", "err", err)
		}
	}
}

// maxReason bounds a refusal's text on the retained state topic and in the log: it embeds at most a short
// escaped prefix of the payload (package echo), and this caps whatever else an error carries.
const maxReason = 512

// SetCameraStatus publishes a camera's state (retained) when it changes and keeps it for republishing after
// reconnects. Since is the time of the change.
func (p *Publisher) SetCameraStatus(camera, state, reason string) {
	p.mu.Lock()
	prev, ok := p.statuses[camera]
	if ok && prev.State == state && prev.Reason == reason {
		p.mu.Unlock()
		return
	}
	s := CameraStatus{Camera: camera, State: state, Reason: reason, Since: p.cfg.Now().UTC()}
	p.statuses[camera] = s
	p.mu.Unlock()
	p.publishJSON(p.topic(camera, "status"), p.cfg.QoS.Status, true, s)
}

// SetThresholdState publishes a camera's effective threshold (retained), e.g. at start for every camera and
// after each change.
func (p *Publisher) SetThresholdState(s ThresholdState) {
	if s.UpdatedAt.IsZero() {
		s.UpdatedAt = p.cfg.Now().UTC()
	}
	p.mu.Lock()
	p.thresholds[s.Camera] = s
	p.mu.Unlock()
	p.publishJSON(p.topic(s.Camera, "threshold", "state"), p.cfg.QoS.Status, true, s)
}

// SetModelStatus publishes the model state (retained).
func (p *Publisher) SetModelStatus(s ModelStatus) {
	if s.Since.IsZero() {
		s.Since = p.cfg.Now().UTC()
	}
	p.mu.Lock()
	p.model = &s
	p.mu.Unlock()
	p.publishJSON(p.topic("model", "status"), p.cfg.QoS.Status, true, s)
}

// Messages builds the outbox messages for one result: the result JSON and, when hm is given and the heatmap
// mode and per-camera rate limit allow, the heatmap right after it. Heatmaps go through the outbox too, so
// a consumer gets each heatmap right after its result (binary heatmaps carry no seq); the outbox bound drops
// OK heatmaps before anything else, so they never cost a result.
func (p *Publisher) Messages(rec *store.Record, hm *Heatmap) ([]store.Message, error) {
	now := p.cfg.Now().UTC()
	pl := NewResultPayload(rec, now)
	var hmMsg *store.Message
	if hm != nil && len(hm.Data) > 0 && p.cfg.Heatmap.Mode != HeatmapOff && p.heatmapDue(rec.Camera, rec.Verdict, now) {
		topic := p.topic(rec.Camera, "heatmap")
		pl.Heatmap = &HeatmapRef{Topic: topic, Format: hm.Format, Bytes: len(hm.Data), Encoding: p.cfg.Heatmap.Mode}
		data := hm.Data
		if p.cfg.Heatmap.Mode == HeatmapJSON {
			var err error
			data, err = json.Marshal(HeatmapPayload{Camera: rec.Camera, Seq: rec.Seq, Format: hm.Format, Data: hm.Data})
			if err != nil {
				return nil, fmt.Errorf("encode heatmap %s/%d: %w", rec.Camera, rec.Seq, err)
			}
		}
		hmMsg = &store.Message{Topic: topic, Payload: data, Kind: store.MsgHeatmap, Camera: rec.Camera,
			Seq: rec.Seq, Verdict: rec.Verdict, EnqueuedAt: now}
	}
	data, err := json.Marshal(pl)
	if err != nil {
		return nil, fmt.Errorf("encode result %s/%d: %w", rec.Camera, rec.Seq, err)
	}
	qos := p.cfg.QoS.Result
	if rec.Verdict == store.VerdictNG {
		qos = max(qos, p.cfg.QoS.NG, 1)
	}
	msgs := []store.Message{{Topic: p.topic(rec.Camera, "result"), Payload: data, QoS: qos, Kind: store.MsgResult,
		Camera: rec.Camera, Seq: rec.Seq, Verdict: rec.Verdict, EnqueuedAt: now}}
	if hmMsg != nil {
		// A binary heatmap is paired with its result only by order. A broker keeps one subscriber's QoS 1
		// messages in order, but a QoS 0 message can overtake QoS 1 messages waiting for the subscriber's
		// in-flight window: so the heatmap never goes at a lower QoS than its result.
		hmMsg.QoS = max(p.cfg.QoS.Heatmap, qos)
		msgs = append(msgs, *hmMsg)
	}
	return msgs, nil
}

// heatmapDue applies the per-camera rate limit: NG always, OK at most once per MinInterval.
func (p *Publisher) heatmapDue(camera, verdict string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if verdict != store.VerdictNG {
		interval := p.cfg.Heatmap.MinInterval
		if d, ok := p.cfg.Heatmap.PerCamera[camera]; ok {
			interval = d
		}
		if last, ok := p.lastHeatmap[camera]; ok && now.Sub(last) < interval {
			return false
		}
	}
	p.lastHeatmap[camera] = now
	return true
}

// Submit commits a result to the store (history, images, outbox, seq, origin: one transaction) and wakes the
// drainer. hm, when given, is kept in the store's heatmap images and published per HeatmapConfig. It never
// waits for the broker; an error means nothing was stored.
func (p *Publisher) Submit(rec *store.Record, hm *Heatmap, opts store.CommitOptions) error {
	msgs, err := p.Messages(rec, hm)
	if err != nil {
		return err
	}
	if hm != nil && len(hm.Data) > 0 {
		opts.Images = append(opts.Images, store.Image{Kind: store.KindHeatmap, Format: hm.Format, Data: hm.Data})
	}
	return p.st.Commit(rec, msgs, opts)
}

// SubmitGrouped is Submit through Config.Committer: the result shares a store transaction with the others
// that arrive within the commit interval, and done receives Submit's error once that transaction ended
// (on the Committer's goroutine; nil: on disk, queued for publishing). Without a Committer it is Submit.
// Results are committed in call order.
func (p *Publisher) SubmitGrouped(rec *store.Record, hm *Heatmap, opts store.CommitOptions, done func(error)) {
	if p.cfg.Committer == nil {
		done(p.Submit(rec, hm, opts))
		return
	}
	msgs, err := p.Messages(rec, hm)
	if err != nil {
		done(err)
		return
	}
	if hm != nil && len(hm.Data) > 0 {
		opts.Images = append(opts.Images, store.Image{Kind: store.KindHeatmap, Format: hm.Format, Data: hm.Data})
	}
	p.cfg.Committer.Submit(store.Pending{Rec: rec, Msgs: msgs, Opts: opts}, done)
}
