package capture

import (
	"context"
	"fmt"
	"github.com/vlmdiff/edge/imagelimit"
	"image"
	"math"
	"math/rand/v2"
	"path/filepath"
	"time"

	"gocv.io/x/gocv"

	"github.com/vlmdiff/edge/internal/imagefiles"
)

// Truth values of synthetic frames.
const (
	TruthGood    = "good"
	TruthBlob    = "blob"
	TruthScratch = "scratch"
)

// syntheticSource makes frames for demos and tests: a woven texture with sensor noise, or sample images in
// turn, with a dark blob or a scratch on a DefectRate share of them. Frame n depends only on (seed, n), so two
// runs with one seed give the same frames in the same order, whatever the timing.
type syntheticSource struct {
	cfg   Config
	c     counters
	base  []byte   // the seed's texture, W*H*3, made once
	files []string // sample images, when Path is set
	seq   uint64
}

func newSynthetic(cfg Config) *syntheticSource {
	s := &syntheticSource{cfg: cfg}
	s.c.state = StateStarting
	return s
}

func (s *syntheticSource) Name() string { return s.cfg.Name }
func (s *syntheticSource) Stats() Stats { return s.c.snapshot() }

func (s *syntheticSource) Run(ctx context.Context, out chan<- Frame, events chan<- Event) error {
	rep := reporter{camera: s.cfg.Name, c: &s.c, emit: directEmit(ctx, events)}
	bo := newBackoff(s.cfg.RetryMin, s.cfg.RetryMax)
	fd := frozenDetector{after: s.cfg.FrozenAfter}
	var interval time.Duration
	if s.cfg.FPS > 0 {
		interval = time.Duration(float64(time.Second) / s.cfg.FPS)
	}
	next := time.Now()
	for ctx.Err() == nil {
		if n := s.cfg.Synthetic.Count; n > 0 && s.seq >= uint64(n) {
			rep.state(StateOffline, fmt.Sprintf("synthetic source made its %d frames", n))
			return nil
		}
		if interval > 0 {
			now := time.Now()
			if now.Sub(next) > interval {
				next = now
			}
			if !sleepCtx(ctx, next.Sub(now)) {
				return nil
			}
			next = next.Add(interval)
		}
		f, err := s.Generate(s.seq + 1)
		if err != nil {
			if f.Origin != "" { // one bad sample: skip it, like a bad frame
				s.seq++
				s.c.decodeErrors.Add(1)
				rep.transient(StateError, f.Origin, err.Error())
				continue
			}
			s.c.reconnects.Add(1)
			rep.state(StateError, err.Error())
			sleepCtx(ctx, bo.delay())
			continue
		}
		bo.reset()
		s.seq++
		if frozen, moving := fd.observe(f.Pix, f.Width, f.Height, f.Time); frozen {
			rep.state(StateFrozen, fmt.Sprintf("picture unchanged for %v", s.cfg.FrozenAfter))
		} else if moving || s.c.snapshot().State != StateFrozen {
			rep.state(StateOnline, "generating frames")
		}
		select {
		case out <- f:
			s.c.delivered(f.Time)
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

// Generate makes frame seq (from 1) without pacing. Run uses it; tests call it directly. Not safe for use
// concurrently with Run.
// With a sample folder the frame's Origin names the sample; an error with Origin set concerns that one sample.
func (s *syntheticSource) Generate(seq uint64) (Frame, error) {
	rng := rand.New(rand.NewPCG(s.cfg.Synthetic.Seed, seq))
	f := Frame{Camera: s.cfg.Name, Seq: seq, Time: time.Now(), Truth: TruthGood}
	if s.cfg.Path != "" {
		// The listing is re-read at the start of every cycle (and after a failure), so samples added to the
		// folder join in without listing a large folder for every frame.
		if len(s.files) == 0 || (seq-1)%uint64(len(s.files)) == 0 {
			files, err := imagefiles.List(s.cfg.Path)
			if err != nil {
				s.files = nil
				return f, fmt.Errorf("synthetic samples: %w", err)
			}
			if len(files) == 0 {
				s.files = nil
				return f, fmt.Errorf("synthetic samples: no image files in %s", s.cfg.Path)
			}
			s.files = files
		}
		f.Origin = filepath.Join(s.cfg.Path, s.files[int((seq-1)%uint64(len(s.files)))])
		w, h, pix, err := loadImage(f.Origin, s.cfg.Width, s.cfg.Height, s.cfg.ImageLimits)
		if err != nil {
			return f, fmt.Errorf("synthetic sample %s: %w", f.Origin, err)
		}
		f.Width, f.Height, f.Pix = w, h, pix
	} else {
		f.Width, f.Height = s.cfg.Width, s.cfg.Height
		if f.Width == 0 {
			f.Width, f.Height = 256, 256
		}
		if s.base == nil {
			s.base = texture(f.Width, f.Height, s.cfg.Synthetic.Seed)
		}
		f.Pix = make([]byte, len(s.base))
		// Sensor noise and a small exposure drift, so consecutive frames differ like a real camera's.
		gain := 1 + (rng.Float64()-0.5)*0.04
		for i, v := range s.base {
			f.Pix[i] = clamp8(float64(v)*gain + rng.NormFloat64()*3)
		}
	}
	if rng.Float64() < s.cfg.Synthetic.DefectRate {
		if rng.IntN(2) == 0 {
			f.Truth = TruthBlob
			drawBlob(f.Pix, f.Width, f.Height, rng)
		} else {
			f.Truth = TruthScratch
			drawScratch(f.Pix, f.Width, f.Height, rng)
		}
	}
	return f, nil
}

// texture is a woven pattern: two crossed sine gratings at seed-chosen frequencies on a seed-chosen tint,
// with fixed fine grain.
func texture(w, h int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 0))
	fx := 2 * math.Pi / (6 + rng.Float64()*10)
	fy := 2 * math.Pi / (6 + rng.Float64()*10)
	tint := [3]float64{0.8 + rng.Float64()*0.4, 0.8 + rng.Float64()*0.4, 0.8 + rng.Float64()*0.4}
	pix := make([]byte, w*h*3)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			v := 140 + 35*math.Sin(float64(x)*fx)*math.Cos(float64(y)*fy) + rng.NormFloat64()*6
			i := (y*w + x) * 3
			for c := 0; c < 3; c++ {
				pix[i+c] = clamp8(v * tint[c])
			}
		}
	}
	return pix
}

// drawBlob darkens a soft-edged ellipse (4..10% of the short side in radius).
func drawBlob(pix []byte, w, h int, rng *rand.Rand) {
	short := float64(min(w, h))
	rx := short * (0.04 + rng.Float64()*0.06)
	ry := rx * (0.6 + rng.Float64()*0.8)
	cx := rx + rng.Float64()*(float64(w)-2*rx)
	cy := ry + rng.Float64()*(float64(h)-2*ry)
	for y := max(0, int(cy-ry-1)); y < min(h, int(cy+ry+2)); y++ {
		for x := max(0, int(cx-rx-1)); x < min(w, int(cx+rx+2)); x++ {
			d := math.Hypot((float64(x)-cx)/rx, (float64(y)-cy)/ry)
			if d >= 1 {
				continue
			}
			k := 0.25 + 0.75*d*d // darkest in the middle
			i := (y*w + x) * 3
			for c := 0; c < 3; c++ {
				pix[i+c] = clamp8(float64(pix[i+c]) * k)
			}
		}
	}
}

// drawScratch draws a thin dark line (20..50% of the short side long, 1..3 px wide) at a random angle.
func drawScratch(pix []byte, w, h int, rng *rand.Rand) {
	short := float64(min(w, h))
	length := short * (0.2 + rng.Float64()*0.3)
	angle := rng.Float64() * math.Pi
	dx, dy := math.Cos(angle)*length/2, math.Sin(angle)*length/2
	cx := math.Abs(dx) + rng.Float64()*(float64(w)-2*math.Abs(dx))
	cy := math.Abs(dy) + rng.Float64()*(float64(h)-2*math.Abs(dy))
	half := 0.5 + rng.Float64()
	steps := int(length * 2)
	for s := 0; s <= steps; s++ {
		t := float64(s)/float64(steps)*2 - 1
		px, py := cx+dx*t, cy+dy*t
		for y := int(py - half); y <= int(py+half); y++ {
			for x := int(px - half); x <= int(px+half); x++ {
				if x < 0 || y < 0 || x >= w || y >= h {
					continue
				}
				i := (y*w + x) * 3
				for c := 0; c < 3; c++ {
					pix[i+c] = pix[i+c] / 4
				}
			}
		}
	}
}

func clamp8(v float64) byte {
	switch {
	case v <= 0:
		return 0
	case v >= 255:
		return 255
	default:
		return byte(v + 0.5)
	}
}

// isImageName reports whether a base name is one a folder source takes (internal/imagefiles decides).
func isImageName(name string) bool { return imagefiles.IsImage(name) }

// loadImage reads and decodes an image file to RGB, resized to w x h when both are > 0.
// The file is refused before decoding when it is over lim (see imagelimit).
func loadImage(path string, w, h int, lim imagelimit.Limits) (int, int, []byte, error) {
	data, _, err := imagelimit.ReadFile(path, lim)
	if err != nil {
		return 0, 0, nil, err
	}
	if w <= 0 || h <= 0 {
		return decodeImage(data, lim)
	}
	m, err := gocv.IMDecode(data, gocv.IMReadColor)
	if err != nil || m.Empty() {
		if err == nil {
			m.Close()
		}
		return 0, 0, nil, fmt.Errorf("not a decodable image (%d bytes)", len(data))
	}
	defer m.Close()
	r := gocv.NewMat()
	defer r.Close()
	gocv.Resize(m, &r, image.Pt(w, h), 0, 0, gocv.InterpolationArea)
	return matToRGB(r)
}
