package dataset

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Real-IAD layout (as released; the same JSONs the VLMDiff and ADer loaders read):
//
//	<root>/realiad_jsons/realiad_jsons/<class>.json   (or <root>/realiad_jsons/<class>.json)
//	<root>/realiad_256/<class>/OK/S0001/<class>_0001_OK_C1_<time>.jpg  (or realiad_512, realiad_1024, realiad_raw,
//	                                                                   or <root>/<class>/... directly)
//	<root>/realiad_256/<class>/NG/<defect>/S0123/...jpg + the .png mask beside it
//
// Each JSON is {"meta": {"prefix", "normal_class", ...}, "train": [...], "test": [...]}, each entry
// {"category", "anomaly_class", "image_path", "mask_path"} with paths relative to the class directory. The
// VLMDiff loader keeps the images in a resolution directory and the JSONs in a sibling directory
// (<root>/../real_iad_jsons/realiad_jsons); that arrangement is accepted too when root is the image directory.

type realIADFile struct {
	Meta struct {
		Prefix      string `json:"prefix"`
		NormalClass string `json:"normal_class"`
	} `json:"meta"`
	Train []realIADEntry `json:"train"`
	Test  []realIADEntry `json:"test"`
}

type realIADEntry struct {
	Category     string  `json:"category"`
	AnomalyClass string  `json:"anomaly_class"`
	ImagePath    string  `json:"image_path"`
	MaskPath     *string `json:"mask_path"`
}

// realIADJSONDir returns the directory holding the per-class JSONs, or "".
func realIADJSONDir(root string) string {
	for _, d := range []string{
		filepath.Join(root, "realiad_jsons", "realiad_jsons"),
		filepath.Join(root, "realiad_jsons"),
		filepath.Join(root, "..", "realiad_jsons", "realiad_jsons"),
		filepath.Join(root, "..", "real_iad_jsons", "realiad_jsons"),
		filepath.Join(root, "..", "realiad_jsons"),
	} {
		if m, _ := filepath.Glob(filepath.Join(d, "*.json")); len(m) > 0 {
			return filepath.Clean(d)
		}
	}
	return ""
}

func readRealIAD(root string) ([]Item, error) {
	jdir := realIADJSONDir(root)
	if jdir == "" {
		return nil, fmt.Errorf("realiad: %s: missing: expected realiad_jsons/<class>.json (or realiad_jsons/realiad_jsons/<class>.json)",
			filepath.Join(root, "realiad_jsons"))
	}
	files, _ := filepath.Glob(filepath.Join(jdir, "*.json"))
	sort.Strings(files)
	var items []Item
	for _, jf := range files {
		class := strings.TrimSuffix(filepath.Base(jf), ".json")
		imgRoot, err := realIADImageRoot(root, class)
		if err != nil {
			return nil, err
		}
		b, err := os.ReadFile(jf)
		if err != nil {
			return nil, fmt.Errorf("realiad: %w", err)
		}
		var f realIADFile
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("realiad: %s: %w (expected {\"meta\":{...},\"train\":[...],\"test\":[...]})", jf, err)
		}
		if f.Train == nil && f.Test == nil {
			return nil, fmt.Errorf("realiad: %s: no \"train\" or \"test\" list", jf)
		}
		normal := f.Meta.NormalClass
		if normal == "" {
			normal = "OK"
		}
		for _, part := range []struct {
			split   string
			entries []realIADEntry
		}{{SplitTrain, f.Train}, {SplitTest, f.Test}} {
			for i, e := range part.entries {
				where := fmt.Sprintf("realiad: %s: %s[%d]", jf, part.split, i)
				it := Item{Class: class, Split: part.split, Label: LabelNormal}
				if e.AnomalyClass != normal {
					it.Label = LabelAnomalous
					it.Defect = e.AnomalyClass
				}
				base := filepath.Join(imgRoot, class)
				if it.Path, err = fileUnder(base, e.ImagePath, "image"); err != nil {
					return nil, fmt.Errorf("%s: %w", where, err)
				}
				if e.MaskPath != nil && *e.MaskPath != "" && it.Label == LabelAnomalous {
					if it.Mask, err = fileUnder(base, *e.MaskPath, "mask"); err != nil {
						return nil, fmt.Errorf("%s: %w", where, err)
					}
				}
				items = append(items, it)
			}
		}
	}
	return items, nil
}

// realIADImageRoot finds the directory that holds <class>/ for the images.
func realIADImageRoot(root, class string) (string, error) {
	cands := []string{root}
	for _, r := range []string{"realiad_256", "realiad_512", "realiad_1024", "realiad_raw"} {
		cands = append(cands, filepath.Join(root, r))
	}
	for _, c := range cands {
		if isDir(filepath.Join(c, class)) {
			return c, nil
		}
	}
	return "", fmt.Errorf("realiad: %s: missing: expected the image directory <class>/ in the root or in realiad_256|512|1024|raw",
		filepath.Join(root, class))
}
