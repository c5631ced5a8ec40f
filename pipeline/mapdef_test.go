package pipeline

import (
	"fmt"
	"math"
)

// The map stage written as its definition (docs/algorithm.md §1.9-1.10), step by step, as the pipeline computed
// it before the banded form of mapplan.go: each layer's distance map upsampled and added at full size, then a
// 41-tap Gaussian along rows and along columns, then the pool passes each allocating its result. The tests
// check the fast path against these (and these against the PyTorch reference in the stage tests).

// anomalyMap returns frame i's anomaly map at H x W before smoothing: for each layer, 1 - cos between the
// frame's and its reconstruction's features at every position (or its best match within the layer's match
// radius), upsampled bilinearly with aligned corners and
// added with the layer's weight (docs/algorithm.md §1.9). frames is B; the reconstruction of frame i is item
// B+i of each layer's batch. Python twin: reference.anomaly_map.
func anomalyMap(layers []layerOutput, i, frames int, tokens bool, H, W int) ([]float64, error) {
	amap := make([]float64, H*W)
	for _, l := range layers {
		in, c, h, w, err := l.planes(i, tokens)
		if err != nil {
			return nil, err
		}
		rec, _, _, _, err := l.planes(frames+i, tokens)
		if err != nil {
			return nil, err
		}
		d := make([]float64, h*w)
		if l.Match > 0 {
			d = matchDistanceDirect(in, rec, c, h, w, l.Match)
		} else {
			cosineDistanceDirect(in, rec, c, h*w, d)
		}
		upsampleAlignCorners(d, h, w, amap, H, W, l.Weight)
	}
	return amap, nil
}

// planes returns item k of the layer's batch as c channel planes of h x w; ViT tokens drop the CLS token and
// lay the patch tokens out on their square grid.
func (l layerOutput) planes(k int, tokens bool) (p []float32, c, h, w int, err error) {
	sh := l.Shape
	if tokens {
		if len(sh) != 3 {
			return nil, 0, 0, 0, fmt.Errorf("feature %s has shape %v, want [2B, 1+N, D]", l.Name, sh)
		}
		ntok, d := int(sh[1])-1, int(sh[2])
		side := int(math.Round(math.Sqrt(float64(ntok))))
		if side*side != ntok {
			return nil, 0, 0, 0, fmt.Errorf("feature %s has %d patch tokens, not a square grid", l.Name, ntok)
		}
		per := (ntok + 1) * d
		return tokensToPlanes(l.Data[k*per:(k+1)*per], ntok, d), d, side, side, nil
	}
	if len(sh) != 4 {
		return nil, 0, 0, 0, fmt.Errorf("feature %s has shape %v, want [2B, C, h, w]", l.Name, sh)
	}
	c, h, w = int(sh[1]), int(sh[2]), int(sh[3])
	per := c * h * w
	return l.Data[k*per : (k+1)*per], c, h, w, nil
}

// cosineDistanceDirect writes 1 - cos(a, b) over channels for each of hw positions; a and b are [C, hw] (channel
// planes). Like torch's cosine_similarity, the denominator is max(|a|*|b|, eps).
func cosineDistanceDirect(a, b []float32, c, hw int, dst []float64) {
	const eps = 1e-8
	dot := make([]float64, hw)
	na := make([]float64, hw)
	nb := make([]float64, hw)
	for ch := 0; ch < c; ch++ {
		pa, pb := a[ch*hw:(ch+1)*hw], b[ch*hw:(ch+1)*hw]
		for i := 0; i < hw; i++ {
			x, y := float64(pa[i]), float64(pb[i])
			dot[i] += x * y
			na[i] += x * x
			nb[i] += y * y
		}
	}
	for i := 0; i < hw; i++ {
		den := math.Sqrt(na[i] * nb[i])
		if den < eps {
			den = eps
		}
		dst[i] = 1 - dot[i]/den
	}
}

// tokensToPlanes turns ViT tokens [1+N, D] (CLS first) into D planes of a sqrt(N) x sqrt(N) grid.
func tokensToPlanes(tok []float32, n, d int) []float32 {
	out := make([]float32, n*d)
	for i := 0; i < n; i++ {
		row := tok[(i+1)*d : (i+2)*d]
		for ch := 0; ch < d; ch++ {
			out[ch*n+i] = row[ch]
		}
	}
	return out
}

// upsampleAlignCorners resizes a h x w map to H x W bilinearly with align_corners=True (torch
// F.interpolate semantics), adding weight*value into dst.
func upsampleAlignCorners(src []float64, h, w int, dst []float64, H, W int, weight float64) {
	sy, sx := 0.0, 0.0
	if H > 1 {
		sy = float64(h-1) / float64(H-1)
	}
	if W > 1 {
		sx = float64(w-1) / float64(W-1)
	}
	x0s := make([]int, W)
	x1s := make([]int, W)
	fxs := make([]float64, W)
	for X := 0; X < W; X++ {
		x0s[X], x1s[X], fxs[X] = alignCorners(X, sx, w)
	}
	for Y := 0; Y < H; Y++ {
		y0, y1, ly := alignCorners(Y, sy, h)
		r0, r1 := src[y0*w:(y0+1)*w], src[y1*w:(y1+1)*w]
		drow := dst[Y*W : (Y+1)*W]
		for X := 0; X < W; X++ {
			x0, x1, lx := x0s[X], x1s[X], fxs[X]
			top := r0[x0]*(1-lx) + r0[x1]*lx
			bot := r1[x0]*(1-lx) + r1[x1]*lx
			drow[X] += weight * (top*(1-ly) + bot*ly)
		}
	}
}

// gaussianFilterDirect smooths an h x w map in place like scipy.ndimage.gaussian_filter (separable, mode
// "reflect"). Both passes walk rows, so the column pass reads memory in order instead of striding by w: on a
// 256 x 256 map that is what keeps this step at a few milliseconds.
func gaussianFilterDirect(m []float64, h, w int, sigma, truncate float64) {
	if sigma <= 0 {
		return
	}
	k := gaussianKernel(sigma, truncate)
	r := len(k) / 2
	// rows
	line := make([]float64, w+2*r)
	for y := 0; y < h; y++ {
		row := m[y*w : (y+1)*w]
		for i := -r; i < w+r; i++ {
			line[i+r] = row[reflectIndex(i, w)]
		}
		for x := range row {
			win := line[x : x+len(k)]
			s := 0.0
			for j, kv := range k {
				s += kv * win[j]
			}
			row[x] = s
		}
	}
	// columns: out row y = sum_j k[j] * in row reflect(y+j-r)
	src := append([]float64(nil), m...)
	for y := 0; y < h; y++ {
		out := m[y*w : (y+1)*w]
		clear(out)
		for j, kv := range k {
			in := src[reflectIndex(y+j-r, h)*w:][:w]
			for x, v := range in {
				out[x] += kv * v
			}
		}
	}
}

// pooledMaxDirect applies repeat passes of a k x k average pool (stride 1, no padding) and returns the maximum: the
// reference's image score (8 passes of k=8 on a 256 map leave 200 x 200).
func pooledMaxDirect(m []float64, h, w, k, repeat int) float64 {
	cur := append([]float64(nil), m...)
	for r := 0; r < repeat && k > 1; r++ {
		nh, nw := h-k+1, w-k+1
		// horizontal box sums, then vertical
		tmp := make([]float64, h*nw)
		for y := 0; y < h; y++ {
			row := cur[y*w : (y+1)*w]
			s := 0.0
			for x := 0; x < k; x++ {
				s += row[x]
			}
			tmp[y*nw] = s
			for x := 1; x < nw; x++ {
				s += row[x+k-1] - row[x-1]
				tmp[y*nw+x] = s
			}
		}
		// vertical: a running sum of k rows of tmp, moved down one row at a time
		next := make([]float64, nh*nw)
		inv := 1 / float64(k*k)
		acc := make([]float64, nw)
		for j := 0; j < k; j++ {
			for x, v := range tmp[j*nw : (j+1)*nw] {
				acc[x] += v
			}
		}
		for y := 0; y < nh; y++ {
			if y > 0 {
				add, sub := tmp[(y+k-1)*nw:][:nw], tmp[(y-1)*nw:][:nw]
				for x := range acc {
					acc[x] += add[x] - sub[x]
				}
			}
			out := next[y*nw : (y+1)*nw]
			for x, v := range acc {
				out[x] = v * inv
			}
		}
		cur, h, w = next, nh, nw
	}
	best := math.Inf(-1)
	for _, v := range cur {
		if v > best {
			best = v
		}
	}
	return best
}
