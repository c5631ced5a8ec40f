// Package evidence keeps NG frames as files an auditor or a retraining session can open without the
// daemon: per result the original frame, its heatmap and the result JSON, in a dated tree
//
//	<dir>/<camera>/<YYYY-MM-DD>/<seq>-NG.png          the frame as scored (PNG, lossless)
//	<dir>/<camera>/<YYYY-MM-DD>/<seq>-NG.heatmap.jpg  the heatmap (.png with mqtt.heatmap.format png)
//	<dir>/<camera>/<YYYY-MM-DD>/<seq>-NG.json         the result JSON (as published)
//
// (OK frames sampled with ok_every are kept the same way as <seq>-OK.*). Files are written atomically (temp
// file, fsync, rename), so a reader never sees half a frame, and pruned by age and by total size, oldest day
// first. The store keeps its own, much smaller, image bound for the dashboard; this tree is the long memory.
package evidence

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vlmdiff/edge/internal/fsutil"
)

// DayLayout names the per-day folders.
const DayLayout = "2006-01-02"

// Options configure a Tree.
type Options struct {
	Dir string
	// MaxAge removes days older than this (0: no age bound); MaxBytes bounds the tree's total size, oldest
	// files first (0: no size bound).
	MaxAge   time.Duration
	MaxBytes int64
}

// Tree is one evidence directory. Save and Prune are safe to call from several goroutines.
type Tree struct {
	opts Options
	mu   sync.Mutex
}

// Open creates the directory if needed.
func Open(o Options) (*Tree, error) {
	if o.Dir == "" {
		return nil, errors.New("evidence: no directory")
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("evidence: %w", err)
	}
	return &Tree{opts: o}, nil
}

// Dir is the tree's root.
func (t *Tree) Dir() string { return t.opts.Dir }

// Item is one result's evidence.
type Item struct {
	Camera        string
	Seq           uint64
	Verdict       string // NG or OK
	Time          time.Time
	Frame         []byte // PNG
	Heatmap       []byte // optional
	HeatmapFormat string // png or jpeg
	Result        []byte // JSON
}

// Save writes an item's files and returns their paths relative to the root.
func (t *Tree) Save(it Item) ([]string, error) {
	if strings.ContainsAny(it.Camera, `/\`) || it.Camera == "" || it.Camera == "." || it.Camera == ".." {
		return nil, fmt.Errorf("evidence: camera name %q cannot be a directory", it.Camera)
	}
	day := it.Time.UTC().Format(DayLayout)
	rel := filepath.Join(it.Camera, day)
	dir := filepath.Join(t.opts.Dir, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("evidence: %w", err)
	}
	base := fmt.Sprintf("%010d-%s", it.Seq, it.Verdict)
	files := []struct {
		name string
		data []byte
	}{{base + ".png", it.Frame}, {base + ".json", it.Result}}
	if len(it.Heatmap) > 0 {
		files = append(files, struct {
			name string
			data []byte
		}{base + ".heatmap" + HeatmapExt(it.HeatmapFormat), it.Heatmap})
	}
	var out []string
	for _, f := range files {
		if len(f.data) == 0 {
			continue
		}
		p := filepath.Join(dir, f.name)
		if err := fsutil.WriteFileAtomic(p, f.data, 0o644); err != nil {
			return out, fmt.Errorf("evidence: %w", err)
		}
		// The file's time is the frame's, so pruning by size removes the oldest frames first even when several
		// are written within the file system's timestamp resolution (or out of order, e.g. after a restart).
		if !it.Time.IsZero() {
			if err := os.Chtimes(p, it.Time, it.Time); err != nil {
				return out, fmt.Errorf("evidence: %w", err)
			}
		}
		out = append(out, filepath.ToSlash(filepath.Join(rel, f.name)))
	}
	return out, nil
}

// File is one evidence file.
type File struct {
	Path    string    `json:"path"` // relative to the root, with '/'
	Bytes   int64     `json:"bytes"`
	ModTime time.Time `json:"mod_time"`
}

// List returns the files under the root, oldest first (by day folder, then name). camera and day ("" =
// all) narrow it.
func (t *Tree) List(camera, day string) ([]File, error) {
	var out []File
	root := t.opts.Dir
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		parts := strings.Split(filepath.ToSlash(rel), "/")
		if len(parts) != 3 || (camera != "" && parts[0] != camera) || (day != "" && parts[1] != day) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil // removed meanwhile
		}
		out = append(out, File{Path: filepath.ToSlash(rel), Bytes: info.Size(), ModTime: info.ModTime()})
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		di, dj := dayOf(out[i].Path), dayOf(out[j].Path)
		if di != dj {
			return di < dj
		}
		if !out[i].ModTime.Equal(out[j].ModTime) {
			return out[i].ModTime.Before(out[j].ModTime)
		}
		return out[i].Path < out[j].Path
	})
	return out, err
}

func dayOf(p string) string {
	parts := strings.Split(p, "/")
	if len(parts) == 3 {
		return parts[1]
	}
	return ""
}

// PruneStats says what a Prune removed and what is left.
type PruneStats struct {
	Removed      int
	RemovedBytes int64
	Files        int
	Bytes        int64
}

// Prune removes the days older than MaxAge, then the oldest files until the tree is within MaxBytes, and
// empty day and camera folders.
func (t *Tree) Prune(now time.Time) (PruneStats, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	files, err := t.List("", "")
	if err != nil {
		return PruneStats{}, fmt.Errorf("evidence prune: %w", err)
	}
	var st PruneStats
	for _, f := range files {
		st.Bytes += f.Bytes
	}
	cutoff := ""
	if t.opts.MaxAge > 0 {
		cutoff = now.Add(-t.opts.MaxAge).UTC().Format(DayLayout)
	}
	var errs []error
	for _, f := range files {
		old := cutoff != "" && dayOf(f.Path) < cutoff
		over := t.opts.MaxBytes > 0 && st.Bytes > t.opts.MaxBytes
		if !old && !over {
			st.Files++
			continue
		}
		if err := os.Remove(filepath.Join(t.opts.Dir, filepath.FromSlash(f.Path))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			st.Files++
			continue
		}
		st.Removed++
		st.RemovedBytes += f.Bytes
		st.Bytes -= f.Bytes
	}
	t.removeEmptyDirs()
	return st, errors.Join(errs...)
}

// removeEmptyDirs removes empty day folders, then empty camera folders.
func (t *Tree) removeEmptyDirs() {
	cams, _ := os.ReadDir(t.opts.Dir)
	for _, c := range cams {
		if !c.IsDir() {
			continue
		}
		cdir := filepath.Join(t.opts.Dir, c.Name())
		days, _ := os.ReadDir(cdir)
		for _, d := range days {
			if d.IsDir() {
				_ = os.Remove(filepath.Join(cdir, d.Name())) // fails (kept) unless empty
			}
		}
		_ = os.Remove(cdir)
	}
}

// HeatmapExt is the file name extension of a heatmap encoded as format (mqtt.heatmap.format): ".jpg" for
// jpeg, ".png" otherwise. The evidence files and the HTTP API's heatmap_url name heatmaps by it.
func HeatmapExt(format string) string {
	if format == "jpeg" {
		return ".jpg"
	}
	return ".png"
}
