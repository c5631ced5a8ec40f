package agent

import (
	"context"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/agent/evidence"
	"github.com/vlmdiff/edge/capture"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
)

// renderOnly is a Scorer whose Heatmap is the pipeline's renderer; the rest is unused here.
type renderOnly struct{}

func (renderOnly) Score(context.Context, []pipeline.Request) ([]pipeline.Result, error) {
	return nil, nil
}
func (renderOnly) Heatmap(img pipeline.Image, r *pipeline.Result, format string) ([]byte, error) {
	return pipeline.RenderHeatmap(img, r, 1, format)
}
func (renderOnly) Manifest() *models.Manifest   { return &models.Manifest{} }
func (renderOnly) Warmup(context.Context) error { return nil }
func (renderOnly) Close() error                 { return nil }

// TestHeatmapMaxSize: mqtt.heatmap.max_size bounds the heatmap's longer side, keeping the frame's aspect;
// 0 and frames that fit keep the frame's size.
func TestHeatmapMaxSize(t *testing.T) {
	frame := capture.Frame{Width: 640, Height: 480, Pix: make([]byte, 640*480*3)}
	r := &pipeline.Result{Map: make([]float32, 64*64), MapWidth: 64, MapHeight: 64}
	for _, tc := range []struct{ max, w, h int }{{0, 640, 480}, {1024, 640, 480}, {320, 320, 240}, {100, 100, 75}} {
		for _, format := range []string{"png", "jpeg"} {
			a := &Agent{cfg: &config.Config{}}
			a.cfg.MQTT.Heatmap = config.HeatmapOut{Format: format, MaxSize: tc.max}
			data, err := a.renderHeatmap(newLoaded(renderOnly{}, ""), &job{frame: frame}, r)
			if err != nil {
				t.Fatal(err)
			}
			img, err := pipeline.DecodeImage(data)
			if err != nil {
				t.Fatal(err)
			}
			if img.Width != tc.w || img.Height != tc.h {
				t.Errorf("max_size %d, %s: heatmap %dx%d, want %dx%d", tc.max, format, img.Width, img.Height, tc.w, tc.h)
			}
		}
	}
}

// TestHeatmapDue: with the default mqtt.heatmap.min_interval an OK frame gets a heatmap at most once a second
// per camera, every NG frame gets one, and a camera with heatmaps off gets none; min_interval 0 gives every
// frame one.
func TestHeatmapDue(t *testing.T) {
	parse := func(t *testing.T, extra string) *config.Config {
		t.Helper()
		cfg, err := config.Parse(strings.NewReader(`
agent: {name: t, data_dir: /tmp/x}
models: {dir: /tmp/m}
cameras:
  - {name: a, kind: synthetic}
  - {name: b, kind: synthetic}
  - {name: off, kind: synthetic, heatmap: off}
`+extra), func(string) (string, bool) { return "", false })
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	type step struct {
		cam, verdict string
		want         bool
	}
	ok, ng := pipeline.VerdictOK, pipeline.VerdictNG
	cases := []struct {
		name, extra string
		steps       []step
	}{
		{"default: OK once a second, NG always", "", []step{{"a", ok, true}, {"a", ok, false}, {"a", ng, true},
			{"a", ok, false}, {"b", ok, true}, {"b", ng, true}, {"a", ng, true}, {"off", ng, false}, {"off", ok, false}}},
		{"min_interval 0: every frame", "mqtt: {heatmap: {min_interval: 0s}}\n", []step{{"a", ok, true},
			{"a", ok, true}, {"a", ng, true}, {"a", ok, true}, {"off", ng, false}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := parse(t, tc.extra)
			a := &Agent{cfg: cfg}
			cams := map[string]*camera{}
			for _, cc := range cfg.Cameras {
				cams[cc.CameraName()] = newCamera(cc, nil, 0)
			}
			for i, s := range tc.steps {
				if got := a.heatmapDue(cams[s.cam], s.verdict); got != s.want {
					t.Errorf("step %d (camera %s, %s): heatmap due %v, want %v", i, s.cam, s.verdict, got, s.want)
				}
			}
		})
	}
}

// TestEvidenceGetsItsHeatmap: with evidence.ok_every an OK frame kept as evidence gets a heatmap although the
// rate limit would skip it; NG frames get both; a camera with heatmaps off keeps evidence without one.
func TestEvidenceGetsItsHeatmap(t *testing.T) {
	cfg, err := config.Parse(strings.NewReader(`
agent: {name: t, data_dir: /tmp/x}
models: {dir: /tmp/m}
cameras:
  - {name: a, kind: synthetic}
  - {name: off, kind: synthetic, heatmap: off}
evidence: {enabled: true, dir: `+t.TempDir()+`, ok_every: 3}
`), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: cfg}
	if err := a.openEvidence(); err != nil {
		t.Fatal(err)
	}
	cams := map[string]*camera{}
	for _, cc := range cfg.Cameras {
		cams[cc.CameraName()] = newCamera(cc, nil, 0)
	}
	ok, ng := pipeline.VerdictOK, pipeline.VerdictNG
	steps := []struct {
		cam, verdict          string
		asked                 bool
		wantHeatmap, wantKeep bool
	}{
		{"a", ok, false, true, false},  // the first OK heatmap of the second
		{"a", ok, false, false, false}, // rate-limited
		{"a", ok, false, true, true},   // 3rd OK: evidence, so a heatmap
		{"a", ok, true, true, false},   // asked for
		{"a", ng, false, true, true},   // NG: both
		{"a", ok, false, false, false}, // 5th OK: rate-limited, not evidence
		{"a", ok, false, true, true},   // 6th OK: evidence
		{"off", ng, false, false, true},
		{"off", ok, false, false, false},
		{"off", ok, false, false, false},
		{"off", ok, false, false, true}, // 3rd OK of this camera: evidence, no heatmap
	}
	for i, s := range steps {
		hm, keep := a.heatmapAndEvidence(cams[s.cam], s.verdict, s.asked)
		if hm != s.wantHeatmap || keep != s.wantKeep {
			t.Errorf("step %d (%s %s asked=%v): heatmap %v evidence %v, want %v %v", i, s.cam, s.verdict, s.asked,
				hm, keep, s.wantHeatmap, s.wantKeep)
		}
	}
}

// TestHeatmapFormatNames: for each mqtt.heatmap.format the API's heatmap_url extension and Content-Type name
// what the renderer really encodes (the file signature), so a dashboard or a saved file is never mislabelled.
func TestHeatmapFormatNames(t *testing.T) {
	frame := capture.Frame{Width: 64, Height: 48, Pix: make([]byte, 64*48*3)}
	r := &pipeline.Result{Map: make([]float32, 16*16), MapWidth: 16, MapHeight: 16}
	for _, tc := range []struct{ format, ext, ctype, magic string }{
		{"png", ".png", "image/png", "\x89PNG"},
		{"jpeg", ".jpg", "image/jpeg", "\xff\xd8\xff"},
	} {
		a := &Agent{cfg: &config.Config{}}
		a.cfg.MQTT.Heatmap = config.HeatmapOut{Format: tc.format}
		data, err := a.renderHeatmap(newLoaded(renderOnly{}, ""), &job{frame: frame}, r)
		if err != nil {
			t.Fatal(err)
		}
		if ext, ct := evidence.HeatmapExt(tc.format), contentType(tc.format); ext != tc.ext || ct != tc.ctype || !strings.HasPrefix(string(data), tc.magic) {
			t.Errorf("%s: extension %q, Content-Type %q, bytes %q; want %q, %q, %q", tc.format, ext, ct, data[:4], tc.ext, tc.ctype, tc.magic)
		}
	}
}
