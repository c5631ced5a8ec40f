package pipeline

import (
	"math"
	"math/rand/v2"
)

// AlphasCumprod returns abar[t] = prod_{s<=t} (1 - beta_s) for Stable Diffusion's "linear" schedule:
// betas = linspace(sqrt(start), sqrt(end), T)^2, computed in float64 as the reference does.
func AlphasCumprod(start, end float64, steps int) []float64 {
	a := make([]float64, steps)
	s0, s1 := math.Sqrt(start), math.Sqrt(end)
	prod := 1.0
	for i := 0; i < steps; i++ {
		var b float64
		if steps == 1 {
			b = start
		} else {
			r := s0 + (s1-s0)*float64(i)/float64(steps-1)
			b = r * r
		}
		prod *= 1 - b
		a[i] = prod
	}
	return a
}

// DDIMTimesteps returns the "uniform" DDIM timesteps range(0, T, T/steps) + 1, ascending (the sampler visits
// them in reverse), as in LDM's make_ddim_timesteps.
func DDIMTimesteps(trainSteps, ddimSteps int) []int {
	c := trainSteps / ddimSteps
	var ts []int
	for t := 0; t < trainSteps; t += c {
		ts = append(ts, t+1)
	}
	return ts
}

// noiseFor returns the start (and posterior) noise for one frame: a seeded standard normal stream, so the
// same frame scores the same on every run with the "fixed" policy.
func noiseFor(seed int64, seq uint64, perFrame bool, n int) (post, start []float32) {
	stream := uint64(0)
	if perFrame {
		stream = seq + 1
	}
	r := rand.New(rand.NewPCG(uint64(seed), stream))
	post = make([]float32, n)
	start = make([]float32, n)
	for i := range post {
		post[i] = float32(r.NormFloat64())
	}
	for i := range start {
		start[i] = float32(r.NormFloat64())
	}
	return post, start
}

// cosineDistance writes 1 - cos(a, b) over channels for each of hw positions; a and b are [C, hw] (channel
// planes). Like torch's cosine_similarity, the denominator is max(|a|*|b|, eps).
func cosineDistance(a, b []float32, c, hw int, dst []float64) {
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

// alignCorners maps output index i to the two source indices and the weight of the second, for a source of n
// samples and a step of scale source samples per output sample.
func alignCorners(i int, scale float64, n int) (i0, i1 int, frac float64) {
	f := float64(i) * scale
	i0 = min(int(f), n-1)
	i1 = min(i0+1, n-1)
	return i0, i1, f - float64(i0)
}

// gaussianKernel returns scipy.ndimage's 1-D Gaussian weights: radius int(truncate*sigma + 0.5), normalised.
func gaussianKernel(sigma, truncate float64) []float64 {
	r := int(truncate*sigma + 0.5)
	k := make([]float64, 2*r+1)
	sum := 0.0
	for i := -r; i <= r; i++ {
		v := math.Exp(-0.5 * float64(i*i) / (sigma * sigma))
		k[i+r] = v
		sum += v
	}
	for i := range k {
		k[i] /= sum
	}
	return k
}

// reflectIndex maps i into [0, n) with scipy's "reflect" mode (d c b a | a b c d | d c b a).
func reflectIndex(i, n int) int {
	if n == 1 {
		return 0
	}
	p := 2 * n
	i %= p
	if i < 0 {
		i += p
	}
	if i >= n {
		i = p - 1 - i
	}
	return i
}

// gaussianFilter smooths an h x w map in place like scipy.ndimage.gaussian_filter (separable, mode
// "reflect"). Both passes walk rows, so the column pass reads memory in order instead of striding by w: on a
// 256 x 256 map that is what keeps this step at a few milliseconds.
func gaussianFilter(m []float64, h, w int, sigma, truncate float64) {
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

// pooledMax applies repeat passes of a k x k average pool (stride 1, no padding) and returns the maximum: the
// reference's image score (8 passes of k=8 on a 256 map leave 200 x 200).
func pooledMax(m []float64, h, w, k, repeat int) float64 {
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

// PooledMax is the image score of a float32 map of h x w: pooledMax with the bundle's kernel and repeat
// (docs/algorithm.md §1.10). It lets a caller that edits a result's map (pipeline/roi zeroes it outside a
// region of interest) rescore it with exactly the scorer's pooling.
func PooledMax(m []float32, h, w, k, repeat int) float64 {
	f := make([]float64, len(m))
	for i, v := range m {
		f[i] = float64(v)
	}
	return pooledMax(f, h, w, k, repeat)
}
