// Package eval scores labelled dataset items through the production scoring path (pipeline.ReadImage and
// Scorer.Score, batched, exactly what the daemon runs) and turns the results into the seed's metrics, into
// calibration thresholds from normal validation images, and into reports (table, JSON, CSV, HTML).
//
// Evaluating through the Go pipeline rather than the Python model is the point: a number in the report is a
// number the deployed agent reproduces, preprocessing quirks, ONNX graphs and map maths included.
package eval

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"time"

	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/pipeline/roi"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/metrics"
)

// Options tune Evaluate and Calibrate.
type Options struct {
	// BatchSize is the number of frames per Scorer.Score call (default 4).
	BatchSize int
	// Progress, when set, receives one progress line (done/total, rate, ETA) every ProgressEvery and at the end.
	Progress io.Writer
	// ProgressEvery is the minimum time between progress lines (default 2 s).
	ProgressEvery time.Duration
	// Logger receives per-image failures (default slog.Default()).
	Logger *slog.Logger
	// NoClass scores every frame without its class, so the bundle's global calibration and default context
	// apply (how a camera without a configured class is scored). By default each item's class is passed.
	NoClass bool
	// PaperAUROCFlip reports AUROCs below 0.5 as 1-AUC, as the paper's evaluation does. Off by default; the
	// report lists every value it changed.
	PaperAUROCFlip bool
	// ROI is a camera's region of interest, applied to every image as the daemon applies it (pipeline/roi):
	// scores, maps and thresholds are then those of the region, in frame coordinates. Nil = the whole image.
	ROI *roi.Config
}

func (o Options) batch() int {
	if o.BatchSize <= 0 {
		return 4
	}
	return o.BatchSize
}

func (o Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.Default()
	}
	return o.Logger
}

// ImageResult is one scored item. Result holds the anomaly map; Mask is the ground truth at the map's size
// (nil for an item without a mask file). Region marks the map pixels inside the region of interest (nil: all
// of them); calibration takes its pixel threshold from those only.
type ImageResult struct {
	Item   dataset.Item
	Result pipeline.Result
	Mask   []uint8
	Region []bool
}

// ScoreItems scores items through the pipeline in batches, reading each image with pipeline.ReadImage. An item
// that cannot be read or scored is an error naming it: a silently dropped test image changes every metric.
func ScoreItems(ctx context.Context, s *pipeline.Scorer, items []dataset.Item, opts Options) ([]ImageResult, error) {
	out := make([]ImageResult, 0, len(items))
	prog := newProgress(opts.Progress, "score", len(items), opts.ProgressEvery)
	bs := opts.batch()
	for start := 0; start < len(items); start += bs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		end := min(start+bs, len(items))
		reqs := make([]pipeline.Request, 0, end-start)
		for i := start; i < end; i++ {
			it := items[i]
			img, err := pipeline.ReadImage(it.Path)
			if err != nil {
				return nil, fmt.Errorf("eval: reading image %s: %w", it.Path, err)
			}
			r := pipeline.Request{Image: img, Seq: uint64(i)}
			if !opts.NoClass {
				r.Class = it.Class
			}
			reqs = append(reqs, r)
		}
		rois := make([]*roi.Config, len(reqs))
		for j := range rois {
			rois[j] = opts.ROI
		}
		res, err := roi.Score(ctx, s, reqs, rois)
		if err != nil {
			return nil, fmt.Errorf("eval: scoring items %d-%d: %w", start, end-1, err)
		}
		for j, r := range res {
			it := items[start+j]
			if r.Err != nil {
				return nil, fmt.Errorf("eval: scoring %s: %w", it.Path, r.Err)
			}
			ir := ImageResult{Item: it, Result: r}
			if opts.ROI.Active() {
				// Score accepted the region for this image, so it resolves here too.
				g, err := opts.ROI.Geometry(r.MapWidth, r.MapHeight, s.Manifest().Input.Width, s.Manifest().Input.Height, roi.PadColor(s.Manifest()), s.Manifest().Input.Resize)
				if err != nil {
					return nil, fmt.Errorf("eval: %s: %w", it.Path, err)
				}
				ir.Region = g.FrameMask()
			}
			out = append(out, ir)
		}
		prog.update(end)
	}
	prog.finish()
	return out, nil
}

// Evaluate scores the items (usually the test split) and computes the seven metrics per class and their mean.
// Masks are read and resized to the map's size as the reference does (ReadMask). The per-image results, maps
// and masks included, are returned for reports.
func Evaluate(ctx context.Context, s *pipeline.Scorer, items []dataset.Item, opts Options) (metrics.Report, []ImageResult, error) {
	if len(items) == 0 {
		return metrics.Report{}, nil, errors.New("eval: no items to evaluate")
	}
	res, err := ScoreItems(ctx, s, items, opts)
	if err != nil {
		return metrics.Report{}, nil, err
	}
	rep, err := MetricsWith(res, metrics.Options{PaperAUROCFlip: opts.PaperAUROCFlip})
	return rep, res, err
}

// Metrics reads each result's mask (when it has none yet) and computes the report with the true AUROC. It is
// separate from Evaluate so that tests and controls can permute results and recompute.
func Metrics(res []ImageResult) (metrics.Report, error) {
	return MetricsWith(res, metrics.Options{})
}

// MetricsWith is Metrics with metric options. An anomalous item whose mask marks no pixel is accepted (counted
// anomalous for images, normal for pixels): such items reach evaluation only when the dataset's label_by: folder
// policy kept them, and dataset.CheckMasks warned about them at index time, before any training.
func MetricsWith(res []ImageResult, mopts metrics.Options) (metrics.Report, error) {
	classes := map[string]*metrics.ClassData{}
	for i := range res {
		r := &res[i]
		if r.Mask == nil && r.Item.Mask != "" {
			m, err := ReadMask(r.Item.Mask, r.Result.MapWidth, r.Result.MapHeight)
			if err != nil {
				return metrics.Report{}, fmt.Errorf("eval: %w", err)
			}
			r.Mask = m
		}
		cd := classes[r.Item.Class]
		if cd == nil {
			cd = &metrics.ClassData{}
			classes[r.Item.Class] = cd
		}
		smp := metrics.Sample{Score: r.Result.RawScore, Label: r.Item.Label, Map: r.Result.Map,
			W: r.Result.MapWidth, H: r.Result.MapHeight, Mask: r.Mask, EmptyMaskOK: true}
		if err := cd.Add(smp); err != nil {
			return metrics.Report{}, fmt.Errorf("eval: %s (class %s): %w", r.Item.Path, r.Item.Class, err)
		}
	}
	return metrics.EvaluateWith(classes, mopts), nil
}

// ByDefect breaks a labelled set's metrics down by defect kind (the dataset's defect folders: on a painted set
// cut-paste, scratch, speck, stain, fibre): each row is the kind's defect images against all the set's normals,
// its metrics the mean over the classes that have that kind, and the mean row is the mean over kinds. It tells
// which kinds a bundle misses, which the per-class table cannot. mopts as MetricsWith; res as it returns them.
func ByDefect(res []ImageResult, mopts metrics.Options) (metrics.Report, error) {
	var kinds []string
	count := map[string]int{}
	normals := 0
	for _, r := range res {
		if r.Item.Label == 0 {
			normals++
			continue
		}
		if count[r.Item.Defect] == 0 {
			kinds = append(kinds, r.Item.Defect)
		}
		count[r.Item.Defect]++
	}
	sort.Strings(kinds)
	out := metrics.Report{RowTitle: "defect", PaperAUROCFlip: mopts.PaperAUROCFlip}
	for _, k := range kinds {
		var sub []ImageResult
		for _, r := range res {
			if r.Item.Label == 0 || r.Item.Defect == k {
				sub = append(sub, r)
			}
		}
		rep, err := MetricsWith(sub, mopts)
		if err != nil {
			return metrics.Report{}, err
		}
		name := k
		if name == "" {
			name = "(no defect folder)"
		}
		out.Classes = append(out.Classes, metrics.ClassReport{Class: name, Images: normals + count[k], Anomalous: count[k], Metrics: rep.Mean})
		for _, f := range rep.Flipped {
			out.Flipped = append(out.Flipped, name+": "+f)
		}
	}
	out.Mean = metrics.MeanOf(out.Classes)
	return out, nil
}

// ReadMask reads a ground-truth mask and resizes it to w x h the way the reference does: PIL 'L' conversion,
// Resize with the bilinear filter (antialiased, 8-bit rounding), then > 0. The image is read through the same
// decoder as frames; an RGB mask is first converted to L with PIL's ITU-R 601-2 weights.
func ReadMask(path string, w, h int) ([]uint8, error) {
	img, err := pipeline.ReadImage(path)
	if err != nil {
		return nil, fmt.Errorf("reading mask: %w", err)
	}
	// PIL: L = R*299/1000 + G*587/1000 + B*114/1000 (rounded); identical to the value for grey masks.
	p := img.Pix
	for i := 0; i < len(p); i += 3 {
		r, g, b := uint32(p[i]), uint32(p[i+1]), uint32(p[i+2])
		if r == g && g == b {
			continue
		}
		l := byte((r*19595 + g*38470 + b*7471 + 0x8000) >> 16)
		p[i], p[i+1], p[i+2] = l, l, l
	}
	if img.Width != w || img.Height != h {
		img = pipeline.ResizePIL(img, w, h)
	}
	out := make([]uint8, w*h)
	for i := range out {
		if img.Pix[3*i] > 0 {
			out[i] = 1
		}
	}
	return out, nil
}

// Select returns the items of a split (and of the given classes, all when empty), optionally only normals.
func Select(items []dataset.Item, split string, classes []string, normalOnly bool) []dataset.Item {
	want := map[string]bool{}
	for _, c := range classes {
		want[c] = true
	}
	var out []dataset.Item
	for _, it := range items {
		if it.Split != split || (len(want) > 0 && !want[it.Class]) || (normalOnly && it.Label != dataset.LabelNormal) {
			continue
		}
		out = append(out, it)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Class < out[j].Class })
	return out
}
