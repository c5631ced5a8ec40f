package dataset

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFindDuplicates: copies are grouped by content, not by size or name; a group across splits is a leak, one
// within a split only a note; the warning names each leaked copy and stops at maxLines.
func TestFindDuplicates(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	items := []Item{
		{Path: write("a/train/good/1.png", "frame-one"), Split: SplitTrain},
		{Path: write("a/test/good/9.png", "frame-one"), Split: SplitTest},     // leak of 1
		{Path: write("a/train/good/2.png", "frame-two"), Split: SplitTrain},   // same size as 1, other bytes
		{Path: write("a/train/good/3.png", "frame-two"), Split: SplitTrain},   // repeat within train
		{Path: write("a/val/good/4.png", "frame-three"), Split: SplitVal},     // held out
		{Path: write("a/train/good/5.png", "frame-three"), Split: SplitTrain}, // ...of a training image
		{Path: write("a/test/bad/6.png", "a defect"), Split: SplitTest, Label: LabelAnomalous},
	}
	dups, err := FindDuplicates(context.Background(), items)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range dups {
		var names []string
		for _, it := range d.Items {
			names = append(names, filepath.Base(it.Path))
		}
		got = append(got, strings.Join(names, "=")+map[bool]string{true: " cross", false: ""}[d.CrossSplit()])
	}
	want := []string{"1.png=9.png cross", "2.png=3.png", "5.png=4.png cross"} // train before val before test
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Fatalf("groups %v, want %v", got, want)
	}
	msg := FormatDuplicates(dups, dir, 0)
	for _, s := range []string{"1 val and 1 test images are byte-identical", "train:a/train/good/1.png = test:a/test/good/9.png",
		"train:a/train/good/5.png = val:a/val/good/4.png", "besides those, 1 images repeat another image of the same split (1 groups)"} {
		if !strings.Contains(msg, s) {
			t.Errorf("warning lacks %q:\n%s", s, msg)
		}
	}
	if short := FormatDuplicates(dups, dir, 1); !strings.Contains(short, "... and 1 more") || strings.Contains(short, "5.png") {
		t.Errorf("warning with maxLines 1:\n%s", short)
	}
	if msg := FormatDuplicates(nil, dir, 0); msg != "" {
		t.Errorf("no duplicates: %q", msg)
	}
	items = append(items, Item{Path: filepath.Join(dir, "gone.png"), Split: SplitTest})
	if _, err := FindDuplicates(context.Background(), items); err == nil || !strings.Contains(err.Error(), "gone.png") {
		t.Errorf("a missing file: %v, want an error naming it", err)
	}
}
