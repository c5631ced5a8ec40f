package synth

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vlmdiff/edge/trainer/dataset"
)

// HeldOutNormals returns the normals a validation set may use. When root is a dataset in a layout the trainer
// reads (dataset.Detect), it is read with the trainer's own reader and hold-out split (dataset.OpenWith with
// valFraction, the same hash of the path relative to root that the index stage uses), and only the val split's
// normals are returned: pass the training config's data.root and data.val_fraction, and no returned image is a
// training image. Otherwise root is a plain folder of normal images, all returned, as one class named after the
// folder. classes, when not empty, restricts the result.
func HeldOutNormals(root, layout string, valFraction float64, classes []string) ([]Normal, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("synth: %w", err)
	}
	if st, err := os.Stat(abs); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("synth: --from %s: not a directory", root)
	}
	want := map[string]bool{}
	for _, c := range classes {
		want[c] = true
	}
	var out []Normal
	if (layout != dataset.LayoutAuto && layout != "") || isDataset(abs) {
		if valFraction <= 0 {
			return nil, fmt.Errorf("synth: --from %s is a dataset: a val fraction > 0 is needed to pick held-out normals (use the training config's data.val_fraction)", root)
		}
		items, err := dataset.OpenWith(abs, dataset.Options{Layout: layout, ValFraction: valFraction})
		if err != nil {
			return nil, err
		}
		var unknown []string
		have := dataset.Classes(items)
		for _, c := range classes {
			if !contains(have, c) {
				unknown = append(unknown, c)
			}
		}
		if len(unknown) > 0 {
			return nil, fmt.Errorf("synth: --from %s has no class %s (classes: %s)", root, strings.Join(unknown, ", "), strings.Join(have, ", "))
		}
		perClass := map[string]int{}
		for _, it := range items {
			if len(want) > 0 && !want[it.Class] {
				continue
			}
			if it.Split == dataset.SplitTrain {
				perClass[it.Class] += 0 // a class with training normals but none held out is reported
			}
			if it.Split == dataset.SplitVal && it.Label == dataset.LabelNormal {
				out = append(out, Normal{Path: it.Path, Class: it.Class})
				perClass[it.Class]++
			}
		}
		var none []string
		for _, c := range sortedKeys(perClass) {
			if perClass[c] == 0 {
				none = append(none, c)
			}
		}
		if len(none) > 0 {
			return nil, fmt.Errorf("synth: --from %s: val fraction %v holds out no normal of class %s: raise it (and data.val_fraction with it)", root, valFraction, strings.Join(none, ", "))
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("synth: --from %s: no held-out normals (classes %v)", root, classes)
		}
		return out, nil
	}
	ents, err := os.ReadDir(abs)
	if err != nil {
		return nil, fmt.Errorf("synth: %w", err)
	}
	class := filepath.Base(abs)
	for _, e := range ents {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if strings.HasPrefix(e.Name(), ".") || (ext != ".png" && ext != ".jpg" && ext != ".jpeg" && ext != ".gif") {
			continue
		}
		p := filepath.Join(abs, e.Name())
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			out = append(out, Normal{Path: p, Class: class})
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Path < out[b].Path })
	if len(out) == 0 {
		return nil, fmt.Errorf("synth: --from %s: expected a dataset the trainer reads (MVTec <class>/train/good, a single class "+
			"<root>/train/good, VisA, Real-IAD, COCO-AD, collected) or a folder of normal PNG/JPEG images; found neither", root)
	}
	return out, nil
}

func isDataset(root string) bool {
	_, err := dataset.Detect(root)
	return err == nil
}
