package dataset

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vlmdiff/edge/models"
)

// Duplicate is a set of items whose image files hold the same bytes.
type Duplicate struct {
	Hash  string // SHA-256 of the file, hex
	Items []Item // train first, then val, then test; by path within a split
}

// CrossSplit reports whether the copies sit in more than one split. Such a copy is a leak: a test (or held-out
// validation) image that is a training image scores as seen (the nearest-normal term finds its own vectors, the
// mean frame and the reconstruction learnt it), so the metrics read better than a new frame would, and a held-out
// normal that is a training image makes the thresholds too tight.
func (d Duplicate) CrossSplit() bool {
	for _, it := range d.Items[1:] {
		if it.Split != d.Items[0].Split {
			return true
		}
	}
	return false
}

var splitOrder = map[string]int{SplitTrain: 0, SplitVal: 1, SplitTest: 2}

// FindDuplicates returns the groups of items whose files are byte-identical, sorted by their first item's path.
// Only files whose size another file shares are read and hashed, so a dataset whose files all differ in size
// costs one stat per image (PIPED's 1152: 24 ms). A file that cannot be read is an error naming it.
func FindDuplicates(ctx context.Context, items []Item) ([]Duplicate, error) {
	bySize := map[int64][]Item{}
	for _, it := range items {
		fi, err := os.Stat(it.Path)
		if err != nil {
			return nil, fmt.Errorf("dataset: %w", err)
		}
		bySize[fi.Size()] = append(bySize[fi.Size()], it)
	}
	byHash := map[string][]Item{}
	for _, same := range bySize {
		if len(same) < 2 {
			continue
		}
		for _, it := range same {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			h, err := models.FileSHA256(it.Path)
			if err != nil {
				return nil, fmt.Errorf("dataset: hashing %s: %w", it.Path, err)
			}
			byHash[h] = append(byHash[h], it)
		}
	}
	var out []Duplicate
	for h, its := range byHash {
		if len(its) < 2 {
			continue
		}
		sort.Slice(its, func(a, b int) bool {
			if sa, sb := splitOrder[its[a].Split], splitOrder[its[b].Split]; sa != sb {
				return sa < sb
			}
			return its[a].Path < its[b].Path
		})
		out = append(out, Duplicate{Hash: h, Items: its})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Items[0].Path < out[b].Items[0].Path })
	return out, nil
}

// FormatDuplicates is the warning printed for dups: a summary per kind (copies across splits, then copies within
// one), and one line per group across splits (at most maxLines; 0: all) with paths relative to root, so the
// person can remove the copies from one split knowingly. The images are kept as they are: published splits are
// what published figures are measured on. "" when there is nothing to say.
func FormatDuplicates(dups []Duplicate, root string, maxLines int) string {
	var cross, within []Duplicate
	for _, d := range dups {
		if d.CrossSplit() {
			cross = append(cross, d)
		} else {
			within = append(within, d)
		}
	}
	var b strings.Builder
	if len(cross) > 0 {
		counts := map[string]int{}
		for _, d := range cross {
			for _, it := range d.Items {
				if it.Split != d.Items[0].Split {
					counts[it.Split]++
				}
			}
		}
		var parts []string
		for _, s := range []string{SplitVal, SplitTest} {
			if counts[s] > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
			}
		}
		fmt.Fprintf(&b, "WARNING: %s images are byte-identical to images of an earlier split (kept as they are; they score as seen, so the metrics read better than new frames would, and held-out copies tighten the thresholds):\n",
			strings.Join(parts, " and "))
		for i, d := range cross {
			if maxLines > 0 && i == maxLines {
				fmt.Fprintf(&b, "  ... and %d more\n", len(cross)-maxLines)
				break
			}
			names := make([]string, len(d.Items))
			for j, it := range d.Items {
				names[j] = it.Split + ":" + relTo(root, it.Path)
			}
			fmt.Fprintf(&b, "  %s\n", strings.Join(names, " = "))
		}
	}
	if len(within) > 0 {
		n := 0
		for _, d := range within {
			n += len(d.Items) - 1
		}
		besides := ""
		if len(cross) > 0 {
			besides = "besides those, "
		}
		fmt.Fprintf(&b, "note: %s%d images repeat another image of the same split (%d groups); a repeated training normal weighs more in the mean frame and the banks\n",
			besides, n, len(within))
	}
	return b.String()
}

func relTo(root, path string) string {
	if root == "" {
		return path
	}
	if r, err := filepath.Rel(root, path); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return path
}
