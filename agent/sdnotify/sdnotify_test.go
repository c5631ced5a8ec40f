package sdnotify

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// listen opens a real unixgram socket like systemd's and returns it with its path.
func listen(t *testing.T) (*net.UnixConn, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, path
}

func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no datagram: %v", err)
	}
	return string(buf[:n])
}

func TestMessages(t *testing.T) {
	c, path := listen(t)
	n := NewAt(path)
	defer n.Close()
	cases := []struct {
		name string
		send func() error
		want string
	}{
		{"ready", func() error { return n.Ready("") }, "READY=1"},
		{"ready with status", func() error { return n.Ready("scoring 2 cameras") }, "READY=1\nSTATUS=scoring 2 cameras"},
		{"status", func() error { return n.Status("model m 1.0") }, "STATUS=model m 1.0"},
		{"stopping", n.Stopping, "STOPPING=1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.send(); err != nil {
				t.Fatal(err)
			}
			if got := recv(t, c); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestNoSocketIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := New()
	if n.Enabled() {
		t.Fatal("enabled without NOTIFY_SOCKET")
	}
	for _, f := range []func() error{func() error { return n.Ready("x") }, n.Stopping, func() error { return n.Status("s") }} {
		if err := f(); err != nil {
			t.Errorf("no-op returned %v", err)
		}
	}
	n.Watchdog(context.Background(), time.Millisecond, nil) // returns at once
}

func TestMissingSocketErrors(t *testing.T) {
	n := NewAt(filepath.Join(t.TempDir(), "absent.sock"))
	err := n.Ready("")
	if err == nil || !strings.Contains(err.Error(), "absent.sock") {
		t.Fatalf("want an error naming the socket, got %v", err)
	}
}

// TestWatchdogOnlyWhileAlive: pings flow while alive() is true and stop when it turns false.
func TestWatchdogOnlyWhileAlive(t *testing.T) {
	c, path := listen(t)
	n := NewAt(path)
	defer n.Close()
	var alive atomic.Bool
	alive.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Watchdog(ctx, 10*time.Millisecond, alive.Load); close(done) }()
	for i := 0; i < 3; i++ {
		if got := recv(t, c); got != "WATCHDOG=1" {
			t.Fatalf("got %q", got)
		}
	}
	alive.Store(false)
	// Drain what was in flight, then expect silence across many intervals.
	time.Sleep(30 * time.Millisecond)
	c.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
	buf := make([]byte, 64)
	for {
		if _, err := c.Read(buf); err != nil {
			break
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if k, err := c.Read(buf); err == nil {
		t.Fatalf("pinged while not alive: %q", buf[:k])
	}
	cancel()
	<-done
}

func TestWatchdogInterval(t *testing.T) {
	cases := []struct {
		usec, pid string
		want      time.Duration
	}{
		{"", "", 0},
		{"30000000", "", 15 * time.Second},
		{"30000000", "42", 15 * time.Second},
		{"30000000", "43", 0},
		{"bogus", "", 0},
		{"-5", "", 0},
	}
	for _, tc := range cases {
		if got := watchdogInterval(tc.usec, tc.pid, 42); got != tc.want {
			t.Errorf("usec=%q pid=%q: got %v, want %v", tc.usec, tc.pid, got, tc.want)
		}
	}
}
