package cli

import (
	"path/filepath"
	"strconv"
	"strings"
)

// outputStems names the outputs of `vlmdiff score --out`: each image's path relative to the folder all the
// images share, without its extension. WHY: MVTec-style test trees reuse file names in every defect folder
// (broken/000.png, good/000.png), and naming outputs by base name alone let the second silently overwrite
// the first. Images in one folder keep the plain base names; a path given twice (or two that differ only in
// extension) gets "-1", "-2", ... so no output is ever written twice.
func outputStems(paths []string) []string {
	abs := make([]string, len(paths))
	for i, p := range paths {
		a, err := filepath.Abs(p)
		if err != nil {
			a = filepath.Clean(p)
		}
		abs[i] = a
	}
	common := ""
	for i, a := range abs {
		d := filepath.Dir(a)
		if i == 0 {
			common = d
			continue
		}
		for !within(d, common) {
			parent := filepath.Dir(common)
			if parent == common {
				break
			}
			common = parent
		}
	}
	out := make([]string, len(paths))
	used := make(map[string]bool, len(paths))
	for i, a := range abs {
		rel, err := filepath.Rel(common, a)
		if err != nil || strings.HasPrefix(rel, "..") {
			rel = filepath.Base(a)
		}
		stem := strings.TrimSuffix(rel, filepath.Ext(rel))
		name := stem
		for n := 1; used[name]; n++ {
			name = stem + "-" + strconv.Itoa(n)
		}
		used[name] = true
		out[i] = name
	}
	return out
}

// within reports whether dir is root or below it.
func within(dir, root string) bool {
	if dir == root {
		return true
	}
	rel, err := filepath.Rel(root, dir)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}
