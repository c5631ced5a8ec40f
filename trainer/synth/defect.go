package synth

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
)

// Defect kinds.
const (
	DefectCutPaste = "cut-paste" // a patch from elsewhere (this or another normal), rotated, soft-edged
	DefectScratch  = "scratch"   // a thin curved line, varied width and contrast
	DefectSpeck    = "speck"     // small blobs, alone or in a cluster
	DefectStain    = "stain"     // a low-contrast smooth blob with a colour shift
	DefectFibre    = "fibre"     // a long wavy hair or thread lying on the surface, often out of focus
)

// Defects lists the kinds in the order they are cycled.
var Defects = []string{DefectCutPaste, DefectScratch, DefectSpeck, DefectStain, DefectFibre}

// Params bound the defects' size and contrast. Values are drawn log-uniformly, so small and faint defects are
// as common as large and strong ones: the set is meant to be hard.
type Params struct {
	// MinSize, MaxSize: the defect's extent as a fraction of the image's shorter side (a scratch's length is
	// three times this, a fibre's eight times; a speck cluster's spread). Defaults 0.015 and 0.15.
	MinSize, MaxSize float64
	// MinContrast, MaxContrast: the intensity change as a fraction of full scale (stains use a third of it, as
	// stains are faint by nature). Defaults 0.08 and 0.5.
	MinContrast, MaxContrast float64
	// MinVisibility: where the normals' own variation is known (a Variation), a defect whose Visibility is
	// below this is redrawn: 1 (the default) keeps only defects that change their pixels at least as much as
	// two normals of the class differ there; 0 turns the check off (the painter before session 15).
	MinVisibility float64
	// InputSize is the side of the model's square input (256 for the small preset). A frame larger than it on
	// either side has its defects' visibility measured where the model sees them, on the frame resized to
	// InputSize x InputSize with the model's own resize (docs/training.md, "The floor at the model's input"):
	// a speck of three pixels on a 700-pixel frame is under one pixel at 256, and a set full of defects the
	// model never receives ranks candidates on noise. 0 measures at the frame's own size (before session 49).
	InputSize int
}

// DefaultParams is the hard default.
var DefaultParams = Params{MinSize: 0.015, MaxSize: 0.15, MinContrast: 0.08, MaxContrast: 0.5, MinVisibility: 1}

// Validate checks the bounds.
func (p Params) Validate() error {
	switch {
	case !(p.MinSize > 0 && p.MinSize <= p.MaxSize && p.MaxSize <= 1):
		return fmt.Errorf("synth: size %v..%v: want 0 < min <= max <= 1", p.MinSize, p.MaxSize)
	case !(p.MinContrast > 0 && p.MinContrast <= p.MaxContrast && p.MaxContrast <= 1):
		return fmt.Errorf("synth: contrast %v..%v: want 0 < min <= max <= 1", p.MinContrast, p.MaxContrast)
	case !(p.MinVisibility >= 0 && p.MinVisibility <= 100):
		return fmt.Errorf("synth: visibility %v: want 0 (off) to 100 times the normals' variation", p.MinVisibility)
	case p.InputSize != 0 && (p.InputSize < 8 || p.InputSize > 8192):
		return fmt.Errorf("synth: input size %d: want 0 (the frame's own) or 8 to 8192 pixels", p.InputSize)
	}
	return nil
}

// ParseKinds reads a comma-separated list of defect kinds ("" = all).
func ParseKinds(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return append([]string(nil), Defects...), nil
	}
	var out []string
	for _, k := range strings.Split(s, ",") {
		k = strings.TrimSpace(k)
		if !contains(Defects, k) {
			return nil, fmt.Errorf("synth: defect kind %q: want %s", k, strings.Join(Defects, ", "))
		}
		if !contains(out, k) {
			out = append(out, k)
		}
	}
	return out, nil
}

func logUniform(r *rand.Rand, lo, hi float64) float64 {
	if lo >= hi {
		return lo
	}
	return math.Exp(math.Log(lo) + r.Float64()*(math.Log(hi)-math.Log(lo)))
}

// MinArea is the fewest changed pixels a defect may have; a draw below it is redrawn.
const MinArea = 4

// ErrInvisible is returned (wrapped) by Paint when every draw was invisible: a cut-paste's patches looked like
// what they covered, as on a uniform background where paper is pasted onto paper, or every defect stayed within
// the normals' own variation (Visibility under Params.MinVisibility). Such a "defect" would be labelled and
// masked yet could not be seen by anyone, and a validation set full of them ranks candidates on noise (PIPED's
// painted cut-pastes scored at chance, image AUROC 50, session 7). WriteDefects paints another kind instead.
var ErrInvisible = errors.New("no draw stood out from what it covered")

// cutPasteVisible reports whether a cut-paste can be seen. The change is averaged over a 7x7 window around each
// interior pixel (opacity 0.5 or more, inside the feathered edge) before its size is taken: a patch of the same
// random texture, misaligned, changes single pixels a lot but averages to nothing, while a patch of other
// colour or structure keeps its change. The patch is kept when the mean of that local change over the interior
// is at least the faintest stain's (MinContrast / 3 of full scale).
func cutPasteVisible(img, out Image, l layer, p Params) bool {
	const r = 3
	sum, n := 0.0, 0
	for i, a := range l.alpha {
		if a < 0.5 {
			continue
		}
		x, y := i%img.W, i/img.W
		d := 0.0
		for c := 0; c < img.C; c++ {
			acc, k := 0, 0
			for yy := max(0, y-r); yy <= min(img.H-1, y+r); yy++ {
				for xx := max(0, x-r); xx <= min(img.W-1, x+r); xx++ {
					j := (yy*img.W+xx)*img.C + c
					acc += int(out.Pix[j]) - int(img.Pix[j])
					k++
				}
			}
			d = math.Max(d, math.Abs(float64(acc)/float64(k)))
		}
		sum += d
		n++
	}
	return n > 0 && sum/float64(n) >= 255*p.MinContrast/3
}

// layer is a defect before compositing: per pixel an opacity and the value the pixel takes at full opacity.
type layer struct {
	alpha  []float64
	target []float64 // C values per pixel
}

// Paint draws one defect of kind on a copy of img and returns it with its mask (1 = changed pixel). src is
// the cut-paste donor (another normal; img itself when nil). region, when set, restricts the defect's centre
// to its true pixels. The mask is exactly the set of pixels whose value differs from img; a draw that would
// change fewer than MinArea pixels, or a cut-paste whose patch is invisible (cutPasteVisible), is redrawn (up to
// 50 times, then an error; ErrInvisible when every cut-paste draw was invisible). Paint knows nothing of the
// other normals: PaintAmong also holds each draw against their variation.
func Paint(img Image, kind string, src *Image, region []bool, p Params, r *rand.Rand) (Image, []uint8, error) {
	out, mask, _, err := PaintAmong(img, kind, src, region, nil, p, r)
	return out, mask, err
}

// PaintAmong is Paint with the normals' variation v (nil: none known, as Paint): a draw whose Visibility is
// under p.MinVisibility is redrawn too. It also returns how many draws were redrawn for that reason.
func PaintAmong(img Image, kind string, src *Image, region []bool, v *Variation, p Params, r *rand.Rand) (Image, []uint8, int, error) {
	if err := p.Validate(); err != nil {
		return Image{}, nil, 0, err
	}
	if !v.fits(p.viewKey(img)) || p.MinVisibility == 0 {
		v = nil
	}
	view := img
	if v != nil {
		view = p.view(img)
	}
	if src == nil {
		src = &img
	}
	if src.C != img.C {
		return Image{}, nil, 0, fmt.Errorf("synth: cut-paste donor has %d channels, the image %d", src.C, img.C)
	}
	var centres []int
	if region != nil {
		for i, ok := range region {
			if ok {
				centres = append(centres, i)
			}
		}
		if len(centres) == 0 {
			return Image{}, nil, 0, errors.New("synth: the defect region is empty")
		}
	}
	invisible, faint := 0, 0
	for try := 0; try < 50; try++ {
		var cx, cy float64
		if centres != nil {
			i := centres[r.IntN(len(centres))]
			cx, cy = float64(i%img.W)+r.Float64(), float64(i/img.W)+r.Float64()
		} else {
			cx, cy = float64(img.W)*(0.08+0.84*r.Float64()), float64(img.H)*(0.08+0.84*r.Float64())
		}
		short := float64(min(img.W, img.H))
		size := logUniform(r, p.MinSize, p.MaxSize) * short
		contrast := logUniform(r, p.MinContrast, p.MaxContrast)
		var l layer
		switch kind {
		case DefectCutPaste:
			l = cutPaste(img, *src, cx, cy, size, r)
		case DefectScratch:
			l = scratch(img, cx, cy, size*3, contrast, r)
		case DefectSpeck:
			l = specks(img, cx, cy, size, contrast, r)
		case DefectStain:
			l = stain(img, cx, cy, size, contrast/3, r)
		case DefectFibre:
			l = fibres(img, cx, cy, size, contrast, p, r)
		default:
			return Image{}, nil, 0, fmt.Errorf("synth: defect kind %q: want %s", kind, strings.Join(Defects, ", "))
		}
		out, mask, area := composite(img, l)
		if area < MinArea {
			continue
		}
		if kind == DefectCutPaste && !cutPasteVisible(img, out, l, p) {
			invisible++
			continue
		}
		if v != nil && visibilityAt(view, img, out, mask, v) < p.MinVisibility {
			faint++
			continue
		}
		return out, mask, faint, nil
	}
	switch {
	case invisible > 0 && faint == 0:
		return Image{}, nil, faint, fmt.Errorf("synth: cut-paste on a %dx%d image: %w (mean local change under %.1f grey levels in %d draws)",
			img.W, img.H, ErrInvisible, 255*p.MinContrast/3, invisible)
	case invisible+faint > 0:
		return Image{}, nil, faint, fmt.Errorf("synth: %s on a %dx%d image: %w (%d draws within the normals' own variation, visibility under %g; %d invisible patches)",
			kind, img.W, img.H, ErrInvisible, faint, p.MinVisibility, invisible)
	}
	return Image{}, nil, faint, fmt.Errorf("synth: %s on a %dx%d image: every draw changed fewer than %d pixels", kind, img.W, img.H, MinArea)
}

// composite blends the layer into a copy of img; opacities below 0.1 are dropped so that a defect's far tail
// does not change pixels by one grey level across the frame. The mask is computed from the result.
func composite(img Image, l layer) (Image, []uint8, int) {
	out := img.Clone()
	mask := make([]uint8, img.W*img.H)
	area := 0
	for i, a := range l.alpha {
		if a < 0.1 {
			continue
		}
		a = math.Min(a, 1)
		changed := false
		for c := 0; c < img.C; c++ {
			j := i*img.C + c
			v := float64(img.Pix[j])*(1-a) + l.target[j]*a
			nv := uint8(math.Round(math.Max(0, math.Min(255, v))))
			if nv != img.Pix[j] {
				out.Pix[j] = nv
				changed = true
			}
		}
		if changed {
			mask[i] = 1
			area++
		}
	}
	return out, mask, area
}

func newLayer(img Image) layer {
	return layer{alpha: make([]float64, img.W*img.H), target: make([]float64, img.W*img.H*img.C)}
}

// box returns the pixel bounds of a disc of radius rad around (cx, cy), clipped to the image.
func box(img Image, cx, cy, rad float64) (x0, y0, x1, y1 int) {
	x0, y0 = max(0, int(math.Floor(cx-rad))), max(0, int(math.Floor(cy-rad)))
	x1, y1 = min(img.W-1, int(math.Ceil(cx+rad))), min(img.H-1, int(math.Ceil(cy+rad)))
	return
}

// shift sets the target of pixel i to its value moved by delta (fraction of full scale) on every channel, so
// grey stays grey and colour keeps its hue.
func (l layer) shift(img Image, i int, delta float64) {
	for c := 0; c < img.C; c++ {
		l.target[i*img.C+c] = float64(img.Pix[i*img.C+c]) + 255*delta
	}
}

// cutPaste copies a rotated patch (ellipse or rounded rectangle, soft edge of a few pixels) from a random place
// of src to (cx, cy): the CutPaste defect, made of material the model has seen, only in the wrong place.
func cutPaste(img, src Image, cx, cy, size float64, r *rand.Rand) layer {
	l := newLayer(img)
	a := size * (0.5 + 0.5*r.Float64()) // half-axes
	b := size * (0.25 + 0.5*r.Float64())
	ang := r.Float64() * 2 * math.Pi     // outline orientation
	rot := (r.Float64() - 0.5) * math.Pi // patch content rotation relative to the outline
	ellipse := r.IntN(2) == 0
	feather := 1 + 2*r.Float64()
	rad := math.Max(a, b) + feather
	// donor centre: anywhere the patch fits, at least one patch away from (cx, cy) when src is img
	sx := rad + r.Float64()*math.Max(1, float64(src.W)-2*rad)
	sy := rad + r.Float64()*math.Max(1, float64(src.H)-2*rad)
	if &src.Pix[0] == &img.Pix[0] && math.Hypot(sx-cx, sy-cy) < rad {
		sx = math.Mod(sx+2*rad, math.Max(1, float64(src.W)-2*rad)) + rad
		sy = math.Mod(sy+2*rad, math.Max(1, float64(src.H)-2*rad)) + rad
	}
	ca, sa := math.Cos(ang), math.Sin(ang)
	cr, sr := math.Cos(rot), math.Sin(rot)
	x0, y0, x1, y1 := box(img, cx, cy, rad)
	for y := y0; y <= y1; y++ {
		for x := x0; x <= x1; x++ {
			dx, dy := float64(x)+0.5-cx, float64(y)+0.5-cy
			u, v := dx*ca+dy*sa, -dx*sa+dy*ca
			var d float64 // signed distance to the outline (approximate for the ellipse)
			if ellipse {
				k := math.Hypot(u/a, v/b)
				d = (k - 1) * math.Min(a, b)
			} else {
				rr := 0.3 * math.Min(a, b)
				qx, qy := math.Max(math.Abs(u)-(a-rr), 0), math.Max(math.Abs(v)-(b-rr), 0)
				d = math.Hypot(qx, qy) - rr
				if math.Abs(u) < a-rr && math.Abs(v) < b-rr {
					d = math.Max(math.Abs(u)-a, math.Abs(v)-b)
				}
			}
			al := clamp01(0.5 - d/feather)
			if al <= 0 {
				continue
			}
			// donor pixel: the offset rotated by rot, nearest neighbour, clamped to the donor
			px := int(math.Floor(sx + dx*cr - dy*sr))
			py := int(math.Floor(sy + dx*sr + dy*cr))
			px, py = max(0, min(src.W-1, px)), max(0, min(src.H-1, py))
			i := y*img.W + x
			l.alpha[i] = al
			for c := 0; c < img.C; c++ {
				l.target[i*img.C+c] = float64(src.Pix[(py*src.W+px)*src.C+c])
			}
		}
	}
	return l
}

// scratch draws a quadratic Bezier of the given length through (cx, cy), 0.6-3 px wide with an anti-aliased
// edge, lighter or darker by contrast, its contrast fading along the stroke as real scratches do.
func scratch(img Image, cx, cy, length, contrast float64, r *rand.Rand) layer {
	l := newLayer(img)
	ang := r.Float64() * 2 * math.Pi
	dx, dy := math.Cos(ang)*length/2, math.Sin(ang)*length/2
	bend := (r.Float64() - 0.5) * length * 0.6
	p0 := [2]float64{cx - dx, cy - dy}
	p2 := [2]float64{cx + dx, cy + dy}
	p1 := [2]float64{cx - dy/length*2*bend, cy + dx/length*2*bend}
	width := 0.6 + 2.4*r.Float64()*r.Float64() // mostly thin
	sign := 1.0
	if r.IntN(2) == 0 {
		sign = -1
	}
	n := int(length*2) + 2
	pts := make([][3]float64, n) // x, y, strength
	fade := 0.4 + 0.6*r.Float64()
	for k := 0; k < n; k++ {
		t := float64(k) / float64(n-1)
		x := (1-t)*(1-t)*p0[0] + 2*(1-t)*t*p1[0] + t*t*p2[0]
		y := (1-t)*(1-t)*p0[1] + 2*(1-t)*t*p1[1] + t*t*p2[1]
		pts[k] = [3]float64{x, y, 1 - fade*math.Abs(2*t-1)*math.Abs(2*t-1)}
	}
	half := width / 2
	for _, q := range pts {
		x0, y0, x1, y1 := box(img, q[0], q[1], half+1)
		for y := y0; y <= y1; y++ {
			for x := x0; x <= x1; x++ {
				d := math.Hypot(float64(x)+0.5-q[0], float64(y)+0.5-q[1])
				al := clamp01(half+0.5-d) * q[2]
				i := y*img.W + x
				if al > l.alpha[i] {
					l.alpha[i] = al
					l.shift(img, i, sign*contrast)
				}
			}
		}
	}
	return l
}

// specks draws 1-12 small discs (radius 0.6-3 px) scattered within size of (cx, cy), all lighter or all darker.
func specks(img Image, cx, cy, spread, contrast float64, r *rand.Rand) layer {
	l := newLayer(img)
	n := 1
	if r.IntN(3) > 0 {
		n = 2 + r.IntN(11)
	}
	sign := -1.0
	if r.IntN(3) == 0 {
		sign = 1
	}
	for k := 0; k < n; k++ {
		x, y := cx, cy
		if k > 0 {
			x += r.NormFloat64() * spread / 2
			y += r.NormFloat64() * spread / 2
		}
		rad := 0.6 + 2.4*r.Float64()*r.Float64()
		c := contrast * (0.6 + 0.4*r.Float64())
		x0, y0, x1, y1 := box(img, x, y, rad+1)
		for py := y0; py <= y1; py++ {
			for px := x0; px <= x1; px++ {
				d := math.Hypot(float64(px)+0.5-x, float64(py)+0.5-y)
				al := clamp01(rad + 0.5 - d)
				i := py*img.W + px
				if al > l.alpha[i] {
					l.alpha[i] = al
					l.shift(img, i, sign*c)
				}
			}
		}
	}
	return l
}

// stain draws a smooth blob with a noisy outline and a Gaussian-like falloff that shifts brightness and, on
// colour images, hue (each channel scaled differently): the faint, large-area defect.
func stain(img Image, cx, cy, size, contrast float64, r *rand.Rand) layer {
	l := newLayer(img)
	n := valueNoise{seed: r.Uint64()}
	rad := size * (0.5 + 0.5*r.Float64())
	var gain [3]float64
	sign := -1.0
	if r.IntN(3) == 0 {
		sign = 1
	}
	for c := range gain {
		gain[c] = sign * contrast * (0.5 + r.Float64())
	}
	if img.C == 1 {
		gain[0] = sign * contrast
	}
	x0, y0, x1, y1 := box(img, cx, cy, rad*1.6)
	for y := y0; y <= y1; y++ {
		for x := x0; x <= x1; x++ {
			dx, dy := float64(x)+0.5-cx, float64(y)+0.5-cy
			edge := rad * (0.75 + 0.5*n.fbm(math.Atan2(dy, dx)*3+10, 0, 1, 3, 0.5))
			t := math.Hypot(dx, dy) / edge
			al := clamp01(1.25 - t*t) // flat core, smooth shoulder
			if al <= 0 {
				continue
			}
			i := y*img.W + x
			l.alpha[i] = math.Min(al, 1)
			for c := 0; c < img.C; c++ {
				v := float64(img.Pix[i*img.C+c])
				l.target[i*img.C+c] = v*(1+gain[c]) + 255*gain[c]*0.3
			}
		}
	}
	return l
}

// fibre draws a hair, thread or fibre lying on the surface: a long path whose direction wanders smoothly (value
// noise on the turning rate, so it bends one way, then the other, as a hair does, not the single arc of a
// scratch), from under a pixel to 4% of the shorter side wide, with a soft edge of up to 3 px (a
// fibre above the focal plane is blurred), mostly darker, its strength varying a little along it. Foreign
// fibres are among the commonest contaminants on paper, film, textiles, food and assemblies, and unlike a
// scratch they are often wide, faint and as long as the frame: PIPED's BRG03 "impurities" are such hairs.
//
// Half the fibres are broken (brokenPath): a hair that dips into a textured surface, lies partly under a
// transparent film or is partly out of the lit band shows as a row of pieces, and its mask is as many small
// regions. AU-PRO weighs every region alike, so a set of unbroken fibres (one region each) under-weighs such
// defects' small pieces: PIPED's BRG03 masks have 7.8 regions each.
//
// It draws into l, where the fibre is more opaque than what l holds, and returns l.
func fibre(img Image, l layer, cx, cy, length, contrast float64, r *rand.Rand) layer {
	short := float64(min(img.W, img.H))
	width := logUniform(r, 0.8, math.Max(1.5, 0.04*short))
	soft := 0.3 + 2.7*r.Float64()
	sign := -1.0
	if r.IntN(4) == 0 {
		sign = 1
	}
	var gain [3]float64 // a fibre has its own colour: each channel shifted a little differently
	for c := range gain {
		gain[c] = sign * contrast * (0.8 + 0.4*r.Float64())
	}
	if img.C == 1 {
		gain[0] = sign * contrast
	}
	turn := valueNoise{seed: r.Uint64()}
	curl := 0.5 + 3*r.Float64() // radians of turning over the fibre's length, at most
	ang := r.Float64() * 2 * math.Pi
	const step = 0.5
	n := int(length/step) + 1
	// the path, walked from the centre both ways so that (cx, cy) lies on it
	pts := make([][3]float64, 0, n) // x, y, strength
	for _, dir := range [2]float64{1, -1} {
		x, y, a := cx, cy, ang
		for k := 0; k < n/2; k++ {
			t := float64(k) * step / length
			a += dir * curl * step / length * 4 * (turn.value(t*4+dir*7, 0, 0) - 0.5)
			pts = append(pts, [3]float64{x, y, 0.7 + 0.3*turn.value(-dir*t*6, 3, 1)})
			x += dir * step * math.Cos(a)
			y += dir * step * math.Sin(a)
		}
	}
	half := width / 2
	if r.IntN(2) == 0 {
		pts = brokenPath(pts, n/2, step, width+soft+2, length, r)
	}
	for _, q := range pts {
		x0, y0, x1, y1 := box(img, q[0], q[1], half+soft+1)
		for y := y0; y <= y1; y++ {
			for x := x0; x <= x1; x++ {
				d := math.Hypot(float64(x)+0.5-q[0], float64(y)+0.5-q[1])
				al := clamp01((half+soft/2-d)/soft) * q[2]
				i := y*img.W + x
				if al > l.alpha[i] {
					l.alpha[i] = al
					for c := 0; c < img.C; c++ {
						l.target[i*img.C+c] = float64(img.Pix[i*img.C+c]) + 255*gain[c]
					}
				}
			}
		}
	}
	return l
}

// brokenPath keeps pieces of a fibre's path and drops the gaps between them. pts holds the two walks from the
// centre, run points each, step px apart; the centre's piece is kept, so the defect still lies where it was
// drawn. Pieces are 2 px to a fifth of the length long (log-uniform: many short, a few long), gaps from minGap
// (the fibre's width and soft edges, so that neighbouring pieces stay separate regions of the mask) to three
// times that; each piece has its own strength (0.35-1 of the fibre's), since how much of a hair shows varies
// along it.
func brokenPath(pts [][3]float64, run int, step, minGap, length float64, r *rand.Rand) [][3]float64 {
	out := make([][3]float64, 0, len(pts))
	for _, walk := range [2][][3]float64{pts[:min(run, len(pts))], pts[min(run, len(pts)):]} {
		on, left, gain := true, logUniform(r, 2, math.Max(2, length/5)), 0.35+0.65*r.Float64()
		for _, q := range walk {
			left -= step
			if left <= 0 {
				on = !on
				if on {
					left, gain = logUniform(r, 2, math.Max(2, length/5)), 0.35+0.65*r.Float64()
				} else {
					left = minGap * (1 + 2*r.Float64())
				}
			}
			if on {
				out = append(out, [3]float64{q[0], q[1], q[2] * gain})
			}
		}
	}
	return out
}

// fibres draws a fibre (length 8 x size, size in pixels) and, half the time, one to three more nearby, each of
// its own length, width and contrast (log-uniform down to the painter's least), so that a strong hair is often
// accompanied by faint ones. Hairs and lint seldom fall alone, and an inspector's mask marks every one of them;
// the strong one keeps the defect as a whole above the visibility floor.
func fibres(img Image, cx, cy, size, contrast float64, p Params, r *rand.Rand) layer {
	l := fibre(img, newLayer(img), cx, cy, size*8, contrast, r)
	if r.IntN(2) == 0 {
		return l
	}
	short := float64(min(img.W, img.H))
	for k := 1 + r.IntN(3); k > 0; k-- {
		x := math.Max(0, math.Min(float64(img.W)-1, cx+r.NormFloat64()*size*2))
		y := math.Max(0, math.Min(float64(img.H)-1, cy+r.NormFloat64()*size*2))
		c := logUniform(r, p.MinContrast, math.Max(p.MinContrast, contrast))
		fibre(img, l, x, y, logUniform(r, p.MinSize, p.MaxSize)*short*8, c, r)
	}
	return l
}
