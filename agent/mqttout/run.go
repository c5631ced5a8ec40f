package mqttout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/vlmdiff/edge/agent/store"
)

// Run connects (retrying with backoff while the broker is away), drains the outbox, handles commands and
// publishes stats until ctx is done. Then it flushes the outbox for up to FlushTimeout, publishes the stop
// reason on <prefix>/available/reason and `offline` on <prefix>/available (both retained) and disconnects
// cleanly. It returns nil after a clean stop; a Publisher runs once.
func (p *Publisher) Run(ctx context.Context) error {
	connTok := p.client.Connect()
	go func() {
		// With ConnectRetry the token completes only on success or Disconnect; an error here is final
		// (e.g. bad TLS settings).
		connTok.Wait()
		if err := connTok.Error(); err != nil {
			p.log.Error("mqtt connect failed", "broker", p.cfg.Broker, "err", err)
		}
	}()

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.drainLoop(ctx) }()
	go func() { defer wg.Done(); p.commandLoop(ctx) }()
	if p.cfg.StatsInterval > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); p.statsLoop(ctx) }()
	}
	<-ctx.Done()
	wg.Wait()

	fctx, cancel := context.WithTimeout(context.Background(), p.cfg.FlushTimeout)
	defer cancel()
	left := p.flush(fctx)
	if p.client.IsConnectionOpen() {
		reason, _ := p.stopReason.Load().(string)
		if reason == "" {
			reason = "clean shutdown"
		}
		// The reason first: a consumer that sees offline finds its reason already there.
		for _, m := range []struct {
			topic   string
			payload []byte
		}{{p.topic("available", "reason"), p.reasonPayload(AvailableOffline, reason)}, {p.topic("available"), []byte(AvailableOffline)}} {
			tok := p.client.Publish(m.topic, 1, true, m.payload)
			if !tok.WaitTimeout(p.cfg.AckTimeout) || tok.Error() != nil {
				p.log.Warn("mqtt: could not publish the stop", "topic", m.topic, "err", tokenErr(tok))
			}
		}
	}
	p.connected.Store(false)
	p.client.Disconnect(250)
	if left > 0 {
		p.log.Warn("mqtt stopped with messages left in the outbox; they go out at the next start", "messages", left)
	}
	return nil
}

// flush drains what is in the outbox while connected, until empty or ctx is done; returns how many remain.
func (p *Publisher) flush(ctx context.Context) uint64 {
	for p.client.IsConnectionOpen() && ctx.Err() == nil {
		n, err := p.drainBatch(ctx)
		if err != nil || n == 0 {
			break
		}
	}
	if c := p.cfg.Committer; c != nil {
		c.Flush() // the acknowledgements of what was just delivered
	}
	st, err := p.st.OutboxStats()
	if err != nil {
		return 0
	}
	return st.Messages
}

// drainLoop is the single outbox drainer: wait for a connection, publish a window of entries in order, ack
// the delivered prefix, repeat; sleep on the store's notification when the outbox is empty.
func (p *Publisher) drainLoop(ctx context.Context) {
	retry := time.Duration(0)
	for ctx.Err() == nil {
		if !p.connected.Load() {
			select {
			case <-ctx.Done():
				return
			case <-p.connCh:
			case <-time.After(time.Second): // re-check: connCh is coalesced
			}
			continue
		}
		n, err := p.drainBatch(ctx)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			p.failures.Add(1)
			retry = min(max(2*retry, 100*time.Millisecond), 5*time.Second)
			p.log.Warn("mqtt outbox delivery interrupted; retrying from the oldest entry", "err", err, "retry_in", retry)
			select {
			case <-ctx.Done():
				return
			case <-time.After(retry):
			}
		case n == 0:
			retry = 0
			select {
			case <-ctx.Done():
				return
			case <-p.st.Notify():
			case <-time.After(time.Second):
			}
		default:
			retry = 0
		}
	}
}

// drainBatch publishes up to Window entries from the outbox head and acks those whose delivery completed,
// stopping at the first that did not (the rest are retried from the store: never out of order, duplicates
// possible, which QoS 1 allows).
func (p *Publisher) drainBatch(ctx context.Context) (int, error) {
	msgs, err := p.st.PeekAfter(p.sent, p.cfg.Window)
	if err != nil {
		return 0, fmt.Errorf("read outbox: %w", err)
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	toks := make([]mqtt.Token, len(msgs))
	for i, m := range msgs {
		toks[i] = p.client.Publish(m.Topic, m.QoS, m.Retain, m.Payload)
	}
	var done []uint64
	var failure error
	for i, tok := range toks {
		if err := waitToken(ctx, tok, p.cfg.AckTimeout); err != nil {
			failure = fmt.Errorf("publish %s seq %d: %w", msgs[i].Topic, msgs[i].Seq, err)
			break
		}
		done = append(done, msgs[i].ID)
	}
	if c := p.cfg.Committer; c != nil && len(done) > 0 {
		// Removed with the next group of results: until then the drainer goes on after them. Lost in a
		// crash means sent again after the restart: a duplicate, never a loss.
		if err := c.Ack(done...); err != nil {
			return 0, fmt.Errorf("ack outbox: %w", err)
		}
		p.sent = done[len(done)-1]
	} else if err := p.st.Ack(done...); err != nil {
		// Not acked means sent again later: a duplicate, never a loss.
		return 0, fmt.Errorf("ack outbox: %w", err)
	}
	p.published.Add(uint64(len(done)))
	return len(done), failure
}

var errAckTimeout = errors.New("no acknowledgement from the broker in time")

func waitToken(ctx context.Context, tok mqtt.Token, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errAckTimeout
	}
}

func (p *Publisher) commandLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-p.cmds:
			p.handleCommand(c)
		}
	}
}

// StatsPayload is the JSON on <prefix>/stats.
type StatsPayload struct {
	Time   time.Time         `json:"time"`
	MQTT   PublisherStats    `json:"mqtt"`
	Outbox store.OutboxStats `json:"outbox"`
	Agent  any               `json:"agent,omitempty"`
}

// PublisherStats count the publisher's work since start.
type PublisherStats struct {
	Connected  bool   `json:"connected"`
	ClientID   string `json:"client_id"`
	Published  uint64 `json:"published"`
	Failures   uint64 `json:"failures"`
	Reconnects uint64 `json:"reconnects"`
}

// Stats returns the publisher's counters.
func (p *Publisher) Stats() PublisherStats {
	return PublisherStats{Connected: p.connected.Load(), ClientID: p.cfg.ClientID, Published: p.published.Load(),
		Failures: p.failures.Load(), Reconnects: p.reconnects.Load()}
}

func (p *Publisher) statsLoop(ctx context.Context) {
	tk := time.NewTicker(p.cfg.StatsInterval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			p.PublishStats()
		}
	}
}

// PublishStats publishes one <prefix>/stats message now (Run does it every StatsInterval).
func (p *Publisher) PublishStats() {
	sp := StatsPayload{Time: p.cfg.Now().UTC(), MQTT: p.Stats()}
	if ob, err := p.st.OutboxStats(); err == nil {
		sp.Outbox = ob
	} else {
		p.log.Warn("stats: outbox stats", "err", err)
	}
	if p.cfg.Stats != nil {
		sp.Agent = p.cfg.Stats()
	}
	p.publishJSON(p.topic("stats"), p.cfg.QoS.Stats, false, sp)
}

// AvailableReason is the retained JSON on <prefix>/available/reason: the state last announced by the agent
// itself and why. After a crash the Last Will sets <prefix>/available to offline while this still says
// online: that mismatch is how a consumer tells a vanished agent from a clean stop.
type AvailableReason struct {
	State  string    `json:"state"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// SetStopReason records why the agent stops, published on <prefix>/available/reason at the end of Run.
func (p *Publisher) SetStopReason(reason string) { p.stopReason.Store(reason) }

func (p *Publisher) reasonPayload(state, reason string) []byte {
	b, _ := json.Marshal(AvailableReason{State: state, Reason: reason, Since: p.cfg.Now().UTC()})
	return b
}
