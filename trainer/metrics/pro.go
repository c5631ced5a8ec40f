package metrics

import (
	"math"
	"slices"
	"sort"
)

// PROThresholds is the number of thresholds of the seed's compute_pro.
const PROThresholds = 200

// PROFPRLimit is the FPR limit of AU-PRO.
const PROFPRLimit = 0.3

// region is one 8-connected ground-truth region: the anomaly-map values of its pixels.
type region[F float32 | float64] []F

// labelRegions returns the 8-connected regions of mask != 0 (skimage.measure.label's default connectivity for
// 2-D, which is full: 8 neighbours), each as the list of amap values under it.
func labelRegions[F float32 | float64](amap []F, mask []uint8, w, h int) []region[F] {
	seen := make([]bool, len(mask))
	var out []region[F]
	var stack []int
	for start := range mask {
		if mask[start] == 0 || seen[start] {
			continue
		}
		var r region[F]
		seen[start] = true
		stack = append(stack[:0], start)
		for len(stack) > 0 {
			p := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			r = append(r, amap[p])
			y, x := p/w, p%w
			for dy := -1; dy <= 1; dy++ {
				for dx := -1; dx <= 1; dx++ {
					ny, nx := y+dy, x+dx
					if ny < 0 || ny >= h || nx < 0 || nx >= w {
						continue
					}
					q := ny*w + nx
					if mask[q] != 0 && !seen[q] {
						seen[q] = true
						stack = append(stack, q)
					}
				}
			}
		}
		out = append(out, r)
	}
	return out
}

// proThresholds reproduces np.arange(min, max, (max-min)/n) in float64: the length is ceil((max-min)/step) and
// the values are start + i*d with d = (start+step) - start, which is how numpy's arange fills an array.
func proThresholds(lo, hi float64, n int) []float64 {
	step := (hi - lo) / float64(n)
	if !(step > 0) || math.IsInf(step, 0) {
		return nil
	}
	length := int(math.Ceil((hi - lo) / step))
	if length <= 0 {
		return nil
	}
	out := make([]float64, length)
	out[0] = lo
	if length > 1 {
		d := (lo + step) - lo
		for i := 1; i < length; i++ {
			out[i] = lo + float64(i)*d
		}
	}
	return out
}

// countAbove returns how many values of the ascending slice s are > t (a float32 value compares as its exact
// float64, so float32 maps count as the same values in float64 would).
func countAbove[F float32 | float64](s []F, t float64) int {
	return len(s) - sort.Search(len(s), func(i int) bool { return float64(s[i]) > t })
}

// auPRO is the seed's compute_pro on per-image maps and binary masks, all w x h:
//   - thresholds np.arange(min, max, (max-min)/200) over all maps of the class;
//   - at each threshold t (pixel positive when amap > t): PRO = mean over every GT region of every image of
//     TP/area, FPR = positive normal pixels / all normal pixels;
//   - keep FPR < 0.3, divide FPR by the largest kept FPR, trapezoidal area (sklearn auc) with no (0,0) point.
//
// Sorting the normal pixels and each region's pixels once turns every threshold into binary searches, so the
// cost is one sort of the class's pixels instead of 200 passes over them. NaN when the class has no anomalous
// pixel, no normal pixel, a constant map, or fewer than two kept points (where the seed's code fails).
//
// sortedNormal, when not nil, must be the class's normal-pixel values sorted ascending (the pixel curve has
// already sorted them; passing them saves a second copy of millions of values). F float32 gives the same value
// as the same maps in float64: min, max and thresholds are taken in float64.
func auPRO[F float32 | float64](amaps [][]F, masks [][]uint8, w, h int, sortedNormal []F) float64 {
	return auPROOf(amaps, masks, sortedRegions(amaps, masks, w, h), sortedNormal)
}

// sortedRegions is every image's ground-truth regions (labelRegions), each region's values sorted ascending: what
// auPROOf and regionRecall read, labelled once per class.
func sortedRegions[F float32 | float64](amaps [][]F, masks [][]uint8, w, h int) []region[F] {
	var regions []region[F]
	for i, m := range amaps {
		regions = append(regions, labelRegions(m, masks[i], w, h)...)
	}
	for _, r := range regions {
		slices.Sort(r)
	}
	return regions
}

// auPROOf is auPRO on the class's regions as sortedRegions gives them.
func auPROOf[F float32 | float64](amaps [][]F, masks [][]uint8, regions []region[F], sortedNormal []F) float64 {
	normal := sortedNormal
	lo, hi := math.Inf(1), math.Inf(-1)
	for i, m := range amaps {
		for p, v := range m {
			f := float64(v) // never NaN (ClassData.Add refuses it), so plain comparisons are math.Min/Max
			if f < lo {
				lo = f
			}
			if f > hi {
				hi = f
			}
			if sortedNormal == nil && masks[i][p] == 0 {
				normal = append(normal, v)
			}
		}
	}
	if len(regions) == 0 || len(normal) == 0 {
		return math.NaN()
	}
	if sortedNormal == nil {
		slices.Sort(normal)
	}
	ths := proThresholds(lo, hi, PROThresholds)
	var fprs, pros []float64
	for _, t := range ths {
		fpr := float64(countAbove(normal, t)) / float64(len(normal))
		if !(fpr < PROFPRLimit) {
			continue
		}
		sum := 0.0
		for _, r := range regions {
			sum += float64(countAbove(r, t)) / float64(len(r))
		}
		fprs = append(fprs, fpr)
		pros = append(pros, sum/float64(len(regions)))
	}
	if len(fprs) < 2 {
		return math.NaN()
	}
	maxFPR := slices.Max(fprs)
	for k := range fprs {
		fprs[k] /= maxFPR
	}
	// Thresholds ascend, so FPR descends; sklearn's auc integrates a decreasing x as -trapz(y, x).
	area := 0.0
	for k := 1; k < len(fprs); k++ {
		area += (fprs[k] - fprs[k-1]) * (pros[k] + pros[k-1]) / 2
	}
	return -area
}
