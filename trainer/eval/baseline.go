package eval

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/metrics"
)

// BaselineMeanDiff names the per-pixel baseline: each class's mean training image, and per test image the
// channel-mean absolute difference from it. It knows nothing but the average normal frame, so a trained bundle
// that does not beat it on the same data has learnt nothing useful about that material (issue 12 found a
// noisy-background material where it did); `vlmdiff eval --baseline mean-diff` reports both side by side.
const BaselineMeanDiff = "mean-diff"

// MeanDiff scores images against per-class mean training images, at the bundle's input size and with its
// smoothing and pooling, so that only the anomaly evidence differs from the bundle's own maps.
type MeanDiff struct {
	m     *models.Manifest
	means map[string][]float64 // per class: H*W*3 mean of the resized [0,1] RGB training images
}

// NewMeanDiff averages the training normals of each class (resized as frames are) into its mean image.
func NewMeanDiff(ctx context.Context, m *models.Manifest, train []dataset.Item) (*MeanDiff, error) {
	w, h := m.Input.Width, m.Input.Height
	sums := map[string][]float64{}
	counts := map[string]int{}
	for _, it := range train {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		px, err := baselinePixels(it.Path, w, h)
		if err != nil {
			return nil, err
		}
		s := sums[it.Class]
		if s == nil {
			s = make([]float64, len(px))
			sums[it.Class] = s
		}
		for i, v := range px {
			s[i] += v
		}
		counts[it.Class]++
	}
	if len(sums) == 0 {
		return nil, fmt.Errorf("baseline %s: no training images", BaselineMeanDiff)
	}
	for c, s := range sums {
		inv := 1 / float64(counts[c])
		for i := range s {
			s[i] *= inv
		}
	}
	return &MeanDiff{m: m, means: sums}, nil
}

func baselinePixels(path string, w, h int) ([]float64, error) {
	img, err := pipeline.ReadImage(path)
	if err != nil {
		return nil, fmt.Errorf("baseline: reading %s: %w", path, err)
	}
	img = pipeline.ResizePIL(img, w, h)
	px := make([]float64, len(img.Pix))
	for i, b := range img.Pix {
		px[i] = float64(b) / 255
	}
	return px, nil
}

// Score maps each item: |x - mean(class)| averaged over channels, smoothed and pooled as the bundle does.
func (b *MeanDiff) Score(ctx context.Context, items []dataset.Item) ([]ImageResult, error) {
	w, h := b.m.Input.Width, b.m.Input.Height
	out := make([]ImageResult, 0, len(items))
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		mean, ok := b.means[it.Class]
		if !ok {
			return nil, fmt.Errorf("baseline %s: no training images of class %q (for %s)", BaselineMeanDiff, it.Class, it.Path)
		}
		px, err := baselinePixels(it.Path, w, h)
		if err != nil {
			return nil, err
		}
		m := make([]float64, w*h)
		for i := range m {
			m[i] = (math.Abs(px[3*i]-mean[3*i]) + math.Abs(px[3*i+1]-mean[3*i+1]) + math.Abs(px[3*i+2]-mean[3*i+2])) / 3
		}
		pipeline.SmoothMap(m, h, w, b.m.Map.Sigma, b.m.Map.Truncate)
		r := pipeline.Result{Map: make([]float32, len(m)), MapWidth: w, MapHeight: h}
		for i, v := range m {
			r.Map[i] = float32(v)
		}
		r.RawScore = pipeline.PooledMax(r.Map, h, w, b.m.Score.PoolKernel, b.m.Score.PoolRepeat)
		out = append(out, ImageResult{Item: it, Result: r})
	}
	return out, nil
}

// Evaluate scores items with the baseline and computes the same metrics as the package's Evaluate.
func (b *MeanDiff) Evaluate(ctx context.Context, items []dataset.Item, opts Options) (metrics.Report, error) {
	res, err := b.Score(ctx, items)
	if err != nil {
		return metrics.Report{}, err
	}
	return MetricsWith(res, metrics.Options{PaperAUROCFlip: opts.PaperAUROCFlip})
}

// BaselineSet is one labelled set to compare the bundle and the baseline on: its name in tables ("test",
// "validation"), its items and the bundle's metrics on them.
type BaselineSet struct {
	Name  string
	Items []dataset.Item
	Model metrics.Metrics
}

// BaselineResult is the baseline's report on one set, beside the bundle's mean metrics there.
type BaselineResult struct {
	Set    string
	Report metrics.Report
	Model  metrics.Metrics
}

// Verdict says, per headline metric (I-AUROC, P-AUROC, AU-PRO), whether the bundle beats the baseline:
// "I-AUROC 99.20 beats 97.76; P-AUROC 97.92 DOES NOT beat 98.46; ...".
func (r BaselineResult) Verdict() string {
	var parts []string
	for _, c := range []struct {
		name string
		m, b float64
	}{{"I-AUROC", r.Model.ImageAUROC, r.Report.Mean.ImageAUROC}, {"P-AUROC", r.Model.PixelAUROC, r.Report.Mean.PixelAUROC},
		{"AU-PRO", r.Model.AUPRO, r.Report.Mean.AUPRO}} {
		verdict := "beats"
		if !(c.m > c.b) {
			verdict = "DOES NOT beat"
		}
		parts = append(parts, fmt.Sprintf("%s %.2f %s %.2f", c.name, 100*c.m, verdict, 100*c.b))
	}
	return strings.Join(parts, "; ")
}

// CompareMeanDiff builds the mean-diff baseline from the training normals (each class's mean frame) and
// scores every set with it.
func CompareMeanDiff(ctx context.Context, m *models.Manifest, train []dataset.Item, sets []BaselineSet, opts Options) ([]BaselineResult, error) {
	b, err := NewMeanDiff(ctx, m, train)
	if err != nil {
		return nil, err
	}
	var out []BaselineResult
	for _, set := range sets {
		rep, err := b.Evaluate(ctx, set.Items, opts)
		if err != nil {
			return nil, fmt.Errorf("baseline %s on %s: %w", BaselineMeanDiff, set.Name, err)
		}
		out = append(out, BaselineResult{Set: set.Name, Report: rep, Model: set.Model})
	}
	return out, nil
}

// BaselineFile holds the baseline's mean metrics per set ({"test": {...}, "validation": {...}}).
const BaselineFile = "baseline.json"

func writeBaselineJSON(b *bytes.Buffer, rs []BaselineResult) error {
	doc := map[string]metrics.Metrics{}
	for _, r := range rs {
		doc[r.Set] = r.Report.Mean
	}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	b.Write(append(data, '\n'))
	return nil
}
