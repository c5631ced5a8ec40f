package metrics

import (
	"errors"
	"fmt"
	"math"
	"sort"
)

// Sample is one evaluated image: its image score (the pipeline's pooled maximum, docs/algorithm.md §1.10), its label,
// and optionally its anomaly map with the ground-truth mask at the map's size.
type Sample struct {
	Score float64
	Label int // 0 normal, 1 anomalous
	// Map is the anomaly map, W x H row-major. Nil for image-level evaluation only.
	Map  []float32
	W, H int
	// Mask is the ground truth at W x H; any non-zero value is anomalous (the seed binarises the resized mask
	// with > 0). Nil means "no mask": all zeros for a normal image and, for an anomalous one, all ones, which is
	// what the DiAD/VLMDiff loaders substitute for an anomalous image without a mask file.
	Mask []uint8
	// EmptyMaskOK accepts an anomalous label with a mask that marks no pixel, which a dataset's label_by: folder
	// policy keeps on purpose (dataset.CheckMasks warned about it at index time): the image counts as anomalous
	// for the image metrics and all its pixels count as normal ones. Without it the contradiction is refused.
	EmptyMaskOK bool
}

// ClassData accumulates the samples of one class. The zero value is ready to use.
type ClassData struct {
	scores []float64
	labels []bool
	maps   [][]float32
	masks  [][]uint8
	w, h   int
}

// Add appends one sample. It refuses, with the reason, a sample whose map or mask does not match the class's
// map size, a class that mixes samples with and without maps, and a label that contradicts the mask (the seed
// derives the image label from the mask, so they must agree).
func (c *ClassData) Add(s Sample) error {
	if s.Label != 0 && s.Label != 1 {
		return fmt.Errorf("metrics: label %d: want 0 or 1", s.Label)
	}
	if math.IsNaN(s.Score) {
		return errors.New("metrics: image score is NaN")
	}
	hasMap := s.Map != nil
	if len(c.scores) > 0 && hasMap != (len(c.maps) > 0) {
		return errors.New("metrics: a class must have anomaly maps for all samples or for none")
	}
	var mask []uint8
	if hasMap {
		if s.W <= 0 || s.H <= 0 || len(s.Map) != s.W*s.H {
			return fmt.Errorf("metrics: map has %d values for %dx%d", len(s.Map), s.W, s.H)
		}
		if len(c.maps) > 0 && (s.W != c.w || s.H != c.h) {
			return fmt.Errorf("metrics: map is %dx%d, the class's maps are %dx%d", s.W, s.H, c.w, c.h)
		}
		for i, v := range s.Map {
			if math.IsNaN(float64(v)) {
				return fmt.Errorf("metrics: map value %d is NaN", i)
			}
		}
		mask = make([]uint8, len(s.Map))
		switch {
		case s.Mask != nil && len(s.Mask) != len(s.Map):
			return fmt.Errorf("metrics: mask has %d values, map %dx%d", len(s.Mask), s.W, s.H)
		case s.Mask != nil:
			any := false
			for i, v := range s.Mask {
				if v != 0 {
					mask[i] = 1
					any = true
				}
			}
			if any != (s.Label == 1) && !(s.Label == 1 && s.EmptyMaskOK) {
				return fmt.Errorf("metrics: label %d contradicts a mask with%s anomalous pixels", s.Label, map[bool]string{true: "", false: "out"}[any])
			}
		case s.Label == 1:
			for i := range mask {
				mask[i] = 1
			}
		}
		c.w, c.h = s.W, s.H
		c.maps = append(c.maps, s.Map)
		c.masks = append(c.masks, mask)
	}
	c.scores = append(c.scores, s.Score)
	c.labels = append(c.labels, s.Label == 1)
	return nil
}

// Len is the number of samples added.
func (c *ClassData) Len() int { return len(c.scores) }

// Metrics holds the seven metrics as fractions (0..1); NaN where a metric is undefined for the data (no
// anomalous or no normal sample, no maps).
type Metrics struct {
	ImageAUROC float64 // seed key "max"
	ImageAP    float64 // "apsp"
	ImageF1Max float64 // "f1sp"
	PixelAUROC float64 // "pixel"
	PixelAP    float64 // "appx"
	PixelF1Max float64 // "f1px"
	AUPRO      float64 // "pro"
}

// metricNames are the report's names, in column order, with the seed's keys.
var metricNames = []struct{ Key, Title, Seed string }{
	{"i_auroc", "I-AUROC", "max"},
	{"i_ap", "I-AP", "apsp"},
	{"i_f1max", "I-F1max", "f1sp"},
	{"p_auroc", "P-AUROC", "pixel"},
	{"p_ap", "P-AP", "appx"},
	{"p_f1max", "P-F1max", "f1px"},
	{"au_pro", "AU-PRO", "pro"},
}

func (m Metrics) values() []float64 {
	return []float64{m.ImageAUROC, m.ImageAP, m.ImageF1Max, m.PixelAUROC, m.PixelAP, m.PixelF1Max, m.AUPRO}
}

func metricsFrom(v []float64) Metrics {
	return Metrics{v[0], v[1], v[2], v[3], v[4], v[5], v[6]}
}

// ClassReport is one row of a Report.
type ClassReport struct {
	Class     string
	Images    int
	Anomalous int
	Metrics
	// Regions breaks the class's AU-PRO down by region size (nil without maps or ground-truth regions).
	Regions *RegionRecall
}

// Report holds the per-class metrics, sorted by class, and their mean.
type Report struct {
	Classes []ClassReport
	// Mean is the mean over classes of each metric (the seed's "mean" row), taken over the classes where the
	// metric is defined; the seed's np.mean would turn the whole column into NaN instead.
	Mean Metrics
	// PaperAUROCFlip records that the paper's "1 - AUC below 0.5" rule was requested; Flipped lists the values
	// it changed ("<class> I-AUROC 0.4100 -> 0.5900"), so a report never shows a flipped number unannounced.
	PaperAUROCFlip bool
	Flipped        []string
	// RowTitle heads the first column of the table ("clsname", the seed's, when empty): a report whose rows
	// are not classes (eval.ByDefect: defect kinds) says what they are.
	RowTitle string
}

// Options select how metrics are computed.
type Options struct {
	// PaperAUROCFlip applies the seed's "1 - AUC when below 0.5" rule to image and pixel AUROC, as the paper's
	// tables do. Off by default: the true AUROC is what tells an inverted detector from a good one.
	PaperAUROCFlip bool
}

// Compute returns the seven metrics of one class, with the true AUROC.
func (c *ClassData) Compute() Metrics {
	m, _ := c.ComputeWith(Options{})
	return m
}

// ComputeWith returns the seven metrics of one class and the titles of the metrics the paper flip changed
// ("I-AUROC", "P-AUROC"; none without opts.PaperAUROCFlip).
func (c *ClassData) ComputeWith(opts Options) (Metrics, []string) {
	m, flipped, _ := c.compute(opts)
	return m, flipped
}

// compute is ComputeWith with the class's RegionRecall (nil without maps or ground-truth regions).
func (c *ClassData) compute(opts Options) (Metrics, []string, *RegionRecall) {
	var flipped []string
	auroc := func(title string, v float64) float64 {
		if opts.PaperAUROCFlip && v < 0.5 {
			flipped = append(flipped, fmt.Sprintf("%s %.4f -> %.4f", title, v, flip(v)))
			return flip(v)
		}
		return v
	}
	m := Metrics{
		ImageAUROC: auroc("I-AUROC", AUROC(c.scores, c.labels)),
		ImageAP:    AveragePrecision(c.scores, c.labels),
		ImageF1Max: F1Max(c.scores, c.labels),
		PixelAUROC: math.NaN(), PixelAP: math.NaN(), PixelF1Max: math.NaN(), AUPRO: math.NaN(),
	}
	if len(c.maps) == 0 {
		return m, flipped, nil
	}
	// The pixels stay float32, as the maps are: their order, ties and thresholds are the same as in float64,
	// no float64 copy of the maps is made, and they sort by radix (sortFloat32s).
	n := len(c.maps) * c.w * c.h
	npos := 0
	for _, mk := range c.masks {
		for _, v := range mk {
			npos += int(v)
		}
	}
	pos := make([]float32, 0, npos)
	neg := make([]float32, 0, n-npos)
	for i, mp := range c.maps {
		mk := c.masks[i]
		for p, v := range mp {
			if mk[p] != 0 {
				pos = append(pos, v)
			} else {
				neg = append(neg, v)
			}
		}
	}
	sortFloat32s(pos)
	sortFloat32s(neg)
	curve := sortedCurve(pos, neg)
	m.PixelAUROC = auroc("P-AUROC", curve.rocAUC())
	m.PixelAP = curve.averagePrecision()
	m.PixelF1Max = curve.f1Max()
	regions := sortedRegions(c.maps, c.masks, c.w, c.h)
	m.AUPRO = auPROOf(c.maps, c.masks, regions, neg)
	return m, flipped, regionRecall(regions, c.w, c.h, neg)
}

// Evaluate computes every class's metrics and their mean, with the true AUROC.
func Evaluate(classes map[string]*ClassData) Report {
	return EvaluateWith(classes, Options{})
}

// EvaluateWith computes every class's metrics and their mean with opts; the report records the options and
// every value the paper flip changed.
func EvaluateWith(classes map[string]*ClassData, opts Options) Report {
	names := make([]string, 0, len(classes))
	for n := range classes {
		names = append(names, n)
	}
	sort.Strings(names)
	r := Report{PaperAUROCFlip: opts.PaperAUROCFlip}
	for _, n := range names {
		c := classes[n]
		m, flipped, regions := c.compute(opts)
		for _, f := range flipped {
			r.Flipped = append(r.Flipped, n+" "+f)
		}
		anom := 0
		for _, l := range c.labels {
			if l {
				anom++
			}
		}
		r.Classes = append(r.Classes, ClassReport{Class: n, Images: c.Len(), Anomalous: anom, Metrics: m, Regions: regions})
	}
	r.Mean = MeanOf(r.Classes)
	return r
}

// MeanOf is the mean of the rows' metrics, each taken over the rows where it is defined (NaN where none is).
func MeanOf(rows []ClassReport) Metrics {
	sums := make([]float64, len(metricNames))
	counts := make([]int, len(metricNames))
	for _, row := range rows {
		for i, v := range row.values() {
			if !math.IsNaN(v) {
				sums[i] += v
				counts[i]++
			}
		}
	}
	mean := make([]float64, len(metricNames))
	for i := range mean {
		mean[i] = math.NaN()
		if counts[i] > 0 {
			mean[i] = sums[i] / float64(counts[i])
		}
	}
	return metricsFrom(mean)
}
