package agent_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vlmdiff/edge/agent/internal/mqtttest"
	"github.com/vlmdiff/edge/agent/store"
)

// binary is the vlmdiff binary built once by TestMain for the subprocess tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vlmdiff-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "vlmdiff")
	build := exec.Command("go", "build", "-o", binary, "./cmd/vlmdiff")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building vlmdiff for the subprocess tests:", err)
		binary = ""
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type proc struct {
	cmd *exec.Cmd
	out *bytes.Buffer
}

func startProc(t *testing.T, cfgPath string, env ...string) *proc {
	t.Helper()
	if binary == "" {
		t.Fatal("vlmdiff binary was not built (see TestMain output)")
	}
	p := &proc{out: &bytes.Buffer{}}
	p.cmd = exec.Command(binary, "run", "--config", cfgPath)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Dir = ".."
	p.cmd.Env = append(os.Environ(), env...)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	})
	return p
}

// TestKill9Restart: the daemon as a subprocess is killed with SIGKILL mid-stream. Subscribers see the retained
// Last Will `offline`; a restart publishes `online` and finishes the folder with no result lost and none
// scored twice (seq continues without a repeat; every file has exactly one result).
func TestKill9Restart(t *testing.T) {
	initORT(t)
	e := newEnv(t, false)
	copyBundleSteps(t, filepath.Join(e.modelsDir, "fixture-1"), "1", time.Now(), false, 2)
	cfgPath := filepath.Join(e.dir, "agent.yaml")
	if err := os.WriteFile(cfgPath, []byte(e.yaml("")), 0o644); err != nil {
		t.Fatal(err)
	}
	const n = 30
	names := writeImages(t, e.folder, 1, n)
	sub := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/#")

	p := startProc(t, cfgPath)
	sub.WaitN(e.prefix+"/line/result", 8, wait)
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
	availableIs := func(want string) {
		t.Helper()
		sub.WaitFor(e.prefix+"/available", wait, func(m []mqtttest.Message) bool {
			return len(m) > 0 && string(m[len(m)-1].Payload) == want
		})
	}
	availableIs("offline")
	// A fresh subscriber sees the Last Will retained.
	late := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/available")
	if m := late.WaitN(e.prefix+"/available", 1, wait); string(m[0].Payload) != "offline" || !m[0].Retained {
		t.Errorf("retained available after kill -9: %q retained=%v", m[0].Payload, m[0].Retained)
	}

	// The restarted daemon runs under a systemd-like notify socket.
	sockPath := filepath.Join(e.dir, "notify.sock")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	notes := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := sock.Read(buf)
			if err != nil {
				close(notes)
				return
			}
			notes <- string(buf[:n])
		}
	}()
	waitNote := func(want string) {
		t.Helper()
		deadline := time.After(wait)
		for {
			select {
			case n, ok := <-notes:
				if !ok {
					t.Fatalf("notify socket closed before %q", want)
				}
				if strings.Contains(n, want) {
					return
				}
			case <-deadline:
				t.Fatalf("no %q on the notify socket", want)
			}
		}
	}
	p2 := startProc(t, cfgPath, "NOTIFY_SOCKET="+sockPath)
	availableIs("online")
	waitNote("READY=1")
	sub.WaitFor(e.prefix+"/line/result", wait, func(m []mqtttest.Message) bool {
		s, _ := firstSeen(decodeResults(t, m))
		return len(s) >= n
	})
	if err := p2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p2.cmd.Wait(); err != nil {
		t.Errorf("daemon exit after SIGTERM: %v\n%s", err, p2.out)
	}
	availableIs("offline")
	// A clean stop says why on the retained reason topic; HA's availability only reads online/offline.
	reason := mqtttest.Subscribe(t, e.broker.URL, mqtttest.SubOptions{QoS: 1}, e.prefix+"/available/reason")
	if m := reason.WaitN(e.prefix+"/available/reason", 1, wait); !m[0].Retained ||
		!bytes.Contains(m[0].Payload, []byte(`"state":"offline"`)) || !bytes.Contains(m[0].Payload, []byte("terminated signal received")) {
		t.Errorf("available/reason after SIGTERM: %s (retained %v)", m[0].Payload, m[0].Retained)
	}
	waitNote("STOPPING=1")

	// MQTT: seqs 1..n, each once (a QoS-1 redelivery repeats the same payload and is not a second result).
	rs := decodeResults(t, sub.Messages(e.prefix+"/line/result"))
	seqs, repeats := firstSeen(rs)
	sorted := append([]uint64(nil), seqs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	for i, s := range sorted {
		if s != uint64(i+1) {
			t.Fatalf("seqs across the restart are not 1..%d: %v", n, sorted)
		}
	}
	if len(seqs) != n {
		t.Fatalf("%d distinct results, want %d (one per file)", len(seqs), n)
	}

	// Store: exactly one record per file.
	st, err := store.Open(store.Options{Path: filepath.Join(e.dir, "vlmdiff.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	recs, err := st.Latest("line", 10*n)
	if err != nil {
		t.Fatal(err)
	}
	perFile := map[string]int{}
	for _, r := range recs {
		perFile[filepath.Base(r.Origin)]++
	}
	for _, name := range names {
		if perFile[name] != 1 {
			t.Errorf("file %s has %d results, want exactly 1", name, perFile[name])
		}
	}
	if len(recs) != n {
		t.Errorf("store holds %d results, want %d", len(recs), n)
	}
	left, _ := filepath.Glob(filepath.Join(e.folder, "*.png"))
	if len(left) != 0 {
		t.Errorf("files left unprocessed: %v", left)
	}
	t.Logf("kill -9 after %d+ results; after restart %d results for %d files, %d QoS-1 redeliveries", 8, len(seqs), n, repeats)
}

// TestCheckConfig: `vlmdiff run --check-config` accepts a good config and refuses a bad one naming the field.
func TestCheckConfig(t *testing.T) {
	if binary == "" {
		t.Fatal("vlmdiff binary was not built")
	}
	dir := t.TempDir()
	cases := []struct {
		name, yaml string
		code       int
		want       string
	}{
		{"valid", "models: {dir: /m}\ncameras: [{name: c, kind: synthetic}]\n", 0, "ok"},
		{"unknown field", "models: {dir: /m}\ncameras: [{name: c, kind: synthetic, trheshold: 1}]\n", 2, "cameras[0].trheshold: unknown field"},
		{"bad url", "models: {dir: /m}\ncameras: [{name: c, kind: url, url: 'ftp://x'}]\n", 2, "cameras[0].url: must be rtsp://"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".yaml")
			os.WriteFile(path, []byte(tc.yaml), 0o644)
			out, err := exec.Command(binary, "run", "--config", path, "--check-config").CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.code || !strings.Contains(string(out), tc.want) {
				t.Errorf("exit %d output %q; want exit %d containing %q", code, out, tc.code, tc.want)
			}
		})
	}
}
