// Package mqtttest runs a real mosquitto broker for tests: one process per test on a free loopback port,
// with a temporary config, stopped by PID at cleanup. Stop and Restart (same port) let tests simulate a
// broker outage. Subscriber collects messages per topic in arrival order.
//
// When /usr/sbin/mosquitto (or $MOSQUITTO) is missing the test is skipped with a message, except under CI=true
// where a missing broker is a failure: CI must test against the real thing.
package mqtttest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// DefaultBinary is where Debian's mosquitto package installs the broker.
const DefaultBinary = "/usr/sbin/mosquitto"

// startTimeout bounds the wait for the broker to accept connections (a liveness deadline, not an assertion
// on speed).
const startTimeout = 15 * time.Second

// Options tune the broker. The zero value is the minimal config.
type Options struct {
	// Persistence keeps sessions and retained messages in a temp dir across Stop/Restart (mosquitto writes
	// its database on a clean stop). Needed when a test's subscriber must not miss messages published while
	// it reconnects after a restart.
	Persistence bool
	// Extra config lines appended verbatim.
	Extra []string
}

// Broker is a running (or stopped) mosquitto.
type Broker struct {
	t    testing.TB
	bin  string
	dir  string
	conf string
	Port int
	// Addr is 127.0.0.1:PORT; URL is tcp://127.0.0.1:PORT (paho's form).
	Addr string
	URL  string

	mu  sync.Mutex
	cmd *exec.Cmd
	log *os.File
}

// Start launches mosquitto with the minimal config on a free loopback port.
func Start(t testing.TB) *Broker { return StartWith(t, Options{}) }

// StartWith launches mosquitto with opts.
func StartWith(t testing.TB, opts Options) *Broker {
	t.Helper()
	bin := os.Getenv("MOSQUITTO")
	if bin == "" {
		bin = DefaultBinary
	}
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("mosquitto not found at %s (install Debian's mosquitto package or set $MOSQUITTO): %v", bin, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	port, err := freePort()
	if err != nil {
		t.Fatalf("mqtttest: find a free port: %v", err)
	}
	dir := t.TempDir()
	lines := []string{
		fmt.Sprintf("listener %d 127.0.0.1", port),
		"allow_anonymous true",
		"log_dest stdout",
		"log_type error",
		"log_type warning",
		"log_type notice",
	}
	if opts.Persistence {
		lines = append(lines, "persistence true", "persistence_location "+dir+"/", "autosave_interval 0")
	} else {
		lines = append(lines, "persistence false")
	}
	if os.Geteuid() == 0 {
		// mosquitto started as root switches to user "mosquitto", which cannot write the test's temp dir.
		lines = append(lines, "user root")
	}
	lines = append(lines, opts.Extra...)
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatalf("mqtttest: write config: %v", err)
	}
	b := &Broker{t: t, bin: bin, dir: dir, conf: conf, Port: port,
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	b.URL = "tcp://" + b.Addr
	t.Cleanup(b.kill)
	if err := b.start(); err != nil {
		t.Fatalf("mqtttest: %v", err)
	}
	return b
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (b *Broker) start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd != nil {
		return errors.New("broker already running")
	}
	logf, err := os.OpenFile(filepath.Join(b.dir, "mosquitto.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open broker log: %w", err)
	}
	cmd := exec.Command(b.bin, "-c", b.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", b.bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", b.Addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		select {
		case werr := <-exited:
			logf.Close()
			return fmt.Errorf("mosquitto exited before accepting on %s (%v); log:\n%s", b.Addr, werr, b.Log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			logf.Close()
			return fmt.Errorf("mosquitto not accepting on %s after %v; log:\n%s", b.Addr, startTimeout, b.Log())
		}
	}
	b.cmd, b.log = cmd, logf
	// Reap the process when it exits so a later Stop does not wait on a zombie.
	go func() {
		<-exited
		logf.Close()
	}()
	return nil
}

// Log returns the broker's log so far (for failure messages).
func (b *Broker) Log() string {
	data, _ := os.ReadFile(filepath.Join(b.dir, "mosquitto.log"))
	return string(data)
}

// Stop terminates the broker cleanly (SIGTERM; SIGKILL after 5 s) and waits until the port is closed.
func (b *Broker) Stop() {
	b.t.Helper()
	if err := b.stop(syscall.SIGTERM); err != nil {
		b.t.Fatalf("mqtttest: stop: %v", err)
	}
}

// Kill stops the broker with SIGKILL (no persistence written).
func (b *Broker) Kill() {
	b.t.Helper()
	if err := b.stop(syscall.SIGKILL); err != nil {
		b.t.Fatalf("mqtttest: kill: %v", err)
	}
}

func (b *Broker) stop(sig syscall.Signal) error {
	b.mu.Lock()
	cmd := b.cmd
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return nil
	}
	pid := cmd.Process.Pid
	_ = syscall.Kill(pid, sig)
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			deadline = time.Now().Add(5 * time.Second)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Wait until the port no longer accepts, so callers see the outage.
	for i := 0; i < 200; i++ {
		c, err := net.DialTimeout("tcp", b.Addr, 100*time.Millisecond)
		if err != nil {
			return nil
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("port %s still accepting after stopping pid %d", b.Addr, pid)
}

// processAlive reports whether pid exists and is not a zombie (our reaper goroutine collects it).
func processAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// Restart starts the broker again on the same port (after Stop or Kill).
func (b *Broker) Restart() {
	b.t.Helper()
	if err := b.start(); err != nil {
		b.t.Fatalf("mqtttest: restart: %v", err)
	}
}

// kill is the cleanup: SIGKILL by PID, no questions.
func (b *Broker) kill() { _ = b.stop(syscall.SIGKILL) }
