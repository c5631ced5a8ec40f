package eval

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/metrics"
)

// resultsOf builds scored results without a scorer: n normals and n anomalies of class, 2x2 maps whose first
// pixel is the defect; inverted ranks the anomalies below the normals.
func resultsOf(class string, n int, inverted bool) []ImageResult {
	var res []ImageResult
	for i := 0; i < n; i++ {
		hi, lo := 0.9-0.01*float64(i), 0.1+0.01*float64(i)
		if inverted {
			hi, lo = lo, hi
		}
		res = append(res,
			ImageResult{Item: dataset.Item{Path: fmt.Sprintf("/x/%s/bad%d.png", class, i), Class: class, Split: dataset.SplitTest, Label: 1},
				Result: pipeline.Result{RawScore: hi, Map: []float32{float32(hi), 0, 0, 0}, MapWidth: 2, MapHeight: 2}, Mask: []uint8{1, 0, 0, 0}},
			ImageResult{Item: dataset.Item{Path: fmt.Sprintf("/x/%s/good%d.png", class, i), Class: class, Split: dataset.SplitTest},
				Result: pipeline.Result{RawScore: lo, Map: []float32{float32(lo), 0, 0, 0}, MapWidth: 2, MapHeight: 2}, Mask: []uint8{0, 0, 0, 0}})
	}
	return res
}

func TestReportCurvesValidationAndFlip(t *testing.T) {
	work := t.TempDir()
	curves := filepath.Join(work, "run", "curves")
	if err := os.MkdirAll(curves, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(curves, "train.csv"), []byte("step,epoch,loss,val_loss\n0,0,1.0,\n10,1,0.5,0.6\n20,2,0.25,\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	test := resultsOf("widget", 3, true) // inverted: true I-AUROC 0
	rep, err := MetricsWith(test, metrics.Options{PaperAUROCFlip: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Mean.ImageAUROC != 1 || len(rep.Flipped) == 0 {
		t.Fatalf("flip not applied: %v %v", rep.Mean.ImageAUROC, rep.Flipped)
	}
	vres := resultsOf("widget", 2, false)
	for i := range vres {
		if vres[i].Item.Label == 1 {
			vres[i].Item.Defect = "scratch"
		}
	}
	val, err := Metrics(vres)
	if err != nil {
		t.Fatal(err)
	}
	kinds, err := ByDefect(vres, metrics.Options{})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(work, "run", "eval")
	info := ReportInfo{Bundle: "b", Dataset: "real-test-data", CurvesDir: curves,
		Validation: &ValidationReport{Dataset: "synthetic-val-data", Report: val, ByDefect: &kinds}}
	if err := WriteReports(out, rep, test, nil, info); err != nil {
		t.Fatal(err)
	}
	html, err := os.ReadFile(filepath.Join(out, HTMLFile))
	if err != nil {
		t.Fatal(err)
	}
	h := string(html)
	for _, want := range []string{"Synthetic validation", "synthetic-val-data", "Test (the dataset test split", "real-test-data",
		"paper AUROC flip (1 - AUC below 0.5) APPLIED", "Training loss curves", `href="../curves/train.svg"`, `id="curve-train"`} {
		if !strings.Contains(h, want) {
			t.Errorf("report.html lacks %q", want)
		}
	}
	if strings.Index(h, "Synthetic validation") > strings.Index(h, "Test (the dataset test split") {
		t.Errorf("validation table should come first")
	}
	if n := strings.Count(h, "<table>"); n != 5 {
		t.Errorf("%d tables, want 5 (validation, its regions, validation by defect kind, test, its regions)", n)
	}
	if i := strings.Index(h, "Test: AU-PRO by ground-truth region size"); i < strings.Index(h, "Test (the dataset test split") {
		t.Errorf("the test's regions table should follow the test table")
	}
	for name, want := range map[string]string{
		// each bad image has one 1-px region; in the validation set its value is above every normal pixel, so it
		// is found at every operating point
		ValidationPrefix + RegionsFile: "2: 100 / 100 / 100",
		// in the inverted test set the bad pixels sit below some normal pixels: found only at 30%
		RegionsFile: "3: 100 / 0 / 0",
	} {
		if b, err := os.ReadFile(filepath.Join(out, name)); err != nil || !bytes.Contains(b, []byte("widget")) ||
			!bytes.Contains(b, []byte("< 16 px")) || !bytes.Contains(b, []byte(want)) {
			t.Errorf("%s: %q (%v)", name, b, err)
		}
	}
	if i := strings.Index(h, "Synthetic validation by defect kind"); i < 0 || i > strings.Index(h, "Test (the dataset test split") {
		t.Errorf("the validation table by defect kind should come before the test table")
	}
	if b, err := os.ReadFile(filepath.Join(out, ValidationPrefix+DefectsTableFile)); err != nil || !bytes.Contains(b, []byte("| scratch |")) {
		t.Errorf("%s: %q (%v)", ValidationPrefix+DefectsTableFile, b, err)
	}
	if _, err := os.Stat(filepath.Join(curves, "train.svg")); err != nil {
		t.Errorf("curve SVG not written beside its CSV: %v", err)
	}
	vj, err := os.ReadFile(filepath.Join(out, ValidationPrefix+JSONFile))
	if err != nil {
		t.Fatal(err)
	}
	var back metrics.Report
	if err := json.Unmarshal(vj, &back); err != nil || back.Mean.ImageAUROC != 1 || back.PaperAUROCFlip {
		t.Errorf("validation JSON %s (%v)", vj, err)
	}
	tbl, _ := os.ReadFile(filepath.Join(out, TableFile))
	if !bytes.Contains(tbl, []byte("APPLIED")) {
		t.Errorf("results.txt does not say the flip was applied:\n%s", tbl)
	}

	// Without validation, curves or flip: one table, no curve section, no note.
	plain, err := Metrics(test)
	if err != nil {
		t.Fatal(err)
	}
	if plain.Mean.ImageAUROC != 0 {
		t.Errorf("true I-AUROC of an inverted ranking = %v, want 0", plain.Mean.ImageAUROC)
	}
	out2 := filepath.Join(work, "plain")
	if err := WriteReports(out2, plain, test, nil, ReportInfo{Dataset: "d", CurvesDir: filepath.Join(work, "none")}); err != nil {
		t.Fatal(err)
	}
	html, _ = os.ReadFile(filepath.Join(out2, HTMLFile))
	for _, absent := range []string{"Synthetic validation", "Training loss curves", "flip"} {
		if bytes.Contains(html, []byte(absent)) {
			t.Errorf("plain report contains %q", absent)
		}
	}
	if _, err := os.Stat(filepath.Join(out2, ValidationPrefix+JSONFile)); err == nil {
		t.Errorf("validation file written without a validation report")
	}
}

// TestMetricsEmptyMaskKeptByFolderPolicy checks that an anomalous item with an empty mask (kept by label_by:
// folder) no longer fails the evaluation after training.
func TestMetricsEmptyMaskKeptByFolderPolicy(t *testing.T) {
	res := resultsOf("w", 2, false)
	res[0].Mask = []uint8{0, 0, 0, 0}
	rep, err := Metrics(res)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Classes[0].Anomalous != 2 {
		t.Errorf("anomalous %d, want 2 (the folder label is kept)", rep.Classes[0].Anomalous)
	}
}
