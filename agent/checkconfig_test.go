package agent_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckConfigStatic: --check-config refuses what it can know without starting: a pinned bundle that is
// not there, an embedded listen address that can never be bound, dir and bundle both set, and a threshold
// range that is not a range. Each names the key.
func TestCheckConfigStatic(t *testing.T) {
	if binary == "" {
		t.Fatal("vlmdiff binary was not built")
	}
	dir := t.TempDir()
	cam := "cameras: [{name: c, kind: synthetic}]\n"
	cases := []struct{ name, yaml, want string }{
		{"missing pinned bundle", "models: {bundle: " + filepath.Join(dir, "nope") + "}\n" + cam, "models.bundle: " + filepath.Join(dir, "nope")},
		{"bad embedded listen", "models: {dir: /m}\nmqtt: {listen: '999.1.1.1:99999'}\n" + cam, "mqtt.listen: port \"99999\""},
		{"bad embedded host", "models: {dir: /m}\nmqtt: {listen: '999.1.1.1:1883'}\n" + cam, "mqtt.listen: host \"999.1.1.1\" is not an IP address"},
		{"dir and bundle", "models: {dir: /m, bundle: ../models/testdata/fixture}\n" + cam, "models: set either dir"},
		{"threshold range", "models: {dir: /m}\ncameras: [{name: c, kind: synthetic, threshold_range: [2, 1]}]\n", "cameras[0].threshold_range"},
		{"roi polygon", "models: {dir: /m}\ncameras: [{name: gate, kind: synthetic, roi: {mask: [[0, 0], [10, 10]]}}]\n", `cameras[0].roi.mask: a polygon needs at least 3 points [x, y], has 2 (camera "gate")`},
		{"roi non-finite", "models: {dir: /m}\ncameras: [{name: gate, kind: synthetic, roi: {mask: [[0, 0], [10, .nan], [0, 10]]}}]\n", "cameras[0].roi.mask[1]: coordinates must be finite"},
		{"embedded user without password", "models: {dir: /m}\nmqtt: {embedded: {users: [{username: plc}]}}\n" + cam, "mqtt.embedded.users[0].password"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(binary, "run", "--config", path, "--check-config").CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
				t.Errorf("err %v output %q; want exit 2 containing %q", err, out, tc.want)
			}
		})
	}
	ok := filepath.Join(dir, "ok.yaml")
	os.WriteFile(ok, []byte("models: {bundle: ../models/testdata/fixture}\nmqtt: {listen: '127.0.0.1:0'}\n"+cam), 0o644)
	if out, err := exec.Command(binary, "run", "--config", ok, "--check-config").CombinedOutput(); err != nil {
		t.Errorf("valid config refused: %v %s", err, out)
	}
}
