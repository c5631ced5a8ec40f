package metrics

import (
	"math"
	"slices"
)

// radixMin is the length under which sortFloat32s leaves the work to slices.Sort: below it the radix passes'
// fixed cost (three 2048-entry histograms) outweighs what they save.
const radixMin = 1 << 12

// sortFloat32s sorts s ascending, as slices.Sort does for values that are not NaN (ClassData.Add refuses NaN
// maps): an LSD radix sort of the values' bit patterns, mapped so that unsigned order is numeric order (the sign
// bit set for positives, every bit flipped for negatives), in three passes of 11 bits. -0 sorts before +0; the
// two compare equal, so the curves built on the result are the same as on slices.Sort's.
//
// Why: the pixel metrics sort every pixel of a class, and the select stage computes them for hundreds of recipes
// on the painted set (544 passes over 343 images in a PIPED run, session 44, whose select stage spent 15m51s of
// its 26m45s outside the scoring passes and the banks, most of it here). Go's pdqsort on float64 costs about 20 comparisons a value at a million values; this is three
// linear passes (BenchmarkCompute: 565-615 ms a class before, 183-190 ms after).
func sortFloat32s(s []float32) {
	if len(s) < radixMin {
		slices.Sort(s)
		return
	}
	keys := make([]uint32, len(s))
	var counts [3][2048]int
	for i, v := range s {
		k := math.Float32bits(v)
		if k&(1<<31) != 0 {
			k = ^k
		} else {
			k |= 1 << 31
		}
		keys[i] = k
		counts[0][k&2047]++
		counts[1][(k>>11)&2047]++
		counts[2][k>>22]++
	}
	buf := make([]uint32, len(s))
	for p := range counts {
		c := &counts[p]
		shift := uint(11 * p)
		if c[(keys[0]>>shift)&2047] == len(keys) {
			continue // every key has the same digit here: the pass would copy them in order
		}
		sum := 0
		for d, n := range c {
			c[d] = sum
			sum += n
		}
		for _, k := range keys {
			d := (k >> shift) & 2047
			buf[c[d]] = k
			c[d]++
		}
		keys, buf = buf, keys
	}
	for i, k := range keys {
		if k&(1<<31) != 0 {
			k &^= 1 << 31
		} else {
			k = ^k
		}
		s[i] = math.Float32frombits(k)
	}
}
