package cli

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/pipeline/roi"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
)

func init() {
	Register(Command{Name: "calibrate", Summary: "fix a bundle's thresholds from a dataset's normal validation images", Run: runCalibrate})
}

func runCalibrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("calibrate", "--bundle DIR --data DIR [--method quantile:0.99] [--roi FILE | --agent-config FILE --camera NAME]", stderr)
	var sf scoreFlags
	sf.Register(fs)
	var df dataFlags
	df.register(fs)
	var rf roi.Flags
	rf.Register(fs)
	method := fs.String("method", eval.DefaultMethod, "threshold rule on normal scores: quantile:Q or meanstd:K")
	pixelQ := fs.Float64("pixel-quantile", eval.DefaultPixelQuantile, "quantile of normal anomaly-map values used as the pixel threshold")
	split := fs.String("split", dataset.SplitVal, "split whose normal images calibrate (val: held out of training; never test)")
	dry := fs.Bool("dry-run", false, "print the calibration without writing it into the bundle")
	if err := Parse(fs, args); err != nil {
		return err
	}
	if sf.Bundle == "" || df.data == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "vlmdiff calibrate: --bundle and --data are required")
		fs.Usage()
		return ErrUsage
	}
	if _, err := eval.ParseMethod(*method); err != nil {
		return err
	}
	region, err := rf.Load(config.CameraROI)
	if err != nil {
		return err
	}
	items, classes, err := df.items()
	if err != nil {
		return err
	}
	normal := eval.Select(items, *split, classes, true)
	if len(normal) == 0 {
		return fmt.Errorf("no normal %s images in %s: give --val-fraction > 0 (or --split train, which the model has seen)", *split, df.data)
	}
	s, err := sf.Open()
	if err != nil {
		return err
	}
	cal, _, err := eval.Calibrate(ctx, s, normal, eval.CalibConfig{Method: *method, PixelQuantile: *pixelQ},
		eval.Options{BatchSize: df.batch, Progress: stderr, ROI: region})
	s.Close()
	if err != nil {
		return err
	}
	if region.Active() {
		// The bundle records the region its thresholds fit; cameras with another region need their own.
		cal.Method += "; roi: " + region.String()
		fmt.Fprintf(stderr, "calibrated for the region of interest (%s)\n", region)
	}
	fmt.Fprintf(stdout, "%-20s %12s %12s %12s %12s %6s\n", "class", "threshold", "min", "max", "pixel_thr", "n")
	fmt.Fprintf(stdout, "%-20s %12.6g %12.6g %12.6g %12.6g %6d\n", "(global)", cal.Global.Threshold, cal.Global.Min, cal.Global.Max, cal.Global.PixelThreshold, cal.Global.NormalN)
	for _, c := range dataset.Classes(normal) {
		if cc, ok := cal.PerClass[c]; ok {
			fmt.Fprintf(stdout, "%-20s %12.6g %12.6g %12.6g %12.6g %6d\n", c, cc.Threshold, cc.Min, cc.Max, cc.PixelThreshold, cc.NormalN)
		}
	}
	if *dry {
		return nil
	}
	if err := eval.WriteCalibration(sf.Bundle, cal); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "calibration (%s) written to %s\n", cal.Method, filepath.Join(sf.Bundle, "bundle.json"))
	return nil
}
