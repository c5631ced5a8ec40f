package capture

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gocv.io/x/gocv"
)

// wait is the generous limit for anything a test waits on; tests never assert on durations.
const wait = 30 * time.Second

// writeVideo writes an MJPG .avi with OpenCV's VideoWriter: one frame per colour (given as RGB), solid.
func writeVideo(t testing.TB, path string, rgb [][3]byte, w, h int, fps float64) {
	t.Helper()
	vw, err := gocv.VideoWriterFile(path, "MJPG", fps, w, h, true)
	if err != nil {
		t.Fatalf("create video %s: %v", path, err)
	}
	defer vw.Close()
	if !vw.IsOpened() {
		t.Fatalf("video writer for %s did not open", path)
	}
	for i, c := range rgb {
		m := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(float64(c[2]), float64(c[1]), float64(c[0]), 0), h, w,
			gocv.MatTypeCV8UC3)
		if err := vw.Write(m); err != nil {
			m.Close()
			t.Fatalf("write frame %d: %v", i, err)
		}
		m.Close()
	}
}

// pngBytes encodes a w x h image whose every pixel is c.
func pngBytes(t testing.TB, w, h int, c color.RGBA) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.SetRGBA(x, y, c)
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatalf("encode png: %v", err)
	}
	return b.Bytes()
}

// idColour encodes a file index in a colour that survives PNG exactly.
func idColour(i int) color.RGBA { return color.RGBA{R: byte(i), G: byte(255 - i), B: 77, A: 255} }

// idOf reads the index back from a frame's first pixel.
func idOf(t *testing.T, f Frame) int {
	t.Helper()
	if len(f.Pix) < 3 {
		t.Fatalf("frame %d has no pixels", f.Seq)
	}
	if f.Pix[1] != 255-f.Pix[0] || f.Pix[2] != 77 {
		t.Fatalf("frame %d from %s: first pixel %v is not an id colour", f.Seq, f.Origin, f.Pix[:3])
	}
	return int(f.Pix[0])
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

// run starts src.Run in a goroutine; the returned stop cancels it and waits for Run to return, then closes
// the channels, so a send after Run returned would panic the test.
func run(t *testing.T, src Source, out chan Frame, events chan Event) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- src.Run(ctx, out, events) }()
	stopped := false
	var err error
	stop = func() error {
		if stopped {
			return err
		}
		stopped = true
		cancel()
		select {
		case err = <-errc:
		case <-time.After(wait):
			t.Fatalf("%s: Run did not return after cancel", src.Name())
		}
		close(out)
		if events != nil {
			close(events)
		}
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// recv waits for the next frame.
func recv(t *testing.T, out <-chan Frame) Frame {
	t.Helper()
	select {
	case f, ok := <-out:
		if !ok {
			t.Fatal("frame channel closed")
		}
		return f
	case <-time.After(wait):
		t.Fatal("no frame within the wait limit")
	}
	return Frame{}
}

// waitEvent waits for an event that satisfies match, skipping others.
func waitEvent(t *testing.T, events <-chan Event, match func(Event) bool) Event {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case ev := <-events:
			if match(ev) {
				return ev
			}
		case <-deadline:
			t.Fatal("expected event did not come within the wait limit")
		}
	}
}

// eventually polls cond until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within the wait limit", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	var names []string
	for _, e := range ents {
		if !e.IsDir() {
			names = append(names, filepath.Base(e.Name()))
		}
	}
	return names
}
