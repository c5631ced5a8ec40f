package cli

import (
	"encoding/json"
	"errors"
	"io"
	"strings"

	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/pipeline/roi"
)

// CheckConfig is the JSON `vlmdiff run --check-config --json` prints: for provisioning tools and CI that
// validate a config before they install it. Valid: ok true and the effective settings (defaults filled).
// Invalid: ok false and every problem as "field.path: reason"; the exit code is 2 either way it fails.
type CheckConfig struct {
	Config  string            `json:"config"`
	OK      bool              `json:"ok"`
	Errors  []string          `json:"errors,omitempty"`
	Summary *CheckConfigValid `json:"summary,omitempty"`
}

// CheckConfigValid summarises a valid config.
type CheckConfigValid struct {
	Agent   string        `json:"agent"`
	Models  string        `json:"models"`
	Pinned  bool          `json:"pinned"`
	Cameras []CheckCamera `json:"cameras"`
	MQTT    struct {
		Broker    string `json:"broker"`
		Embedded  bool   `json:"embedded"`
		Prefix    string `json:"prefix"`
		Discovery bool   `json:"discovery"`
	} `json:"mqtt"`
	Store string `json:"store"`
	HTTP  struct {
		Listen      string `json:"listen"`
		ScoreCamera string `json:"score_camera"`
		// AuthUsers and AuthTokens name the http.auth accounts (names only, never a hash or a token).
		AuthUsers  []string `json:"auth_users"`
		AuthTokens []string `json:"auth_tokens"`
	} `json:"http"`
}

// CheckCamera is one camera of the summary.
type CheckCamera struct {
	Name    string `json:"name"`
	Kind    string `json:"kind"`
	Class   string `json:"class,omitempty"`
	Trigger bool   `json:"trigger"`
	// ROI is the camera's region of interest as configured (absent: the whole frame).
	ROI *roi.Config `json:"roi,omitempty"`
}

func checkConfigJSON(stdout io.Writer, path string, cfg *config.Config, loadErr error) error {
	out := CheckConfig{Config: path, OK: loadErr == nil}
	if loadErr != nil {
		out.Errors = problems(loadErr)
	} else {
		v := &CheckConfigValid{Agent: cfg.Agent.Name, Models: cfg.Models.Dir, Store: cfg.Store.Path}
		if cfg.Models.Bundle != "" {
			v.Models, v.Pinned = cfg.Models.Bundle, true
		}
		for _, c := range cfg.Cameras {
			v.Cameras = append(v.Cameras, CheckCamera{Name: c.CameraName(), Kind: c.Kind, Class: c.Class, Trigger: c.Trigger, ROI: c.ROI})
		}
		v.MQTT.Broker, v.MQTT.Embedded, v.MQTT.Prefix, v.MQTT.Discovery = cfg.MQTT.Broker, cfg.Embedded(), cfg.MQTT.Prefix, cfg.MQTT.Discovery
		if v.MQTT.Embedded {
			v.MQTT.Broker = "tcp://" + cfg.MQTT.Listen
		}
		v.HTTP.Listen, v.HTTP.ScoreCamera = cfg.HTTP.Listen, cfg.HTTP.Score.Camera
		v.HTTP.AuthUsers, v.HTTP.AuthTokens = []string{}, []string{}
		for _, u := range cfg.HTTP.Auth.Users {
			v.HTTP.AuthUsers = append(v.HTTP.AuthUsers, u.Username)
		}
		for _, tk := range cfg.HTTP.Auth.Tokens {
			v.HTTP.AuthTokens = append(v.HTTP.AuthTokens, tk.Name)
		}
		out.Summary = v
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	if loadErr != nil {
		return &ExitError{Code: 2, Err: errors.New("config is not valid (the problems are in the JSON on stdout)")}
	}
	return nil
}

// problems lists a config error's parts: Validate joins one error per field; the file name prefix is kept
// on none of them (it is the JSON's config).
func problems(err error) []string {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		var out []string
		for _, e := range joined.Unwrap() {
			out = append(out, e.Error())
		}
		return out
	}
	return strings.Split(err.Error(), "\n")
}
