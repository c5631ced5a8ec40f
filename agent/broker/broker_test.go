package broker

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// TestEmbeddedRoundTrip publishes a retained and a live message through the embedded broker with paho and
// checks both arrive, then that the context stops the broker and frees the port.
func TestEmbeddedRoundTrip(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := Start(ctx, Config{Addr: "127.0.0.1:0", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	connect := func(id string) paho.Client {
		c := paho.NewClient(paho.NewClientOptions().AddBroker(b.URL()).SetClientID(id))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s to %s: %v", id, b.URL(), tok.Error())
		}
		return c
	}
	pub := connect("pub")
	if tok := pub.Publish("x/retained", 1, true, "kept"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish retained: %v", tok.Error())
	}
	got := make(chan string, 16)
	sub := connect("sub")
	if tok := sub.Subscribe("x/#", 1, func(_ paho.Client, m paho.Message) {
		got <- m.Topic() + "=" + string(m.Payload())
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	if tok := pub.Publish("x/live", 1, false, "hello"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	// QoS 1 allows duplicates, so compare as sets.
	want := map[string]bool{"x/retained=kept": false, "x/live=hello": false}
	for missing := len(want); missing > 0; {
		select {
		case m := <-got:
			seen, ok := want[m]
			if !ok {
				t.Fatalf("unexpected message %q", m)
			}
			if !seen {
				want[m] = true
				missing--
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("messages not received: %v", want)
		}
	}
	pub.Disconnect(100)
	sub.Disconnect(100)
	cancel()
	select {
	case <-b.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("broker did not stop with its context")
	}
	if strings.Contains(logs.String(), "use of closed network connection") {
		t.Errorf("disconnect noise logged above debug:\n%s", logs.String())
	}
	// The port is free again: a new broker can take it.
	b2, err := Start(context.Background(), Config{Addr: b.Addr(), Logger: log})
	if err != nil {
		t.Fatalf("restart on %s: %v", b.Addr(), err)
	}
	b2.Close()
}

// TestStartErrors checks that a taken port and a bad address are reported with the address.
func TestStartErrors(t *testing.T) {
	ctx := context.Background()
	b, err := Start(ctx, Config{Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, tc := range []struct{ name, addr, want string }{
		{"port in use", b.Addr(), b.Addr()},
		{"no port", "localhost", "localhost"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Start(ctx, Config{Addr: tc.addr, Logger: slog.New(slog.DiscardHandler)})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start(%q) error = %v, want one naming %q", tc.addr, err, tc.want)
			}
		})
	}
}
