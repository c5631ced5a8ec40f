package broker

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

func dial(t *testing.T, url, id, user, pass string) (paho.Client, error) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetConnectRetry(false).SetAutoReconnect(false)
	if user != "" {
		o.SetUsername(user).SetPassword(pass)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("connect %s: timeout", id)
	}
	if tok.Error() == nil {
		t.Cleanup(func() { c.Disconnect(10) })
	}
	return c, tok.Error()
}

// received collects what a subscriber gets on filter.
func received(t *testing.T, c paho.Client, filter string) chan string {
	got := make(chan string, 16)
	if tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { got <- m.Topic() + "=" + string(m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return got
}

// Anonymous clients on an address beyond loopback are refused unless allowed; users authenticate; only the
// agent publishes results, and only users granted a command publish it.
func TestAccessControl(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	acc := &Access{Agent: User{Username: "agent", Password: "s3cret"}, Prefix: "vt",
		Users: []User{{Username: "plc", Password: "pw", Commands: []string{"threshold"}}, {Username: "viewer", Password: "pw2"}}}
	b, err := Start(ctx, Config{Addr: "0.0.0.0:" + strconv.Itoa(port), Logger: log, Access: acc})
	if err != nil {
		t.Fatal(err)
	}
	url := "tcp://127.0.0.1:" + strconv.Itoa(port)
	if _, err := dial(t, url, "anon", "", ""); err == nil {
		t.Error("anonymous client accepted beyond loopback")
	}
	if _, err := dial(t, url, "bad", "plc", "wrong"); err == nil {
		t.Error("wrong password accepted")
	}
	agent, err := dial(t, url, "agent", "agent", "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	plc, err := dial(t, url, "plc", "plc", "pw")
	if err != nil {
		t.Fatal(err)
	}
	viewer, err := dial(t, url, "viewer", "viewer", "pw2")
	if err != nil {
		t.Fatal(err)
	}
	got := received(t, agent, "vt/#")
	// Allowed ones first: mochi disconnects an MQTT 3 client whose QoS 1 publish is refused, so each refused
	// publish below gets a connection of its own.
	plc.Publish("vt/line/threshold/set", 1, false, "0.5").WaitTimeout(10 * time.Second)
	agent.Publish("vt/line/result", 1, false, "real").WaitTimeout(10 * time.Second)
	_ = viewer
	for i, p := range []struct{ user, pass, topic, value string }{
		{"viewer", "pw2", "vt/line/result", "fake"},       // nobody but the agent publishes results
		{"plc", "pw", "vt/available", "offline"},          // or availability
		{"viewer", "pw2", "vt/line/threshold/set", "0.1"}, // viewer has no command rights
		{"plc", "pw", "vt/line/sample/set", "1"},          // plc has threshold only
		{"plc", "pw", "vt/line/x/threshold/set", "1"},     // not a command topic
	} {
		c, err := dial(t, url, "refused"+strconv.Itoa(i), p.user, p.pass)
		if err != nil {
			t.Fatal(err)
		}
		c.Publish(p.topic, 1, false, p.value).WaitTimeout(3 * time.Second)
	}
	want := map[string]bool{"vt/line/threshold/set=0.5": true, "vt/line/result=real": true}
	deadline := time.After(3 * time.Second)
	seen := map[string]bool{}
	for done := false; !done; {
		select {
		case m := <-got:
			if !want[m] {
				t.Errorf("message %q got through", m)
			}
			seen[m] = true
		case <-deadline:
			done = true
		}
	}
	for m := range want {
		if !seen[m] {
			t.Errorf("allowed message %q did not arrive", m)
		}
	}
	_ = b.Close()
}

// Without access control the broker refuses to serve beyond loopback.
func TestAllowAllOnlyOnLoopback(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if b, err := Start(ctx, Config{Addr: "0.0.0.0:0"}); err == nil {
		b.Close()
		t.Fatal("allow-all broker started on 0.0.0.0")
	}
}
