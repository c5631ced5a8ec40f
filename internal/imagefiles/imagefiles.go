// Package imagefiles decides which files are images, once for the whole tree: the folder and synthetic
// camera sources (capture) and the dataset readers (trainer/dataset) take the same files.
package imagefiles

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Exts are the file name extensions read as images, lower case; the match ignores case. Every one of them
// is decoded by OpenCV (the daemon and `vlmdiff score`) and by PIL (the trainer).
var Exts = []string{".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

// IsImage reports whether a base name is an image's: one of Exts, and not hidden (a leading dot is how
// editors, rsync and our own atomic writes name their temporary files).
func IsImage(name string) bool {
	if name == "" || name[0] == '.' {
		return false
	}
	return slices.Contains(Exts, strings.ToLower(filepath.Ext(name)))
}

// List returns the names of the image files directly in dir, sorted. A symbolic link counts when it leads
// to a regular file (datasets are often links into a shared copy); directories and other files do not.
func List(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if !IsImage(e.Name()) {
			continue
		}
		regular := e.Type().IsRegular()
		if e.Type()&os.ModeSymlink != 0 {
			st, err := os.Stat(filepath.Join(dir, e.Name()))
			regular = err == nil && st.Mode().IsRegular()
		}
		if regular {
			out = append(out, e.Name())
		}
	}
	slices.Sort(out)
	return out, nil
}
