package dataset

import (
	"fmt"
	"path/filepath"
	"strings"
)

// MVTec-AD layout:
//
//	<root>/<class>/train/good/*.png
//	<root>/<class>/test/good/*.png, <root>/<class>/test/<defect>/*.png
//	<root>/<class>/ground_truth/<defect>/<name>_mask.png
//
// Many datasets are published in this layout (MPDD, BTAD after conversion, the project's own piped set), so the
// reader also accepts a mask named like its image (<name>.png) when <name>_mask.png is absent.

// looksMVTec reports whether any subdirectory of root has train/good.
func looksMVTec(root string) bool {
	dirs, err := listDirs(root)
	if err != nil {
		return false
	}
	for _, d := range dirs {
		if isDir(filepath.Join(root, d, "train", "good")) {
			return true
		}
	}
	return false
}

func readMVTec(root string) ([]Item, error) {
	classes, err := listDirs(root)
	if err != nil {
		return nil, fmt.Errorf("mvtec: %w", err)
	}
	if len(classes) == 0 {
		return nil, fmt.Errorf("mvtec: %s: no class directories: expected <class>/train/good with images", root)
	}
	var items []Item
	for _, class := range classes {
		cdir := filepath.Join(root, class)
		good := filepath.Join(cdir, "train", "good")
		names, err := listImages(good)
		if err != nil || len(names) == 0 {
			return nil, fmt.Errorf("mvtec: %s: missing: expected <class>/train/good with images", good)
		}
		for _, n := range names {
			items = append(items, Item{Path: filepath.Join(good, n), Class: class, Split: SplitTrain, Label: LabelNormal})
		}
		test := filepath.Join(cdir, "test")
		defects, err := listDirs(test)
		if err != nil || len(defects) == 0 {
			return nil, fmt.Errorf("mvtec: %s: missing: expected <class>/test/<good|defect> with images", test)
		}
		for _, defect := range defects {
			ddir := filepath.Join(test, defect)
			names, err := listImages(ddir)
			if err != nil {
				return nil, fmt.Errorf("mvtec: %w", err)
			}
			for _, n := range names {
				it := Item{Path: filepath.Join(ddir, n), Class: class, Split: SplitTest, Label: LabelNormal}
				if defect != "good" {
					it.Label = LabelAnomalous
					it.Defect = defect
					m, err := mvtecMask(cdir, defect, n)
					if err != nil {
						return nil, err
					}
					it.Mask = m
				}
				items = append(items, it)
			}
		}
	}
	return items, nil
}

func mvtecMask(cdir, defect, name string) (string, error) {
	stem := strings.TrimSuffix(name, filepath.Ext(name))
	gt := filepath.Join(cdir, "ground_truth", defect)
	for _, cand := range []string{stem + "_mask.png", stem + ".png"} {
		if p := filepath.Join(gt, cand); isFile(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("mvtec: %s: missing: expected the mask of test/%s/%s", filepath.Join(gt, stem+"_mask.png"), defect, name)
}
