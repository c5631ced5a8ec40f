// Package pilresize resizes 8-bit images exactly as Pillow's BILINEAR filter does (separable, horizontal pass
// first, 8-bit intermediate rounding, antialiased when shrinking), the resize the reference's preprocessing
// applies through torchvision. It is pure Go so that the cgo pipeline (the model's input) and the pure synth
// package (what a painted defect looks like at the model's input) share one resize.
package pilresize

import "math"

// PrecisionBits is Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2).
const PrecisionBits = 22

// Coeffs computes Pillow's resampling coefficients for one axis with the bilinear (triangle) filter,
// antialiased when downscaling: the filter support grows with the scale. It mirrors Pillow's
// precompute_coeffs + normalize_coeffs_8bpc so that resized pixels are bit-identical to the reference's
// torchvision Resize on PIL images. Output pixel i takes kk[i*ksize:][:bounds[2i+1]] over the input pixels
// from bounds[2i].
func Coeffs(inSize, outSize int) (bounds []int, kk []int32, ksize int) {
	scale := float64(inSize) / float64(outSize)
	filterscale := scale
	if filterscale < 1 {
		filterscale = 1
	}
	support := 1.0 * filterscale // bilinear support is 1
	ksize = int(math.Ceil(support))*2 + 1
	bounds = make([]int, outSize*2)
	kk = make([]int32, outSize*ksize)
	k := make([]float64, ksize)
	for xx := 0; xx < outSize; xx++ {
		center := (float64(xx) + 0.5) * scale
		ww := 0.0
		ss := 1.0 / filterscale
		xmin := int(center - support + 0.5)
		if xmin < 0 {
			xmin = 0
		}
		xmax := int(center + support + 0.5)
		if xmax > inSize {
			xmax = inSize
		}
		xmax -= xmin
		for x := 0; x < ksize; x++ {
			k[x] = 0
		}
		for x := 0; x < xmax; x++ {
			w := math.Abs((float64(x+xmin) - center + 0.5) * ss)
			if w < 1 {
				w = 1 - w
			} else {
				w = 0
			}
			k[x] = w
			ww += w
		}
		for x := 0; x < xmax; x++ {
			if ww != 0 {
				k[x] /= ww
			}
		}
		for x := 0; x < ksize; x++ {
			if k[x] < 0 {
				kk[xx*ksize+x] = int32(-0.5 + k[x]*(1<<PrecisionBits))
			} else {
				kk[xx*ksize+x] = int32(0.5 + k[x]*(1<<PrecisionBits))
			}
		}
		bounds[2*xx], bounds[2*xx+1] = xmin, xmax
	}
	return bounds, kk, ksize
}

// Clip8 rounds a fixed-point sum back to a byte.
func Clip8(v int32) byte {
	v >>= PrecisionBits
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return byte(v)
}

// Resize returns pix, a w0 x h0 image of c interleaved 8-bit channels, resized to w x h. The result is always a
// new slice. The sums are integers, so their order does not matter: the vertical pass adds whole source rows
// into a row of accumulators (memory in order) instead of walking down each output column.
func Resize(pix []byte, w0, h0, c, w, h int) []byte {
	cur, cw := pix, w0
	if w0 != w {
		cur, cw = horizontal(pix, w0, h0, c, w), w
	}
	if h0 != h {
		bounds, kk, ks := Coeffs(h0, h)
		out := make([]byte, w*h*c)
		acc := make([]int32, w*c)
		for yy := 0; yy < h; yy++ {
			ymin, ymax := bounds[2*yy], bounds[2*yy+1]
			for i := range acc {
				acc[i] = 1 << (PrecisionBits - 1)
			}
			for y, kv := range kk[yy*ks:][:ymax] {
				row := cur[(y+ymin)*cw*c:][:len(acc)]
				for i, v := range row {
					acc[i] += int32(v) * kv
				}
			}
			orow := out[yy*w*c:][:len(acc)]
			for i, s := range acc {
				orow[i] = Clip8(s)
			}
		}
		return out
	}
	if w0 == w {
		return append([]byte(nil), pix...)
	}
	return cur
}

// horizontal is the first pass: every row resized to w. Three channels (the model's RGB) are unrolled.
func horizontal(pix []byte, w0, h0, c, w int) []byte {
	bounds, kk, ks := Coeffs(w0, w)
	out := make([]byte, w*h0*c)
	const half = int32(1 << (PrecisionBits - 1))
	for y := 0; y < h0; y++ {
		row := pix[y*w0*c : (y+1)*w0*c]
		orow := out[y*w*c : (y+1)*w*c]
		for xx := 0; xx < w; xx++ {
			xmin, xmax := bounds[2*xx], bounds[2*xx+1]
			k := kk[xx*ks:][:xmax]
			seg := row[xmin*c : (xmin+xmax)*c]
			o := orow[xx*c : xx*c+c]
			if c == 3 {
				s0, s1, s2 := half, half, half
				for x, kv := range k {
					p := seg[x*3 : x*3+3]
					s0 += int32(p[0]) * kv
					s1 += int32(p[1]) * kv
					s2 += int32(p[2]) * kv
				}
				o[0], o[1], o[2] = Clip8(s0), Clip8(s1), Clip8(s2)
				continue
			}
			for ch := range o {
				s := half
				for x, kv := range k {
					s += int32(seg[x*c+ch]) * kv
				}
				o[ch] = Clip8(s)
			}
		}
	}
	return out
}
