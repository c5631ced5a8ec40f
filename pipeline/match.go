package pipeline

import "math"

// matchDistanceRows writes, at rows y0..y1 of dst (an h x w map), the smallest 1 - cos between a's feature
// vector at each position and b's at any position within r cells of it (a square window, clipped to the map).
// a and b are [c, h*w] channel planes; na and nb hold their squared norms at every position (squaredNorms),
// computed once per map rather than once per call, as a frame's are reused for each of its reconstructions.
// dot is h*w scratch indexed like dst; only rows y0..y1 of it are written, so goroutines on disjoint rows may
// share it.
//
// Why: a reconstruction from noise redraws a stochastic texture (paper fibres, a noisy background) with
// another phase, so the feature at the same position differs on every normal frame, while a defect has no
// match anywhere near (docs/algorithm.md §1.9). Each displacement sweeps every channel plane once, row by row,
// accumulating the dot product; the sums are float64 like cosineDistanceRange's.
func matchDistanceRows(a, b []float32, na, nb []float64, c, h, w, r, y0, y1 int, dst, dot []float64) {
	const eps = 1e-8
	hw := h * w
	lo, hi := y0*w, y1*w
	dot, na = dot[lo:hi], na[lo:hi]
	out := dst[lo:hi]
	for i := range out {
		out[i] = math.Inf(1)
	}
	for dy := -r; dy <= r; dy++ {
		ya, yb := max(y0, -dy), min(y1, h-dy) // rows whose displaced row is inside the map
		if ya >= yb {
			continue
		}
		for dx := -r; dx <= r; dx++ {
			xa, xb := max(0, -dx), min(w, w-dx)
			if xa >= xb {
				continue
			}
			for y := ya; y < yb; y++ {
				clear(dot[(y-y0)*w+xa : (y-y0)*w+xb])
			}
			for ch := 0; ch < c; ch++ {
				ap, bp := a[ch*hw:(ch+1)*hw], b[ch*hw:(ch+1)*hw]
				for y := ya; y < yb; y++ {
					ar := ap[y*w+xa : y*w+xb]
					q := (y+dy)*w + dx
					br := bp[q+xa : q+xb]
					o := (y - y0) * w
					dr := dot[o+xa : o+xb]
					br, dr = br[:len(ar)], dr[:len(ar)]
					for i, u := range ar {
						dr[i] += float64(u) * float64(br[i])
					}
				}
			}
			for y := ya; y < yb; y++ {
				o := (y - y0) * w
				q := (y+dy)*w + dx
				for x := xa; x < xb; x++ {
					i := o + x
					den := math.Sqrt(na[i] * nb[q+x])
					if den < eps {
						den = eps
					}
					if d := 1 - dot[i]/den; d < out[i] {
						out[i] = d
					}
				}
			}
		}
	}
}

// squaredNorms writes the squared norm over the c channel planes of b ([c, hw]) at each position into dst.
func squaredNorms(b []float32, c, hw int, dst []float64) {
	clear(dst[:hw])
	for ch := 0; ch < c; ch++ {
		for i, v := range b[ch*hw : (ch+1)*hw] {
			dst[i] += float64(v) * float64(v)
		}
	}
}
