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
// reader also accepts a mask named like its image (<name>.png) when <name>_mask.png is absent. A root that is
// itself one class (<root>/train/good, <root>/test/...) is read as that single class, named after the root
// directory, because a user with one product naturally points at that product's folder. Class directories may
// be symbolic links.
//
// A missing mask is not an error here: the item keeps the path where its mask should be, and CheckMasks (run
// at index time, before any training) applies the configured label_by policy to it. Read without CheckMasks,
// the missing file fails when the mask is read, naming the path.

// isSingleClass reports whether root is itself one MVTec class.
func isSingleClass(root string) bool {
	return isDir(filepath.Join(root, "train", "good"))
}

// looksMVTec reports whether root or any subdirectory of root has train/good.
func looksMVTec(root string) bool {
	if isSingleClass(root) {
		return true
	}
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
	if isSingleClass(root) {
		return readMVTecClass(root, filepath.Base(root))
	}
	classes, err := listDirs(root)
	if err != nil {
		return nil, fmt.Errorf("mvtec: %w", err)
	}
	if len(classes) == 0 {
		return nil, fmt.Errorf("mvtec: %s: no class directories: expected <class>/train/good with images, or "+
			"train/good directly under the root for a single class; found %s", root, describeDir(root))
	}
	var items []Item
	for _, class := range classes {
		ci, err := readMVTecClass(filepath.Join(root, class), class)
		if err != nil {
			return nil, err
		}
		items = append(items, ci...)
	}
	return items, nil
}

// readMVTecClass reads one class directory (train/good, test/<good|defect>, ground_truth/<defect>).
func readMVTecClass(cdir, class string) ([]Item, error) {
	var items []Item
	good := filepath.Join(cdir, "train", "good")
	names, err := listImages(good)
	if err != nil || len(names) == 0 {
		return nil, fmt.Errorf("mvtec: %s: missing: expected <class>/train/good with images; %s has %s", good, cdir, describeDir(cdir))
	}
	for _, n := range names {
		items = append(items, Item{Path: filepath.Join(good, n), Class: class, Split: SplitTrain, Label: LabelNormal})
	}
	test := filepath.Join(cdir, "test")
	defects, err := listDirs(test)
	if err != nil || len(defects) == 0 {
		return nil, fmt.Errorf("mvtec: %s: missing: expected <class>/test/<good|defect> with images; %s has %s", test, cdir, describeDir(cdir))
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
				it.Mask = mvtecMask(cdir, defect, n)
			}
			items = append(items, it)
		}
	}
	return items, nil
}

// mvtecMask returns the mask of test/<defect>/<name>: <stem>_mask.png, else <stem>.png, else the expected
// <stem>_mask.png path although it does not exist (CheckMasks reports it as missing).
func mvtecMask(cdir, defect, name string) string {
	stem := strings.TrimSuffix(name, filepath.Ext(name))
	gt := filepath.Join(cdir, "ground_truth", defect)
	for _, cand := range []string{stem + "_mask.png", stem + ".png"} {
		if p := filepath.Join(gt, cand); isFile(p) {
			return p
		}
	}
	return filepath.Join(gt, stem+"_mask.png")
}
