package agent_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/agent/internal/mqtttest"
	"github.com/vlmdiff/edge/agent/store"
)

const (
	opPassword = "line-3-operator"
	plcToken   = "plc-gateway-token-0123456789"
)

// authConfig is a daemon with http.auth: user op, token plc, a folder camera "line" whose config threshold
// (0.01, inside the fixture's allowed range [0, 6]) makes every frame NG, a trigger-mode synthetic camera
// "press", and evidence on (so older NG frames can be marked as false alarms).
func authConfig(t *testing.T, e *env, httpAddr string) *config.Config {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(opPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	yml := fmt.Sprintf(`
agent: {name: test, data_dir: %q, shutdown_timeout: 30s}
models: {dir: %q, threads: 1}
cameras:
  - {name: line, kind: folder, path: %q, folder: {settle: 50ms}, threshold: 0.01}
  - {name: press, kind: synthetic, trigger: true, synthetic: {seed: 3}, width: 64, height: 48}
mqtt: {broker: %q, prefix: %s, client_id: vlmdiff-operator-test, discovery: true}
evidence: {enabled: true}
http:
  listen: %s
  auth:
    users: [{username: op, password_hash: %q}]
    tokens: [{name: plc, token: %q}]
`, e.dir, e.modelsDir, e.folder, e.broker.URL, e.prefix, httpAddr, hash, plcToken)
	cfg, err := config.Parse(strings.NewReader(yml), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// stateRoute is one state-changing route of the table: machine routes also take the bearer token; ok is the
// status of an accepted request.
type stateRoute struct {
	name, path, ctype string
	body              []byte
	machine           bool
	ok                int
}

// httpClient is one HTTP client with its own cookie jar (a browser).
type httpClient struct {
	t    *testing.T
	c    *http.Client
	base string
	csrf string
}

func newHTTPClient(t *testing.T, base string) *httpClient {
	jar, _ := cookiejar.New(nil)
	return &httpClient{t: t, c: &http.Client{Jar: jar, Timeout: wait}, base: base}
}

func (h *httpClient) do(method, path, ctype string, body []byte, hdr map[string]string) (int, []byte) {
	h.t.Helper()
	req, err := http.NewRequest(method, h.base+path, bytes.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := h.c.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (h *httpClient) login(user, password string) int {
	h.t.Helper()
	code, body := h.do("POST", "/api/auth/login", "application/json", []byte(fmt.Sprintf(`{"username":%q,"password":%q}`, user, password)), nil)
	if code == 200 {
		var s struct {
			CSRF string `json:"csrf_token"`
		}
		if err := json.Unmarshal(body, &s); err != nil || s.CSRF == "" {
			h.t.Fatalf("login answer %s", body)
		}
		h.csrf = s.CSRF
	}
	return code
}

// TestOperatorActions runs the daemon with http.auth and checks, route by route, that every state-changing
// route is refused without a login (401), without or with a wrong CSRF token (403), from another origin
// (403), and accepted with a session and its token; the machine routes also with the bearer token, the
// operator routes never with it. Then: a threshold outside the guard's range is refused, and an NG marked
// as a false alarm is a sample that `samples export` writes with who marked it.
func TestOperatorActions(t *testing.T) {
	e := newEnv(t, false)
	copyBundleSteps(t, filepath.Join(e.modelsDir, "fixture-1"), "1", time.Now().Add(-time.Hour), false, 2)
	writeImages(t, e.folder, 1, 3)
	sub := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/#")
	ha := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, "homeassistant/number/#")
	httpAddr := freeAddr(t)
	var srv *httpapi.Server
	stop := startAgentWith(t, authConfig(t, e, httpAddr), func(s *httpapi.Server) { srv = s })
	// Home Assistant's threshold number ends with the guard's range once the model is loaded ([0, 6] for
	// the fixture's calibration), whatever it said before.
	ha.WaitFor("homeassistant/number/test/line_threshold/config", wait, func(m []mqtttest.Message) bool {
		return len(m) > 0 && bytes.Contains(m[len(m)-1].Payload, []byte(`"min":0,"max":6,`))
	})
	for _, r := range decodeLine(t, sub.WaitN(e.prefix+"/line/result", 3, wait)) {
		if r.Verdict != "NG" {
			t.Fatalf("line result %+v: the config threshold should make every frame NG", r)
		}
	}
	base := "http://" + httpAddr
	op, anon := newHTTPClient(t, base), newHTTPClient(t, base)
	if code := op.login("op", opPassword); code != 200 {
		t.Fatalf("login: %d", code)
	}
	if code := anon.login("op", "not-the-password"); code != 401 {
		t.Fatalf("login with a wrong password: %d, want 401", code)
	}

	img := solidPNG(t, 120)
	routes := []stateRoute{
		{"score", "/api/score", "image/png", img, true, 200},
		{"trigger", "/api/cameras/press/trigger", "application/json", []byte(`{"id":"P-1"}`), true, 202},
		{"threshold", "/api/cameras/line/threshold", "application/json", []byte(`{"threshold": 0.5}`), false, 200},
		{"false alarm", "/api/events/line/1/false-alarm", "", nil, false, 200},
	}
	bearer := map[string]string{"Authorization": "Bearer " + plcToken}
	checkEveryStateChangingRoute(t, anon, srv.Routes(), routes)
	for _, rt := range routes {
		ways := []struct {
			name string
			c    *httpClient
			hdr  map[string]string
			code int
		}{
			{"no login", anon, nil, 401},
			{"session without CSRF", op, nil, 403},
			{"session, wrong CSRF", op, map[string]string{"X-CSRF-Token": strings.Repeat("x", len(op.csrf))}, 403},
			{"CSRF of another session", anon, map[string]string{"X-CSRF-Token": op.csrf}, 401},
			{"cross-origin", op, map[string]string{"X-CSRF-Token": op.csrf, "Origin": "http://evil.example"}, 403},
			{"wrong bearer token", anon, map[string]string{"Authorization": "Bearer " + strings.Repeat("y", len(plcToken))}, 401},
			{"session and CSRF", op, map[string]string{"X-CSRF-Token": op.csrf}, rt.ok},
			{"bearer token", anon, bearer, map[bool]int{true: rt.ok, false: 401}[rt.machine]},
		}
		for _, w := range ways {
			code, body := w.c.do("POST", rt.path, rt.ctype, rt.body, w.hdr)
			if code != w.code {
				t.Errorf("%s, %s: %d %.200s; want %d", rt.name, w.name, code, body, w.code)
			}
		}
	}

	csrf := map[string]string{"X-CSRF-Token": op.csrf}
	for _, tc := range []struct {
		body     string
		code     int
		contains string
	}{
		{`{"threshold": 7}`, 400, "outside the allowed range [0, 6]"},
		{`{"threshold": -1}`, 400, "outside the allowed range"},
		{`{"threshold": 1e300}`, 400, "outside the allowed range"},
		{`{"threshold": "high"}`, 400, "want"},
		{`{}`, 400, "want"},
		{`{"threshold": 1, "reset": true}`, 400, "want"},
		{`{"threshold": 0.4}`, 200, `"source":"override"`},
		// Back to the config's threshold (cameras[].threshold), as an MQTT reset does.
		{`{"reset": true}`, 200, `"threshold":0.01`},
	} {
		code, body := op.do("POST", "/api/cameras/line/threshold", "application/json", []byte(tc.body), csrf)
		if code != tc.code || !bytes.Contains(bytes.ReplaceAll(body, []byte(" "), nil), []byte(strings.ReplaceAll(tc.contains, " ", ""))) {
			t.Errorf("threshold %s: %d %s; want %d with %q", tc.body, code, body, tc.code, tc.contains)
		}
	}
	if code, _ := op.do("POST", "/api/cameras/nope/threshold", "application/json", []byte(`{"threshold": 1}`), csrf); code != 404 {
		t.Errorf("threshold of an unknown camera: %d, want 404", code)
	}
	// Dashboard changes go out on threshold/state like MQTT commands.
	sub.WaitFor(e.prefix+"/line/threshold/state", wait, func(m []mqtttest.Message) bool {
		for _, x := range m {
			if bytes.Contains(x.Payload, []byte(`"threshold":0.4,`)) {
				return true
			}
		}
		return false
	})
	if code, body := op.do("POST", "/api/events/line/99/false-alarm", "", nil, csrf); code != 404 {
		t.Errorf("false alarm on a result that does not exist: %d %s, want 404", code, body)
	}
	code, body := op.do("POST", "/api/events/line/2/false-alarm", "", nil, csrf)
	if code != 200 || !bytes.Contains(body, []byte(`"marked_by": "op"`)) || !bytes.Contains(body, []byte(`"frame_from": "evidence"`)) {
		t.Errorf("false alarm on line #2: %d %s", code, body)
	}
	if code, _ := op.do("POST", "/api/auth/logout", "", nil, csrf); code != 200 {
		t.Errorf("logout: %d", code)
	}
	if code, _ := op.do("POST", "/api/cameras/line/threshold", "application/json", []byte(`{"threshold": 0.5}`), csrf); code != 401 {
		t.Errorf("threshold after logout: %d, want 401", code)
	}
	stop()
	checkFalseAlarmSamples(t, filepath.Join(e.dir, "vlmdiff.db"), map[uint64]string{1: "op", 2: "op"})
}

// checkEveryStateChangingRoute walks every route the server mounted: each one that is not a GET (and not the
// login itself) must refuse a request without credentials, and must be in the table below, so a route added
// later cannot slip past the guard or the table.
func checkEveryStateChangingRoute(t *testing.T, anon *httpClient, patterns []string, tested []stateRoute) {
	t.Helper()
	// Tested elsewhere: logout below, samples/delete in TestSamplesExportWhileRunning.
	paths := []string{"/api/auth/logout", "/api/samples/delete"}
	for _, r := range tested {
		paths = append(paths, r.path)
	}
	wildcard := regexp.MustCompile(`\{[^}]+\}`)
	n := 0
	for _, p := range patterns {
		method, route, _ := strings.Cut(p, " ")
		if method == "GET" || method == "HEAD" || route == "" || p == "POST /api/auth/login" {
			continue
		}
		n++
		path := strings.NewReplacer("{cam}", "line", "{seq}", "1").Replace(route)
		quoted := regexp.QuoteMeta(wildcard.ReplaceAllString(route, "WILDCARD"))
		re := regexp.MustCompile("^" + strings.ReplaceAll(quoted, "WILDCARD", "[^/]+") + "$")
		if method != "POST" || !slices.ContainsFunc(paths, re.MatchString) {
			t.Errorf("%s is not in this test's table of state-changing routes", p)
		}
		if code, body := anon.do(method, path, "application/json", []byte("{}"), nil); code != 401 {
			t.Errorf("%s %s without credentials: %d %.200s, want 401", method, path, code, body)
		}
	}
	if n < 6 {
		t.Errorf("only %d state-changing routes found in %q", n, patterns)
	}
}

// checkFalseAlarmSamples exports the store's samples as `vlmdiff samples export` does and checks that the
// marked results are there, as PNG frames, with their origin and who marked them.
func checkFalseAlarmSamples(t *testing.T, dbPath string, want map[uint64]string) {
	t.Helper()
	st, err := store.Open(store.Options{Path: dbPath})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	out := t.TempDir()
	if _, err := st.ExportSamples(out); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(out, "samples.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := map[uint64]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l store.ExportLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		if l.Camera != "line" || l.Origin != store.OriginFalseAlarm || l.MarkedAt.IsZero() {
			t.Errorf("sample %+v: want camera line, origin false_alarm, marked_at set", l)
			continue
		}
		png, err := os.ReadFile(filepath.Join(out, l.File))
		if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
			t.Errorf("sample %s: not a PNG (%v)", l.File, err)
		}
		got[l.Seq] = l.MarkedBy
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("false-alarm samples (seq: marked by) %v, want %v", got, want)
	}
}
