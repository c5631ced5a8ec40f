package agent

import (
	"context"
	"testing"

	"github.com/vlmdiff/edge/agent/config"
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
