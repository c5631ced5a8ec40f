package capture

import (
	"path/filepath"
	"testing"
)

func TestPixPoolHoldsUntilTheLastRelease(t *testing.T) {
	var pp pixPool
	b := pp.get(12)
	f := Frame{Pix: b.pix, buf: b}
	f.Retain() // a second holder
	f.Release()
	if got := b.refs.Load(); got != 1 {
		t.Fatalf("after one of two releases: %d holders, want 1", got)
	}
	f.Release()
	if got := b.refs.Load(); got != 0 {
		t.Fatalf("after the last release: %d holders, want 0", got)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("a release past the last holder did not panic")
			}
		}()
		f.Release()
	}()
	if n := new(pixPool).get(5); len(n.pix) != 5 || n.refs.Load() != 1 {
		t.Errorf("a fresh buffer: %d bytes, %d holders; want 5 and 1", len(n.pix), n.refs.Load())
	}
	Frame{Pix: []byte{1}}.Retain() // frames without pooled memory need no bookkeeping
	Frame{Pix: []byte{1}}.Release()
}

// A stream source reuses the memory of frames its consumer released, and never the memory of a frame still
// held: frames kept by the consumer keep their own pixels while later frames are read into recycled buffers.
func TestStreamReusesOnlyReleasedFrames(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ids.avi")
	const n = 60
	var seq [][3]byte
	for i := 0; i < n; i++ {
		c := idColour(i * 4)
		seq = append(seq, [3]byte{c.R, c.G, c.B})
	}
	writeVideo(t, path, seq, 32, 24, 25)
	src, err := New(Config{Name: "ids", Kind: KindFile, Path: path, FPS: -1})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan Frame)
	stop := run(t, src, out, nil)
	type kept struct {
		f    Frame
		want [3]byte
	}
	var held []kept
	arrays := map[*byte]bool{}
	for i := 0; i < n; i++ {
		f := recv(t, out)
		arrays[&f.Pix[0]] = true
		if i%3 == 0 {
			held = append(held, kept{f, [3]byte(f.Pix[:3])}) // held to the end, as lastFrame holds its frame
			continue
		}
		f.Release()
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, k := range held {
		if got := [3]byte(k.f.Pix[:3]); got != k.want {
			t.Errorf("frame %d, held by the consumer, was overwritten: RGB %v, read as %v", k.f.Seq, got, k.want)
		}
		k.f.Release()
	}
	// 20 held frames need 20 buffers; the 40 released ones should need few more.
	if len(arrays) > len(held)+n/4 {
		t.Errorf("%d frames used %d buffers: released frames' memory was not reused", n, len(arrays))
	}
	if len(arrays) <= len(held) {
		t.Errorf("%d frames used %d buffers, fewer than the %d held at once", n, len(arrays), len(held))
	}
}

func TestOpenCVThreadsBinding(t *testing.T) {
	def := OpenCVThreads()
	t.Cleanup(func() { SetOpenCVThreads(def) })
	for _, n := range []int{1, 2} {
		SetOpenCVThreads(n)
		if got := OpenCVThreads(); got != n {
			t.Errorf("after SetOpenCVThreads(%d): OpenCV reports %d threads", n, got)
		}
	}
	SetOpenCVThreads(-1) // OpenCV's default back
	if got := OpenCVThreads(); got < 1 {
		t.Errorf("after SetOpenCVThreads(-1): OpenCV reports %d threads, want its default (>= 1)", got)
	}
}
