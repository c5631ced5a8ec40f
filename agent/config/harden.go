package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// validateHardening checks the keys that protect the daemon from its network and its inputs, and what can be
// known about listen addresses and conflicting keys without starting anything.
func (c *Config) validateHardening() []error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}
	if c.Models.Dir != "" && c.Models.Bundle != "" {
		bad("models", "set either dir (watched) or bundle (pinned), not both: with both it is unclear which one runs")
	}
	if c.Embedded() {
		if err := checkListen(c.MQTT.Listen); err != nil {
			bad("mqtt.listen", "%v", err)
		}
	}
	if c.HTTP.Listen != "" {
		if err := checkListen(c.HTTP.Listen); err != nil {
			bad("http.listen", "%v", err)
		}
	}
	e := c.MQTT.Embedded
	if !c.Embedded() && (len(e.Users) > 0 || e.AllowAnonymous != nil || e.TLS.Cert != "" || e.TLS.Key != "") {
		bad("mqtt.embedded", "only applies to the embedded broker, but mqtt.broker names an external one "+
			"(secure that one with its own ACLs: docs/operations.md, Securing MQTT)")
	}
	seen := map[string]bool{}
	for i, u := range e.Users {
		p := fmt.Sprintf("mqtt.embedded.users[%d]", i)
		switch {
		case u.Username == "":
			bad(p+".username", "is required")
		case seen[u.Username]:
			bad(p+".username", "%q is listed twice", u.Username)
		}
		seen[u.Username] = true
		if u.Password == "" {
			bad(p+".password", "is required (an account without a password is an anonymous one)")
		}
		for j, cmd := range u.Commands {
			if !oneOf(cmd, "threshold", "sample") {
				bad(fmt.Sprintf("%s.commands[%d]", p, j), "must be threshold or sample, not %q", cmd)
			}
		}
	}
	if (e.TLS.Cert == "") != (e.TLS.Key == "") {
		bad("mqtt.embedded.tls", "cert and key must be set together")
	}
	for _, f := range []struct{ path, file string }{{"mqtt.embedded.tls.cert", e.TLS.Cert}, {"mqtt.embedded.tls.key", e.TLS.Key}} {
		if f.file != "" {
			if _, err := os.Stat(f.file); err != nil {
				bad(f.path, "cannot read %s: %v", f.file, errors.Unwrap(err))
			}
		}
	}
	for i := range c.Cameras {
		cam := &c.Cameras[i]
		p := fmt.Sprintf("cameras[%d]", i)
		if r := cam.ThresholdRange; r != nil {
			switch {
			case len(r) != 2:
				bad(p+".threshold_range", "must be [min, max], not %d values", len(r))
			case !finite(r[0]) || !finite(r[1]) || r[0] < 0 || r[1] <= r[0]:
				bad(p+".threshold_range", "must be finite raw scores with 0 <= min < max, not %v", r)
			}
		}
	}
	return errs
}

// CheckFiles checks what the config names on disk and can only be known there: the pinned bundle must be a
// directory holding a bundle.json. `vlmdiff run` (and --check-config) refuse to start otherwise, rather than
// waiting for a model that the configuration pins to a path that is not there.
func (c *Config) CheckFiles() error {
	if b := c.Models.Bundle; b != "" {
		if _, err := os.Stat(filepath.Join(b, "bundle.json")); err != nil {
			if st, serr := os.Stat(b); serr != nil {
				return fmt.Errorf("models.bundle: %s: %w", b, errors.Unwrap(serr))
			} else if !st.IsDir() {
				return fmt.Errorf("models.bundle: %s is not a directory", b)
			}
			return fmt.Errorf("models.bundle: %s holds no bundle.json: %w", b, errors.Unwrap(err))
		}
	}
	return nil
}

// checkListen refuses a listen address that can never be bound: a port outside 0..65535 or a host that is
// neither an IP address nor a host name (999.1.1.1 is neither: it looks like IPv4 but is not one).
func checkListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("must be host:port: %v", err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("port %q must be a number 0..65535", port)
	}
	if host == "" || net.ParseIP(host) != nil {
		return nil
	}
	if looksNumeric(host) {
		return fmt.Errorf("host %q is not an IP address", host)
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || len(label) > 63 || strings.Trim(label, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" {
			return fmt.Errorf("host %q is neither an IP address nor a host name", host)
		}
	}
	return nil
}

// looksNumeric reports a dotted all-digit host, which no resolver treats as a name.
func looksNumeric(host string) bool {
	return strings.Trim(host, "0123456789.") == ""
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// IsLoopback reports whether a listen address binds only the loopback interface.
func IsLoopback(addr string) bool {
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
