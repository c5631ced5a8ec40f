package dataset

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// COCO-AD layout (the meta files that the InvAD/ADer COCO solver writes and the VLMDiff COCO loader reads):
//
//	<root>/meta_20_<part>.json, part 0-3
//	<root>/train2017/*.jpg, <root>/val2017/*.jpg, <root>/val2017_mask_ad_20_<part>/*.png
//
// Each meta file is {"train": {"coco": [...]}, "test": {"coco": [...]}} with entries
// {"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}, paths relative to root. Part k takes COCO's
// label ids 20k..20k+19 as the anomalies; train holds only normal train2017 images, test holds val2017.

type cocoEntry struct {
	ImgPath    string `json:"img_path"`
	MaskPath   string `json:"mask_path"`
	ClsName    string `json:"cls_name"`
	SpecieName string `json:"specie_name"`
	Anomaly    int    `json:"anomaly"`
}

type cocoMeta struct {
	Train map[string][]cocoEntry `json:"train"`
	Test  map[string][]cocoEntry `json:"test"`
}

// cocoMetas lists the meta_20_<part>.json files in root.
func cocoMetas(root string) []string {
	m, _ := filepath.Glob(filepath.Join(root, "meta_20_[0-9].json"))
	return m
}

func readCOCOAD(root string, part int) ([]Item, error) {
	if part < 0 || part > 3 {
		return nil, fmt.Errorf("cocoad: part %d: want 0-3", part)
	}
	path := filepath.Join(root, fmt.Sprintf("meta_20_%d.json", part))
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cocoad: %s: missing: expected meta_20_<part>.json (part 0-3) in the root", path)
	}
	var meta cocoMeta
	if err := json.Unmarshal(b, &meta); err != nil {
		return nil, fmt.Errorf("cocoad: %s: %w (expected {\"train\":{\"coco\":[...]},\"test\":{...}})", path, err)
	}
	if meta.Train == nil && meta.Test == nil {
		return nil, fmt.Errorf("cocoad: %s: no \"train\" or \"test\" object", path)
	}
	var items []Item
	for _, part := range []struct {
		split   string
		classes map[string][]cocoEntry
	}{{SplitTrain, meta.Train}, {SplitTest, meta.Test}} {
		names := make([]string, 0, len(part.classes))
		for c := range part.classes {
			names = append(names, c)
		}
		sort.Strings(names)
		for _, c := range names {
			for i, e := range part.classes[c] {
				where := fmt.Sprintf("cocoad: %s: %s.%s[%d]", path, part.split, c, i)
				it := Item{Class: e.ClsName, Split: part.split}
				if it.Class == "" {
					it.Class = c
				}
				switch e.Anomaly {
				case 0:
					it.Label = LabelNormal
				case 1:
					it.Label = LabelAnomalous
					it.Defect = e.SpecieName
				default:
					return nil, fmt.Errorf("%s: anomaly %d: want 0 or 1", where, e.Anomaly)
				}
				if it.Path, err = fileUnder(root, e.ImgPath, "image"); err != nil {
					return nil, fmt.Errorf("%s: %w", where, err)
				}
				if e.MaskPath != "" && it.Label == LabelAnomalous {
					if it.Mask, err = fileUnder(root, e.MaskPath, "mask"); err != nil {
						return nil, fmt.Errorf("%s: %w", where, err)
					}
				}
				items = append(items, it)
			}
		}
	}
	return items, nil
}
