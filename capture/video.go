package capture

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"sync"
	"time"

	"gocv.io/x/gocv"
)

// videoSource reads a camera index, a URL/pipeline or a video file through OpenCV's videoio.
//
// The blocking cgo calls (open, read: up to OpenCV's FFmpeg timeouts, ~30 s, on a dead RTSP camera) run in a
// worker goroutine; Run only forwards what the worker produced. So Run returns as soon as its context ends, and
// never sends after returning, while the worker finishes its last read, closes the capture and exits on its own.
// The next Run waits for that worker first, so one device is never opened twice.
type videoSource struct {
	cfg Config
	c   counters

	mu      sync.Mutex
	prevRun chan struct{} // closed when the last worker has exited
	seq     uint64        // only the (single) worker touches it
	pixels  pixPool       // the frames' memory, back from their last holder (Frame.Release)
}

func newVideo(cfg Config) *videoSource {
	s := &videoSource{cfg: cfg, prevRun: make(chan struct{})}
	close(s.prevRun)
	s.c.state = StateStarting
	return s
}

func (s *videoSource) Name() string { return s.cfg.Name }
func (s *videoSource) Stats() Stats { return s.c.snapshot() }

// live sources drop frames for a busy consumer; files block.
func (s *videoSource) live() bool { return s.cfg.Kind != KindFile }

// item is one thing the worker hands to Run, in order: a frame or an event.
type item struct {
	frame *Frame
	ev    *Event
	block bool
}

func (s *videoSource) Run(ctx context.Context, out chan<- Frame, events chan<- Event) error {
	s.mu.Lock()
	prev := s.prevRun
	s.mu.Unlock()
	select {
	case <-prev:
	case <-ctx.Done():
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	s.mu.Lock()
	s.prevRun = done
	s.mu.Unlock()

	items := make(chan item)
	var werr error
	go func() {
		defer close(done)
		werr = s.work(ctx, items)
		close(items)
	}()
	emit := directEmit(ctx, events)
	for {
		select {
		case <-ctx.Done():
			return nil
		case it, ok := <-items:
			if !ok {
				return werr
			}
			if it.ev != nil {
				emit(*it.ev, it.block)
				continue
			}
			f := *it.frame
			if s.live() {
				select {
				case out <- f:
					s.c.delivered(f.Time)
				default:
					s.c.dropped.Add(1)
					f.Release() // never handed over: its memory serves the next frame
				}
				continue
			}
			select {
			case out <- f:
				s.c.delivered(f.Time)
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// open opens the capture for the configured kind and returns the file's frame rate (0 when unknown).
func (s *videoSource) open() (*gocv.VideoCapture, float64, error) {
	cfg := s.cfg
	api := backendAPI(cfg.Backend)
	var (
		vc  *gocv.VideoCapture
		err error
	)
	switch cfg.Kind {
	case KindDevice:
		vc, err = gocv.VideoCaptureDeviceWithAPI(cfg.Device, api)
		if err != nil {
			err = fmt.Errorf("open camera %d (backend %s): not available", cfg.Device, cfg.Backend)
		}
	case KindURL:
		vc, err = gocv.VideoCaptureFileWithAPI(cfg.URL, api)
		if err != nil {
			err = fmt.Errorf("open %s (backend %s): cannot connect or no decodable stream", redact(cfg.URL),
				cfg.Backend)
		}
	case KindFile:
		if st, serr := os.Stat(cfg.Path); serr != nil {
			return nil, 0, fmt.Errorf("open video file: %w", serr)
		} else if st.IsDir() {
			return nil, 0, fmt.Errorf("open video file %s: is a directory", cfg.Path)
		}
		vc, err = gocv.VideoCaptureFileWithAPI(cfg.Path, api)
		if err != nil {
			err = fmt.Errorf("open video file %s (backend %s): not a readable video", cfg.Path, cfg.Backend)
		}
	default:
		return nil, 0, fmt.Errorf("kind %q is not a video kind", cfg.Kind)
	}
	if err != nil {
		if vc != nil {
			vc.Close()
		}
		return nil, 0, err
	}
	if cfg.Kind != KindFile {
		if cfg.Width > 0 {
			vc.Set(gocv.VideoCaptureFrameWidth, float64(cfg.Width))
			vc.Set(gocv.VideoCaptureFrameHeight, float64(cfg.Height))
		}
		if cfg.FPS > 0 {
			vc.Set(gocv.VideoCaptureFPS, cfg.FPS)
		}
	}
	return vc, vc.Get(gocv.VideoCaptureFPS), nil
}

// redact hides a password in a URL's user info so it does not reach logs and MQTT.
func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil || p.User == nil {
		return u
	}
	return p.Redacted()
}

func backendAPI(b string) gocv.VideoCaptureAPI {
	switch b {
	case BackendFFmpeg:
		return gocv.VideoCaptureFFmpeg
	case BackendGStreamer:
		return gocv.VideoCaptureGstreamer
	case BackendV4L2:
		return gocv.VideoCaptureV4L2
	default:
		return gocv.VideoCaptureAny
	}
}

// endKind says why a stream stopped.
type endKind int

const (
	endCtx      endKind = iota // the run was cancelled
	endEOF                     // a file ended
	endReadFail                // a live stream stopped delivering
)

// work is the worker loop: open, stream, and re-open with backoff, until ctx ends or a file without loop ends.
func (s *videoSource) work(ctx context.Context, items chan<- item) error {
	send := func(it item) bool {
		select {
		case items <- it:
			return true
		case <-ctx.Done():
			return false
		}
	}
	rep := reporter{camera: s.cfg.Name, c: &s.c, emit: func(ev Event, block bool) {
		send(item{ev: &ev, block: block})
	}}
	bo := newBackoff(s.cfg.RetryMin, s.cfg.RetryMax)
	fd := frozenDetector{after: s.cfg.FrozenAfter}
	m := gocv.NewMat()
	defer m.Close()
	for ctx.Err() == nil {
		vc, fileFPS, err := s.open()
		if err != nil {
			s.c.reconnects.Add(1)
			d := bo.delay()
			rep.state(StateOffline, retryIn(err.Error(), d))
			sleepCtx(ctx, d)
			continue
		}
		end, n := s.stream(ctx, vc, &m, fileFPS, rep, &fd, send, bo)
		vc.Close()
		switch {
		case end == endCtx:
			return nil
		case end == endEOF && n == 0:
			s.c.reconnects.Add(1)
			d := bo.delay()
			rep.state(StateError, retryIn(fmt.Sprintf("video file %s has no readable frames", s.cfg.Path), d))
			sleepCtx(ctx, d)
		case end == endEOF && s.cfg.Loop:
			// Re-open rather than seek: seeking to frame 0 is unreliable in some containers.
		case end == endEOF:
			rep.state(StateOffline, "end of video file "+s.cfg.Path)
			return nil
		default:
			s.c.reconnects.Add(1)
			d := bo.delay()
			rep.state(StateOffline, retryIn("stream stopped delivering frames", d))
			sleepCtx(ctx, d)
		}
	}
	return nil
}

// stream reads frames from an open capture until it ends; it returns why and how many frames it read.
func (s *videoSource) stream(ctx context.Context, vc *gocv.VideoCapture, m *gocv.Mat, fileFPS float64,
	rep reporter, fd *frozenDetector, send func(item) bool, bo *backoff) (endKind, int) {
	var (
		n        int
		inBurst  bool
		interval time.Duration
		next     time.Time
		lastOut  time.Time
	)
	*fd = frozenDetector{after: fd.after} // a new connection starts a new picture history
	fps := s.cfg.FPS
	if s.cfg.Kind == KindFile && fps == 0 {
		fps = fileFPS
		if fps <= 0 || fps > 1000 {
			fps = 25
		}
	}
	if fps > 0 {
		interval = time.Duration(float64(time.Second) / fps)
	}
	for {
		if ctx.Err() != nil {
			return endCtx, n
		}
		if s.cfg.Kind == KindFile && interval > 0 {
			// Pace a file like the camera that recorded it: a schedule, not a fixed sleep, so decode time
			// does not slow the rate; when far behind, start the schedule over instead of bursting.
			now := time.Now()
			if next.IsZero() || now.Sub(next) > interval {
				next = now
			}
			if !sleepCtx(ctx, next.Sub(now)) {
				return endCtx, n
			}
			next = next.Add(interval)
		}
		if !vc.Read(m) {
			if s.cfg.Kind == KindFile {
				return endEOF, n
			}
			return endReadFail, n
		}
		now := time.Now()
		// Live cameras are read at their own rate (so their buffer never holds stale frames) and thinned to
		// the configured rate; a frame thinned out is not converted.
		thin := s.cfg.Kind != KindFile && interval > 0
		if thin && !m.Empty() && !lastOut.IsZero() && now.Sub(lastOut) < interval {
			n++
			bo.reset()
			continue
		}
		w, h, pix, buf, err := matToRGBInto(*m, &s.pixels)
		if err != nil {
			s.c.decodeErrors.Add(1)
			if !inBurst { // one report per burst of bad frames
				inBurst = true
				rep.transient(StateError, "", "frame could not be decoded: "+err.Error())
			}
			continue
		}
		inBurst = false
		n++
		bo.reset()
		if thin {
			lastOut = now
		}
		if frozen, moving := fd.observe(pix, w, h, now); frozen {
			rep.state(StateFrozen, fmt.Sprintf("picture unchanged for %v", s.cfg.FrozenAfter))
		} else if moving {
			rep.state(StateOnline, "picture moving again")
		} else if s.c.snapshot().State != StateFrozen {
			rep.state(StateOnline, "receiving frames")
		}
		s.seq++
		f := Frame{Camera: s.cfg.Name, Seq: s.seq, Time: now, Width: w, Height: h, Pix: pix, buf: buf}
		if !send(item{frame: &f}) {
			return endCtx, n
		}
	}
}
