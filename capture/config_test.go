package capture

import (
	"errors"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestConfigValidationNamesTheField(t *testing.T) {
	ok := Config{Name: "cam-1", Kind: KindSynthetic}
	tests := []struct {
		name  string
		edit  func(c *Config)
		field string // "" means valid
	}{
		{"valid synthetic", func(c *Config) {}, ""},
		{"valid device", func(c *Config) { c.Kind, c.Device, c.Backend = KindDevice, 0, BackendV4L2 }, ""},
		{"valid url", func(c *Config) { c.Kind, c.URL = KindURL, "rtsp://cam/stream" }, ""},
		{"valid folder", func(c *Config) { c.Kind, c.Path, c.Folder.After = KindFolder, "/in", AfterDelete }, ""},
		{"name missing", func(c *Config) { c.Name = "" }, "name"},
		{"name with topic wildcard", func(c *Config) { c.Name = "line/1+" }, "name"},
		{"kind missing", func(c *Config) { c.Kind = "" }, "kind"},
		{"kind unknown", func(c *Config) { c.Kind = "webcam" }, "kind"},
		{"device negative", func(c *Config) { c.Kind, c.Device = KindDevice, -1 }, "device"},
		{"url missing", func(c *Config) { c.Kind = KindURL }, "url"},
		{"file path missing", func(c *Config) { c.Kind = KindFile }, "path"},
		{"folder path missing", func(c *Config) { c.Kind = KindFolder }, "path"},
		{"fps NaN", func(c *Config) { c.FPS = math.NaN() }, "fps"},
		{"fps negative for a camera", func(c *Config) { c.Kind, c.FPS = KindDevice, -1 }, "fps"},
		{"width negative", func(c *Config) { c.Width, c.Height = -1, 10 }, "width"},
		{"height without width", func(c *Config) { c.Height = 10 }, "height"},
		{"size too large", func(c *Config) { c.Width, c.Height = 20000, 10 }, "width"},
		{"backend unknown", func(c *Config) { c.Backend = "directshow" }, "backend"},
		{"v4l2 for a url", func(c *Config) { c.Kind, c.URL, c.Backend = KindURL, "rtsp://x", BackendV4L2 }, "backend"},
		{"frozen_after negative", func(c *Config) { c.FrozenAfter = -time.Second }, "frozen_after"},
		{"retry_min negative", func(c *Config) { c.RetryMin = -1 }, "retry_min"},
		{"retry_max below min", func(c *Config) { c.RetryMin, c.RetryMax = time.Second, time.Millisecond }, "retry_max"},
		{"after unknown", func(c *Config) { c.Folder.After = "archive" }, "folder.after"},
		{"settle negative", func(c *Config) { c.Folder.Settle = -1 }, "folder.settle"},
		{"max_in_flight negative", func(c *Config) { c.Folder.MaxInFlight = -2 }, "folder.max_in_flight"},
		{"rescan negative", func(c *Config) { c.Folder.Rescan = -1 }, "folder.rescan"},
		{"processed_dir outside", func(c *Config) { c.Folder.ProcessedDir = "../done" }, "folder.processed_dir"},
		{"failed_dir is the folder", func(c *Config) { c.Folder.FailedDir = "." }, "folder.failed_dir"},
		{"defect_rate above 1", func(c *Config) { c.Synthetic.DefectRate = 1.5 }, "synthetic.defect_rate"},
		{"count negative", func(c *Config) { c.Synthetic.Count = -1 }, "synthetic.count"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			src, err := New(c)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				if src.Name() != c.Name {
					t.Fatalf("Name %q, want %q", src.Name(), c.Name)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T), want *ConfigError", err, err)
			}
			if ce.Field != tc.field || !strings.Contains(err.Error(), tc.field) || ce.Reason == "" {
				t.Fatalf("error %q names field %q, want %q", err, ce.Field, tc.field)
			}
		})
	}
}

// The agent's YAML config embeds Config: snake_case keys and duration strings must decode.
func TestConfigFromYAML(t *testing.T) {
	doc := `
name: line1
kind: folder
path: /var/spool/cam
fps: 5
frozen_after: 10s
retry_min: 250ms
retry_max: 1m
folder:
  after: delete
  processed_dir: done
  settle: 400ms
  max_in_flight: 8
  rescan: 30s
synthetic:
  seed: 7
  defect_rate: 0.25
  count: 100
`
	var c Config
	if err := yaml.Unmarshal([]byte(doc), &c); err != nil {
		t.Fatal(err)
	}
	want := Config{Name: "line1", Kind: KindFolder, Path: "/var/spool/cam", FPS: 5, FrozenAfter: 10 * time.Second,
		RetryMin: 250 * time.Millisecond, RetryMax: time.Minute,
		Folder: FolderConfig{After: AfterDelete, ProcessedDir: "done", Settle: 400 * time.Millisecond,
			MaxInFlight: 8, Rescan: 30 * time.Second},
		Synthetic: SyntheticConfig{Seed: 7, DefectRate: 0.25, Count: 100}}
	if c != want {
		t.Fatalf("decoded %+v\nwant    %+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	d := c.withDefaults()
	if d.Folder.ProcessedDir != filepath.Join("/var/spool/cam", "done") || d.Folder.FailedDir != "/var/spool/cam/failed" {
		t.Fatalf("folders %q %q", d.Folder.ProcessedDir, d.Folder.FailedDir)
	}
}

func TestDefaultBackendByKind(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{Kind: KindDevice}, BackendAny},
		{Config{Kind: KindURL, URL: "rtsp://cam/1"}, BackendFFmpeg},
		{Config{Kind: KindURL, URL: "rtspsrc location=rtsp://cam/1 ! decodebin ! videoconvert ! appsink"},
			BackendGStreamer},
		{Config{Kind: KindFile, Path: "a.mp4"}, BackendFFmpeg},
		{Config{Kind: KindURL, URL: "rtsp://cam/1", Backend: BackendAny}, BackendAny},
	}
	for _, tc := range tests {
		if got := tc.cfg.withDefaults().Backend; got != tc.want {
			t.Errorf("%s %q: backend %q, want %q", tc.cfg.Kind, tc.cfg.URL+tc.cfg.Path, got, tc.want)
		}
	}
}

func TestRedactHidesPassword(t *testing.T) {
	tests := []struct{ in, want string }{
		{"rtsp://admin:secret@10.0.0.5:554/live", "rtsp://admin:xxxxx@10.0.0.5:554/live"},
		{"rtsp://10.0.0.5/live", "rtsp://10.0.0.5/live"},
	}
	for _, tc := range tests {
		if got := redact(tc.in); got != tc.want {
			t.Errorf("redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
