package run

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/eval"
	"github.com/vlmdiff/edge/trainer/metrics"
	"github.com/vlmdiff/edge/trainer/synth"
)

// TestEvaluateValData scores a real synthetic-defect validation set (synth defects on rendered normals) with
// the fixture bundle through ONNX Runtime, as the evaluate stage does for evaluate.val_data.
func TestEvaluateValData(t *testing.T) {
	const fixture = "../../models/testdata/fixture"
	if _, err := os.Stat(filepath.Join(fixture, models.ManifestFile)); err != nil {
		t.Skipf("fixture bundle not present: %v", err)
	}
	s, err := pipeline.Open(fixture, pipeline.Options{Providers: []string{"cpu"}, Threads: 2})
	if err != nil {
		t.Skipf("fixture bundle does not open here (ONNX Runtime?): %v", err)
	}
	defer s.Close()
	work := t.TempDir()
	src := filepath.Join(work, "plain", "tile")
	for i := 0; i < 2; i++ {
		img, _ := synth.Render(synth.ClassSpec{Name: "tile", Surface: synth.SurfaceGrain, W: 64, H: 48, Gray: true}, 1, "n", i)
		if err := img.WritePNG(filepath.Join(src, []string{"a.png", "b.png"}[i])); err != nil {
			t.Fatal(err)
		}
	}
	normals, err := synth.HeldOutNormals(src, "", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	val := filepath.Join(work, "val")
	if _, err := synth.WriteDefects(context.Background(), normals, synth.DefectsOptions{Out: val, PerImage: 1, Seed: 1,
		Kinds: []string{synth.DefectSpeck, synth.DefectFibre}}); err != nil {
		t.Fatal(err)
	}
	rep, res, err := evaluateValData(context.Background(), s, val, nil, eval.Options{BatchSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Classes) != 1 || rep.Classes[0].Class != "tile" || rep.Classes[0].Images != 4 || rep.Classes[0].Anomalous != 2 {
		t.Fatalf("report %+v", rep.Classes)
	}
	// by kind, as the evaluate stage breaks them down: one fibre and one speck, each against both normals
	k, err := eval.ByDefect(res, metrics.Options{})
	if err != nil || len(k.Classes) != 2 || k.Classes[0].Class != synth.DefectFibre || k.Classes[1].Class != synth.DefectSpeck ||
		k.Classes[0].Images != 3 || k.Classes[1].Anomalous != 1 {
		t.Fatalf("by defect kind %+v (%v)", k, err)
	}
	if _, _, err := evaluateValData(context.Background(), s, val, []string{"other"}, eval.Options{}); err == nil || !strings.Contains(err.Error(), "no test images") {
		t.Errorf("unknown class: %v", err)
	}
}
