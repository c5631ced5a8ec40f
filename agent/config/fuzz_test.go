package config

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: any YAML is either a valid, complete config or an error; never a panic, and a config that
// parses validates again unchanged (Parse returns only valid configs).
func FuzzParse(f *testing.F) {
	for _, p := range []string{"../../configs/demo.yaml"} {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	matches, _ := filepath.Glob("testdata/*.yaml")
	for _, p := range matches {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("models: {dir: /m}\ncameras: [{name: c, kind: synthetic, threshold_range: [0, 1], remote_threshold: false}]\n"))
	f.Add([]byte("models: {dir: /m}\nmqtt: {listen: '999.1.1.1:99999', embedded: {users: [{username: u, password: p, commands: [threshold]}]}}\ncameras: [{name: c, kind: folder, path: /x, image_limits: {max_pixels: 100}}]\n"))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Add([]byte("${X:-y}: 1\n"))
	lookup := func(k string) (string, bool) {
		if k == "SET" {
			return "v", true
		}
		return "", false
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(bytes.NewReader(data), lookup)
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse returned a config that does not validate: %v", err)
		}
	})
}
