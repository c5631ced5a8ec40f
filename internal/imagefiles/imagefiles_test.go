package imagefiles

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestIsImage(t *testing.T) {
	for name, want := range map[string]bool{
		"a.png": true, "B.JPG": true, "c.jpeg": true, "d.bmp": true, "e.tif": true, "f.TIFF": true, "g.webp": true,
		"h.gif": false, "i.png.tmp": false, ".j.png": false, ".bundle.json.123.tmp": false, "png": false, "": false,
		"k.npy": false,
	} {
		if got := IsImage(name); got != want {
			t.Errorf("IsImage(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestList(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"b.png", "a.JPG", "c.webp", "notes.txt", ".hidden.png"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "dir.png"), 0o755); err != nil {
		t.Fatal(err)
	}
	must(t, os.Symlink(filepath.Join(dir, "b.png"), filepath.Join(dir, "link.png")))
	must(t, os.Symlink(filepath.Join(dir, "dir.png"), filepath.Join(dir, "linkdir.png")))
	must(t, os.Symlink(filepath.Join(dir, "gone.png"), filepath.Join(dir, "dangling.png")))
	got, err := List(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a.JPG", "b.png", "c.webp", "link.png"}; !slices.Equal(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
	if _, err := List(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("List of a missing directory gave no error")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
