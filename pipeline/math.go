package pipeline

import (
	"math"
	"math/rand/v2"
	"sync"
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
// planes). Like torch's cosine_similarity, the denominator is max(|a|*|b|, eps). The sums are float64. Positions
// go in blocks whose three sums stay in the L1 cache while every channel plane streams past once, four
// channels per sweep.
func cosineDistance(a, b []float32, c, hw int, dst []float64) {
	cosineDistanceRange(a, b, c, hw, 0, hw, dst)
}

// cosineDistanceRange is cosineDistance at positions lo..hi only (of dst too).
func cosineDistanceRange(a, b []float32, c, hw, lo, hi int, dst []float64) {
	const blk = 256
	var dot, na, nb [blk]float64
	for p0 := lo; p0 < hi; p0 += blk {
		n := min(blk, hi-p0)
		sd, sa, sb := dot[:n], na[:n], nb[:n]
		clear(sd)
		clear(sa)
		clear(sb)
		ch := 0
		for ; ch+4 <= c; ch += 4 {
			a0, a1, a2, a3 := a[ch*hw+p0:][:n], a[(ch+1)*hw+p0:][:n], a[(ch+2)*hw+p0:][:n], a[(ch+3)*hw+p0:][:n]
			b0, b1, b2, b3 := b[ch*hw+p0:][:n], b[(ch+1)*hw+p0:][:n], b[(ch+2)*hw+p0:][:n], b[(ch+3)*hw+p0:][:n]
			for i := range sd {
				x0, x1, x2, x3 := float64(a0[i]), float64(a1[i]), float64(a2[i]), float64(a3[i])
				y0, y1, y2, y3 := float64(b0[i]), float64(b1[i]), float64(b2[i]), float64(b3[i])
				sd[i] += (x0*y0 + x1*y1) + (x2*y2 + x3*y3)
				sa[i] += (x0*x0 + x1*x1) + (x2*x2 + x3*x3)
				sb[i] += (y0*y0 + y1*y1) + (y2*y2 + y3*y3)
			}
		}
		for ; ch < c; ch++ {
			a0, b0 := a[ch*hw+p0:][:n], b[ch*hw+p0:][:n]
			for i := range sd {
				x, y := float64(a0[i]), float64(b0[i])
				sd[i] += x * y
				sa[i] += x * x
				sb[i] += y * y
			}
		}
		cosineFinish(sd, sa, sb, dst[p0:p0+n])
	}
}

// cosineDistanceRows is cosineDistance for position-major data: a and b are [n, C] (ViT tokens), so each
// position's channels are contiguous. Two positions go together for independent sums.
func cosineDistanceRows(a, b []float32, n, c int, dst []float64) {
	var dot, na, nb [2]float64
	p := 0
	for ; p+2 <= n; p += 2 {
		x0, x1 := a[p*c:][:c], a[(p+1)*c:][:c]
		y0, y1 := b[p*c:][:c], b[(p+1)*c:][:c]
		var d0, d1, a0, a1, b0, b1 float64
		for j := range x0 {
			u0, u1, v0, v1 := float64(x0[j]), float64(x1[j]), float64(y0[j]), float64(y1[j])
			d0 += u0 * v0
			d1 += u1 * v1
			a0 += u0 * u0
			a1 += u1 * u1
			b0 += v0 * v0
			b1 += v1 * v1
		}
		dot, na, nb = [2]float64{d0, d1}, [2]float64{a0, a1}, [2]float64{b0, b1}
		cosineFinish(dot[:], na[:], nb[:], dst[p:p+2])
	}
	for ; p < n; p++ {
		x, y := a[p*c:][:c], b[p*c:][:c]
		var d, sa, sb float64
		for j := range x {
			u, v := float64(x[j]), float64(y[j])
			d += u * v
			sa += u * u
			sb += v * v
		}
		dot[0], na[0], nb[0] = d, sa, sb
		cosineFinish(dot[:1], na[:1], nb[:1], dst[p:p+1])
	}
}

// cosineFinish turns the sums of each position into 1 - dot / max(sqrt(|a|^2 |b|^2), eps).
func cosineFinish(dot, na, nb, dst []float64) {
	const eps = 1e-8
	for i := range dst {
		den := math.Sqrt(na[i] * nb[i])
		if den < eps {
			den = eps
		}
		dst[i] = 1 - dot[i]/den
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
// "reflect"): the map plan of a single full-size layer of weight 1, whose bands are the Gaussian alone.
func gaussianFilter(m []float64, h, w int, sigma, truncate float64) {
	if sigma <= 0 {
		return
	}
	p := planFor([]layerSize{{h, w, sigma}}, h, w, truncate)
	src := append([]float64(nil), m...)
	p.apply([][]float64{src}, []float64{1}, make([]float64, p.eRows*w), m, 1, nil, nil)
}

// poolScratch holds pooledMax's buffers between calls.
type poolScratch struct{ a, b, t []float64 }

// pooledMax applies repeat passes of a k x k average pool (stride 1, no padding) and returns the maximum: the
// reference's image score (8 passes of k=8 on a 256 map leave 200 x 200). The passes must leave at least one
// value (models.Load checks a bundle's recipe against its input size).
func pooledMax(m []float64, h, w, k, repeat int) float64 {
	return pooledMaxWith(m, h, w, k, repeat, &poolScratch{}, 1)
}

// pooledMaxWith is pooledMax with its buffers from sc, on up to workers goroutines. The 2-D pool is a box over
// rows then over columns, and the passes commute, so all the row passes run first, then the map is transposed
// and the column passes run as row passes too: every pass is a running sum down the rows, which walks memory
// in order and keeps the adds of neighbouring columns independent, and each column's passes are independent of
// the others', so the workers take a range of columns each. m is not modified.
func pooledMaxWith(m []float64, h, w, k, repeat int, sc *poolScratch, workers int) float64 {
	if k <= 1 || repeat <= 0 {
		return maxOf(m[:h*w])
	}
	sc.a, sc.b, sc.t = grow(sc.a, h*w), grow(sc.b, h*w), grow(sc.t, h*w)
	inv := 1 / float64(k)
	hv, wv := h-repeat*(k-1), w-repeat*(k-1)
	// Down the rows of every column, then each column becomes a row of the transposed map t.
	split(w, workers, func(_, c0, c1 int) {
		cur, next := m, sc.a
		rows := h
		for r := range repeat {
			boxDown(cur, next, rows, w, c0, c1, k, inv)
			rows -= k - 1
			if r == 0 {
				cur, next = sc.a, sc.b
			} else {
				cur, next = next, cur
			}
		}
		transpose(cur, hv, w, c0, c1, sc.t)
	})
	// The transposed map (w rows of hv) down its rows: the original's rows, each worker a range of them.
	maxes := make([]float64, max(workers, 1))
	for i := range maxes {
		maxes[i] = math.Inf(-1)
	}
	split(hv, workers, func(part, c0, c1 int) {
		cur, next := sc.t, sc.a
		rows := w
		for range repeat {
			boxDown(cur, next, rows, hv, c0, c1, k, inv)
			rows -= k - 1
			cur, next = next, cur
		}
		best := math.Inf(-1)
		for y := range wv {
			best = max(best, maxOf(cur[y*hv+c0:y*hv+c1]))
		}
		maxes[part] = best
	})
	return maxOf(maxes)
}

// boxDown writes, for columns c0..c1 of src (rows of stride values), the means of every k consecutive rows
// into the same columns of dst (rows-k+1 rows of the same stride): the first directly, each next one from the
// previous by adding the row that enters and removing the one that leaves.
func boxDown(src, dst []float64, rows, stride, c0, c1, k int, inv float64) {
	n := c1 - c0
	out := dst[c0:][:n]
	copy(out, src[c0:][:n])
	for j := 1; j < k; j++ {
		in := src[j*stride+c0:][:len(out)]
		for x := range out {
			out[x] += in[x]
		}
	}
	for x := range out {
		out[x] *= inv
	}
	for y := 1; y < rows-k+1; y++ {
		prev, out := dst[(y-1)*stride+c0:][:n], dst[y*stride+c0:][:n]
		add, sub := src[(y+k-1)*stride+c0:][:len(out)], src[(y-1)*stride+c0:][:len(out)]
		prev = prev[:len(out)]
		for x := range out {
			out[x] = prev[x] + (add[x]-sub[x])*inv
		}
	}
}

// transpose writes columns c0..c1 of src (rows x cols) as rows c0..c1 of dst (cols x rows), in tiles that
// stay in the cache.
func transpose(src []float64, rows, cols, c0, c1 int, dst []float64) {
	const t = 16
	for y0 := 0; y0 < rows; y0 += t {
		y1 := min(y0+t, rows)
		for x0 := c0; x0 < c1; x0 += t {
			x1 := min(x0+t, c1)
			for y := y0; y < y1; y++ {
				row := src[y*cols : (y+1)*cols]
				for x := x0; x < x1; x++ {
					dst[x*rows+y] = row[x]
				}
			}
		}
	}
}

// split runs f on up to parts contiguous ranges covering [0, n), numbered from 0, all but the first on new
// goroutines, and returns when all are done. The map stage runs after the feature graph, when ONNX Runtime's threads are idle;
// a frame's map is about a millisecond of work, so two halves of it cost a few microseconds of goroutine
// start and join.
func split(n, parts int, f func(part, lo, hi int)) {
	parts = min(parts, n)
	if parts <= 1 {
		f(0, 0, n)
		return
	}
	var wg sync.WaitGroup
	for p := 1; p < parts; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(p, n*p/parts, n*(p+1)/parts)
		}()
	}
	f(0, 0, n/parts)
	wg.Wait()
}

// splitAt is split over the given ranges: f runs on [bounds[k], bounds[k+1]) for each k whose range is not
// empty, all but the first on new goroutines, and it returns when all are done.
func splitAt(bounds []int, f func(part, lo, hi int)) {
	var wg sync.WaitGroup
	for k := 1; k+1 < len(bounds); k++ {
		if bounds[k] < bounds[k+1] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f(k, bounds[k], bounds[k+1])
			}()
		}
	}
	if len(bounds) > 1 && bounds[0] < bounds[1] {
		f(0, bounds[0], bounds[1])
	}
	wg.Wait()
}

// maxOf returns the largest value of m (-Inf when empty); a NaN anywhere is not larger than anything.
func maxOf(m []float64) float64 {
	best := math.Inf(-1)
	for _, v := range m {
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
