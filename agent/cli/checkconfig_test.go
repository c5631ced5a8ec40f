package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckConfigJSON: `run --check-config --json` prints the effective settings of a valid config (exit 0)
// and every problem of an invalid one as "field.path: reason" (exit 2), as JSON on stdout.
func TestCheckConfigJSON(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, yaml string
		code       int
		check      func(t *testing.T, c CheckConfig)
	}{
		{"valid", `
agent: {name: press, data_dir: ` + dir + `}
models: {dir: ` + dir + `/models}
cameras:
  - {name: top, kind: folder, path: ` + dir + `, trigger: true, class: bracket, roi: {crop: {x: 8, y: 4, width: 320, height: 200}, fit: letterbox}}
mqtt: {discovery: true}
http: {listen: "127.0.0.1:0"}
`, 0, func(t *testing.T, c CheckConfig) {
			s := c.Summary
			if !c.OK || len(c.Errors) != 0 || s == nil || s.Agent != "press" || len(s.Cameras) != 1 || !s.Cameras[0].Trigger ||
				s.Cameras[0].Class != "bracket" || !s.MQTT.Embedded || s.MQTT.Broker != "tcp://127.0.0.1:1883" ||
				s.MQTT.Prefix != "vlmdiff/press" || !s.MQTT.Discovery || s.HTTP.ScoreCamera != "api" ||
				s.Cameras[0].ROI == nil || s.Cameras[0].ROI.Crop.Width != 320 || s.Cameras[0].ROI.Fit != "letterbox" {
				t.Errorf("summary %+v / %+v", c, s)
			}
		}},
		{"invalid", `
agent: {name: press, data_dir: ` + dir + `, log_level: loud}
models: {dir: ` + dir + `/models}
cameras:
  - {name: api, kind: folder, path: ` + dir + `, trigger_timeout: 1ms, roi: {mask: [[0, 0], [1, 1]]}}
`, 2, func(t *testing.T, c CheckConfig) {
			joined := strings.Join(c.Errors, "\n")
			if c.OK || c.Summary != nil || len(c.Errors) < 4 || !strings.Contains(joined, "agent.log_level:") ||
				!strings.Contains(joined, `cameras[0].roi.mask: a polygon needs at least 3 points [x, y], has 2 (camera "api")`) ||
				!strings.Contains(joined, "cameras[0].trigger_timeout:") || !strings.Contains(joined, "http.score.camera:") {
				t.Errorf("problems %q", c.Errors)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".yaml")
			if err := os.WriteFile(p, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			code := Main(context.Background(), []string{"run", "--config", p, "--check-config", "--json"}, &out, &errb)
			var c CheckConfig
			if err := json.Unmarshal(out.Bytes(), &c); err != nil || code != tc.code || c.Config != p {
				t.Fatalf("exit %d (want %d), stdout %q: %v; stderr %q", code, tc.code, out.String(), err, errb.String())
			}
			tc.check(t, c)
		})
	}
}
