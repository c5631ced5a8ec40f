package store

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSamplesTarMatchesExport: the stream unpacked by ExtractSamplesTar is byte for byte what ExportSamples
// writes, the false-alarm audit fields included; deleting the streamed refs leaves a sample added later.
func TestSamplesTarMatchesExport(t *testing.T) {
	s := open(t, Options{})
	at := time.Date(2025, 3, 1, 8, 0, 0, 0, time.UTC)
	for i, sm := range []Sample{
		{Camera: "a", Class: "bottle", Seq: 3, CapturedAt: at, Score: 0.2, PNG: []byte("\x89PNG a3")},
		{Camera: "a", Seq: 10, CapturedAt: at, Score: 0.7, Origin: OriginFalseAlarm, MarkedBy: "anna", MarkedAt: at.Add(time.Hour), PNG: []byte("\x89PNG a10")},
		{Camera: "b.2", Seq: 1, CapturedAt: at, PNG: []byte("\x89PNG b1")},
	} {
		if err := s.AddSample(sm); err != nil {
			t.Fatalf("sample %d: %v", i, err)
		}
	}
	direct, streamed := t.TempDir(), filepath.Join(t.TempDir(), "out")
	if _, err := s.ExportSamples(direct); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	refs, err := s.WriteSamplesTar(context.Background(), &buf)
	if err != nil || len(refs) != 3 {
		t.Fatalf("WriteSamplesTar: %v refs, %v", refs, err)
	}
	lines, err := ExtractSamplesTar(&buf, streamed)
	if err != nil || len(lines) != 3 || lines[1].MarkedBy != "anna" || lines[1].Origin != OriginFalseAlarm {
		t.Fatalf("ExtractSamplesTar: %+v, %v", lines, err)
	}
	for _, f := range []string{"samples.jsonl", "images/a/3.png", "images/a/10.png", "images/b.2/1.png"} {
		want, err1 := os.ReadFile(filepath.Join(direct, f))
		got, err2 := os.ReadFile(filepath.Join(streamed, f))
		if err1 != nil || err2 != nil || !bytes.Equal(want, got) {
			t.Errorf("%s: streamed %q (%v), exported %q (%v)", f, got, err2, want, err1)
		}
	}
	if err := s.AddSample(Sample{Camera: "a", Seq: 11, PNG: []byte("later")}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.DeleteSampleRefs(refs); n != 3 || err != nil {
		t.Errorf("DeleteSampleRefs = %d, %v", n, err)
	}
	if n, _ := s.SampleCount(); n != 1 {
		t.Errorf("%d samples left, want the one added after the export", n)
	}
}

// TestExtractSamplesTarRefuses: entries that would leave the directory, links, and a stream cut before its
// manifest are refused.
func TestExtractSamplesTarRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		hdr  tar.Header
		want string
	}{
		{"climbs out", tar.Header{Name: "images/../../etc/x.png", Typeflag: tar.TypeReg, Size: 1}, "unexpected entry"},
		{"absolute", tar.Header{Name: "/tmp/x.png", Typeflag: tar.TypeReg, Size: 1}, "unexpected entry"},
		{"symlink", tar.Header{Name: "images/a/1.png", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"}, "unexpected entry"},
		{"no manifest", tar.Header{Name: "images/a/1.png", Typeflag: tar.TypeReg, Size: 1}, "without samples.jsonl"},
	} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		h := tc.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("x"))
		}
		tw.Close()
		dir := t.TempDir()
		if _, err := ExtractSamplesTar(&buf, dir); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}
