package config

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vlmdiff/edge/capture"
)

// Source is a camera's capture settings: capture.Config, inlined into the camera's YAML entry.
type Source = capture.Config

// CameraName is the camera's name.
func (c *Camera) CameraName() string { return c.Source.Name }

// validateSource checks the capture fields with capture's own rules (so the daemon and capture agree) plus the
// URL forms the daemon supports. Errors read "field: reason"; the caller prefixes the camera's path. The name
// is checked by the caller.
func validateSource(s *Source) error {
	var errs []error
	if err := s.Validate(); err != nil {
		var ce *capture.ConfigError
		if errors.As(err, &ce) {
			if ce.Field != "name" {
				errs = append(errs, fmt.Errorf("%s: %s", ce.Field, ce.Reason))
			}
		} else {
			errs = append(errs, fmt.Errorf("source: %w", err))
		}
	}
	if s.Kind == capture.KindURL && strings.TrimSpace(s.URL) != "" && !validStreamURL(s.URL) {
		errs = append(errs, fmt.Errorf("url: must be rtsp://, rtsps://, http(s)://, or a GStreamer pipeline (elements joined by \" ! \"), not %q", redact(s.URL)))
	}
	return errors.Join(errs...)
}

func validStreamURL(u string) bool {
	if strings.Contains(u, " ! ") {
		return true
	}
	for _, p := range []string{"rtsp://", "rtsps://", "http://", "https://"} {
		if strings.HasPrefix(strings.ToLower(u), p) {
			return true
		}
	}
	return false
}

// redact hides a password in user:pass@host URLs, so errors and logs do not leak camera credentials.
func redact(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		rest := u[i+3:]
		if at := strings.Index(rest, "@"); at >= 0 {
			if c := strings.Index(rest[:at], ":"); c >= 0 {
				return u[:i+3] + rest[:c] + ":***" + rest[at:]
			}
		}
	}
	return u
}
