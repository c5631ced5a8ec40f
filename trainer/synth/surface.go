package synth

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Surface families. Each renders a new sample of its texture per image (the stochastic part varies, the
// family's look stays), which is what makes them hard: a model that reproduces "this image" instead of "this
// kind of surface" scores the texture itself as anomalous.
const (
	SurfaceFractal = "fractal" // multi-octave noise, like cast or sintered material and noisy backgrounds
	SurfaceWoven   = "woven"   // warp and weft threads with per-thread variation
	SurfaceBrushed = "brushed" // anisotropic streaks of brushed metal
	SurfaceGrain   = "grain"   // a smooth shaded surface under heavy sensor/film grain
	SurfacePart    = "part"    // a dark textured part on a noisy background (defects go on the part)
)

// Surfaces lists the families.
var Surfaces = []string{SurfaceFractal, SurfaceWoven, SurfaceBrushed, SurfaceGrain, SurfacePart}

// ClassSpec is one class of a rendered dataset: a surface family, a frame size (or a range of them) and grey or
// colour.
type ClassSpec struct {
	Name    string // class directory name (default: the family, plus "-gray" and the size when not default)
	Surface string
	W, H    int
	// MaxW, MaxH (0: every frame is W x H) make the frame size vary: each image's width is drawn from W..MaxW
	// and its height from H..MaxH, as tiles cut to the piece or crops that follow a part come in many sizes.
	MaxW, MaxH int
	Gray       bool
}

// ParseClassSpec reads "family[:gray][:WxH[-WxH]][=name]", e.g. "woven:gray:320x240", "part:800x600=dark-part",
// "grain:gray:240x200-400x360" (every frame a different size in that range). Sizes default to defW x defH.
func ParseClassSpec(s string, defW, defH int) (ClassSpec, error) {
	c := ClassSpec{W: defW, H: defH}
	if i := strings.IndexByte(s, '='); i >= 0 {
		c.Name, s = s[i+1:], s[:i]
		if c.Name == "" || strings.ContainsAny(c.Name, `/\:`) || c.Name[0] == '.' {
			return c, fmt.Errorf("synth: class %q: the name after = must be a plain directory name", s)
		}
	}
	parts := strings.Split(s, ":")
	c.Surface = parts[0]
	if !contains(Surfaces, c.Surface) {
		return c, fmt.Errorf("synth: class %q: unknown surface %q (want %s)", s, c.Surface, strings.Join(Surfaces, ", "))
	}
	sized := false
	for _, p := range parts[1:] {
		switch {
		case p == "gray" || p == "grey":
			c.Gray = true
		case strings.Contains(p, "x"):
			lo, hi, ranged := strings.Cut(p, "-")
			w, h, err := ParseSize(lo)
			if err != nil {
				return c, fmt.Errorf("synth: class %q: %w", s, err)
			}
			c.W, c.H, sized = w, h, true
			if ranged {
				mw, mh, err := ParseSize(hi)
				if err != nil {
					return c, fmt.Errorf("synth: class %q: %w", s, err)
				}
				if mw < w || mh < h || (mw == w && mh == h) {
					return c, fmt.Errorf("synth: class %q: size range %q: want the smallest size first and a larger one after it", s, p)
				}
				c.MaxW, c.MaxH = mw, mh
			}
		default:
			return c, fmt.Errorf("synth: class %q: option %q: want gray, WxH or WxH-WxH", s, p)
		}
	}
	if c.Name == "" {
		c.Name = c.Surface
		if c.Gray {
			c.Name += "-gray"
		}
		if sized {
			c.Name += fmt.Sprintf("-%dx%d", c.W, c.H)
		}
		if c.MaxW > 0 {
			c.Name += fmt.Sprintf("-%dx%d", c.MaxW, c.MaxH)
		}
	}
	return c, nil
}

// ParseSize reads "WxH" (each 16..8192).
func ParseSize(s string) (int, int, error) {
	a, b, ok := strings.Cut(s, "x")
	w, err1 := strconv.Atoi(a)
	h, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || w < 16 || h < 16 || w > 8192 || h > 8192 {
		return 0, 0, fmt.Errorf("size %q: want WxH with 16 <= W, H <= 8192", s)
	}
	return w, h, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// palette is a family's colours for one class: chosen once per class so all its images share a look.
type palette struct {
	lo, hi [3]float64 // texture colour at noise 0 and 1
	bg     [3]float64 // part: background tint
	angle  float64    // brushed: streak direction
	period float64    // woven: thread period (px)
}

func classPalette(spec ClassSpec, seed uint64) palette {
	r := rngFor(seed, "palette", spec.Name, spec.Surface)
	var p palette
	base := [3]float64{0.25 + 0.5*r.Float64(), 0.25 + 0.5*r.Float64(), 0.25 + 0.5*r.Float64()}
	for c := 0; c < 3; c++ {
		p.lo[c] = clamp01(base[c] - 0.2 - 0.1*r.Float64())
		p.hi[c] = clamp01(base[c] + 0.2 + 0.1*r.Float64())
		p.bg[c] = 0.45 + 0.3*r.Float64()
	}
	p.angle = r.Float64() * math.Pi
	p.period = 5 + 6*r.Float64()
	return p
}

// Size is the frame size of image idx of split: W x H, or with a range a size drawn from it (a function of the
// seed and the image's identity, like everything Render draws).
func (c ClassSpec) Size(seed uint64, split string, idx int) (int, int) {
	if c.MaxW == 0 {
		return c.W, c.H
	}
	r := rngFor(seed, "size", c.Name, split, idx)
	return c.W + r.IntN(c.MaxW-c.W+1), c.H + r.IntN(c.MaxH-c.H+1)
}

// Render draws image idx of a class (its own noise; the class's palette). region, when not nil, marks where
// defects belong (the part, for SurfacePart); elsewhere it is nil and defects may go anywhere.
func Render(spec ClassSpec, seed uint64, split string, idx int) (img Image, region []bool) {
	pal := classPalette(spec, seed)
	r := rngFor(seed, "surface", spec.Name, split, idx)
	n := valueNoise{seed: r.Uint64()}
	grain := valueNoise{seed: r.Uint64()}
	w, h := spec.Size(seed, split, idx)
	short := float64(min(w, h))
	val := make([]float64, w*h)   // texture value in [0,1]
	tint := make([][3]float64, 0) // per-pixel colour for the part family
	switch spec.Surface {
	case SurfaceFractal:
		scale := short / (2 + 2*r.Float64())
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				v := n.fbm(float64(x), float64(y), scale, 6, 0.55)
				val[y*w+x] = clamp01(0.5 + 1.6*(v-0.5) + 0.05*r.NormFloat64())
			}
		}
	case SurfaceWoven:
		per := pal.period
		ph := r.Float64() * per
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				fx, fy := float64(x)+ph, float64(y)+ph*0.7
				tx, ty := int(math.Floor(fx/per)), int(math.Floor(fy/per))
				// over-under: which thread is on top alternates like a plain weave
				var along, across float64
				if (tx+ty)%2 == 0 {
					along, across = fy, fx
				} else {
					along, across = fx, fy
				}
				thread := math.Sin(math.Pi * math.Mod(across, per) / per) // 0 at the gaps, 1 mid-thread
				fibre := 0.5 + 0.5*math.Sin(along*1.7+n.value(across/per, 0, 1)*6)
				v := 0.2 + 0.55*thread + 0.1*fibre + 0.15*(n.fbm(fx, fy, per*6, 3, 0.5)-0.5)
				val[y*w+x] = clamp01(v + 0.03*r.NormFloat64())
			}
		}
	case SurfaceBrushed:
		ca, sa := math.Cos(pal.angle), math.Sin(pal.angle)
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				u := float64(x)*ca + float64(y)*sa  // along the streaks
				v := -float64(x)*sa + float64(y)*ca // across
				streak := n.fbm(u/40, v, 3, 4, 0.6)
				shade := n.fbm(float64(x), float64(y), short, 2, 0.5)
				val[y*w+x] = clamp01(0.15 + 0.5*streak + 0.35*shade + 0.02*r.NormFloat64())
			}
		}
	case SurfaceGrain:
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				shade := n.fbm(float64(x), float64(y), short/1.5, 2, 0.5)
				val[y*w+x] = clamp01(0.3 + 0.4*shade + 0.09*r.NormFloat64() + 0.05*(grain.value(float64(x)/1.5, float64(y)/1.5, 0)-0.5))
			}
		}
	case SurfacePart:
		// A dark rounded rectangle with a fine texture, at a jittered place and angle, on bright noise.
		region = make([]bool, w*h)
		tint = make([][3]float64, w*h)
		cx := float64(w)*0.5 + (r.Float64()-0.5)*0.1*float64(w)
		cy := float64(h)*0.5 + (r.Float64()-0.5)*0.1*float64(h)
		hw, hh := 0.3*float64(w), 0.3*float64(h)
		rad := 0.25 * math.Min(hw, hh)
		ang := (r.Float64() - 0.5) * 0.2
		ca, sa := math.Cos(ang), math.Sin(ang)
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				dx, dy := float64(x)-cx, float64(y)-cy
				u, v := dx*ca+dy*sa, -dx*sa+dy*ca
				qx, qy := math.Max(math.Abs(u)-(hw-rad), 0), math.Max(math.Abs(v)-(hh-rad), 0)
				d := math.Hypot(qx, qy) - rad // signed distance to the part's outline
				bgv := clamp01(0.35 + 0.7*(n.fbm(float64(x), float64(y), short/6, 5, 0.6)-0.5) + 0.12*r.NormFloat64())
				partv := clamp01(0.12 + 0.08*grain.fbm(u, v, 6, 3, 0.5) + 0.02*r.NormFloat64())
				a := clamp01(0.5 - d) // one anti-aliased pixel of edge
				i := y*w + x
				for c := 0; c < 3; c++ {
					tint[i][c] = (1-a)*bgv*pal.bg[c]*1.4 + a*partv*(0.8+0.4*pal.lo[c])
				}
				region[i] = d < -3 // defects stay clear of the outline
			}
		}
	}
	img = NewImage(w, h, 3)
	if spec.Gray {
		img = NewImage(w, h, 1)
	}
	for i := 0; i < w*h; i++ {
		var rgb [3]float64
		if len(tint) > 0 {
			rgb = tint[i]
		} else {
			v := val[i]
			for c := 0; c < 3; c++ {
				rgb[c] = pal.lo[c] + (pal.hi[c]-pal.lo[c])*v
			}
		}
		if spec.Gray {
			img.Pix[i] = to8(0.299*rgb[0] + 0.587*rgb[1] + 0.114*rgb[2])
			continue
		}
		for c := 0; c < 3; c++ {
			img.Pix[3*i+c] = to8(rgb[c])
		}
	}
	return img, region
}

// sortedKeys returns m's keys sorted (deterministic iteration for counts in messages).
func sortedKeys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
