package models

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzManifest: any bundle.json is either refused with an error or decodes to a manifest whose Validate
// and CalibrationFor return without panicking; a refused one never takes the process down.
func FuzzManifest(f *testing.F) {
	for _, dir := range []string{"testdata/fixture", "../models/demo"} {
		if data, err := os.ReadFile(filepath.Join(dir, ManifestFile)); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(`{"format": 1, "files": {"../x": {"sha256": "00", "size": 1}}}`))
	f.Add([]byte(`this is { not json`))
	f.Add([]byte(`{"calibration": {"global": {"threshold": 1e308, "min": -1e308, "max": 1e308}}}`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, ManifestFile), data, 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := ReadManifest(dir)
		if err != nil {
			if m != nil {
				t.Fatal("error with a manifest")
			}
			return
		}
		_ = m.Validate()
		_ = m.CalibrationFor("")
		_ = m.CalibrationFor("x")
	})
}
