package capture

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gocv.io/x/gocv"
)

// near reports whether a decoded (JPEG-compressed) channel is within tolerance of the written one.
func near(got, want byte) bool {
	d := int(got) - int(want)
	return d >= -16 && d <= 16
}

func TestFileSourceReadsAllFramesInRGBOrder(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rgb.avi")
	colours := [][3]byte{{220, 20, 20}, {20, 220, 20}, {20, 20, 220}} // R, G, B
	var seq [][3]byte
	for i := 0; i < 12; i++ {
		seq = append(seq, colours[i%3])
	}
	writeVideo(t, path, seq, 64, 48, 25)

	tests := []struct {
		name string
		fps  float64
	}{
		{"as fast as possible", -1},
		{"paced at 200 fps", 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src, err := New(Config{Name: "cam", Kind: KindFile, Path: path, FPS: tc.fps})
			if err != nil {
				t.Fatal(err)
			}
			frames, _, err := runToEnd(t, src)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if len(frames) != len(seq) {
				t.Fatalf("read %d frames, want %d", len(frames), len(seq))
			}
			for i, f := range frames {
				if f.Seq != uint64(i+1) || f.Camera != "cam" || f.Width != 64 || f.Height != 48 ||
					len(f.Pix) != 64*48*3 {
					t.Fatalf("frame %d: seq %d camera %q size %dx%d pix %d", i, f.Seq, f.Camera, f.Width, f.Height,
						len(f.Pix))
				}
				mid := (24*64 + 32) * 3
				got := f.Pix[mid : mid+3]
				want := seq[i]
				if !near(got[0], want[0]) || !near(got[1], want[1]) || !near(got[2], want[2]) {
					t.Errorf("frame %d: centre pixel RGB %v, want about %v", i, got, want)
				}
			}
			st := src.Stats()
			if st.Frames != uint64(len(seq)) || st.State != StateOffline {
				t.Errorf("stats %+v: want %d frames and state offline (end of file)", st, len(seq))
			}
		})
	}
}

// runToEnd runs a finite source until Run returns on its own and returns what it delivered.
func runToEnd(t *testing.T, src Source) ([]Frame, []Event, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	out, events := make(chan Frame), make(chan Event, 1024)
	var frames []Frame
	done := make(chan struct{})
	go func() {
		defer close(done)
		for f := range out {
			frames = append(frames, f)
		}
	}()
	err := src.Run(ctx, out, events)
	if ctx.Err() != nil {
		t.Fatalf("%s: Run did not end on its own", src.Name())
	}
	close(out)
	<-done
	close(events)
	var evs []Event
	for ev := range events {
		evs = append(evs, ev)
	}
	return frames, evs, err
}

func TestFileSourceLoopWraps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "loop.avi")
	seq := [][3]byte{{200, 30, 30}, {30, 200, 30}, {30, 30, 200}, {200, 200, 30}, {30, 200, 200}}
	writeVideo(t, path, seq, 32, 32, 25)
	src, err := New(Config{Name: "loop", Kind: KindFile, Path: path, Loop: true, FPS: -1})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan Frame)
	stop := run(t, src, out, nil)
	n := 3*len(seq) + 2
	for i := 0; i < n; i++ {
		f := recv(t, out)
		want := seq[i%len(seq)]
		p := f.Pix[(16*32+16)*3:]
		if f.Seq != uint64(i+1) || !near(p[0], want[0]) || !near(p[1], want[1]) || !near(p[2], want[2]) {
			t.Fatalf("frame %d: seq %d RGB %v, want seq %d RGB about %v", i, f.Seq, p[:3], i+1, want)
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestFrozenStreamReportedAndRecovered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "frozen.avi")
	var seq [][3]byte
	for i := 0; i < 40; i++ { // 40 identical frames: 0.4 s at 100 fps, far above FrozenAfter
		seq = append(seq, [3]byte{90, 90, 90})
	}
	for i := 0; i < 10; i++ {
		seq = append(seq, [3]byte{byte(20 * i), 40, 200})
	}
	writeVideo(t, path, seq, 32, 32, 25)
	src, err := New(Config{Name: "fz", Kind: KindFile, Path: path, FPS: 100, FrozenAfter: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	out, events := make(chan Frame, 64), make(chan Event, 64)
	run(t, src, out, events)
	var states []State
	for len(states) == 0 || states[len(states)-1] != StateOffline {
		ev := waitEvent(t, events, func(e Event) bool { return !e.Transient })
		states = append(states, ev.State)
	}
	want := []State{StateOnline, StateFrozen, StateOnline, StateOffline}
	if strings.Join(toStrings(states), ",") != strings.Join(toStrings(want), ",") {
		t.Fatalf("state events %v, want %v", states, want)
	}
}

func toStrings(s []State) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = string(v)
	}
	return out
}

// A camera that is not there, and a URL nobody serves, go offline and keep retrying, while another source
// next to them delivers frames.
func TestMissingDeviceAndBadURLRetryWithoutBlockingOthers(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"missing device", Config{Name: "usb9", Kind: KindDevice, Device: 9, Backend: BackendV4L2}},
		{"refused rtsp url", Config{Name: "rtsp", Kind: KindURL, URL: "rtsp://127.0.0.1:1/none"}},
		{"missing file", Config{Name: "nofile", Kind: KindFile, Path: "/nonexistent/video.avi"}},
		{"missing folder", Config{Name: "nodir", Kind: KindFolder, Path: "/nonexistent/inbox"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.RetryMin, tc.cfg.RetryMax = 5*time.Millisecond, 20*time.Millisecond
			bad, err := New(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			good, err := New(Config{Name: "syn", Kind: KindSynthetic, Width: 32, Height: 32, FPS: 200})
			if err != nil {
				t.Fatal(err)
			}
			badOut, badEv := make(chan Frame), make(chan Event, 16)
			goodOut := make(chan Frame)
			stopBad := run(t, bad, badOut, badEv)
			stopGood := run(t, good, goodOut, nil)

			ev := waitEvent(t, badEv, func(e Event) bool { return !e.Transient })
			if ev.State != StateOffline || ev.Camera != tc.cfg.Name || ev.Reason == "" {
				t.Fatalf("first event %+v, want offline with a reason", ev)
			}
			for i := 0; i < 5; i++ {
				if f := recv(t, goodOut); f.Camera != "syn" {
					t.Fatalf("frame from %q", f.Camera)
				}
			}
			eventually(t, "retries", func() bool { return bad.Stats().Reconnects >= 3 })
			if st := bad.Stats(); st.State != StateOffline || st.Frames != 0 {
				t.Fatalf("bad source stats %+v", st)
			}
			if err := stopBad(); err != nil {
				t.Fatalf("Run of the bad source: %v", err)
			}
			if err := stopGood(); err != nil {
				t.Fatalf("Run of the synthetic source: %v", err)
			}
		})
	}
}

// A GStreamer pipeline through the url kind: videotestsrc is part of GStreamer's base plugins.
func TestURLSourceGStreamerPipeline(t *testing.T) {
	pipe := "videotestsrc num-buffers=15 pattern=ball ! video/x-raw,width=80,height=60 ! videoconvert ! " +
		"video/x-raw,format=BGR ! appsink"
	probe, err := gocv.VideoCaptureFileWithAPI(pipe, gocv.VideoCaptureGstreamer)
	probe.Close()
	if err != nil {
		t.Skipf("OpenCV here cannot open a GStreamer pipeline: %v", err)
	}
	src, err := New(Config{Name: "gst", Kind: KindURL, URL: pipe, RetryMin: time.Hour, RetryMax: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	out, events := make(chan Frame, 32), make(chan Event, 16)
	run(t, src, out, events)
	// The pipeline ends after 15 buffers; a live source then reports the stream lost.
	waitEvent(t, events, func(e Event) bool { return e.State == StateOffline })
	n := len(out)
	if n == 0 || n > 15 {
		t.Fatalf("got %d frames, want 1..15", n)
	}
	f := <-out
	if f.Width != 80 || f.Height != 60 || len(f.Pix) != 80*60*3 {
		t.Fatalf("frame size %dx%d (%d bytes), want 80x60", f.Width, f.Height, len(f.Pix))
	}
	if st := src.Stats(); st.Frames+st.Dropped != 15 {
		t.Errorf("delivered %d + dropped %d, want 15 in all", st.Frames, st.Dropped)
	}
}

// An H.264 .mp4 made by ffmpeg (the other format cameras and recorders produce) reads through the same path.
func TestFileSourceReadsFFmpegMP4(t *testing.T) {
	ffmpeg, err := exec.LookPath("ffmpeg")
	if err != nil {
		t.Skip("ffmpeg not installed")
	}
	path := filepath.Join(t.TempDir(), "clip.mp4")
	cmd := exec.Command(ffmpeg, "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=25",
		"-frames:v", "20", "-c:v", "libx264", "-pix_fmt", "yuv420p", path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("ffmpeg cannot make an H.264 clip here: %v: %s", err, out)
	}
	src, err := New(Config{Name: "mp4", Kind: KindFile, Path: path, FPS: -1})
	if err != nil {
		t.Fatal(err)
	}
	frames, _, err := runToEnd(t, src)
	if err != nil {
		t.Fatal(err)
	}
	if len(frames) != 20 {
		t.Fatalf("read %d frames, want 20", len(frames))
	}
	for _, f := range frames {
		if f.Width != 96 || f.Height != 64 || len(f.Pix) != 96*64*3 {
			t.Fatalf("frame %d: %dx%d", f.Seq, f.Width, f.Height)
		}
	}
}

// A live source whose consumer never reads drops frames (counted) instead of stalling the camera.
func TestLiveSourceDropsForBusyConsumer(t *testing.T) {
	pipe := "videotestsrc num-buffers=10 ! video/x-raw,width=32,height=32 ! videoconvert ! " +
		"video/x-raw,format=BGR ! appsink"
	probe, err := gocv.VideoCaptureFileWithAPI(pipe, gocv.VideoCaptureGstreamer)
	probe.Close()
	if err != nil {
		t.Skipf("OpenCV here cannot open a GStreamer pipeline: %v", err)
	}
	src, err := New(Config{Name: "busy", Kind: KindURL, URL: pipe, RetryMin: time.Hour, RetryMax: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	out, events := make(chan Frame), make(chan Event, 16) // nobody reads out
	run(t, src, out, events)
	waitEvent(t, events, func(e Event) bool { return e.State == StateOffline })
	if st := src.Stats(); st.Dropped != 10 || st.Frames != 0 {
		t.Fatalf("stats %+v: want 10 dropped, 0 delivered", st)
	}
}
