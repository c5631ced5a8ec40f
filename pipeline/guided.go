package pipeline

import "github.com/vlmdiff/edge/models"

// guidedInput is one frame's guide for map.guided (models.GuidedFilter): the frame's luminance and the two
// window statistics of it that every map of the frame shares, so that each map costs four box means.
type guidedInput struct {
	r       int
	eps     float64
	g       []float64 // the guide, H*W luminance in [0, 1]
	mean    []float64 // box mean of g
	inv     []float64 // 1 / (box variance of g + eps)
	h, w    int
	mp, mgp []float64 // per map: box means of the map and of guide x map; then the window-averaged a and b
	tmp     []float64 // box's row pass
	acc     []float64 // box's column sums, one row
}

// luminance weights of ITU-R BT.601 (PIL's convert("L")), over R, G, B.
var lumaWeights = [3]float64{0.299, 0.587, 0.114}

// setGuide makes gi frame x's guide (x: one preprocessed frame, [3][H][W] in the bundle's normalised input
// space, which in.Mean and in.Std undo). gi's buffers are reused across frames.
func (gi *guidedInput) setGuide(x []float32, in models.Input, f *models.GuidedFilter) {
	H, W := in.Height, in.Width
	n := H * W
	gi.r, gi.eps, gi.h, gi.w = f.Radius, f.Eps, H, W
	gi.g, gi.mean, gi.inv = grow(gi.g, n), grow(gi.mean, n), grow(gi.inv, n)
	gi.mp, gi.mgp, gi.tmp, gi.acc = grow(gi.mp, n), grow(gi.mgp, n), grow(gi.tmp, n), grow(gi.acc, W)
	for j := range gi.g {
		v := 0.0
		for c := range 3 {
			v += lumaWeights[c] * (float64(x[c*n+j])*float64(in.Std[c]) + float64(in.Mean[c]))
		}
		gi.g[j] = v
	}
	gg := gi.mgp // scratch until the first map
	for j, v := range gi.g {
		gg[j] = v * v
	}
	gi.box(gi.g, gi.mean)
	gi.box(gg, gi.inv)
	for j, m := range gi.mean {
		gi.inv[j] = 1 / (max(gi.inv[j]-m*m, 0) + gi.eps)
	}
}

// filter replaces p (H*W) with its guided filter: per window a = cov(g, p) / (var(g) + eps) and b = mean(p) -
// a mean(g); each pixel takes the window means of a and b: out = mean(a) g + mean(b). Python twin:
// reference.guided_filter.
func (gi *guidedInput) filter(p []float64) {
	gi.box(p, gi.mp)
	for j, v := range p {
		gi.mgp[j] = gi.g[j] * v
	}
	gi.box(gi.mgp, gi.mgp)
	for j, mp := range gi.mp {
		a := (gi.mgp[j] - gi.mean[j]*mp) * gi.inv[j]
		gi.mgp[j], gi.mp[j] = a, mp-a*gi.mean[j]
	}
	gi.box(gi.mgp, gi.mgp)
	gi.box(gi.mp, gi.mp)
	for j := range p {
		p[j] = gi.mgp[j]*gi.g[j] + gi.mp[j]
	}
}

// box writes the (2r+1)^2 box mean of src into dst (which may be src), borders reflected (d c b a | a b c d),
// as scipy.ndimage.uniform_filter's mode "reflect"; r is less than both sides (models.Manifest.Validate). Both
// passes are running sums: along each row, then down the rows with a row of column sums, so that every read
// is sequential.
func (gi *guidedInput) box(src, dst []float64) {
	H, W, r := gi.h, gi.w, gi.r
	inv := 1 / float64(2*r+1)
	t := gi.tmp
	for y := range H {
		row, out := src[y*W:(y+1)*W], t[y*W:(y+1)*W]
		s := 0.0
		for k := -r; k <= r; k++ {
			s += row[reflect(k, W)]
		}
		out[0] = s
		for x := 1; x < W; x++ {
			in, gone := x+r, x-r-1
			if in >= W || gone < 0 {
				s += row[reflect(in, W)] - row[reflect(gone, W)]
			} else {
				s += row[in] - row[gone]
			}
			out[x] = s
		}
	}
	acc := gi.acc[:W]
	clear(acc)
	for k := -r; k <= r; k++ {
		for x, v := range t[reflect(k, H)*W : (reflect(k, H)+1)*W] {
			acc[x] += v
		}
	}
	inv2 := inv * inv
	for x, v := range acc {
		dst[x] = v * inv2
	}
	for y := 1; y < H; y++ {
		in, gone := reflect(y+r, H)*W, reflect(y-r-1, H)*W
		add, sub, out := t[in:in+W], t[gone:gone+W], dst[y*W:(y+1)*W]
		for x := range acc {
			acc[x] += add[x] - sub[x]
			out[x] = acc[x] * inv2
		}
	}
}

// reflect maps an index up to n outside 0..n-1 back into it, the border repeated (-1 -> 0, n -> n-1).
func reflect(i, n int) int {
	switch {
	case i < 0:
		return -i - 1
	case i >= n:
		return 2*n - i - 1
	}
	return i
}
