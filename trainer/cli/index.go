package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/vlmdiff/edge/trainer/dataset"
)

func init() {
	Register(Command{Name: "index", Summary: "read a dataset (MVTec-AD, VisA, Real-IAD, COCO-AD, collected samples) into index.jsonl", Run: runIndex})
}

func runIndex(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("index", "--data DIR [--layout auto|mvtec|visa|realiad|cocoad|collected] --out index.jsonl", stderr)
	data := fs.String("data", "", "dataset root directory (required)")
	layout := fs.String("layout", dataset.LayoutAuto, "dataset layout: auto, "+strings.Join(dataset.Layouts, ", "))
	out := fs.String("out", dataset.IndexFile, "index file to write (JSON lines)")
	val := fs.Float64("val-fraction", 0, "share of train normals held out as the val split (hash of the path; 0 <= f < 1)")
	part := fs.Int("coco-part", 0, "COCO-AD part 0-3 (meta_20_<part>.json)")
	labelBy := fs.String("label-by", dataset.LabelByFolder, "anomalous test images with a missing or empty mask: folder (keep anomalous, warn) or mask (relabel as normal)")
	args = renameFlag(args, "val-frac", "val-fraction", stderr) // the spelling before issue 15
	if err := Parse(fs, args); err != nil {
		return err
	}
	if *data == "" {
		fmt.Fprintln(stderr, "vlmdiff index: --data is required")
		fs.Usage()
		return ErrUsage
	}
	items, err := dataset.OpenWith(*data, dataset.Options{Layout: *layout, ValFraction: *val, COCOPart: *part})
	if err != nil {
		return err
	}
	items, issues, err := dataset.CheckMasks(items, *labelBy)
	if err != nil {
		return err
	}
	fmt.Fprint(stderr, dataset.FormatMaskIssues(issues, *labelBy))
	dups, err := dataset.FindDuplicates(ctx, items)
	if err != nil {
		return err
	}
	fmt.Fprint(stderr, dataset.FormatDuplicates(dups, *data, 0))
	if err := dataset.WriteIndex(*out, items); err != nil {
		return err
	}
	type count struct{ train, val, testN, testA, masks int }
	per := map[string]*count{}
	for _, it := range items {
		c := per[it.Class]
		if c == nil {
			c = &count{}
			per[it.Class] = c
		}
		switch {
		case it.Split == dataset.SplitTrain:
			c.train++
		case it.Split == dataset.SplitVal:
			c.val++
		case it.Label == dataset.LabelAnomalous:
			c.testA++
		default:
			c.testN++
		}
		if it.Mask != "" {
			c.masks++
		}
	}
	fmt.Fprintf(stdout, "%-24s %7s %7s %11s %14s %7s\n", "class", "train", "val", "test good", "test anomal.", "masks")
	var tot count
	for _, cl := range dataset.Classes(items) {
		c := per[cl]
		fmt.Fprintf(stdout, "%-24s %7d %7d %11d %14d %7d\n", cl, c.train, c.val, c.testN, c.testA, c.masks)
		tot.train += c.train
		tot.val += c.val
		tot.testN += c.testN
		tot.testA += c.testA
		tot.masks += c.masks
	}
	fmt.Fprintf(stdout, "%-24s %7d %7d %11d %14d %7d\n", "total", tot.train, tot.val, tot.testN, tot.testA, tot.masks)
	fmt.Fprintf(stdout, "wrote %d items to %s\n", len(items), *out)
	return nil
}
