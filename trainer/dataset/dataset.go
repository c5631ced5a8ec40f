// Package dataset reads anomaly-detection datasets in their published layouts (MVTec-AD, VisA, Real-IAD,
// COCO-AD) and the samples the agent collected, into one flat index of Items. Every later stage (captions,
// training, evaluation, calibration) reads that index rather than a layout, so a new layout is one reader here
// and nothing anywhere else. The index is written as JSON lines (index.jsonl), which the Python trainer reads
// as is.
package dataset

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vlmdiff/edge/internal/fsutil"
	"github.com/vlmdiff/edge/internal/imagefiles"
)

// Splits.
const (
	SplitTrain = "train"
	SplitVal   = "val"
	SplitTest  = "test"
)

// Labels.
const (
	LabelNormal    = 0
	LabelAnomalous = 1
)

// Layout names accepted by Open.
const (
	LayoutAuto      = "auto"
	LayoutMVTec     = "mvtec"
	LayoutVisA      = "visa"
	LayoutRealIAD   = "realiad"
	LayoutCOCOAD    = "cocoad"
	LayoutCollected = "collected"
)

// Layouts lists the concrete layouts, in the order auto-detection tries them.
var Layouts = []string{LayoutCollected, LayoutVisA, LayoutCOCOAD, LayoutRealIAD, LayoutMVTec}

// Item is one image of a dataset. Path and Mask are absolute, so an index can be read from anywhere.
type Item struct {
	Path  string `json:"path"`
	Mask  string `json:"mask"` // "" when the image has no mask (normal images, image-level labels)
	Class string `json:"class"`
	Split string `json:"split"` // "train", "val" or "test"
	Label int    `json:"label"` // 0 normal, 1 anomalous
	// Defect is the defect type (the MVTec test folder, the VisA/Real-IAD anomaly class); "" for normal items.
	// Not needed by training; kept because per-defect breakdowns are what engineers ask for first.
	Defect string `json:"defect,omitempty"`
}

// Options select how a dataset is read.
type Options struct {
	// Layout is one of the Layout* names; "" means auto.
	Layout string
	// ValFraction in [0,1) moves that share of the train normals to the "val" split, chosen by a hash of the
	// image's path relative to the root, so the choice is the same on every machine and every run.
	ValFraction float64
	// COCOPart selects meta_20_<part>.json for COCO-AD (0-3): each part holds out a different 20 classes as
	// anomalies, so the parts are four different datasets.
	COCOPart int
}

// Open reads the dataset at root in the given layout ("auto" detects it).
func Open(root, layout string) ([]Item, error) {
	return OpenWith(root, Options{Layout: layout})
}

// OpenWith reads the dataset at root with opts.
func OpenWith(root string, opts Options) ([]Item, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("dataset: resolving %s: %w", root, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("dataset: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("dataset: %s: not a directory", abs)
	}
	if opts.ValFraction < 0 || opts.ValFraction >= 1 {
		return nil, fmt.Errorf("dataset: val fraction %v: want 0 <= f < 1", opts.ValFraction)
	}
	layout := opts.Layout
	if layout == "" || layout == LayoutAuto {
		layout, err = Detect(abs)
		if err != nil {
			return nil, err
		}
	}
	var items []Item
	switch layout {
	case LayoutMVTec:
		items, err = readMVTec(abs)
	case LayoutVisA:
		items, err = readVisA(abs)
	case LayoutRealIAD:
		items, err = readRealIAD(abs)
	case LayoutCOCOAD:
		items, err = readCOCOAD(abs, opts.COCOPart)
	case LayoutCollected:
		items, err = readCollected(abs)
	default:
		return nil, fmt.Errorf("dataset: unknown layout %q (want auto, %s)", layout, strings.Join(Layouts, ", "))
	}
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("%s: %s: no images found", layout, abs)
	}
	if opts.ValFraction > 0 {
		HoldOut(items, abs, opts.ValFraction)
	}
	return items, nil
}

// Detect names the layout of the dataset at root by the files that only that layout has.
func Detect(root string) (string, error) {
	switch {
	case isFile(filepath.Join(root, collectedFile)):
		return LayoutCollected, nil
	case isFile(filepath.Join(root, "split_csv", visaCSV)):
		return LayoutVisA, nil
	case len(cocoMetas(root)) > 0:
		return LayoutCOCOAD, nil
	case realIADJSONDir(root) != "":
		return LayoutRealIAD, nil
	case looksMVTec(root):
		return LayoutMVTec, nil
	}
	return "", fmt.Errorf("dataset: %s: unknown layout: expected one of %s (MVTec-AD <class>/train/good or a "+
		"single class <root>/train/good, VisA split_csv/%s, Real-IAD realiad_jsons/<class>.json, COCO-AD "+
		"meta_20_<part>.json, collected %s); found %s",
		root, strings.Join(Layouts, ", "), visaCSV, collectedFile, describeDir(root))
}

// describeDir summarises what a directory holds, for errors that say what was found instead of the expected
// layout: its first subdirectories (and for each whether it has train/good) and how many images and other files.
func describeDir(dir string) string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	var dirs []string
	images, other := 0, 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		switch {
		case isDir(filepath.Join(dir, e.Name())):
			d := e.Name() + "/"
			if sub, err := listDirs(filepath.Join(dir, e.Name())); err == nil && len(sub) > 0 {
				if len(sub) > 4 {
					sub = append(sub[:4], "...")
				}
				d += " (" + strings.Join(sub, ", ") + ")"
			}
			dirs = append(dirs, d)
		case imagefiles.IsImage(e.Name()):
			images++
		default:
			other++
		}
	}
	if len(dirs) > 8 {
		dirs = append(dirs[:8], fmt.Sprintf("and %d more", len(dirs)-8))
	}
	ds := "no directories"
	if len(dirs) > 0 {
		ds = "directories " + strings.Join(dirs, "; ")
	}
	return fmt.Sprintf("%s, %d images and %d other files at the top level", ds, images, other)
}

// MinValPerClass is the fewest held-out normals HoldOut leaves a class whose share of them (fraction x its train
// normals, rounded down) is at least that many (else its share). Why: the hash picks each image alone, so a
// class of 40 normals at 0.1 gets none about once in 70 datasets (0.9^40), and then nothing of that class is
// painted, validated or ranked by the select stage, which chooses the map for every class without it; with one
// normal the painter has no variation to hold its defects to (the visibility floor needs two). Two is the least
// that gives both.
const MinValPerClass = 2

// HoldOut moves a deterministic share of the train normals to the "val" split. The choice hashes the path
// relative to root (SHA-256, first 8 bytes as a fraction of 2^64), so it does not depend on the order of the
// items, on the machine, or on which other images exist: adding images never moves an old one between splits.
// The exception is a class whose hashes held fewer than MinValPerClass, or fewer than its share where that is
// less: it gets the next normals in hash order up to that many, and those can go back to training when images
// added to the class bring hashes below the fraction.
func HoldOut(items []Item, root string, fraction float64) {
	type cand struct {
		i int
		u float64
	}
	byClass := map[string][]cand{}
	for i := range items {
		it := &items[i]
		if it.Split != SplitTrain || it.Label != LabelNormal {
			continue
		}
		byClass[it.Class] = append(byClass[it.Class], cand{i, splitHash(root, it.Path)})
	}
	for _, cs := range byClass {
		want := min(MinValPerClass, int(float64(len(cs))*fraction)) // the share rounded down: training keeps the rest
		// hash order, ties (never seen) by path so the order is total
		sort.Slice(cs, func(a, b int) bool {
			if cs[a].u != cs[b].u {
				return cs[a].u < cs[b].u
			}
			return items[cs[a].i].Path < items[cs[b].i].Path
		})
		for k, c := range cs {
			if c.u < fraction || k < want {
				items[c.i].Split = SplitVal
			}
		}
	}
}

// splitHash is HoldOut's draw for one image: the SHA-256 of its path relative to root ('/'-separated), first 8
// bytes as a fraction of 2^64, in [0, 1).
func splitHash(root, path string) float64 {
	rel, err := filepath.Rel(root, path)
	if err != nil {
		rel = path
	}
	sum := sha256.Sum256([]byte(filepath.ToSlash(rel)))
	return float64(binary.BigEndian.Uint64(sum[:8])) / (1 << 64)
}

// Classes returns the sorted distinct class names of items.
func Classes(items []Item) []string {
	seen := map[string]bool{}
	for _, it := range items {
		seen[it.Class] = true
	}
	out := make([]string, 0, len(seen))
	for c := range seen {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// IndexFile is the conventional name of an index.
const IndexFile = "index.jsonl"

// WriteIndex writes items as JSON lines to path, through a temporary file and a rename, so a reader never sees
// half an index.
func WriteIndex(path string, items []Item) error {
	for i, it := range items {
		if err := it.validate(); err != nil {
			return fmt.Errorf("dataset: writing %s: item %d: %w", path, i, err)
		}
	}
	err := fsutil.WriteAtomic(path, 0o644, func(f io.Writer) error {
		w := bufio.NewWriter(f)
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		for _, it := range items {
			if err := enc.Encode(it); err != nil {
				return err
			}
		}
		return w.Flush()
	})
	if err != nil {
		return fmt.Errorf("dataset: writing %s: %w", path, err)
	}
	return nil
}

// ReadIndex reads an index written by WriteIndex. A malformed line is an error naming its line number.
func ReadIndex(path string) ([]Item, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("dataset: reading index: %w", err)
	}
	defer f.Close()
	items, err := DecodeIndex(f)
	if err != nil {
		return nil, fmt.Errorf("dataset: reading index %s: %w", path, err)
	}
	return items, nil
}

// DecodeIndex reads JSON-lines items from r; blank lines are skipped.
func DecodeIndex(r io.Reader) ([]Item, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	var items []Item
	for line := 1; sc.Scan(); line++ {
		b := strings.TrimSpace(sc.Text())
		if b == "" {
			continue
		}
		var it Item
		dec := json.NewDecoder(strings.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&it); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if err := it.validate(); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		items = append(items, it)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return items, nil
}

func (it Item) validate() error {
	switch {
	case it.Path == "":
		return errors.New("empty path")
	case it.Class == "":
		return fmt.Errorf("%s: empty class", it.Path)
	case it.Split != SplitTrain && it.Split != SplitVal && it.Split != SplitTest:
		return fmt.Errorf("%s: split %q: want train, val or test", it.Path, it.Split)
	case it.Label != LabelNormal && it.Label != LabelAnomalous:
		return fmt.Errorf("%s: label %d: want 0 or 1", it.Path, it.Label)
	}
	return nil
}

// listImages returns the sorted image files directly inside dir (internal/imagefiles decides which).
func listImages(dir string) ([]string, error) { return imagefiles.List(dir) }

// listDirs returns the sorted, non-hidden subdirectories of dir, symbolic links to directories included:
// datasets are often assembled by linking class directories from several places, and a reader that skipped
// links would silently drop those classes.
func listDirs(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if e.IsDir() || (e.Type()&os.ModeSymlink != 0 && isDir(filepath.Join(dir, e.Name()))) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// fileUnder joins a relative path from a layout's metadata onto root, refusing paths that climb out of it
// (metadata is input, and an index must not point at arbitrary files), and checks that the file exists.
func fileUnder(root, rel, what string) (string, error) {
	if rel == "" {
		return "", fmt.Errorf("%s: empty path", what)
	}
	clean := filepath.Clean(filepath.FromSlash(rel))
	if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("%s %q: outside the dataset root", what, rel)
	}
	p := filepath.Join(root, clean)
	if !isFile(p) {
		return "", fmt.Errorf("%s %s: missing", what, p)
	}
	return p, nil
}
