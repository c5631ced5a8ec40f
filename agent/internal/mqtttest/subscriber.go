package mqtttest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Message is one received MQTT message.
type Message struct {
	Topic     string
	Payload   []byte
	QoS       byte
	Retained  bool
	Duplicate bool
}

// SubOptions tune a Subscriber. The zero value is a clean-session client with a random id subscribing at
// QoS 0 (the broker delivers at min(publish QoS, subscription QoS): set QoS 1 to observe QoS-1 delivery).
type SubOptions struct {
	ClientID string
	// Persistent uses CleanSession=false, so a broker with persistence queues QoS>0 messages for this client
	// while it reconnects.
	Persistent bool
	QoS        byte
}

// Subscriber is a paho client that records every message, in arrival order. It resubscribes on every
// (re)connect, so it survives broker restarts.
type Subscriber struct {
	t      testing.TB
	client mqtt.Client

	mu   sync.Mutex
	cond *sync.Cond
	all  []Message
}

var subCounter struct {
	sync.Mutex
	n int
}

// Subscribe connects to url and subscribes to topics (filters allowed); it returns once subscribed.
func Subscribe(t testing.TB, url string, opts SubOptions, topics ...string) *Subscriber {
	t.Helper()
	s := &Subscriber{t: t}
	s.cond = sync.NewCond(&s.mu)
	if opts.ClientID == "" {
		subCounter.Lock()
		subCounter.n++
		opts.ClientID = fmt.Sprintf("mqtttest-sub-%d-%d", time.Now().UnixNano()%1e9, subCounter.n)
		subCounter.Unlock()
	}
	filters := map[string]byte{}
	for _, tp := range topics {
		filters[tp] = opts.QoS
	}
	subscribed := make(chan error, 1)
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(opts.ClientID).
		SetCleanSession(!opts.Persistent).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(100 * time.Millisecond).SetMaxReconnectInterval(500 * time.Millisecond).
		SetOrderMatters(true)
	o.SetOnConnectHandler(func(c mqtt.Client) {
		tok := c.SubscribeMultiple(filters, func(_ mqtt.Client, m mqtt.Message) {
			s.mu.Lock()
			s.all = append(s.all, Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...),
				QoS: m.Qos(), Retained: m.Retained(), Duplicate: m.Duplicate()})
			s.cond.Broadcast()
			s.mu.Unlock()
		})
		tok.Wait()
		select {
		case subscribed <- tok.Error():
		default:
		}
	})
	s.client = mqtt.NewClient(o)
	s.client.Connect()
	select {
	case err := <-subscribed:
		if err != nil {
			t.Fatalf("mqtttest: subscribe %v: %v", topics, err)
		}
	case <-time.After(startTimeout):
		t.Fatalf("mqtttest: subscriber not connected to %s after %v", url, startTimeout)
	}
	t.Cleanup(s.Close)
	return s
}

// Close disconnects.
func (s *Subscriber) Close() {
	if s.client.IsConnected() {
		s.client.Disconnect(100)
	}
}

// Messages returns a copy of the messages received on topic ("" = all), in arrival order.
func (s *Subscriber) Messages(topic string) []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Message
	for _, m := range s.all {
		if topic == "" || m.Topic == topic {
			out = append(out, m)
		}
	}
	return out
}

// WaitFor waits until done(messages on topic) is true and returns those messages; it fails the test after
// timeout (a deadline against hangs, not a speed check).
func (s *Subscriber) WaitFor(topic string, timeout time.Duration, done func([]Message) bool) []Message {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	// Wake the waiter periodically so the deadline is noticed even when nothing arrives.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				s.mu.Lock()
				s.cond.Broadcast()
				s.mu.Unlock()
			}
		}
	}()
	for {
		msgs := s.Messages(topic)
		if done(msgs) {
			return msgs
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("mqtttest: condition on topic %q not met after %v; %d messages received", topic, timeout, len(msgs))
		}
		s.mu.Lock()
		s.cond.Wait()
		s.mu.Unlock()
	}
}

// WaitN waits for at least n messages on topic ("" = all) and returns them all.
func (s *Subscriber) WaitN(topic string, n int, timeout time.Duration) []Message {
	s.t.Helper()
	return s.WaitFor(topic, timeout, func(m []Message) bool { return len(m) >= n })
}
