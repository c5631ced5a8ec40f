package mqtttest

import (
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// TestBrokerRestartSamePort checks the helper itself: a message goes through, the port closes on Stop and
// the same port serves again after Restart (the subscriber reconnects and resubscribes by itself).
func TestBrokerRestartSamePort(t *testing.T) {
	b := Start(t)
	sub := Subscribe(t, b.URL, SubOptions{}, "t/#")
	pub := func(payload string) {
		t.Helper()
		out, err := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", itoa(b.Port), "-q", "1", "-t", "t/a", "-m", payload).CombinedOutput()
		if err != nil {
			t.Fatalf("mosquitto_pub: %v: %s", err, out)
		}
	}
	pub("one")
	sub.WaitN("t/a", 1, 10*time.Second)
	port := b.Port
	b.Stop()
	b.Restart()
	if b.Port != port {
		t.Fatalf("restart changed port %d -> %d", port, b.Port)
	}
	// The subscriber resubscribes on reconnect; publish until one arrives after the restart.
	deadline := time.Now().Add(10 * time.Second)
	for len(sub.Messages("t/a")) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no message after restart; log:\n%s", b.Log())
		}
		pub("two")
		time.Sleep(100 * time.Millisecond)
	}
	if got := string(sub.Messages("t/a")[1].Payload); got != "two" {
		t.Fatalf("second message = %q, want two", got)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
