package eval

import (
	"context"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"sync"
)

// knnIsolationRefs is how many of a class's candidate vectors each candidate is compared with to measure its
// isolation. The measure only ranks candidates, and 1024 draws from some thirty other images find a near
// neighbour for any patch that recurs among them; its cost is candidates x refs x dims (about 4 GFLOP a class
// at the default bank and 56 values: 0.34 s a class on 2 cores, about 4 s for PIPED's 12).
const knnIsolationRefs = 1024

// dropIsolated removes from the pool the fraction frac of its vectors that lie farthest from the positions of
// every other image: a vector's isolation is its squared distance to the nearest of a seeded draw of
// knnIsolationRefs pool vectors that come from other images.
//
// Why: the greedy coreset picks the rarest vectors first, and among the normals a line collects the rarest are
// often not rare normal variation but what nobody noticed in one frame: a hair, a speck, a smear. Once in the
// bank, the term holds that defect for normal wherever it appears again. A genuine normal variation recurs in
// other images and keeps a near neighbour there; a patch only one image has does not (SoftPatch, Jiang et al.
// 2022, removes such patch-level noise before the memory bank for the same reason). The pool keeps at least
// size vectors, in their order.
func dropIsolated(ctx context.Context, p *knnPool, dims int, frac float64, size int, rng *rand.Rand) (*knnPool, error) {
	n := len(p.src)
	keep := max(n-int(frac*float64(n)), min(size, n))
	if frac == 0 || keep == n {
		return p, nil
	}
	refs := rng.Perm(n)[:min(knnIsolationRefs, n)]
	iso, err := isolation(ctx, p, dims, refs)
	if err != nil {
		return nil, err
	}
	order := make([]int, n)
	for j := range order {
		order[j] = j
	}
	sort.SliceStable(order, func(a, b int) bool { return iso[order[a]] < iso[order[b]] })
	kept := order[:keep]
	slices.Sort(kept)
	out := &knnPool{vecs: make([]float32, 0, keep*dims), src: make([]uint64, 0, keep), n: p.n}
	for _, j := range kept {
		out.vecs = append(out.vecs, p.vecs[j*dims:(j+1)*dims]...)
		out.src = append(out.src, p.src[j])
	}
	return out, nil
}

// isolation returns each pool vector's squared distance to the nearest of the refs (indices into the pool)
// from another image; +Inf when every ref comes from its own image. The rows are split among the CPUs.
func isolation(ctx context.Context, p *knnPool, dims int, refs []int) ([]float64, error) {
	n := len(p.src)
	iso := make([]float64, n)
	workers := max(1, min(runtime.GOMAXPROCS(0), n/256))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			for j := lo; j < hi; j++ {
				if j%1024 == 0 && ctx.Err() != nil {
					return
				}
				v := p.vecs[j*dims : (j+1)*dims]
				best := float32(-1)
				for _, r := range refs {
					if p.src[r] == p.src[j] {
						continue
					}
					if d := sqDist(v, p.vecs[r*dims:(r+1)*dims]); best < 0 || d < best {
						best = d
					}
				}
				iso[j] = float64(best)
				if best < 0 {
					iso[j] = math.Inf(1)
				}
			}
		}(w*n/workers, (w+1)*n/workers)
	}
	wg.Wait()
	return iso, ctx.Err()
}

// sqDist is the squared Euclidean distance of two vectors of equal length, four partial sums at a time.
func sqDist(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		d0, d1, d2, d3 := a[i]-b[i], a[i+1]-b[i+1], a[i+2]-b[i+2], a[i+3]-b[i+3]
		s0 += d0 * d0
		s1 += d1 * d1
		s2 += d2 * d2
		s3 += d3 * d3
	}
	for ; i < len(a); i++ {
		d := a[i] - b[i]
		s0 += d * d
	}
	return (s0 + s1) + (s2 + s3)
}
