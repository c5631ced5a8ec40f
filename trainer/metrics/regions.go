package metrics

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// RegionFPRs are the operating points of RegionRecall: AU-PRO's upper limit and two stricter false-positive rates
// nearer to where a line runs its pixel threshold.
var RegionFPRs = []float64{0.3, 0.1, 0.03}

// RegionSizes bound RegionRecall's size buckets, in pixels of the evaluation grid: [1, 16), [16, 64), [64, 256)
// and [256, ...). 16 px is a 4 x 4 speck at 256 x 256, one feature cell of a stride-4 layer; 256 px a 16 x 16 blob.
var RegionSizes = []int{16, 64, 256}

// RegionBucket is the ground-truth regions of one size range and how much of them a threshold finds.
type RegionBucket struct {
	// MinArea and MaxArea bound the regions' areas in pixels of the evaluation grid, MaxArea exclusive; 0 for
	// MaxArea means no upper bound.
	MinArea, MaxArea int
	// Regions is how many 8-connected ground-truth regions fall in the range, over every image of the class.
	Regions int
	// Overlap, aligned with RegionFPRs, is the mean over those regions of the fraction of each region's pixels
	// whose map value is above the threshold at which that fraction of the class's normal pixels is: the PRO
	// curve's value at that false-positive rate, restricted to the bucket. NaN where the bucket is empty.
	Overlap []float64
}

// RegionRecall breaks AU-PRO down by region size. AU-PRO weighs every ground-truth region alike, so a class
// whose masks hold many specks of a few pixels (annotation fragments around a hair, dust) can read low while
// every large defect is found; which of the two it is decides what to change (the map's resolution and
// smoothing, or nothing). The buckets say it directly.
type RegionRecall struct {
	Width, Height int // the evaluation grid
	// All is every region together: its Overlap is the PRO curve at RegionFPRs.
	All     RegionBucket
	Buckets []RegionBucket // one per size range of RegionSizes, smallest first
}

// regionRecall computes RegionRecall on the w x h grid from the class's regions (sortedRegions, as auPROOf reads
// them) and its normal pixels sorted ascending; nil when the class has no ground-truth region or no normal pixel.
func regionRecall[F float32 | float64](regions []region[F], w, h int, sortedNormal []F) *RegionRecall {
	if len(sortedNormal) == 0 || len(regions) == 0 {
		return nil
	}
	ths := make([]float64, len(RegionFPRs))
	n := len(sortedNormal)
	for k, f := range RegionFPRs {
		// at most floor(f n) normal pixels lie above the threshold (fewer where values tie)
		keep := min(n-1, int(math.Floor(f*float64(n))))
		ths[k] = float64(sortedNormal[n-1-keep])
	}
	bucketOf := func(area int) int {
		for b, s := range RegionSizes {
			if area < s {
				return b
			}
		}
		return len(RegionSizes)
	}
	rr := &RegionRecall{Width: w, Height: h, All: RegionBucket{MinArea: 1}}
	lo := 1
	for _, s := range append(slices.Clone(RegionSizes), 0) {
		rr.Buckets = append(rr.Buckets, RegionBucket{MinArea: lo, MaxArea: s})
		lo = s
	}
	sums := make([][]float64, len(rr.Buckets))
	for b := range sums {
		sums[b] = make([]float64, len(ths))
	}
	all := make([]float64, len(ths))
	for _, r := range regions {
		b := bucketOf(len(r))
		rr.Buckets[b].Regions++
		for k, t := range ths {
			o := float64(countAbove(r, t)) / float64(len(r))
			sums[b][k] += o
			all[k] += o
		}
	}
	mean := func(s []float64, n int) []float64 {
		out := make([]float64, len(s))
		for k, v := range s {
			out[k] = math.NaN()
			if n > 0 {
				out[k] = v / float64(n)
			}
		}
		return out
	}
	rr.All.Regions = len(regions)
	rr.All.Overlap = mean(all, len(regions))
	for b := range rr.Buckets {
		rr.Buckets[b].Overlap = mean(sums[b], rr.Buckets[b].Regions)
	}
	return rr
}

// Name is the bucket's size range as the tables print it: "< 16 px", "16-63 px", ">= 256 px", "all".
func (b RegionBucket) Name() string {
	switch {
	case b.MinArea <= 1 && b.MaxArea == 0:
		return "all"
	case b.MinArea <= 1:
		return fmt.Sprintf("< %d px", b.MaxArea)
	case b.MaxArea == 0:
		return fmt.Sprintf(">= %d px", b.MinArea)
	}
	return fmt.Sprintf("%d-%d px", b.MinArea, b.MaxArea-1)
}

// cell is the bucket as one table cell: "count: overlap / overlap / overlap" (x100, no decimals), "-" when empty.
func (b RegionBucket) cell() string {
	if b.Regions == 0 {
		return "-"
	}
	parts := make([]string, len(b.Overlap))
	for k, v := range b.Overlap {
		parts[k] = strconv.FormatFloat(100*v, 'f', 0, 64)
	}
	return strconv.Itoa(b.Regions) + ": " + strings.Join(parts, " / ")
}

// RegionTable is the report's regions as a table: a header and a row per class with regions, each cell the
// bucket's region count and its overlaps at RegionFPRs in percent. No rows when no class has regions.
func (r Report) RegionTable() (head []string, rows [][]string) {
	title := "clsname"
	if r.RowTitle != "" {
		title = r.RowTitle
	}
	for _, c := range r.Classes {
		rr := c.Regions
		if rr == nil {
			continue
		}
		if head == nil {
			head = []string{title, rr.All.Name()}
			for _, b := range rr.Buckets {
				head = append(head, b.Name())
			}
		}
		row := []string{c.Class, rr.All.cell()}
		for _, b := range rr.Buckets {
			row = append(row, b.cell())
		}
		rows = append(rows, row)
	}
	return head, rows
}

// RegionNote says what RegionTable's cells are.
func (r Report) RegionNote() string {
	fprs := make([]string, len(RegionFPRs))
	for k, f := range RegionFPRs {
		fprs[k] = strconv.FormatFloat(100*f, 'f', -1, 64) + "%"
	}
	grid := ""
	for _, c := range r.Classes {
		if c.Regions != nil {
			grid = fmt.Sprintf(" on the %d x %d evaluation grid", c.Regions.Width, c.Regions.Height)
			break
		}
	}
	return "Ground-truth regions (8-connected) by area" + grid + ": how many, then the mean percentage of each region's " +
		"pixels above the threshold at which " + strings.Join(fprs, " / ") + " of the normal pixels are (AU-PRO averages " +
		"this over every region, small and large alike, up to " + fprs[0] + ")."
}

// WriteRegions writes RegionNote and RegionTable in the same pipe format as WriteTable; nothing when no class
// has ground-truth regions.
func (r Report) WriteRegions(w io.Writer) error {
	head, rows := r.RegionTable()
	if head == nil {
		return nil
	}
	var b strings.Builder
	b.WriteString(r.RegionNote() + "\n")
	writePipeTable(&b, head, rows)
	_, err := io.WriteString(w, b.String())
	return err
}

// jsonRegionBucket is RegionBucket in JSON: overlaps as fractions, null where undefined.
type jsonRegionBucket struct {
	MinArea int        `json:"min_area"`
	MaxArea int        `json:"max_area,omitempty"`
	Regions int        `json:"regions"`
	Overlap []*float64 `json:"overlap"`
}

type jsonRegionRecall struct {
	Width   int                `json:"width"`
	Height  int                `json:"height"`
	FPRs    []float64          `json:"fprs"`
	All     jsonRegionBucket   `json:"all"`
	Buckets []jsonRegionBucket `json:"buckets"`
}

func (b RegionBucket) toJSON() jsonRegionBucket {
	j := jsonRegionBucket{MinArea: b.MinArea, MaxArea: b.MaxArea, Regions: b.Regions}
	for _, v := range b.Overlap {
		if math.IsNaN(v) {
			j.Overlap = append(j.Overlap, nil)
			continue
		}
		v := v
		j.Overlap = append(j.Overlap, &v)
	}
	return j
}

func (j jsonRegionBucket) fromJSON() RegionBucket {
	b := RegionBucket{MinArea: j.MinArea, MaxArea: j.MaxArea, Regions: j.Regions}
	for _, p := range j.Overlap {
		v := math.NaN()
		if p != nil {
			v = *p
		}
		b.Overlap = append(b.Overlap, v)
	}
	return b
}

// MarshalJSON writes {"width","height","fprs","all","buckets"}, each bucket {"min_area","max_area" (absent: no
// bound),"regions","overlap": [fractions aligned with fprs, null where the bucket is empty]}.
func (rr RegionRecall) MarshalJSON() ([]byte, error) {
	j := jsonRegionRecall{Width: rr.Width, Height: rr.Height, FPRs: RegionFPRs, All: rr.All.toJSON()}
	for _, b := range rr.Buckets {
		j.Buckets = append(j.Buckets, b.toJSON())
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (rr *RegionRecall) UnmarshalJSON(data []byte) error {
	var j jsonRegionRecall
	if err := json.Unmarshal(data, &j); err != nil {
		return err
	}
	*rr = RegionRecall{Width: j.Width, Height: j.Height, All: j.All.fromJSON()}
	for _, b := range j.Buckets {
		rr.Buckets = append(rr.Buckets, b.fromJSON())
	}
	return nil
}
