package fsutil

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bundle.json")
	for i, tc := range []struct {
		data string
		perm os.FileMode
	}{{"first\n", 0o644}, {"second, longer than the first\n", 0o600}, {"", 0o640}} {
		if err := WriteFileAtomic(p, []byte(tc.data), tc.perm); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != tc.data {
			t.Fatalf("write %d: read %q, %v; want %q", i, got, err, tc.data)
		}
		if st, _ := os.Stat(p); st.Mode().Perm() != tc.perm {
			t.Errorf("write %d: mode %v, want %v", i, st.Mode().Perm(), tc.perm)
		}
	}
	onlyFile(t, dir, "bundle.json")
}

// TestWriteAtomicFailureKeepsTheOld: a writer that fails halfway leaves the old content and no temporary file.
func TestWriteAtomicFailureKeepsTheOld(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "index.jsonl")
	if err := WriteFileAtomic(p, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk on fire")
	err := WriteAtomic(p, 0o644, func(w io.Writer) error {
		if _, err := io.WriteString(w, "half of the new"); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("error %v, want the writer's", err)
	}
	if got, _ := os.ReadFile(p); string(got) != "old\n" {
		t.Fatalf("after a failed write the file holds %q", got)
	}
	onlyFile(t, dir, "index.jsonl")
}

func TestWriteFileAtomicNamesAMissingDirectory(t *testing.T) {
	p := filepath.Join(t.TempDir(), "no", "such", "f")
	if err := WriteFileAtomic(p, []byte("x"), 0o644); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("error %v, want a not-exist error", err)
	}
}

// TestCopyFile: the copy creates its directory, replaces an older dst, and a missing source is named.
func TestCopyFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "denoiser.onnx")
	if err := os.WriteFile(src, []byte("graph bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "copy", "sub", "denoiser.onnx")
	for _, old := range []string{"", "an older, longer content than the source"} {
		if old != "" {
			if err := os.WriteFile(dst, []byte(old), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := CopyFile(src, dst); err != nil {
			t.Fatalf("copy over %q: %v", old, err)
		}
		if got, err := os.ReadFile(dst); err != nil || string(got) != "graph bytes" {
			t.Fatalf("copy over %q: read %q, %v", old, got, err)
		}
	}
	missing := filepath.Join(dir, "nope.onnx")
	err := CopyFile(missing, filepath.Join(dir, "x"))
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("error %v, want a not-exist error naming %s", err, missing)
	}
}

func onlyFile(t *testing.T, dir, name string) {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].Name() != name {
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		t.Fatalf("directory holds %v, want only %s", names, name)
	}
}
