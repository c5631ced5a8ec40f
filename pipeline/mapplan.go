package pipeline

import (
	"fmt"
	"math"
	"runtime"
	"strconv"
	"sync"
)

// The map stage as two banded matrix products. Upsampling with aligned corners and the Gaussian are both
// linear and separable, so the smoothed map of docs/algorithm.md §1.9 is
//
//	G_y (sum_l w_l U_l D_l V_l^T) G_x^T = sum_l w_l (G_y U_l) D_l (G_x V_l)^T
//
// where D_l is layer l's h x w distance map, U_l and V_l its row and column upsampling, and G the 1-D
// Gaussian with scipy's reflect border. Each product G U_l is a band a few taps wide (about 41 / scale + 2:
// 12 for a 64-row layer at 256, 5 for a 16-row one), so the whole stage costs about 25 multiply-adds per map
// pixel instead of the 82 of a 41-tap Gaussian in both directions after upsampling, and the full-size map is
// written once. The bands are built once per geometry and cached. The result equals the upsample-then-smooth
// definition up to float64 rounding (TestSmoothedMapMatchesDefinition).

// band is a banded linear map from n inputs to m outputs, stored with one width for every output so that
// every output's loop has the same length: out[o] = sum_j w[o*width+j] * in[start[o]+j].
type band struct {
	m, n  int
	width int
	start []int
	w     []float64
}

// resampleBand returns the band that upsamples n samples to m with aligned corners (torch F.interpolate
// bilinear, align_corners=True) and then applies scipy's 1-D Gaussian (mode "reflect") at m samples; sigma <= 0
// is the upsampling alone, and n == m the Gaussian alone.
func resampleBand(n, m int, sigma, truncate float64) band {
	k, r := []float64{1}, 0
	if sigma > 0 {
		k = gaussianKernel(sigma, truncate)
		r = len(k) / 2
	}
	scale := 0.0
	if m > 1 {
		scale = float64(n-1) / float64(m-1)
	}
	dense := make([]float64, m*n)
	lo, hi := make([]int, m), make([]int, m)
	width := 1
	for o := range m {
		row := dense[o*n : (o+1)*n]
		lo[o], hi[o] = n, -1
		for t := -r; t <= r; t++ {
			i0, i1, f := alignCorners(reflectIndex(o+t, m), scale, n)
			row[i0] += k[t+r] * (1 - f)
			row[i1] += k[t+r] * f
			// the band covers every tap, zero weights too, so a NaN in the features still reaches the map
			lo[o], hi[o] = min(lo[o], i0), max(hi[o], i1)
		}
		width = max(width, hi[o]-lo[o]+1)
	}
	b := band{m: m, n: n, width: width, start: make([]int, m), w: make([]float64, m*width)}
	for o := range m {
		s := min(lo[o], n-width)
		b.start[o] = s
		copy(b.w[o*width:(o+1)*width], dense[o*n+s:o*n+s+width])
	}
	return b
}

// mapPlan is the map stage's arithmetic for one geometry: per layer the column band (the horizontal pass into
// the stacked intermediate E, one block of rows per layer), and for every output row the rows of E and their
// weights (the vertical pass, all layers at once).
type mapPlan struct {
	H, W   int
	layers []planLayer
	eRows  int       // rows of E: the layers' heights summed
	nv     int       // E rows per output row
	vRow   []int     // [H*nv] row of E
	vW     []float64 // [H*nv] its weight
}

type planLayer struct {
	h, w int
	eOff int  // first row of this layer's block of E
	cols band // W outputs from w inputs
}

// layerSize is a distance map's height and width, and the sigma of the Gaussian that smooths it in the map (the
// map's sigma for feature layers and the nearest-normal term, the mean-frame term's own for it).
type layerSize struct {
	h, w  int
	sigma float64
}

var (
	planMu sync.Mutex
	plans  = map[string]*mapPlan{}
)

// maxPlans bounds the plan cache; a process sees one geometry per bundle, so this is never reached in use.
const maxPlans = 32

// planFor returns the cached plan of a map geometry, building it on first use.
func planFor(sizes []layerSize, H, W int, truncate float64) *mapPlan {
	key := make([]byte, 0, 64)
	key = strconv.AppendInt(key, int64(H), 10)
	key = append(key, 'x')
	key = strconv.AppendInt(key, int64(W), 10)
	key = append(key, ' ')
	key = strconv.AppendFloat(key, truncate, 'g', -1, 64)
	for _, s := range sizes {
		key = append(key, ' ')
		key = strconv.AppendInt(key, int64(s.h), 10)
		key = append(key, 'x')
		key = strconv.AppendInt(key, int64(s.w), 10)
		key = append(key, '@')
		key = strconv.AppendFloat(key, s.sigma, 'g', -1, 64)
	}
	planMu.Lock()
	p := plans[string(key)]
	planMu.Unlock()
	if p != nil {
		return p
	}
	p = newMapPlan(sizes, H, W, truncate)
	planMu.Lock()
	if len(plans) >= maxPlans {
		clear(plans)
	}
	plans[string(key)] = p
	planMu.Unlock()
	return p
}

func newMapPlan(sizes []layerSize, H, W int, truncate float64) *mapPlan {
	p := &mapPlan{H: H, W: W}
	rowBands := make([]band, len(sizes))
	for l, s := range sizes {
		p.layers = append(p.layers, planLayer{h: s.h, w: s.w, eOff: p.eRows, cols: resampleBand(s.w, W, s.sigma, truncate)})
		p.eRows += s.h
		rowBands[l] = resampleBand(s.h, H, s.sigma, truncate)
		p.nv += rowBands[l].width
	}
	p.vRow = make([]int, 0, H*p.nv)
	p.vW = make([]float64, 0, H*p.nv)
	for Y := range H {
		for l, b := range rowBands {
			for j := range b.width {
				p.vRow = append(p.vRow, p.layers[l].eOff+b.start[Y]+j)
				p.vW = append(p.vW, b.w[Y*b.width+j])
			}
		}
	}
	return p
}

// apply writes dst (H x W) = sum_l weights[l] * rows_l . d[l] . cols_l^T, using e (eRows x W) as scratch, on
// up to workers goroutines. before, when set, runs on each range of the stacked layer rows before their column
// pass: it is where smoothedAnomalyMap computes those rows of the distance maps. cost, when set, is the work of
// one row of each layer (its distance and its column pass, in any unit), and the goroutines take ranges of
// rows of equal work rather than equal count: a row of the full-size mean-frame term costs a sixth of a ResNet50
// layer's, and by count one goroutine got every feature row and the other only the term's (measured by
// BenchmarkMapStageMeanFrame: two goroutines gained nothing over one).
func (p *mapPlan) apply(d [][]float64, weights []float64, e, dst []float64, workers int, cost []float64, before func(l, r0, r1 int)) {
	var bounds [maxMapWorkers + 1]int
	splitRows := func(f func(part, lo, hi int)) { split(p.eRows, workers, f) }
	if cost != nil && workers > 1 {
		b := p.balanced(cost, min(workers, maxMapWorkers), bounds[:0])
		splitRows = func(f func(part, lo, hi int)) { splitAt(b, f) }
	}
	splitRows(func(_, lo, hi int) {
		for l, ly := range p.layers {
			r0, r1 := max(lo, ly.eOff)-ly.eOff, min(hi, ly.eOff+ly.h)-ly.eOff
			if r0 >= r1 {
				continue
			}
			if before != nil {
				before(l, r0, r1)
			}
			colPass(d[l], r0, r1, ly.w, &ly.cols, weights[l], e[ly.eOff*p.W:(ly.eOff+ly.h)*p.W])
		}
	})
	split(p.H, workers, func(_, lo, hi int) {
		rowPass(e, p.W, p.vRow, p.vW, p.nv, dst[:p.H*p.W], lo, hi)
	})
}

// balanced appends to bounds the parts+1 row boundaries (0 first, eRows last) that cut the plan's stacked rows
// into ranges of about equal summed cost, every row of layer l costing cost[l]. A row goes to the next range when
// the rows before it, with half of it, reach this range's share.
func (p *mapPlan) balanced(cost []float64, parts int, bounds []int) []int {
	total := 0.0
	for l, ly := range p.layers {
		total += float64(ly.h) * cost[l]
	}
	bounds = append(bounds, 0)
	acc, part := 0.0, 1
	for l, ly := range p.layers {
		for r := 0; r < ly.h && part < parts; r++ {
			for part < parts && acc+cost[l]/2 >= total*float64(part)/float64(parts) {
				bounds = append(bounds, ly.eOff+r)
				part++
			}
			acc += cost[l]
		}
	}
	for ; part < parts; part++ {
		bounds = append(bounds, p.eRows)
	}
	return append(bounds, p.eRows)
}

// colPass applies a column band to rows y0..y1 of d (rows of w) into the same rows of e (rows of b.m), times
// scale. Four rows go together: they share the band's weights and give four independent sums to overlap.
func colPass(d []float64, y0, y1, w int, b *band, scale float64, e []float64) {
	W, bw := b.m, b.width
	y := y0
	for ; y+4 <= y1; y += 4 {
		r0, r1, r2, r3 := d[y*w:(y+1)*w], d[(y+1)*w:(y+2)*w], d[(y+2)*w:(y+3)*w], d[(y+3)*w:(y+4)*w]
		o0, o1, o2, o3 := e[y*W:(y+1)*W], e[(y+1)*W:(y+2)*W], e[(y+2)*W:(y+3)*W], e[(y+3)*W:(y+4)*W]
		for X := range o0 {
			s := b.start[X]
			k := b.w[X*bw : (X+1)*bw]
			a0, a1, a2, a3 := r0[s:][:len(k)], r1[s:][:len(k)], r2[s:][:len(k)], r3[s:][:len(k)]
			var s0, s1, s2, s3 float64
			for j, kv := range k {
				s0 += kv * a0[j]
				s1 += kv * a1[j]
				s2 += kv * a2[j]
				s3 += kv * a3[j]
			}
			o0[X], o1[X], o2[X], o3[X] = scale*s0, scale*s1, scale*s2, scale*s3
		}
	}
	for ; y < y1; y++ {
		r, o := d[y*w:(y+1)*w], e[y*W:(y+1)*W]
		for X := range o {
			s := b.start[X]
			k := b.w[X*bw : (X+1)*bw]
			a := r[s:][:len(k)]
			var sum float64
			for j, kv := range k {
				sum += kv * a[j]
			}
			o[X] = scale * sum
		}
	}
}

// rowPass writes output rows y0..y1 of dst (rows of W), each the weighted sum of nv rows of e, four rows of e
// per sweep over the output row so that it is loaded and stored a quarter as often.
func rowPass(e []float64, W int, rows []int, ws []float64, nv int, dst []float64, y0, y1 int) {
	for Y := y0; Y < y1; Y++ {
		out := dst[Y*W : (Y+1)*W]
		rs, cs := rows[Y*nv:(Y+1)*nv], ws[Y*nv:(Y+1)*nv]
		j := 0
		if nv >= 4 {
			e0, e1, e2, e3 := e[rs[0]*W:][:len(out)], e[rs[1]*W:][:len(out)], e[rs[2]*W:][:len(out)], e[rs[3]*W:][:len(out)]
			c0, c1, c2, c3 := cs[0], cs[1], cs[2], cs[3]
			for x := range out {
				out[x] = c0*e0[x] + c1*e1[x] + c2*e2[x] + c3*e3[x]
			}
			j = 4
		} else {
			clear(out)
		}
		for ; j+4 <= nv; j += 4 {
			e0, e1, e2, e3 := e[rs[j]*W:][:len(out)], e[rs[j+1]*W:][:len(out)], e[rs[j+2]*W:][:len(out)], e[rs[j+3]*W:][:len(out)]
			c0, c1, c2, c3 := cs[j], cs[j+1], cs[j+2], cs[j+3]
			for x := range out {
				out[x] += c0*e0[x] + c1*e1[x] + c2*e2[x] + c3*e3[x]
			}
		}
		for ; j < nv; j++ {
			e0, c0 := e[rs[j]*W:][:len(out)], cs[j]
			for x := range out {
				out[x] += c0 * e0[x]
			}
		}
	}
}

// mapScratch holds the map stage's per-frame buffers, reused across frames and batches (a sync.Pool: Score
// may run on several goroutines at once).
type mapScratch struct {
	dist  []float64   // every layer's distance map, back to back
	d     [][]float64 // views of dist, one per layer
	more  []float64   // with several start noises: the distance map of one more reconstruction, added into dist
	dm    [][]float64 // views of more, one per layer
	match []float64   // per layer with a match radius: matchDistanceRows' dot scratch, the frame's squared norms, its reconstructions'
	mb    [][]float64 // views of match's dot scratch, one per layer (nil for a same-position layer)
	na    [][]float64 // views of match's squared norms of the frame, one map per layer (nil for a same-position layer)
	nb    [][]float64 // views of match's squared norms, one map per reconstruction (nil for a same-position layer)
	wts   []float64
	chans []int
	sizes []layerSize
	cost  []float64 // the work of one row of each layer (mapPlan.apply)
	e     []float64 // the plan's intermediate
	amap  []float64 // the smoothed map
	pool  poolScratch
	// guide, when set, is the guided filter of the frame being mapped (map.guided): smoothedMapWith applies it
	// to every map it returns, so the frame's map and its layers' and terms' maps stay a linear sum of each
	// other. mapsAndScores sets it per frame (to &gi, whose buffers it reuses) and clears it when done.
	guide *guidedInput
	gi    guidedInput
}

var mapScratchPool = sync.Pool{New: func() any { return new(mapScratch) }}

// grow returns buf resized to n, reallocated only when its capacity is short.
func grow(buf []float64, n int) []float64 {
	if cap(buf) < n {
		return make([]float64, n)
	}
	return buf[:n]
}

// smoothedAnomalyMap returns frame i's smoothed anomaly map at H x W (docs/algorithm.md §1.9): for each layer
// 1 - cos between the frame's and its reconstructions' features (at the same position, or the best match
// within the layer's match radius), averaged over the ens reconstructions,
// upsampled bilinearly with aligned corners, weighted and summed, then smoothed with the Gaussian (sigma <= 0:
// not smoothed). frames is B; reconstruction k of frame i is item B+i*ens+k of each layer's batch. Every step
// after the distance is linear, so this is the mean of the ens smoothed maps at the cost of one. It runs on up
// to workers goroutines. The map is sc.amap: valid until sc's next use. Python twin: the mean over k of
// reference.smooth(reference.anomaly_map(...)).
func smoothedAnomalyMap(layers []layerOutput, i, frames, ens int, tokens bool, H, W int, sigma, truncate float64, sc *mapScratch, workers int) ([]float64, error) {
	return smoothedMapWith(layers, nil, nil, i, frames, ens, ens, tokens, H, W, sigma, truncate, sc, workers)
}

// pixelInput is one frame's mean-frame term (models.PixelTerm): the frame's preprocessed values and its class's
// mean normal frame, [3*H*W] each, the weight of their distance in the map and the sigma that smooths it.
type pixelInput struct {
	x, mean []float32
	weight  float64
	sigma   float64
}

// pixelDistanceRows writes the distance between the frame and the mean frame, sqrt of the sum over the three
// channels of the squared difference, at positions lo..hi of dst (n = H*W positions per channel).
func pixelDistanceRows(x, mean []float32, n, lo, hi int, dst []float64) {
	r, g, b := x[:n], x[n:2*n], x[2*n:3*n]
	mr, mg, mb := mean[:n], mean[n:2*n], mean[2*n:3*n]
	for j := lo; j < hi; j++ {
		dr, dg, db := float64(r[j])-float64(mr[j]), float64(g[j])-float64(mg[j]), float64(b[j])-float64(mb[j])
		dst[j] = math.Sqrt(dr*dr + dg*dg + db*db)
	}
}

// smoothedMapWith is smoothedAnomalyMap plus, when pix is set, the frame's distance to its mean frame times
// pix.weight (docs/algorithm.md §1.9, "the mean-frame term"): one more map at full size in the same banded
// product, smoothed with its own sigma (pix.sigma; the layers with sigma, the nearest-normal term with knn.sigma), so the
// term costs its distance and its Gaussian alone; and, when knn
// is set, the nearest-normal distances times knn.weight, one more low-resolution layer of the plan. With no
// layers it is the terms' smoothed map alone. The layers hold ens reconstructions per frame, and the map is the
// mean over the first use of them (use = ens but for Options.NoisePrefixes). With sc.guide set the result is
// then guided-filtered (map.guided).
func smoothedMapWith(layers []layerOutput, pix *pixelInput, knn *knnInput, i, frames, ens, use int, tokens bool, H, W int, sigma, truncate float64, sc *mapScratch, workers int) ([]float64, error) {
	if ens < 1 {
		return nil, fmt.Errorf("%d reconstructions per frame: want at least one", ens)
	}
	if use < 1 || use > ens {
		return nil, fmt.Errorf("the mean of %d of %d reconstructions per frame: want 1..%d", use, ens, ens)
	}
	sc.sizes, sc.wts, sc.chans = sc.sizes[:0], sc.wts[:0], sc.chans[:0]
	total := 0
	for _, l := range layers {
		items, c, h, w, err := l.geometry(tokens)
		if err != nil {
			return nil, err
		}
		if h < 1 || w < 1 || c < 1 {
			return nil, fmt.Errorf("feature %s has an empty map (%d channels of %d x %d)", l.Name, c, h, w)
		}
		if last := frames + (i+1)*ens - 1; last >= items {
			return nil, fmt.Errorf("feature %s has %d items, frame %d of %d needs item %d", l.Name, items, i, frames, last)
		}
		sc.sizes = append(sc.sizes, layerSize{h, w, sigma})
		sc.wts = append(sc.wts, l.Weight)
		sc.chans = append(sc.chans, c)
		total += h * w
	}
	knnL, more, err := sc.addTerms(pix, knn, H, W)
	if err != nil {
		return nil, err
	}
	total += more
	sc.dist = grow(sc.dist, total)
	if use > 1 {
		sc.more = grow(sc.more, total)
	}
	// a layer with a match radius needs its reconstructions' squared norms at every position before the
	// goroutines take their rows (a window reaches into its neighbours' rows), the frame's (once, not once per
	// reconstruction), and a map of dot-product scratch
	matched := 0
	for l, s := range sc.sizes[:len(layers)] {
		if layers[l].Match > 0 && !tokens {
			matched += (2 + ens) * s.h * s.w
		}
	}
	sc.match = grow(sc.match, matched)
	sc.d, sc.dm, sc.mb, sc.na, sc.nb = sc.d[:0], sc.dm[:0], sc.mb[:0], sc.na[:0], sc.nb[:0]
	off, moff := 0, 0
	for l, s := range sc.sizes {
		n := s.h * s.w
		sc.d = append(sc.d, sc.dist[off:off+n])
		if use > 1 {
			sc.dm = append(sc.dm, sc.more[off:off+n])
		}
		off += n
		var mb, na, nb []float64
		if l < len(layers) && layers[l].Match > 0 && !tokens {
			mb, na, nb = sc.match[moff:moff+n], sc.match[moff+n:moff+2*n], sc.match[moff+2*n:moff+(2+ens)*n]
			moff += (2 + ens) * n
			squaredNorms(layers[l].item(i, sc.chans[l]*n), sc.chans[l], n, na)
			for k := range use {
				squaredNorms(layers[l].item(frames+i*ens+k, sc.chans[l]*n), sc.chans[l], n, nb[k*n:(k+1)*n])
			}
		}
		sc.mb, sc.na, sc.nb = append(sc.mb, mb), append(sc.na, na), append(sc.nb, nb)
	}
	p := planFor(sc.sizes, H, W, truncate)
	sc.e = grow(sc.e, p.eRows*W)
	sc.amap = grow(sc.amap, H*W)
	p.apply(sc.d, sc.wts, sc.e, sc.amap, workers, sc.rowCosts(p, layers, use, tokens), func(l, r0, r1 int) {
		s := sc.sizes[l]
		n, lo, hi := s.h*s.w, r0*s.w, r1*s.w
		if l == knnL { // the nearest-normal term: the graph's distances
			d := sc.d[l]
			for j, v := range knn.dist[lo:hi] {
				d[lo+j] = float64(v)
			}
			return
		}
		if l == len(layers) { // the mean-frame term: one distance, whatever the start noises
			pixelDistanceRows(pix.x, pix.mean, n, lo, hi, sc.d[l])
			return
		}
		dist := func(k int, dst []float64) {
			j := frames + i*ens + k
			if sc.mb[l] != nil {
				per := sc.chans[l] * n
				matchDistanceRows(layers[l].item(i, per), layers[l].item(j, per), sc.na[l], sc.nb[l][k*n:(k+1)*n], sc.chans[l], s.h, s.w,
					layers[l].Match, r0, r1, dst, sc.mb[l])
				return
			}
			layers[l].distance(i, j, tokens, sc.chans[l], n, lo, hi, dst)
		}
		dist(0, sc.d[l])
		if use == 1 {
			return
		}
		d, more := sc.d[l][lo:hi], sc.dm[l]
		for k := 1; k < use; k++ {
			dist(k, more)
			for j, v := range more[lo:hi] {
				d[j] += v
			}
		}
		inv := 1 / float64(use)
		for j := range d {
			d[j] *= inv
		}
	})
	if sc.guide != nil {
		sc.guide.filter(sc.amap)
	}
	return sc.amap, nil
}

// rowCosts is the work of one row of each of the plan's layers (mapPlan.apply): its distances (multiply-adds
// over the channels, for each of use reconstructions and every candidate position of a match window) and its
// column pass. The terms' rows after the feature layers compute one distance each.
func (sc *mapScratch) rowCosts(p *mapPlan, layers []layerOutput, use int, tokens bool) []float64 {
	sc.cost = sc.cost[:0]
	for l, s := range sc.sizes {
		c := float64(sc.chans[l] * s.w)
		if l < len(layers) {
			c *= float64(use)
			if r := layers[l].Match; r > 0 && !tokens {
				c *= float64((2*r + 1) * (2*r + 1))
			}
		}
		sc.cost = append(sc.cost, c+float64(p.W*p.layers[l].cols.width))
	}
	return sc.cost
}

// addTerms appends the map plan's layers of the mean-frame term (full size) and the nearest-normal term (the
// knn graph's size), each smoothed with its own sigma, when set, after the feature layers; it returns the
// nearest-normal term's layer (-1: none) and the values they add.
func (sc *mapScratch) addTerms(pix *pixelInput, knn *knnInput, H, W int) (knnL, total int, err error) {
	if pix != nil {
		if len(pix.x) != 3*H*W || len(pix.mean) != 3*H*W {
			return 0, 0, fmt.Errorf("mean-frame term: the frame has %d values and the mean frame %d, want 3x%dx%d", len(pix.x), len(pix.mean), H, W)
		}
		sc.sizes = append(sc.sizes, layerSize{H, W, pix.sigma})
		sc.wts = append(sc.wts, pix.weight)
		sc.chans = append(sc.chans, 3)
		total += H * W
	}
	knnL = -1
	if knn != nil {
		if knn.h < 1 || knn.w < 1 || len(knn.dist) != knn.h*knn.w {
			return 0, 0, fmt.Errorf("nearest-normal term: %d distances for a %dx%d map", len(knn.dist), knn.h, knn.w)
		}
		knnL = len(sc.sizes)
		sc.sizes = append(sc.sizes, layerSize{knn.h, knn.w, knn.sigma})
		sc.wts = append(sc.wts, knn.weight)
		sc.chans = append(sc.chans, 1)
		total += knn.h * knn.w
	}
	return knnL, total, nil
}

// geometry checks the layer's shape and returns its batch size, channels and map size.
func (l layerOutput) geometry(tokens bool) (items, c, h, w int, err error) {
	sh := l.Shape
	if tokens {
		if len(sh) != 3 {
			return 0, 0, 0, 0, fmt.Errorf("feature %s has shape %v, want [2B, 1+N, D]", l.Name, sh)
		}
		ntok, d := int(sh[1])-1, int(sh[2])
		side := isqrt(ntok)
		if ntok < 1 || side*side != ntok {
			return 0, 0, 0, 0, fmt.Errorf("feature %s has %d patch tokens, not a square grid", l.Name, ntok)
		}
		items, c, h, w = int(sh[0]), d, side, side
		if len(l.Data)+len(l.Rec) != items*(ntok+1)*d {
			return 0, 0, 0, 0, fmt.Errorf("feature %s holds %d values, its shape %v says %d", l.Name, len(l.Data)+len(l.Rec), sh, items*(ntok+1)*d)
		}
		return items, c, h, w, nil
	}
	if len(sh) != 4 {
		return 0, 0, 0, 0, fmt.Errorf("feature %s has shape %v, want [2B, C, h, w]", l.Name, sh)
	}
	items, c, h, w = int(sh[0]), int(sh[1]), int(sh[2]), int(sh[3])
	if len(l.Data)+len(l.Rec) != items*c*h*w {
		return 0, 0, 0, 0, fmt.Errorf("feature %s holds %d values, its shape %v says %d", l.Name, len(l.Data)+len(l.Rec), sh, items*c*h*w)
	}
	return items, c, h, w, nil
}

// distance writes 1 - cos between items i and j of the layer (c channels, n positions, its geometry checked)
// at positions lo..hi of dst.
func (l layerOutput) distance(i, j int, tokens bool, c, n, lo, hi int, dst []float64) {
	if tokens {
		per := (n + 1) * c
		// skip the CLS token: rows 1..N are the patches, row-major on the grid
		a, b := l.item(i, per)[c:], l.item(j, per)[c:]
		cosineDistanceRows(a[lo*c:hi*c], b[lo*c:hi*c], hi-lo, c, dst[lo:hi])
		return
	}
	per := c * n
	cosineDistanceRange(l.item(i, per), l.item(j, per), c, n, lo, hi, dst)
}

// isqrt is the integer square root of n >= 0, rounded down.
func isqrt(n int) int {
	if n < 0 {
		return -1
	}
	r := 0
	for (r+1)*(r+1) <= n {
		r++
	}
	return r
}

// maxMapWorkers caps the goroutines of one frame's map: past a few, the joins cost more than the halves save.
const maxMapWorkers = 4

// mapWorkers is how many goroutines the map stage of a frame uses: the CPU budget the scorer gives ONNX
// Runtime (Options.Threads; 0 means every core), since the map runs when the graphs are done and their
// threads idle.
func (s *Scorer) mapWorkers() int {
	n := runtime.GOMAXPROCS(0)
	if s.opt.Threads > 0 {
		n = min(n, s.opt.Threads)
	}
	return max(1, min(n, maxMapWorkers))
}
