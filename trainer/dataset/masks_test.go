package dataset

import (
	"image"
	"image/png"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeBlankPNG writes an all-zero 8x8 grey PNG (an empty mask).
func writeBlankPNG(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := png.Encode(f, image.NewGray(image.Rect(0, 0, 8, 8))); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// maskTree is one class with a good mask (000), an empty mask (001) and a missing mask (002).
func maskTree(t *testing.T) string {
	r := t.TempDir()
	writePNG(t, filepath.Join(r, "tile/train/good/a.png"), 10)
	writePNG(t, filepath.Join(r, "tile/test/good/g.png"), 10)
	for _, n := range []string{"000", "001", "002"} {
		writePNG(t, filepath.Join(r, "tile/test/hole", n+".png"), 50)
	}
	writePNG(t, filepath.Join(r, "tile/ground_truth/hole/000_mask.png"), 0) // writePNG sets pixel (1,1) to 255
	writeBlankPNG(t, filepath.Join(r, "tile/ground_truth/hole/001_mask.png"))
	return r
}

func TestCheckMasks(t *testing.T) {
	r := maskTree(t)
	items, err := Open(r, "auto")
	if err != nil {
		t.Fatalf("a missing mask must not fail the reader (CheckMasks applies the policy): %v", err)
	}
	type want struct {
		label  int
		mask   string // relative, "" for none
		defect string
	}
	tests := []struct {
		policy string
		want   map[string]want // by image, relative to root
	}{
		{"", map[string]want{ // folder by default
			"tile/test/hole/000.png": {1, "tile/ground_truth/hole/000_mask.png", "hole"},
			"tile/test/hole/001.png": {1, "tile/ground_truth/hole/001_mask.png", "hole"},
			"tile/test/hole/002.png": {1, "", "hole"},
		}},
		{LabelByMask, map[string]want{
			"tile/test/hole/000.png": {1, "tile/ground_truth/hole/000_mask.png", "hole"},
			"tile/test/hole/001.png": {0, "", ""},
			"tile/test/hole/002.png": {0, "", ""},
		}},
	}
	for _, tc := range tests {
		t.Run("policy "+tc.policy, func(t *testing.T) {
			before := append([]Item(nil), items...)
			got, issues, err := CheckMasks(items, tc.policy)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(items, before) {
				t.Errorf("CheckMasks modified its input")
			}
			var reasons []string
			for _, is := range issues {
				reasons = append(reasons, filepath.Base(is.Path)+":"+is.Reason)
			}
			if strings.Join(reasons, ",") != "001.png:empty,002.png:missing" {
				t.Errorf("issues %v", reasons)
			}
			for _, it := range rel(t, r, got) {
				w, ok := tc.want[it.Path]
				if !ok {
					continue
				}
				if it.Label != w.label || it.Mask != w.mask || it.Defect != w.defect {
					t.Errorf("%s: label %d mask %q defect %q, want %+v", it.Path, it.Label, it.Mask, it.Defect, w)
				}
			}
			msg := FormatMaskIssues(issues, tc.policy)
			for _, s := range []string{"2 anomalous test images", "001_mask.png", "002_mask.png", "empty mask", "missing mask"} {
				if !strings.Contains(msg, s) {
					t.Errorf("warning lacks %q:\n%s", s, msg)
				}
			}
		})
	}
	if _, _, err := CheckMasks(items, "majority"); err == nil || !strings.Contains(err.Error(), `label_by "majority": want folder or mask`) {
		t.Errorf("bad policy: %v", err)
	}
	// A mask that is not an image is an error naming it, not a silently relabelled item.
	writeFile(t, filepath.Join(r, "tile/ground_truth/hole/000_mask.png"), "not a png")
	if _, _, err := CheckMasks(items, ""); err == nil || !strings.Contains(err.Error(), "000_mask.png") {
		t.Errorf("undecodable mask: %v", err)
	}
	if FormatMaskIssues(nil, "") != "" {
		t.Errorf("no issues must print nothing")
	}
}

// TestSymlinksAndSingleClass checks that linked class directories and linked images are read, and that a root
// which is itself one class reads as that class.
func TestSymlinksAndSingleClass(t *testing.T) {
	src := mvtecTree(t)
	r := t.TempDir()
	if err := os.Symlink(filepath.Join(src, "bottle"), filepath.Join(r, "bottle")); err != nil {
		t.Skipf("symlinks unsupported: %v", err)
	}
	// cable is a real directory whose train image is a link.
	writePNG(t, filepath.Join(r, "cable/test/cut/b.png"), 21)
	writePNG(t, filepath.Join(r, "cable/ground_truth/cut/b.png"), 255)
	os.MkdirAll(filepath.Join(r, "cable/train/good"), 0o755)
	if err := os.Symlink(filepath.Join(src, "cable/train/good/a.png"), filepath.Join(r, "cable/train/good/a.png")); err != nil {
		t.Fatal(err)
	}
	// A dangling link named like an image is not an image.
	os.Symlink(filepath.Join(src, "nothing.png"), filepath.Join(r, "cable/train/good/z.png"))
	items, err := Open(r, "auto")
	if err != nil {
		t.Fatal(err)
	}
	direct, err := Open(src, "mvtec")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rel(t, r, items), rel(t, src, direct); !reflect.DeepEqual(got, want) {
		t.Errorf("through links:\n got %+v\nwant %+v", got, want)
	}

	// Single class: the class directory itself, directly and through a link.
	link := filepath.Join(t.TempDir(), "my-part")
	os.Symlink(filepath.Join(src, "bottle"), link)
	for _, root := range []string{filepath.Join(src, "bottle"), link} {
		one, err := Open(root, "auto")
		if err != nil {
			t.Fatalf("%s: %v", root, err)
		}
		if len(one) != 5 {
			t.Errorf("%s: %d items, want bottle's 5", root, len(one))
		}
		for _, it := range one {
			if it.Class != filepath.Base(root) {
				t.Errorf("%s: class %q, want the root's name", root, it.Class)
			}
		}
	}
}

// TestLayoutMessages checks that a wrong layout says what was expected and what was found.
func TestLayoutMessages(t *testing.T) {
	r := t.TempDir()
	writePNG(t, filepath.Join(r, "parts/train/ok/a.png"), 1)
	writePNG(t, filepath.Join(r, "b.png"), 1)
	writeFile(t, filepath.Join(r, "notes.txt"), "x")
	_, err := Open(r, "auto")
	if err == nil {
		t.Fatal("no error")
	}
	for _, s := range []string{"<class>/train/good", "single class <root>/train/good", "found directories parts/ (train)", "1 images and 1 other files"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q: %v", s, err)
		}
	}
	// Forced MVTec on a class without train/good: names the path and what the class holds.
	_, err = Open(r, "mvtec")
	if err == nil || !strings.Contains(err.Error(), "parts/train/good: missing") || !strings.Contains(err.Error(), "has directories train/") {
		t.Errorf("forced mvtec: %v", err)
	}
}
