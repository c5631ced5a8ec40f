package agent_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vlmdiff/edge/agent/internal/mqtttest"
)

// TestSamplesExportWhileRunning: with the daemon running (and so holding the store's lock), `vlmdiff samples
// export --store` fails naming --api; `--api` exports every collected sample into the training layout, and
// with http.auth on needs the token; `--delete` removes exactly what was exported.
func TestSamplesExportWhileRunning(t *testing.T) {
	if binary == "" {
		t.Fatal("vlmdiff binary was not built (see TestMain output)")
	}
	e := newEnv(t, false)
	copyBundleSteps(t, filepath.Join(e.modelsDir, "fixture-1"), "1", time.Now().Add(-time.Hour), false, 2)
	writeImages(t, e.folder, 1, 3)
	httpAddr := freeAddr(t)
	sub := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/line/result")
	startAgent(t, e.config(t, `store: {samples: {every: 1, min_free_disk: 1MiB}}
http:
  listen: `+httpAddr+`
  auth: {tokens: [{name: trainer, token: `+plcToken+`}]}
`))
	sub.WaitN(e.prefix+"/line/result", 3, wait)
	api := "http://" + httpAddr
	waitSamples(t, api, 3)

	run := func(env []string, args ...string) (int, string) {
		cmd := exec.Command(binary, append([]string{"samples", "export"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		code int
		has  string
	}{
		{"store locked", nil, []string{"--store", filepath.Join(e.dir, "vlmdiff.db"), "--out", filepath.Join(dir, "a")}, 1, "--api http://127.0.0.1:8080"},
		{"no token", []string{"VLMDIFF_API_TOKEN="}, []string{"--api", api, "--out", filepath.Join(dir, "b")}, 1, "401 Unauthorized"},
		{"wrong token", nil, []string{"--api", api, "--token", strings.Repeat("z", 30), "--out", filepath.Join(dir, "c")}, 1, "unknown bearer token"},
		{"token", []string{"VLMDIFF_API_TOKEN=" + plcToken}, []string{"--api", api, "--out", filepath.Join(dir, "d")}, 0, "exported 3 samples"},
		{"token and delete", nil, []string{"--api", api + "/", "--token", plcToken, "--out", filepath.Join(dir, "e"), "--delete"}, 0, "exported 3 samples"},
	} {
		code, out := run(tc.env, tc.args...)
		if code != tc.code || !strings.Contains(out, tc.has) {
			t.Errorf("%s: exit %d %q; want %d with %q", tc.name, code, out, tc.code, tc.has)
		}
	}
	for _, d := range []string{"d", "e"} {
		checkExport(t, filepath.Join(dir, d), 3)
	}
	waitSamples(t, api, 0)
}

// waitSamples waits until /api/stats counts n stored samples.
func waitSamples(t *testing.T, api string, n int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	h := newHTTPClient(t, api)
	for {
		var st struct {
			Store struct {
				Samples int `json:"samples"`
			} `json:"store"`
		}
		_, body := h.do("GET", "/api/stats", "", nil, nil)
		if json.Unmarshal(body, &st) == nil && st.Store.Samples == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the store never held %d samples", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkExport: n lines in samples.jsonl, each naming a PNG that is there.
func checkExport(t *testing.T, dir string, n int) {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "samples.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines++
		var l struct{ File, Camera string }
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil || l.Camera != "line" {
			t.Errorf("%s: line %q (%v)", dir, sc.Text(), err)
			continue
		}
		if b, err := os.ReadFile(filepath.Join(dir, l.File)); err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
			t.Errorf("%s: %s is not a PNG (%v)", dir, l.File, err)
		}
	}
	if lines != n {
		t.Errorf("%s: %d samples, want %d", dir, lines, n)
	}
}
