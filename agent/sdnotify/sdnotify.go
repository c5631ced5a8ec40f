// Package sdnotify speaks systemd's sd_notify protocol over $NOTIFY_SOCKET: READY=1 once the daemon scores,
// STATUS= lines for `systemctl status`, WATCHDOG=1 pings and STOPPING=1. Without the variable (not started by
// systemd, or Type=simple) every call is a no-op, so the daemon needs no special mode for development.
//
// The watchdog ping is tied to a liveness check supplied by the caller (the scoring loop's heartbeat), not to a
// timer alone: a daemon whose workers are wedged must stop pinging so that systemd restarts it.
package sdnotify

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Notifier sends sd_notify messages. The zero value and a Notifier from New without $NOTIFY_SOCKET do nothing.
type Notifier struct {
	mu   sync.Mutex
	addr *net.UnixAddr
	conn *net.UnixConn
}

// New reads $NOTIFY_SOCKET (and unsets nothing: children are not started by vlmdiff).
func New() *Notifier { return NewAt(os.Getenv("NOTIFY_SOCKET")) }

// NewAt makes a notifier for an explicit socket path ("" = no-op). A leading '@' names an abstract socket.
func NewAt(path string) *Notifier {
	if path == "" {
		return &Notifier{}
	}
	name := path
	if strings.HasPrefix(name, "@") {
		name = "\x00" + name[1:]
	}
	return &Notifier{addr: &net.UnixAddr{Name: name, Net: "unixgram"}}
}

// Enabled reports whether messages go anywhere.
func (n *Notifier) Enabled() bool { return n != nil && n.addr != nil }

// Send sends one datagram of newline-separated KEY=VALUE assignments.
func (n *Notifier) Send(state ...string) error {
	if !n.Enabled() {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conn == nil {
		c, err := net.DialUnix("unixgram", nil, n.addr)
		if err != nil {
			return fmt.Errorf("sdnotify: dial %s: %w", n.addr.Name, err)
		}
		n.conn = c
	}
	if _, err := n.conn.Write([]byte(strings.Join(state, "\n"))); err != nil {
		n.conn.Close()
		n.conn = nil
		return fmt.Errorf("sdnotify: send to %s: %w", n.addr.Name, err)
	}
	return nil
}

// Ready tells systemd that start-up is complete.
func (n *Notifier) Ready(status string) error {
	if status == "" {
		return n.Send("READY=1")
	}
	return n.Send("READY=1", "STATUS="+status)
}

// Status sets the one-line status shown by systemctl.
func (n *Notifier) Status(status string) error { return n.Send("STATUS=" + status) }

// Stopping tells systemd that shutdown has begun.
func (n *Notifier) Stopping() error { return n.Send("STOPPING=1") }

// Close releases the socket.
func (n *Notifier) Close() error {
	if n == nil {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conn != nil {
		err := n.conn.Close()
		n.conn = nil
		return err
	}
	return nil
}

// WatchdogInterval returns half of $WATCHDOG_USEC (the ping period systemd recommends), or 0 when the
// watchdog is off or meant for another process ($WATCHDOG_PID set and not ours).
func WatchdogInterval() time.Duration {
	return watchdogInterval(os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID"), os.Getpid())
}

func watchdogInterval(usec, pid string, self int) time.Duration {
	if usec == "" {
		return 0
	}
	if pid != "" {
		if p, err := strconv.Atoi(pid); err != nil || p != self {
			return 0
		}
	}
	u, err := strconv.ParseInt(usec, 10, 64)
	if err != nil || u <= 0 {
		return 0
	}
	return time.Duration(u) * time.Microsecond / 2
}

// Watchdog sends WATCHDOG=1 every interval while alive() reports true, until ctx ends. interval <= 0 (no
// watchdog) returns at once. alive should say whether the scoring loop has made progress recently; when it
// says false the ping is withheld and systemd's WatchdogSec restarts a wedged daemon.
func (n *Notifier) Watchdog(ctx context.Context, interval time.Duration, alive func() bool) {
	if !n.Enabled() || interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if alive == nil || alive() {
				_ = n.Send("WATCHDOG=1")
			}
		}
	}
}
