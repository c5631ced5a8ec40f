package synth

import (
	"math"
	"slices"

	"github.com/vlmdiff/edge/internal/pilresize"
)

// A painted defect is only a defect if it changes its pixels more than the normals of its class differ among
// themselves there. Paper shifts by a few grey levels between frames, a stochastic texture changes completely,
// a part's outline moves by a pixel: a scratch fainter than that, or a stain on a texture that varies more than
// the stain, is labelled and masked, yet no detector (and nobody looking) can tell it from a normal. A
// validation set full of such defects ranks candidates on label noise, and it prefers whatever finds the
// faintest changes on a flat background (session 14, docs/training.md "A visibility floor on the painted
// defects"). So the painter measures the normals' own variation and redraws a defect below it.
//
// Both sides are measured with one operator at two scales: the change of a single pixel (specks, thin
// scratches) and the change averaged over a 7x7 window (stains, patches; a misplaced patch of the same random
// texture changes single pixels a lot but averages to nothing). Per pixel, the largest channel's absolute
// change counts.

// visibilityRadius is the half-width of the window of the coarse scale (7x7).
const visibilityRadius = 3

// maxVariationPairs bounds the pairs of normals a Variation is measured on (memory: two float32 maps a pair).
const maxVariationPairs = 8

// Variation is how much the normals of one class (one frame size and channel count) differ among themselves,
// per pixel, at the two scales of the visibility measure: the median over pairs of normals of the change between
// them, in grey levels.
type Variation struct {
	W, H, C int
	Pixel   []float32 // single pixels
	Window  []float32 // averaged over 7x7 windows
	Pairs   int       // pairs of normals measured
}

// NewVariation measures the variation among imgs on up to maxVariationPairs pairs (neighbours first: (0,1),
// (1,2), ..., then (0,2), ...). Only the images of imgs[0]'s size and channels count. Nil when fewer than two.
func NewVariation(imgs []Image) *Variation {
	if len(imgs) == 0 {
		return nil
	}
	w, h, c := imgs[0].W, imgs[0].H, imgs[0].C
	imgs = slices.DeleteFunc(slices.Clone(imgs), func(im Image) bool { return im.W != w || im.H != h || im.C != c })
	if len(imgs) < 2 {
		return nil
	}
	var pairs [][2]int
	for gap := 1; gap < len(imgs) && len(pairs) < maxVariationPairs; gap++ {
		for i := 0; i+gap < len(imgs) && len(pairs) < maxVariationPairs; i++ {
			pairs = append(pairs, [2]int{i, i + gap})
		}
	}
	px := make([][]float32, len(pairs))
	win := make([][]float32, len(pairs))
	for k, p := range pairs {
		px[k], win[k] = localChange(imgs[p[0]], imgs[p[1]], 0, 0, w-1, h-1)
	}
	v := &Variation{W: w, H: h, C: c, Pixel: make([]float32, w*h), Window: make([]float32, w*h), Pairs: len(pairs)}
	col := make([]float32, len(pairs))
	for i := 0; i < w*h; i++ {
		for k := range pairs {
			col[k] = px[k][i]
		}
		v.Pixel[i] = median(col)
		for k := range pairs {
			col[k] = win[k][i]
		}
		v.Window[i] = median(col)
	}
	return v
}

// fits reports whether v was measured on frames of shape k (width, height, channels; Params.viewKey).
func (v *Variation) fits(k [3]int) bool {
	return v != nil && v.W == k[0] && v.H == k[1] && v.C == k[2]
}

// Visibility is how far a painted defect stands out from the normals' variation: at each scale the mean change
// over the mask's pixels divided by the mean variation there (at least one grey level, the smallest change an
// 8-bit image carries), the larger of the two ratios. 1 means the defect changes its pixels as much as two
// normals of its class differ there; a detector cannot be asked to find less.
func Visibility(img, out Image, mask []uint8, v *Variation) float64 {
	x0, y0, x1, y1 := img.W, img.H, -1, -1
	for i, m := range mask {
		if m != 0 {
			x, y := i%img.W, i/img.W
			x0, y0, x1, y1 = min(x0, x), min(y0, y), max(x1, x), max(y1, y)
		}
	}
	if x1 < 0 {
		return 0
	}
	px, win := localChange(img, out, x0, y0, x1, y1)
	bw := x1 - x0 + 1
	var dp, dw, vp, vw float64
	n := 0
	for y := y0; y <= y1; y++ {
		for x := x0; x <= x1; x++ {
			i := y*img.W + x
			if mask[i] == 0 {
				continue
			}
			j := (y-y0)*bw + (x - x0)
			dp += float64(px[j])
			dw += float64(win[j])
			vp += float64(v.Pixel[i])
			vw += float64(v.Window[i])
			n++
		}
	}
	fn := float64(n)
	return math.Max(dp/fn/math.Max(vp/fn, 1), dw/fn/math.Max(vw/fn, 1))
}

// localChange returns, for every pixel of the box x0..x1, y0..y1, the largest channel's absolute change from a
// to b, of the pixel itself and averaged over the 7x7 window around it (clipped at the frame's edge), row-major
// over the box.
func localChange(a, b Image, x0, y0, x1, y1 int) (pixel, window []float32) {
	const r = visibilityRadius
	w := a.W
	// the integral of b-a per channel over the box grown by r, clipped to the frame
	gx0, gy0 := max(0, x0-r), max(0, y0-r)
	gx1, gy1 := min(a.W-1, x1+r), min(a.H-1, y1+r)
	gw, gh := gx1-gx0+1, gy1-gy0+1
	c := a.C
	sat := make([]int64, (gw+1)*(gh+1)*c)
	at := func(x, y, ch int) int { return (y*(gw+1)+x)*c + ch }
	for y := 0; y < gh; y++ {
		for x := 0; x < gw; x++ {
			p := ((gy0+y)*w + gx0 + x) * c
			for ch := 0; ch < c; ch++ {
				d := int64(b.Pix[p+ch]) - int64(a.Pix[p+ch])
				sat[at(x+1, y+1, ch)] = d + sat[at(x, y+1, ch)] + sat[at(x+1, y, ch)] - sat[at(x, y, ch)]
			}
		}
	}
	bw, bh := x1-x0+1, y1-y0+1
	pixel, window = make([]float32, bw*bh), make([]float32, bw*bh)
	for y := y0; y <= y1; y++ {
		for x := x0; x <= x1; x++ {
			p := (y*w + x) * c
			// window bounds in the integral's coordinates
			wx0, wy0 := max(0, x-r)-gx0, max(0, y-r)-gy0
			wx1, wy1 := min(a.W-1, x+r)-gx0+1, min(a.H-1, y+r)-gy0+1
			area := float64((wx1 - wx0) * (wy1 - wy0))
			var dp, dw float64
			for ch := 0; ch < c; ch++ {
				dp = math.Max(dp, math.Abs(float64(int(b.Pix[p+ch])-int(a.Pix[p+ch]))))
				s := sat[at(wx1, wy1, ch)] - sat[at(wx0, wy1, ch)] - sat[at(wx1, wy0, ch)] + sat[at(wx0, wy0, ch)]
				dw = math.Max(dw, math.Abs(float64(s))/area)
			}
			j := (y-y0)*bw + (x - x0)
			pixel[j], window[j] = float32(dp), float32(dw)
		}
	}
	return pixel, window
}

// median of vs (reordered in place).
func median(vs []float32) float32 {
	slices.Sort(vs)
	n := len(vs)
	if n%2 == 1 {
		return vs[n/2]
	}
	return (vs[n/2-1] + vs[n/2]) / 2
}

// ResizedVariation measures the variation at img's view size (Params.view: its own, or the model's input)
// among normals of other sizes: img itself and up to maxVariationPairs of the others with its channel count,
// each resized to that size with the model's resize, in their order. Nil when no other normal has img's
// channels. Why: a class whose frames vary in size (tiles cut to the piece, crops that follow the part) has no
// two frames of one size to compare, and without a variation its defects would be painted without the
// visibility floor; the model compares every frame at its input size anyway, so the normals' differences at a
// common size are the variation it sees.
func ResizedVariation(img Image, normals []Image, p Params) *Variation {
	w, h := p.viewSize(img)
	set := []Image{resizeTo(img, w, h)}
	for _, n := range normals {
		if len(set) > maxVariationPairs {
			break
		}
		if n.C != img.C || (n.W == img.W && n.H == img.H && slices.Equal(n.Pix, img.Pix)) {
			continue
		}
		set = append(set, resizeTo(n, w, h))
	}
	return NewVariation(set)
}

// variations measures one Variation per view shape (Params.view's size, and channels) among imgs, each image
// at its view; shapes seen only once get none (ResizedVariation measures theirs). Frames of any sizes larger
// than the model's input share one view, and so one variation.
func variations(imgs []Image, p Params) map[[3]int]*Variation {
	groups := map[[3]int][]Image{}
	var order [][3]int
	for _, im := range imgs {
		k := p.viewKey(im)
		if groups[k] == nil {
			order = append(order, k)
		}
		groups[k] = append(groups[k], p.view(im))
	}
	out := map[[3]int]*Variation{}
	for _, k := range order {
		if v := NewVariation(groups[k]); v != nil {
			out[k] = v
		}
	}
	return out
}

// viewSize is the size at which img's defects are judged visible: the model's input (InputSize square) when img
// is larger than it on either side, else img's own. A frame smaller than the input is enlarged by the model,
// which adds no detail and removes none, so its own pixels are measured as they are.
func (p Params) viewSize(img Image) (int, int) {
	if s := p.InputSize; s > 0 && (img.W > s || img.H > s) {
		return s, s
	}
	return img.W, img.H
}

// viewKey is img's view size and channels.
func (p Params) viewKey(img Image) [3]int {
	w, h := p.viewSize(img)
	return [3]int{w, h, img.C}
}

// view is img at its view size (img itself when that is its own).
func (p Params) view(img Image) Image {
	w, h := p.viewSize(img)
	if w == img.W && h == img.H {
		return img
	}
	return resizeTo(img, w, h)
}

// resizeTo is im resized to w x h with the model's own resize (Pillow's antialiased bilinear, pilresize), a
// copy even at im's size.
func resizeTo(im Image, w, h int) Image {
	return Image{W: w, H: h, C: im.C, Pix: pilresize.Resize(im.Pix, im.W, im.H, im.C, w, h)}
}

// visibilityAt is Visibility measured at view's size: img and out (the frame before and after the defect) and
// the mask resized there as the model and the evaluation resize them (the mask bilinearly, then every pixel the
// defect reaches at all, as the reference binarises its masks with > 0). view is img itself, or img resized.
func visibilityAt(view, img, out Image, mask []uint8, v *Variation) float64 {
	if view.W == img.W && view.H == img.H {
		return Visibility(img, out, mask, v)
	}
	m := make([]uint8, len(mask))
	for i, x := range mask {
		if x != 0 {
			m[i] = 255
		}
	}
	vm := pilresize.Resize(m, img.W, img.H, 1, view.W, view.H)
	return Visibility(view, resizeTo(out, view.W, view.H), vm, v)
}
