package capture

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vlmdiff/edge/imagelimit"
)

// A PNG whose header claims 60000x60000 used to abort the process inside OpenCV (and again on every restart,
// since the file stayed). Now it is refused from its header, moved to failed/ with its reason, and the
// camera goes on with the next file.
func TestFolderRefusesHugeHeaderAndGoesOn(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a_huge.png"), imagelimit.HugePNGHeader(60000, 60000))
	old := time.Now().Add(-time.Minute)
	if err := os.Chtimes(filepath.Join(dir, "a_huge.png"), old, old); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "b_good.png"), pngBytes(t, 8, 8, idColour(5)))
	cfg := folderCfg(dir)
	cfg.Folder.Settle = 30 * time.Millisecond
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out, events := make(chan Frame), make(chan Event, 64)
	run(t, src, out, events)
	ev := waitEvent(t, events, func(e Event) bool { return e.Transient && strings.HasSuffix(e.File, "a_huge.png") })
	if !strings.Contains(ev.Reason, "60000x60000") || !strings.Contains(ev.Reason, "refused") {
		t.Errorf("reason %q: want the claimed size and 'refused'", ev.Reason)
	}
	f := recv(t, out)
	if id := idOf(t, f); id != 5 {
		t.Fatalf("got file %d, want the good one (5)", id)
	}
	f.Ack(true)
	failed := filepath.Join(dir, "failed", "a_huge.png")
	eventually(t, "huge file in failed/ with its reason", func() bool { return exists(failed + ".reason.txt") })
	reason, _ := os.ReadFile(failed + ".reason.txt")
	if !strings.Contains(string(reason), "60000x60000") {
		t.Errorf("reason file says %q", reason)
	}
	eventually(t, "1 refused, 1 frame", func() bool { st := src.Stats(); return st.Refused == 1 && st.Frames == 1 })
}

// bombEnv names the file the helper process below feeds to a folder camera.
const bombEnv = "VLMDIFF_TEST_BOMB_DIR"

// TestBombHelperProcess is not a test on its own: TestFolderBombRSSBounded runs the test binary again with
// bombEnv set, so that the child's peak RSS measures the folder camera meeting the bomb and nothing else.
func TestBombHelperProcess(t *testing.T) {
	dir := os.Getenv(bombEnv)
	if dir == "" {
		t.Skip("helper process for TestFolderBombRSSBounded")
	}
	cfg := folderCfg(dir)
	cfg.Folder.Settle = 30 * time.Millisecond
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out, events := make(chan Frame), make(chan Event, 64)
	run(t, src, out, events)
	waitEvent(t, events, func(e Event) bool { return e.Transient && strings.HasSuffix(e.File, "bomb.png") })
	f := recv(t, out) // the camera is still up: the next file comes through
	f.Ack(true)
}

// A 20000x20000 grey PNG of a few hundred KB used to be decoded (5.3 GB peak RSS). The child process must
// stay far below the 400 MB that even the grey pixels alone would take.
func TestFolderBombRSSBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 20000x20000 PNG")
	}
	dir := t.TempDir()
	var b bytes.Buffer
	if err := imagelimit.WriteGreyPNGBomb(&b, 20000, 20000); err != nil {
		t.Fatal(err)
	}
	t.Logf("bomb: %d bytes for 20000x20000 pixels", b.Len())
	writeFile(t, filepath.Join(dir, "bomb.png"), b.Bytes())
	old := time.Now().Add(-time.Minute)
	if err := os.Chtimes(filepath.Join(dir, "bomb.png"), old, old); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "next.png"), pngBytes(t, 8, 8, idColour(1)))

	cmd := exec.Command(os.Args[0], "-test.run=^TestBombHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), bombEnv+"="+dir)
	outp, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper process: %v\n%s", err, outp)
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		t.Skip("no rusage on this platform")
	}
	peakMB := float64(ru.Maxrss) / 1024 // Linux reports KiB
	t.Logf("helper peak RSS %.0f MB", peakMB)
	const boundMB = 300
	if peakMB > boundMB {
		t.Errorf("peak RSS %.0f MB while refusing the bomb, want under %d MB", peakMB, boundMB)
	}
	if !exists(filepath.Join(dir, "failed", "bomb.png")) || !exists(filepath.Join(dir, "failed", "bomb.png.reason.txt")) {
		t.Errorf("bomb not in failed/ with its reason: %v", listDir(t, filepath.Join(dir, "failed")))
	}
}

// Symlinks and directories that carry an image name are reported once each, counted, and left alone.
func TestFolderIgnoresNonRegularOnce(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "elsewhere.png")
	writeFile(t, target, pngBytes(t, 8, 8, idColour(1)))
	if err := os.Symlink(target, filepath.Join(dir, "link.png")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "dir.png"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := folderCfg(dir)
	cfg.Folder.Rescan = 20 * time.Millisecond // many rescans: still one report each
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out, events := make(chan Frame), make(chan Event, 64)
	run(t, src, out, events)
	got := map[string]string{}
	for len(got) < 2 {
		ev := waitEvent(t, events, func(e Event) bool { return e.Transient })
		got[filepath.Base(ev.File)] = ev.Reason
	}
	if !strings.Contains(got["link.png"], "symbolic link") || !strings.Contains(got["dir.png"], "directory") {
		t.Errorf("reports %v", got)
	}
	time.Sleep(200 * time.Millisecond) // ten rescans
	if st := src.Stats(); st.Ignored != 2 || st.Frames != 0 {
		t.Errorf("stats %+v: want 2 ignored (once each), no frames", st)
	}
	writeFile(t, filepath.Join(dir, "real.png"), pngBytes(t, 8, 8, idColour(3)))
	f := recv(t, out)
	if id := idOf(t, f); id != 3 {
		t.Errorf("got %d, want 3", id)
	}
	f.Ack(true)
	if !exists(filepath.Join(dir, "link.png")) || !exists(target) {
		t.Error("the symlink or its target was touched")
	}
}

// A camera that writes part.png three times (new content each time) gets three frames with three different
// origin identities; the very same file read again keeps its identity.
func TestFolderNameReuseGivesNewIdentity(t *testing.T) {
	dir := t.TempDir()
	cfg := folderCfg(dir)
	cfg.Folder.Settle = 30 * time.Millisecond
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan Frame)
	run(t, src, out, nil)
	ids := map[string]bool{}
	for i := 1; i <= 3; i++ {
		writeFile(t, filepath.Join(dir, "part.png"), pngBytes(t, 8, 8, idColour(i)))
		f := recv(t, out)
		if id := idOf(t, f); id != i {
			t.Fatalf("write %d: got file %d", i, id)
		}
		if f.OriginID == "" || ids[f.OriginID] {
			t.Fatalf("write %d: origin id %q empty or seen before", i, f.OriginID)
		}
		ids[f.OriginID] = true
		f.Ack(true)
		eventually(t, "part.png moved", func() bool { return !exists(filepath.Join(dir, "part.png")) })
	}
	data := pngBytes(t, 8, 8, idColour(9))
	p := filepath.Join(t.TempDir(), "same.png")
	writeFile(t, p, data)
	if a, b := fileIdentity(p, data), fileIdentity(p, data); a != b {
		t.Errorf("same file, two identities: %s vs %s", a, b)
	}
}

// A missing video file reports "no such file"; replaced by garbage, its reason changes to say so (it used to
// keep the old reason), and every offline reason says when the next attempt comes.
func TestVideoReasonFollowsTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "line.avi")
	src, err := New(Config{Name: "vid", Kind: KindFile, Path: path, RetryMin: 20 * time.Millisecond,
		RetryMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	out, events := make(chan Frame), make(chan Event, 64)
	run(t, src, out, events)
	ev := waitEvent(t, events, func(e Event) bool { return !e.Transient })
	if ev.State != StateOffline || !strings.Contains(ev.Reason, "no such file") || !strings.Contains(ev.Reason, "retry in") {
		t.Fatalf("first event %+v: want offline, no such file, retry in", ev)
	}
	writeFile(t, path, bytes.Repeat([]byte("garbage "), 512))
	ev = waitEvent(t, events, func(e Event) bool { return !e.Transient && !strings.Contains(e.Reason, "no such file") })
	if ev.State != StateOffline || !strings.Contains(ev.Reason, "not a readable video") {
		t.Fatalf("after garbage: %+v, want offline 'not a readable video'", ev)
	}
}

// A camera that writes the next part.png while the previous one is still being scored (or between its move
// and the bookkeeping after it) gets both scored: the new file is neither moved away unscored as if it were the
// old one, nor dropped because its create event arrived while the name was in flight.
func TestFolderNameReusedWhileInFlight(t *testing.T) {
	dir := t.TempDir()
	cfg := folderCfg(dir)
	cfg.Folder.Settle = 30 * time.Millisecond
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan Frame)
	run(t, src, out, nil)
	writeFile(t, filepath.Join(dir, "part.png"), pngBytes(t, 8, 8, idColour(1)))
	first := recv(t, out)
	if id := idOf(t, first); id != 1 {
		t.Fatalf("got file %d, want 1", id)
	}
	// Rewritten in place while frame 1 is in flight; let its events arrive first.
	time.Sleep(5 * time.Millisecond) // a different modification time on coarse file systems
	writeFile(t, filepath.Join(dir, "part.png"), pngBytes(t, 8, 8, idColour(2)))
	time.Sleep(100 * time.Millisecond)
	first.Ack(true)
	second := recv(t, out)
	if id := idOf(t, second); id != 2 {
		t.Fatalf("after the rewrite: got file %d, want 2", id)
	}
	second.Ack(true)
	eventually(t, "part.png moved", func() bool { return !exists(filepath.Join(dir, "part.png")) })
	got, _ := filepath.Glob(filepath.Join(dir, "processed", "part*.png"))
	if len(got) != 1 {
		t.Errorf("processed/ holds %v, want only the second version (the first was replaced in place)", got)
	}
}
