package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/vlmdiff/edge/pipeline"
)

// benchPaired is `vlmdiff bench --ab FLAGS`: the scorer as the command opened it (A) and a second one (B) opened
// with the same scorer flags plus FLAGS, timed frame by frame in alternation at each batch size. Why pairs: on
// a shared or virtual machine the speed drifts by a third within minutes (docs/operations.md, "Tuning scoring
// speed"), so two settings timed in separate runs, or even in separate rounds, differ by the drift as much as by
// the setting. Two batches scored back to back see the same machine; the median of their ratios, with its
// distribution-free 95% interval, says whether B is faster and by how much, and the count of pairs B won says
// how consistently.
type benchPaired struct {
	// BFlags is --ab as given: what B adds to A's scorer flags.
	BFlags  string        `json:"b_flags"`
	Batches []pairedBatch `json:"batches"`
}

// pairedBatch is one batch size's pairs.
type pairedBatch struct {
	Batch int `json:"batch"`
	Pairs int `json:"pairs"`
	// Stages holds each side's p50 per frame of every stage both sides ran.
	Stages []pairedStage `json:"stages"`
	// RatioMedian is the median over the pairs of B's total per frame / A's; RatioCI95 its 95% interval from
	// the order statistics (the sign test's), absent with fewer than 6 pairs, where there is none.
	RatioMedian float64   `json:"ratio_median"`
	RatioCI95   []float64 `json:"ratio_ci95,omitempty"`
	// BFaster counts the pairs in which B's total was below A's.
	BFaster int `json:"b_faster"`
}

type pairedStage struct {
	Stage  string  `json:"stage"`
	AP50MS float64 `json:"a_p50_ms_per_frame"`
	BP50MS float64 `json:"b_p50_ms_per_frame"`
}

// abFlags returns the scorer flags of B: those set on the command line (fs) that are scorer flags, then --ab's,
// parsed onto a fresh set of scorer flags, so that B differs from A only by what --ab says. Anything in --ab
// that is not a scorer flag (a bench flag, a stray argument) is refused by name.
func abFlags(fs *flag.FlagSet, ab string) (scoreFlags, error) {
	var b scoreFlags
	bfs := flag.NewFlagSet("bench --ab", flag.ContinueOnError)
	bfs.SetOutput(io.Discard)
	b.Register(bfs)
	var replay []string
	fs.Visit(func(f *flag.Flag) {
		if bfs.Lookup(f.Name) != nil {
			replay = append(replay, "-"+f.Name+"="+f.Value.String())
		}
	})
	extra := strings.Fields(ab)
	if len(extra) == 0 {
		return b, fmt.Errorf("--ab %q: no flags; give the scorer flags B adds, e.g. --ab \"--spin\"", ab)
	}
	if err := bfs.Parse(append(replay, extra...)); err != nil {
		return b, fmt.Errorf("--ab %q: %v (it takes the scorer flags of `vlmdiff bench -h`: --bundle, --threads, --spin, ...)", ab, err)
	}
	if bfs.NArg() > 0 {
		return b, fmt.Errorf("--ab %q: %q is not a flag; --ab takes scorer flags only", ab, bfs.Arg(0))
	}
	return b, nil
}

// measurePaired scores pairs of batches, one through a and one through b, at each batch size: pairs = rounds x
// (frames / batch, at least 1) a size, which of the two goes first alternating from pair to pair.
func measurePaired(ctx context.Context, a, b *pipeline.Scorer, bflags string, imgs []pipeline.Image, bs []int,
	frames, rounds int) (*benchPaired, error) {
	if err := b.Warmup(ctx); err != nil {
		return nil, fmt.Errorf("--ab: %w", err)
	}
	out := &benchPaired{BFlags: bflags}
	for _, size := range bs {
		scorers := [2]*pipeline.Scorer{a, b}
		for _, s := range scorers { // one warm-up batch at this size each (a lazily opened static graph)
			if _, err := s.Score(ctx, batchOf(imgs, 0, size)); err != nil {
				return nil, err
			}
		}
		n := max(frames/size, 1) * rounds
		per := [2]map[string][]float64{{}, {}}
		pb := pairedBatch{Batch: size, Pairs: n}
		ratios := make([]float64, n)
		for i := 0; i < n; i++ {
			var total [2]float64
			for j := 0; j < 2; j++ {
				k := (i + j) % 2 // A first in even pairs, B first in odd ones
				res, err := scorers[k].Score(ctx, batchOf(imgs, i*size, size))
				if err == nil && res[0].Err != nil {
					err = res[0].Err
				}
				if err != nil {
					if k == 1 {
						err = fmt.Errorf("--ab: %w", err)
					}
					return nil, err
				}
				for st, v := range res[0].LatencyMS {
					per[k][st] = append(per[k][st], v)
				}
				total[k] = res[0].LatencyMS[pipeline.StageTotal]
			}
			ratios[i] = total[1] / total[0]
			if total[1] < total[0] {
				pb.BFaster++
			}
		}
		for _, st := range benchStageOrder {
			if len(per[0][st]) > 0 && len(per[1][st]) > 0 {
				pb.Stages = append(pb.Stages, pairedStage{Stage: st, AP50MS: pct(per[0][st], 50), BP50MS: pct(per[1][st], 50)})
			}
		}
		pb.RatioMedian = median(ratios)
		if lo, hi, ok := medianCI95(ratios); ok {
			pb.RatioCI95 = []float64{lo, hi}
		}
		out.Batches = append(out.Batches, pb)
	}
	return out, nil
}

// benchStageOrder is the order the tables list stages in.
var benchStageOrder = []string{pipeline.StagePreprocess, pipeline.StageEncode, pipeline.StageHint, pipeline.StageDenoise,
	pipeline.StageDecode, pipeline.StageFeatures, pipeline.StageKnn, pipeline.StageMap, pipeline.StageTotal}

// median is the middle value of v (the mean of the two middle ones for an even count).
func median(v []float64) float64 {
	s := slices.Clone(v)
	sort.Float64s(s)
	n := len(s)
	if n == 0 {
		return math.NaN()
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// medianCI95 is the distribution-free 95% interval of v's median: the k-th smallest and k-th largest values,
// with k the largest for which a Binomial(n, 1/2) falls below k with probability at most 2.5% (the sign test's
// interval; it assumes only that the pairs are independent draws). ok is false for fewer than 6 values, where
// even the extremes cover less than 95%.
func medianCI95(v []float64) (lo, hi float64, ok bool) {
	n := len(v)
	k, cdf := 0, 0.0 // cdf = P(X <= k-1), X ~ Binomial(n, 1/2)
	for {
		next := cdf + binomHalf(n, k)
		if next > 0.025 {
			break
		}
		cdf = next
		k++
	}
	if k == 0 {
		return 0, 0, false
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	return s[k-1], s[n-k], true
}

// binomHalf is P(X = i) for X ~ Binomial(n, 1/2), through log-gamma so that large n do not overflow.
func binomHalf(n, i int) float64 {
	ln, _ := math.Lgamma(float64(n + 1))
	li, _ := math.Lgamma(float64(i + 1))
	lr, _ := math.Lgamma(float64(n - i + 1))
	return math.Exp(ln - li - lr - float64(n)*math.Ln2)
}

func writePairedTable(w io.Writer, p *benchPaired) {
	fmt.Fprintf(w, "\nA/B frame by frame: A = the scorer above, B = A with %s; pairs of batches back to back, which goes first alternating:\n", p.BFlags)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "batch\tstage\tA p50 ms/frame\tB p50 ms/frame\tB / A\t\n")
	for _, b := range p.Batches {
		for _, st := range b.Stages {
			fmt.Fprintf(tw, "%d\t%s\t%.1f\t%.1f\t%.3f\t\n", b.Batch, st.Stage, st.AP50MS, st.BP50MS, st.BP50MS/st.AP50MS)
		}
	}
	tw.Flush()
	for _, b := range p.Batches {
		ci := "no 95% interval under 6 pairs"
		if len(b.RatioCI95) == 2 {
			ci = fmt.Sprintf("95%% %.3f-%.3f", b.RatioCI95[0], b.RatioCI95[1])
		}
		fmt.Fprintf(w, "batch %d: B / A %.3f (median of %d paired ratios of the total, %s), B faster in %d of %d\n",
			b.Batch, b.RatioMedian, b.Pairs, ci, b.BFaster, b.Pairs)
	}
}
