package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"image"
	_ "image/jpeg"
	_ "image/png"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gocv.io/x/gocv"

	"github.com/vlmdiff/edge/agent"
	"github.com/vlmdiff/edge/agent/config"
)

// TestPooledFramesKeepTheirPixels: a video camera's frames live in recycled memory (capture.Frame.Release).
// Every frame is kept as evidence (evidence.ok_every 1, encoded after the frame became the camera's latest),
// the dashboard's latest picture is read all the while, and the camera runs fast: each kept PNG must show its
// own frame's colour, and the latest picture the last result's. A frame recycled while it waits in the queue
// or is scored shows a later frame's colour (or its later release panics: capture counts the holders). Not
// caught: the last result's frame recycled just after its evidence is encoded (the window is microseconds, and
// the dashboard's cached JPEG hides it); the code keeps it as lastFrame until the next result replaces it.
func TestPooledFramesKeepTheirPixels(t *testing.T) {
	colours := [][3]byte{{230, 20, 20}, {20, 230, 20}, {20, 20, 230}, {230, 230, 20}, {20, 230, 230}, {230, 20, 230},
		{120, 60, 10}, {10, 120, 60}, {60, 10, 120}, {250, 250, 250}, {5, 5, 5}}
	dir := t.TempDir()
	video := filepath.Join(dir, "ids.avi")
	vw, err := gocv.VideoWriterFile(video, "MJPG", 25, 64, 48, true)
	if err != nil || !vw.IsOpened() {
		t.Fatalf("video writer: %v", err)
	}
	for _, c := range colours {
		m := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(float64(c[2]), float64(c[1]), float64(c[0]), 0), 48, 64, gocv.MatTypeCV8UC3)
		if err := vw.Write(m); err != nil {
			t.Fatal(err)
		}
		m.Close()
	}
	vw.Close()

	port := freePort(t)
	evDir := filepath.Join(dir, "evidence")
	cfg, err := config.Parse(strings.NewReader(fmt.Sprintf(`
agent: {name: pool, data_dir: %q, log_level: warn}
models: {bundle: %q}
cameras:
  - {name: cam, kind: file, path: %q, loop: true, fps: 400}
mqtt: {listen: "127.0.0.1:%d", prefix: pool, stats_interval: 10s}
evidence: {enabled: true, dir: %q, ok_every: 1}
`, dir, fixtureDir, video, port, evDir)), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(cfg, agent.Options{
		Open:   func(dir string) (agent.Scorer, error) { return newNoopScorer(dir) },
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	waitPort(t, port)
	readers := make(chan struct{})
	go func() { // the dashboard's picture, read while frames are replaced and recycled
		defer close(readers)
		for ctx.Err() == nil {
			_, _ = a.LatestFrameJPEG("cam")
		}
	}()
	deadline := time.Now().Add(wait)
	for countFrames(evDir) < 300 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("agent.Run: %v", err)
	}
	<-readers

	checked, last := 0, 0
	err = filepath.WalkDir(evDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".png") || strings.Contains(p, "heatmap") {
			return err
		}
		var seq int
		if _, err := fmt.Sscanf(filepath.Base(p), "%010d-", &seq); err != nil {
			return nil // not a frame file
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		got, err := centreRGB(data)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if want := colours[(seq-1)%len(colours)]; !nearRGB(got, want) {
			t.Errorf("%s (seq %d): centre RGB %v, want about %v (frame %d of the loop)", filepath.Base(p), seq, got, want, (seq-1)%len(colours))
		}
		checked++
		last = max(last, seq)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The camera's latest picture is still the last result's frame, although the source read on after it.
	j, err := a.LatestFrameJPEG("cam")
	if err != nil {
		t.Fatal(err)
	}
	got, err := centreRGB(j)
	if err != nil {
		t.Fatal(err)
	}
	if want := colours[(last-1)%len(colours)]; !nearRGB(got, want) {
		t.Errorf("latest frame (seq %d): centre RGB %v, want about %v", last, got, want)
	}
	if checked < 300 {
		t.Fatalf("checked %d evidence frames, want at least 300", checked)
	}
}

// centreRGB decodes a PNG or JPEG and returns its centre pixel.
func centreRGB(data []byte) ([3]byte, error) {
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return [3]byte{}, err
	}
	r, g, b, _ := img.At(img.Bounds().Dx()/2, img.Bounds().Dy()/2).RGBA()
	return [3]byte{byte(r >> 8), byte(g >> 8), byte(b >> 8)}, nil
}

func nearRGB(a, b [3]byte) bool {
	for i := range a {
		if d := int(a[i]) - int(b[i]); d < -24 || d > 24 {
			return false
		}
	}
	return true
}

// countFrames counts the evidence tree's frames (<seq>-<verdict>.png; heatmaps are JPEG, results JSON).
func countFrames(root string) int {
	n := 0
	_ = filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(d.Name(), ".png") {
			n++
		}
		return nil
	})
	return n
}
