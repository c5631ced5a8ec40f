package dataset

import (
	"errors"
	"fmt"
	"image"
	_ "image/gif"  // masks are read with the standard decoders
	_ "image/jpeg" // (PNG in every published layout; JPEG and GIF for home-made sets)
	_ "image/png"
	"os"
	"sort"
	"strings"
)

// Label policies for anomalous test images whose mask marks no pixel (data.label_by, --label-by).
const (
	// LabelByFolder keeps the folder's (or metadata's) anomalous label. An empty mask then means "anomalous
	// image, no anomalous pixel" (image metrics count it as anomalous, pixel metrics see only normal pixels); a
	// missing mask means the reference loaders' substitute, every pixel anomalous. The default: the folder is
	// what the person who sorted the images decided.
	LabelByFolder = "folder"
	// LabelByMask relabels such an image as normal, as the reference evaluation (which derives the image label
	// from the mask) effectively does.
	LabelByMask = "mask"
)

// LabelPolicies lists the accepted label_by values.
var LabelPolicies = []string{LabelByFolder, LabelByMask}

// MaskIssue is an anomalous test image whose mask is missing or marks no pixel.
type MaskIssue struct {
	Path   string // the image
	Mask   string // the mask file (expected path when missing)
	Class  string
	Defect string
	Reason string // "missing" or "empty"
}

// Mask issue reasons.
const (
	MaskMissing = "missing"
	MaskEmpty   = "empty"
)

// CheckMasks reads the mask of every anomalous item that names one and applies policy (LabelByFolder or
// LabelByMask; "" means folder) to those whose mask file is missing or has no non-zero pixel. It runs at index
// time so that such images are found, reported and resolved before any training, rather than failing the
// evaluation hours later. Items without a mask path (image-level datasets) are left alone. It returns the
// resulting items (a new slice; the input is not modified) and the issues found, sorted by path. A mask that
// exists but cannot be decoded is an error naming it.
func CheckMasks(items []Item, policy string) ([]Item, []MaskIssue, error) {
	if policy == "" {
		policy = LabelByFolder
	}
	if policy != LabelByFolder && policy != LabelByMask {
		return nil, nil, fmt.Errorf("dataset: label_by %q: want %s", policy, strings.Join(LabelPolicies, " or "))
	}
	out := make([]Item, len(items))
	copy(out, items)
	var issues []MaskIssue
	for i := range out {
		it := &out[i]
		if it.Label != LabelAnomalous || it.Mask == "" {
			continue
		}
		reason := ""
		any, err := maskHasPixels(it.Mask)
		switch {
		case errors.Is(err, os.ErrNotExist):
			reason = MaskMissing
		case err != nil:
			return nil, nil, fmt.Errorf("dataset: mask of %s: %w", it.Path, err)
		case !any:
			reason = MaskEmpty
		}
		if reason == "" {
			continue
		}
		issues = append(issues, MaskIssue{Path: it.Path, Mask: it.Mask, Class: it.Class, Defect: it.Defect, Reason: reason})
		switch {
		case policy == LabelByMask:
			it.Label, it.Mask, it.Defect = LabelNormal, "", ""
		case reason == MaskMissing:
			it.Mask = "" // the reference loaders' substitute for an anomalous image without a mask: all pixels
		}
	}
	sort.Slice(issues, func(a, b int) bool { return issues[a].Path < issues[b].Path })
	return out, issues, nil
}

// FormatMaskIssues is the warning printed for issues under policy: one line of summary and one per file, so
// the person can fix the masks or choose the other policy knowingly.
func FormatMaskIssues(issues []MaskIssue, policy string) string {
	if len(issues) == 0 {
		return ""
	}
	if policy == "" {
		policy = LabelByFolder
	}
	var b strings.Builder
	action := "kept as anomalous (label_by: folder; an empty mask adds only normal pixels, a missing one counts the whole image as anomalous pixels)"
	if policy == LabelByMask {
		action = "relabelled as normal (label_by: mask)"
	}
	fmt.Fprintf(&b, "WARNING: %d anomalous test images have a missing or empty mask; %s:\n", len(issues), action)
	for _, is := range issues {
		fmt.Fprintf(&b, "  %s mask %s (class %s, defect %s): %s\n", is.Reason, is.Mask, is.Class, is.Defect, is.Path)
	}
	return b.String()
}

// maskHasPixels reports whether the image at path has any non-zero pixel (in any colour channel; alpha is
// ignored, as the PIL 'L' conversion the evaluation uses ignores it).
func maskHasPixels(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	img, _, err := image.Decode(f)
	if err != nil {
		return false, fmt.Errorf("decoding %s: %w", path, err)
	}
	switch m := img.(type) {
	case *image.Gray:
		for _, v := range m.Pix {
			if v != 0 {
				return true, nil
			}
		}
		return false, nil
	case *image.Paletted:
		for _, v := range m.Pix {
			if r, g, b, _ := m.Palette[v].RGBA(); r|g|b != 0 {
				return true, nil
			}
		}
		return false, nil
	}
	bd := img.Bounds()
	for y := bd.Min.Y; y < bd.Max.Y; y++ {
		for x := bd.Min.X; x < bd.Max.X; x++ {
			if r, g, b, _ := img.At(x, y).RGBA(); r|g|b != 0 {
				return true, nil
			}
		}
	}
	return false, nil
}
