package dashboard_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"io/fs"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/vlmdiff/edge/agent/dashboard"
)

func TestHandlerRoutes(t *testing.T) {
	srv := httptest.NewServer(dashboard.Handler())
	defer srv.Close()
	for _, c := range []struct {
		method, path string
		code         int
		ctype, body  string
	}{
		{"GET", "/", 200, "text/html", `<script src="/ui/app.js"`},
		{"HEAD", "/", 200, "text/html", ""},
		{"GET", "/index.html", 200, "text/html", "<title>vlmdiff edge</title>"},
		{"GET", "/ui/app.js", 200, "javascript", "/api/stats"},
		{"GET", "/ui/style.css", 200, "text/css", "--ng:"},
		{"GET", "/ui/index.html", 404, "", ""},
		{"GET", "/ui/nope.js", 404, "", ""},
		{"GET", "/ui/../dashboard.go", 404, "", ""},
		{"GET", "/api/unknown", 404, "", ""},
		{"GET", "/favicon.ico", 404, "", ""},
		{"POST", "/", 405, "", ""},
	} {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, resp.StatusCode, c.code)
			continue
		}
		if c.code != 200 {
			continue
		}
		if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, c.ctype) {
			t.Errorf("%s %s: content type %q, want %q", c.method, c.path, ct, c.ctype)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("%s %s: CSP %q", c.method, c.path, csp)
		}
		if !strings.Contains(string(body), c.body) {
			t.Errorf("%s %s: body lacks %q", c.method, c.path, c.body)
		}
	}
}

// TestAssetsSelfContained: nothing in the page points outside the daemon (no CDN, no web fonts).
func TestAssetsSelfContained(t *testing.T) {
	err := fs.WalkDir(os.DirFS("assets"), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(filepath.Join("assets", p))
		if err != nil {
			return err
		}
		s := strings.ReplaceAll(string(data), "http://www.w3.org/2000/svg", "")
		for _, bad := range []string{"http://", "https://", "//cdn", "@import", "@font-face", "url("} {
			if strings.Contains(s, bad) {
				t.Errorf("%s contains %q: assets must be self-contained", p, bad)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// need skips when a browser-test dependency is missing, except in CI (make test installs them all).
func need(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s: %v (CI=true: .ci/deps.sh installs it)", what, err)
	}
	t.Skipf("%s missing (%v): run .ci/deps.sh", what, err)
}

func repoRoot(t *testing.T) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		up := filepath.Dir(dir)
		if up == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = up
	}
}

func existing(paths ...string) (string, error) {
	for _, p := range paths {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("not found in " + strings.Join(paths, ", "))
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// copyFixture copies the fixture bundle with 2 DDIM steps (the manifest is not checksummed) so the test sees
// results quickly on a small CPU.
func copyFixture(t *testing.T, src, dst string) {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if e.Name() == "bundle.json" {
			var m map[string]any
			if err := json.Unmarshal(data, &m); err != nil {
				t.Fatal(err)
			}
			m["diffusion"].(map[string]any)["ddim_steps"] = 2
			data, _ = json.MarshalIndent(m, "", "  ")
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDashboardInBrowser runs the real daemon (built from ./agent/cmd/vlmdiff) on a synthetic camera with the
// fixture bundle, the embedded broker and HTTP on free ports, and drives the page in headless Chromium
// (testdata/browser_test.mjs): a heatmap and an NG event must show, the NG modal must open, a refused API
// must show the disconnected badge and the page must recover. Then the operator logs in through the form
// (http.auth), changes the camera's threshold and marks the newest NG as a false alarm; the daemon must then
// run with that threshold and hold the sample. The screenshot must not be blank and must show the OK and NG
// colours; the page must log no console error. VLMDIFF_DASHBOARD_OUT=DIR keeps the screenshots.
func TestDashboardInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no browser test")
	}
	root := repoRoot(t)
	node, err := exec.LookPath("node")
	need(t, "node", err)
	chromium, err := existing(os.Getenv("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser")
	need(t, "chromium", err)
	pw, err := existing(os.Getenv("PLAYWRIGHT_CORE"), filepath.Join(root, ".deps/node/node_modules/playwright-core"))
	need(t, "playwright-core", err)
	ort, err := existing(os.Getenv("ONNXRUNTIME_LIB"), filepath.Join(root, ".deps/lib/libonnxruntime.so"))
	need(t, "ONNX Runtime", err)

	dir := t.TempDir()
	bin := filepath.Join(dir, "vlmdiff")
	build := exec.Command("go", "build", "-o", bin, "./agent/cmd/vlmdiff")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	copyFixture(t, filepath.Join(root, "models/testdata/fixture"), filepath.Join(dir, "models", "fixture"))

	// The fixture has random weights: plain synthetic frames score about 0.28-0.29 raw, frames with a synthetic
	// defect mostly 0.30-0.47. A threshold override of 0.30 makes some frames NG and most OK.
	httpAddr, mqttAddr := freePort(t), freePort(t)
	const user, password, newThreshold = "operator", "dashboard-test-pw", 0.31
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	cfg := `agent:
  name: dashtest
  data_dir: ` + filepath.Join(dir, "data") + `
  log_level: info
  shutdown_timeout: 2s
models:
  bundle: ` + filepath.Join(dir, "models", "fixture") + `
  onnxruntime: ` + ort + `
  threads: 1
cameras:
  - name: line-1
    kind: synthetic
    fps: 3
    synthetic:
      seed: 7
      defect_rate: 0.5
    threshold: 0.30
mqtt:
  broker: ""
  listen: ` + mqttAddr + `
  prefix: vlmdiff/dashtest
  stats_interval: 2s
evidence:
  enabled: true
http:
  listen: ` + httpAddr + `
  auth:
    users: [{username: ` + user + `, password_hash: "` + string(hash) + `"}]
`
	cfgPath := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	daemon := exec.Command(bin, "run", "--config", cfgPath)
	daemon.Dir = dir
	daemon.Stdout, daemon.Stderr = &logs, &logs
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- daemon.Wait() }()
	defer func() {
		_ = daemon.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = daemon.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs.String())
		}
	}()

	base := "http://" + httpAddr
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(45 * time.Second)
	for {
		resp, err := client.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("daemon exited before ready: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon not ready: %v\n%s", err, logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}

	// The API's routes keep precedence over the dashboard mounted at "/".
	get := func(path string) (int, string, string) {
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	if code, ct, body := get("/"); code != 200 || !strings.HasPrefix(ct, "text/html") || !strings.Contains(body, "/ui/app.js") {
		t.Fatalf("GET /: %d %s: the dashboard is not mounted\n%.300s", code, ct, body)
	}
	if code, ct, _ := get("/api/stats"); code != 200 || ct != "application/json" {
		t.Errorf("GET /api/stats: %d %s", code, ct)
	}

	out := t.TempDir()
	if keep := os.Getenv("VLMDIFF_DASHBOARD_OUT"); keep != "" {
		out = keep
		if err := os.MkdirAll(out, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	script := filepath.Join(root, "agent/dashboard/testdata/browser_test.mjs")
	cmd := exec.CommandContext(ctx, node, script, base+"/", out)
	cmd.Env = append(os.Environ(), "PLAYWRIGHT_CORE="+pw, "CHROMIUM="+chromium,
		"DASH_USER="+user, "DASH_PASSWORD="+password, fmt.Sprintf("DASH_THRESHOLD=%g", newThreshold))
	nodeOut, nodeErr := cmd.CombinedOutput()
	t.Logf("browser_test.mjs:\n%s", nodeOut)
	var res struct {
		ConsoleErrors []string       `json:"console_errors"`
		PageErrors    []string       `json:"page_errors"`
		External      []string       `json:"external_requests"`
		Failures      []string       `json:"failures"`
		Checks        map[string]any `json:"checks"`
	}
	data, err := os.ReadFile(filepath.Join(out, "result.json"))
	if err != nil {
		t.Fatalf("no result.json from the browser script (%v): %v", nodeErr, err)
	}
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatal(err)
	}
	if nodeErr != nil || len(res.Failures) > 0 {
		t.Errorf("browser checks failed (%v):\n  %s", nodeErr, strings.Join(res.Failures, "\n  "))
	}
	if len(res.ConsoleErrors) > 0 || len(res.PageErrors) > 0 {
		t.Errorf("console errors %q, page errors %q", res.ConsoleErrors, res.PageErrors)
	}
	if len(res.External) > 0 {
		t.Errorf("the page requested URLs outside the daemon: %q", res.External)
	}
	if n, _ := res.Checks["ng_rows"].(float64); n < 1 {
		t.Errorf("NG rows in the page: %v", res.Checks["ng_rows"])
	}
	if cams, _ := res.Checks["cameras"].([]any); len(cams) != 1 || cams[0] != "line-1" {
		t.Errorf("camera cards %v, want [line-1]", res.Checks["cameras"])
	}

	checkScreenshot(t, filepath.Join(out, "dashboard.png"))
	checkOperated(t, get, newThreshold)

	// The threshold choice is what makes the page meaningful: both verdicts in the history.
	_, _, hist := get("/api/history?limit=500")
	var pts []struct{ Verdict string }
	if err := json.Unmarshal([]byte(hist), &pts); err != nil {
		t.Fatal(err)
	}
	verdicts := map[string]int{}
	for _, p := range pts {
		verdicts[p.Verdict]++
	}
	if verdicts["OK"] == 0 || verdicts["NG"] == 0 {
		t.Errorf("history verdicts %v: the threshold override should give both OK and NG", verdicts)
	}
	t.Logf("history verdicts %v; checks %v", verdicts, res.Checks)
}

// checkOperated reads back, through the API, what the operator did in the browser: the camera runs with
// the threshold set there (an override), and the false alarm is a stored sample.
func checkOperated(t *testing.T, get func(string) (int, string, string), threshold float64) {
	t.Helper()
	_, _, body := get("/api/stats")
	var st struct {
		Cameras []struct {
			Name            string  `json:"name"`
			Threshold       float64 `json:"threshold"`
			ThresholdSource string  `json:"threshold_source"`
		} `json:"cameras"`
		Store struct {
			Samples int `json:"samples"`
		} `json:"store"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil || len(st.Cameras) == 0 {
		t.Fatalf("/api/stats: %v %.300s", err, body)
	}
	if c := st.Cameras[0]; c.Threshold != threshold || c.ThresholdSource != "override" {
		t.Errorf("camera %s runs with threshold %v (%s) after the browser set %v", c.Name, c.Threshold, c.ThresholdSource, threshold)
	}
	if st.Store.Samples < 1 {
		t.Errorf("store holds %d samples after the false alarm", st.Store.Samples)
	}
}

// checkScreenshot decodes the PNG and requires a real picture: the expected size, many distinct colours,
// luminance variance, and pixels in the dashboard's OK green and NG red.
func checkScreenshot(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b := img.Bounds()
	if b.Dx() != 1920 || b.Dy() != 1080 {
		t.Errorf("screenshot %dx%d, want 1920x1080", b.Dx(), b.Dy())
	}
	colours := map[[3]uint8]bool{}
	var sum, sum2 float64
	var green, red, n int
	near := func(r, g, bl uint8, tr, tg, tb int) bool {
		return abs(int(r)-tr) < 40 && abs(int(g)-tg) < 40 && abs(int(bl)-tb) < 40
	}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl := rgb8(img, x, y)
			colours[[3]uint8{r, g, bl}] = true
			l := 0.299*float64(r) + 0.587*float64(g) + 0.114*float64(bl)
			sum += l
			sum2 += l * l
			n++
			if near(r, g, bl, 0x22, 0xc5, 0x5e) {
				green++
			}
			if near(r, g, bl, 0xff, 0x47, 0x57) {
				red++
			}
		}
	}
	mean := sum / float64(n)
	std := math.Sqrt(max(0, sum2/float64(n)-mean*mean))
	t.Logf("screenshot: %d colours, luminance mean %.1f std %.1f, OK-green px %d, NG-red px %d", len(colours), mean, std, green, red)
	if len(colours) < 500 {
		t.Errorf("screenshot has %d distinct colours: blank or nearly so", len(colours))
	}
	if std < 10 {
		t.Errorf("screenshot luminance std %.1f: blank or nearly so", std)
	}
	if green < 50 || red < 50 {
		t.Errorf("screenshot lacks the OK/NG colours: %d green, %d red pixels", green, red)
	}
}

func rgb8(img image.Image, x, y int) (uint8, uint8, uint8) {
	r, g, b, _ := img.At(x, y).RGBA()
	return uint8(r >> 8), uint8(g >> 8), uint8(b >> 8)
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}
