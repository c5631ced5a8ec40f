// Package broker runs an embedded MQTT broker (mochi-mqtt) inside the daemon, for installations that name no
// external broker: the agent then publishes to itself and dashboards/PLCs subscribe to the agent's address.
// It is in-memory (no persistence). Without Config.Access it is anonymous and allow-all, which Start only
// permits on loopback; with it, clients authenticate and only the agent publishes its own topics (access.go).
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// DefaultAddr is where the embedded broker listens when the config names no address.
const DefaultAddr = "127.0.0.1:1883"

// Config configures the embedded broker.
type Config struct {
	// Addr is host:port to listen on (default DefaultAddr; port 0 picks a free one, see Broker.Addr).
	Addr   string
	Logger *slog.Logger
	// Access, when not nil, is enforced (see Access); nil keeps the old allow-all behaviour, which Start
	// refuses on an address beyond loopback.
	Access *Access
	// TLS, when not nil, makes the listener speak MQTT over TLS.
	TLS *tls.Config
}

// Broker is a running embedded broker.
type Broker struct {
	srv  *mqtt.Server
	addr string
	tls  bool
	once sync.Once
	done chan struct{}
	err  error
}

// Start listens on cfg.Addr and serves until ctx is done or Close is called. It returns once the listener
// accepts connections, or with an error naming the address (e.g. port in use).
func Start(ctx context.Context, cfg Config) (*Broker, error) {
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return nil, fmt.Errorf("embedded broker: address %q: %w", cfg.Addr, err)
	}
	log := slog.New(quietHandler{cfg.Logger.With("component", "broker").Handler()})
	srv := mqtt.New(&mqtt.Options{InlineClient: false, Logger: log})
	if cfg.Access != nil {
		if err := srv.AddHook(&accessHook{acc: *cfg.Access}, nil); err != nil {
			return nil, fmt.Errorf("embedded broker: access hook: %w", err)
		}
	} else {
		if !isLoopback(cfg.Addr) {
			return nil, fmt.Errorf("embedded broker: refusing to serve anonymous clients on %s, beyond loopback, "+
				"without access control", cfg.Addr)
		}
		if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
			return nil, fmt.Errorf("embedded broker: allow-all auth hook: %w", err)
		}
	}
	tcp := listeners.NewTCP(listeners.Config{Type: listeners.TypeTCP, ID: "tcp", Address: cfg.Addr, TLSConfig: cfg.TLS})
	if err := srv.AddListener(tcp); err != nil {
		return nil, fmt.Errorf("embedded broker: listen on %s: %w", cfg.Addr, err)
	}
	if err := srv.Serve(); err != nil {
		_ = srv.Close()
		return nil, fmt.Errorf("embedded broker: serve on %s: %w", cfg.Addr, err)
	}
	b := &Broker{srv: srv, addr: tcp.Address(), done: make(chan struct{}), tls: cfg.TLS != nil}
	cfg.Logger.Info("embedded MQTT broker listening", "addr", b.addr)
	go func() {
		select {
		case <-ctx.Done():
			_ = b.Close()
		case <-b.done:
		}
	}()
	return b, nil
}

// Addr returns the address actually listened on (host:port).
func (b *Broker) Addr() string { return b.addr }

// URL returns the broker's URL in paho's form (tcp://host:port, or ssl:// with TLS).
func (b *Broker) URL() string {
	if b.tls {
		return "ssl://" + b.addr
	}
	return "tcp://" + b.addr
}

// isLoopback reports whether addr binds only the loopback interface.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Close stops the broker and disconnects its clients. Safe to call more than once.
func (b *Broker) Close() error {
	b.once.Do(func() {
		if err := b.srv.Close(); err != nil {
			b.err = fmt.Errorf("embedded broker: close: %w", err)
		}
		close(b.done)
	})
	return b.err
}

// Done is closed once the broker has stopped.
func (b *Broker) Done() <-chan struct{} { return b.done }

// quietHandler moves mochi's routine noise to debug: every client disconnect logs "error processing
// packet" with "use of closed network connection" or EOF at warn level, and start/stop chatter at info.
type quietHandler struct{ slog.Handler }

var noise = []string{"use of closed network connection", "EOF", "connection reset by peer", "broken pipe", "i/o timeout"}

func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level > slog.LevelDebug && r.Level < slog.LevelError {
		quiet := r.Level == slog.LevelInfo
		r.Attrs(func(a slog.Attr) bool {
			if v, ok := a.Value.Any().(error); ok && isNoise(v) {
				quiet = true
			} else if s := a.Value.String(); isNoiseString(s) {
				quiet = true
			}
			return !quiet
		})
		if quiet {
			r2 := slog.NewRecord(r.Time, slog.LevelDebug, r.Message, r.PC)
			r.Attrs(func(a slog.Attr) bool { r2.AddAttrs(a); return true })
			if !h.Handler.Enabled(ctx, slog.LevelDebug) {
				return nil
			}
			return h.Handler.Handle(ctx, r2)
		}
	}
	return h.Handler.Handle(ctx, r)
}

// Enabled lets debug records through to Handle, which decides after downgrading.
func (h quietHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.Handler.Enabled(ctx, l)
}

func (h quietHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return quietHandler{h.Handler.WithAttrs(as)}
}

func (h quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{h.Handler.WithGroup(name)}
}

func isNoise(err error) bool {
	return errors.Is(err, net.ErrClosed) || isNoiseString(err.Error())
}

func isNoiseString(s string) bool {
	for _, n := range noise {
		if strings.Contains(s, n) {
			return true
		}
	}
	return false
}
