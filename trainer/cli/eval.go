package cli

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/pipeline/roi"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
	"github.com/vlmdiff/edge/trainer/metrics"
)

func init() {
	Register(Command{Name: "eval", Summary: "evaluate a bundle on a labelled dataset's test split: metrics table, JSON, CSV, HTML report", Run: runEval})
}

// dataFlags select dataset items for eval and calibrate.
type dataFlags struct {
	data, layout, classes string
	valFraction           float64
	batch                 int
	labelBy               string
	stderr                io.Writer // receives the mask-policy warning
}

func (d *dataFlags) register(fs interface {
	StringVar(*string, string, string, string)
	Float64Var(*float64, string, float64, string)
	IntVar(*int, string, int, string)
}) {
	fs.StringVar(&d.data, "data", "", "dataset directory, or an index.jsonl written by `vlmdiff train` (required)")
	fs.StringVar(&d.layout, "layout", "auto", "dataset layout: auto, mvtec, visa, realiad, cocoad, collected")
	fs.StringVar(&d.classes, "classes", "", "comma-separated classes (default all)")
	fs.Float64Var(&d.valFraction, "val-fraction", 0.1, "share of train normals held out as validation (the same hash split as `vlmdiff train`)")
	fs.IntVar(&d.batch, "batch", 4, "frames per scoring batch")
	fs.StringVar(&d.labelBy, "label-by", dataset.LabelByFolder, "anomalous test images with a missing or empty mask: folder (keep anomalous, warn) or mask (relabel as normal); a dataset directory only, an index was checked when written")
}

func (d *dataFlags) items() ([]dataset.Item, []string, error) {
	if d.data == "" {
		return nil, nil, fmt.Errorf("--data is required")
	}
	var items []dataset.Item
	var err error
	if strings.HasSuffix(d.data, ".jsonl") {
		items, err = dataset.ReadIndex(d.data)
	} else {
		items, err = dataset.OpenWith(d.data, dataset.Options{Layout: d.layout, ValFraction: d.valFraction})
		if err == nil {
			var issues []dataset.MaskIssue
			items, issues, err = dataset.CheckMasks(items, d.labelBy)
			if d.stderr != nil {
				fmt.Fprint(d.stderr, dataset.FormatMaskIssues(issues, d.labelBy))
			}
		}
	}
	if err != nil {
		return nil, nil, err
	}
	var classes []string
	for _, c := range strings.Split(d.classes, ",") {
		if c = strings.TrimSpace(c); c != "" {
			classes = append(classes, c)
		}
	}
	return items, classes, nil
}

func runEval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("eval", "--bundle DIR --data DIR [--layout L] [--out DIR] [--classes a,b] [--val-data DIR [--weigh-layers 0,0.5,1 [--pixel-factors 0,0.5,1]]] [--curves DIR] [--baseline mean-diff] [--maps DIR] [--paper-auroc-flip] [--roi FILE | --agent-config FILE --camera NAME]", stderr)
	var sf scoreFlags
	sf.Register(fs)
	var df dataFlags
	df.register(fs)
	var rf roi.Flags
	rf.Register(fs)
	out := fs.String("out", "eval-report", "directory for results.txt, metrics.json/csv, scores.csv, report.html")
	split := fs.String("split", dataset.SplitTest, "split to evaluate")
	paperFlip := fs.Bool("paper-auroc-flip", false, "report AUROC below 0.5 as 1-AUC, as the paper's evaluation does (off: the true AUROC; the report says when the flip changed a value)")
	curves := fs.String("curves", "", "a run directory (its stages' curves: <run-dir>/ae/curves, <run-dir>/train/curves) or one curves directory: loss plots rendered and embedded in report.html")
	valData := fs.String("val-data", "", "a synthetic-defect validation set (`vlmdiff synth defects` output, MVTec layout): evaluated too and reported as its own table beside the test")
	maps := fs.String("maps", "", "also write every anomaly map (float32, with maps.csv) under this directory, test/ and validation/, for offline study")
	weigh := fs.String("weigh-layers", "", "instead of evaluating: rank every weighting of the bundle's feature layers by these values (e.g. 0,0.5,1) on --val-data, "+
		"each with its map reference measured on --data's training normals (--reference-per-class), and print the table; never on the test split. "+
		"`vlmdiff calibrate --feature-weights` writes a choice")
	pixelFactors := fs.String("pixel-factors", "", "with --weigh-layers: also weigh the mean-frame term at these factors (e.g. 0,0.25,0.5,1), on a temporary copy of the bundle")
	refPer := fs.Int("reference-per-class", eval.DefaultReferencePerClass, "training normals per class in each weighting's map reference (--weigh-layers)")
	baseline := fs.String("baseline", "", "also score a trivial baseline on the same images and print it beside the bundle: mean-diff (per-pixel difference from each class's mean training image)")
	if err := Parse(fs, args); err != nil {
		return err
	}
	df.stderr = stderr
	if sf.Bundle == "" || df.data == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "vlmdiff eval: --bundle and --data are required")
		fs.Usage()
		return ErrUsage
	}
	if *baseline != "" && *baseline != eval.BaselineMeanDiff {
		return fmt.Errorf("--baseline %q: unknown (known: %s)", *baseline, eval.BaselineMeanDiff)
	}
	region, err := rf.Load(config.CameraROI)
	if err != nil {
		return err
	}
	if *baseline != "" && region != nil {
		return fmt.Errorf("--baseline scores whole frames; it cannot be combined with --roi or --camera")
	}
	items, classes, err := df.items()
	if err != nil {
		return err
	}
	if *weigh != "" || *pixelFactors != "" {
		if *weigh == "" || *valData == "" || region != nil || *baseline != "" || *maps != "" {
			return fmt.Errorf("--weigh-layers ranks on --val-data (a painted set, never the test split) and takes no --roi, --camera, --baseline or --maps; --pixel-factors goes with it")
		}
		return runWeighLayers(ctx, sf, df, items, classes, *weigh, *pixelFactors, *valData, *refPer, stdout, stderr)
	}
	test := eval.Select(items, *split, classes, false)
	if len(test) == 0 {
		return fmt.Errorf("no %s images in %s (classes %v)", *split, df.data, classes)
	}
	s, err := sf.Open()
	if err != nil {
		return err
	}
	defer s.Close()
	opts := eval.Options{BatchSize: df.batch, Progress: stderr, PaperAUROCFlip: *paperFlip, ROI: region}
	info := eval.ReportInfo{Dataset: df.data, CurvesDir: *curves}
	info.Bundle, _ = filepath.Abs(sf.Bundle)
	var vtest []dataset.Item
	if *valData != "" {
		vf := df
		vf.data, vf.layout, vf.valFraction = *valData, dataset.LayoutAuto, 0
		vitems, _, err := vf.items()
		if err != nil {
			return fmt.Errorf("--val-data: %w", err)
		}
		vtest = eval.Select(vitems, dataset.SplitTest, classes, false)
		if len(vtest) == 0 {
			return fmt.Errorf("--val-data %s: no test images (classes %v)", *valData, classes)
		}
		if info.Validation, err = scoreValidation(ctx, s, vtest, *valData, *maps, opts, metrics.Options{PaperAUROCFlip: *paperFlip}, stdout); err != nil {
			return fmt.Errorf("--val-data: %w", err)
		}
		fmt.Fprintln(stdout, "test ("+df.data+"):")
	}
	res, err := eval.ScoreItems(ctx, s, test, opts)
	if err != nil {
		return err
	}
	if *maps != "" {
		// Before the metrics, so that the maps of a split without anomalies (--split train) are written too.
		if err := eval.WriteMaps(filepath.Join(*maps, *split), res); err != nil {
			return err
		}
	}
	rep, err := eval.MetricsWith(res, metrics.Options{PaperAUROCFlip: *paperFlip})
	if err != nil {
		return err
	}
	if err := rep.WriteTable(stdout); err != nil {
		return err
	}
	if *baseline != "" {
		train := eval.Select(items, dataset.SplitTrain, classes, true)
		if info.Baseline, err = runBaseline(ctx, s.Manifest(), train, test, vtest, rep, info.Validation, opts, stdout); err != nil {
			return err
		}
	}
	if err := eval.WriteReports(*out, rep, res, s, info); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "reports written to %s (%s, %s, %s, %s, %s)\n", *out, eval.TableFile, eval.JSONFile, eval.CSVFile, eval.RegionsFile, eval.HTMLFile)
	return nil
}

// scoreValidation scores the synthetic validation set val (root dir), writes its maps under maps/validation
// when maps is set, and prints its table and its table by defect kind.
func scoreValidation(ctx context.Context, s *pipeline.Scorer, val []dataset.Item, dir, maps string, opts eval.Options,
	mopts metrics.Options, stdout io.Writer) (*eval.ValidationReport, error) {
	res, err := eval.ScoreItems(ctx, s, val, opts)
	if err == nil && maps != "" {
		err = eval.WriteMaps(filepath.Join(maps, "validation"), res)
	}
	v := &eval.ValidationReport{Dataset: dir}
	if err == nil {
		v.Report, err = eval.MetricsWith(res, mopts)
	}
	var kinds metrics.Report
	if err == nil {
		kinds, err = eval.ByDefect(res, mopts)
		v.ByDefect = &kinds
	}
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(stdout, "synthetic validation ("+dir+"):")
	_ = v.Report.WriteTable(stdout)
	fmt.Fprintln(stdout, "synthetic validation by defect kind:")
	return v, kinds.WriteTable(stdout)
}

// runBaseline scores the test (and validation) images with the mean-diff baseline, prints its tables and which
// of the three headline metrics the bundle beats it on; the report writer then writes OUT/baseline.json and the
// tables into report.html.
func runBaseline(ctx context.Context, m *models.Manifest, train, test, vtest []dataset.Item, rep metrics.Report,
	val *eval.ValidationReport, opts eval.Options, stdout io.Writer) ([]eval.BaselineResult, error) {
	sets := []eval.BaselineSet{{Name: "test", Items: test, Model: rep.Mean}}
	if val != nil {
		sets = append(sets, eval.BaselineSet{Name: "validation", Items: vtest, Model: val.Report.Mean})
	}
	rs, err := eval.CompareMeanDiff(ctx, m, train, sets, opts)
	if err != nil {
		return nil, err
	}
	for _, r := range rs {
		fmt.Fprintf(stdout, "baseline %s (%s):\n", eval.BaselineMeanDiff, r.Set)
		if err := r.Report.WriteTable(stdout); err != nil {
			return nil, err
		}
		fmt.Fprintf(stdout, "bundle vs baseline (%s): %s\n", r.Set, r.Verdict())
	}
	return rs, nil
}
