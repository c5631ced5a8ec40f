package dataset

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// VisA layout (the published split, as the VisA repository's prepare script and the DiAD/VLMDiff loaders use it):
//
//	<root>/split_csv/1cls.csv   header object,split,label,image,mask
//	<root>/<object>/Data/Images/{Normal,Anomaly}/*.JPG, <root>/<object>/Data/Masks/Anomaly/*.png
//
// split is train or test, label normal or anomaly, image and mask are relative to root; mask is empty for normal
// images. The file list comes from the CSV only, so the split is exactly the published one.

const visaCSV = "1cls.csv"

func readVisA(root string) ([]Item, error) {
	path := filepath.Join(root, "split_csv", visaCSV)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("visa: %s: missing: expected split_csv/%s with columns object,split,label,image,mask", path, visaCSV)
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("visa: %s: reading header: %w", path, err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.TrimSpace(strings.TrimPrefix(h, "\ufeff"))] = i
	}
	for _, want := range []string{"object", "split", "label", "image", "mask"} {
		if _, ok := col[want]; !ok {
			return nil, fmt.Errorf("visa: %s: header %q: missing column %q (want object,split,label,image,mask)", path, strings.Join(header, ","), want)
		}
	}
	var items []Item
	for line := 2; ; line++ {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("visa: %s: %w", path, err)
		}
		get := func(k string) string {
			if i := col[k]; i < len(rec) {
				return strings.TrimSpace(rec[i])
			}
			return ""
		}
		where := fmt.Sprintf("visa: %s line %d", path, line)
		it := Item{Class: get("object")}
		if it.Class == "" {
			return nil, fmt.Errorf("%s: empty object", where)
		}
		switch s := get("split"); s {
		case "train":
			it.Split = SplitTrain
		case "test":
			it.Split = SplitTest
		default:
			return nil, fmt.Errorf("%s: split %q: want train or test", where, s)
		}
		switch l := get("label"); l {
		case "normal":
			it.Label = LabelNormal
		case "anomaly":
			it.Label = LabelAnomalous
			it.Defect = "anomaly"
		default:
			return nil, fmt.Errorf("%s: label %q: want normal or anomaly", where, l)
		}
		if it.Path, err = fileUnder(root, get("image"), "image"); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if m := get("mask"); m != "" {
			if it.Mask, err = fileUnder(root, m, "mask"); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
		}
		items = append(items, it)
	}
	return items, nil
}
