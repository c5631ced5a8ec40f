package cli

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/internal/fsutil"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/eval"
)

// TestCalibrateReference: `vlmdiff calibrate --reference train` writes a map reference measured on the training
// normals into the bundle (which still verifies), thresholds move with it, `eval --no-reference` scores raw
// maps again, `--reference none` removes it, and the combinations that cannot work are refused by name.
func TestCalibrateReference(t *testing.T) {
	dir, data, bundle := calibrateTree(t, 4)
	run := cliRun
	base := []string{"calibrate", "--bundle", bundle, "--data", data, "--val-fraction", "0", "--split", "train", "--threads", "1"}
	code, raw, stderr := run(append(base, "--dry-run")...)
	if code != 0 {
		t.Fatalf("calibrate: exit %d\n%s", code, stderr)
	}
	code, withRef, stderr := run(append(base, "--reference", "train")...)
	if code != 0 || !strings.Contains(stderr, "map reference: mean maps of 4 training normals over 1 classes written") {
		t.Fatalf("calibrate --reference train: exit %d\n%s", code, stderr)
	}
	if withRef == raw {
		t.Errorf("thresholds did not change with the reference:\n%s", withRef)
	}
	b, err := models.Load(bundle)
	if err != nil {
		t.Fatalf("bundle no longer loads: %v", err)
	}
	if r := b.Manifest.Map.Reference; r == nil || len(r.Classes) != 2 || r.Images[0] != 4 {
		t.Fatalf("map.reference = %+v, want the global and widget rows of 4 images", r)
	}
	evalArgs := []string{"eval", "--bundle", bundle, "--data", data, "--val-fraction", "0", "--threads", "1"}
	_, refTable, _ := run(append(evalArgs, "--out", filepath.Join(dir, "e1"))...)
	code, rawTable, stderr := run(append(evalArgs, "--out", filepath.Join(dir, "e2"), "--no-reference")...)
	if code != 0 || rawTable == refTable {
		t.Errorf("eval --no-reference: exit %d, same table as with the reference\n%s", code, stderr)
	}
	// --val-data: the validation set's table, then the same by defect kind (here one kind, blob), printed and written.
	code, valTable, stderr := run(append(evalArgs, "--out", filepath.Join(dir, "e3"), "--val-data", data)...)
	if code != 0 || !strings.Contains(valTable, "synthetic validation by defect kind:\n| defect ") || !strings.Contains(valTable, " blob  |") {
		t.Errorf("eval --val-data: exit %d, no table by defect kind:\n%s\n%s", code, valTable, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "e3", eval.ValidationPrefix+eval.DefectsTableFile)); err != nil {
		t.Errorf("eval --val-data: %v", err)
	}
	if code, _, stderr := run(append(base, "--reference", "none")...); code != 0 {
		t.Fatalf("calibrate --reference none: exit %d\n%s", code, stderr)
	}
	if b, err := models.Load(bundle); err != nil || b.Manifest.Map.Reference != nil {
		t.Fatalf("after --reference none: %v, reference %+v", err, b.Manifest.Map.Reference)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--reference", "mean"}, `--reference "mean"`},
		{[]string{"--reference", "train", "--dry-run"}, "--dry-run"},
		{[]string{"--reference", "train", "--roi", filepath.Join(dir, "none.yaml")}, "--roi"},
	} {
		if tc.want == "--roi" {
			os.WriteFile(filepath.Join(dir, "none.yaml"), []byte("roi: {crop: {x: 0, y: 0, width: 64, height: 64}}\n"), 0o644)
		}
		code, _, stderr := run(append(base, tc.args...)...)
		if code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("calibrate %v: exit %d, stderr %q, want a refusal naming %q", tc.args, code, stderr, tc.want)
		}
	}
}

// TestCalibrateEnsemble: `vlmdiff calibrate --ensemble K` writes the start-noise count into the bundle together
// with the reference and thresholds measured with it; a reference measured with another count is refused by
// name rather than kept under thresholds it does not match; without the flag the bundle's count stays.
func TestCalibrateEnsemble(t *testing.T) {
	dir, data, bundle := calibrateTree(t, 3)
	run := cliRun
	load := func() *models.Manifest {
		t.Helper()
		b, err := models.Load(bundle)
		if err != nil {
			t.Fatalf("bundle no longer loads: %v", err)
		}
		return b.Manifest
	}
	base := []string{"calibrate", "--bundle", bundle, "--data", data, "--val-fraction", "0", "--split", "train", "--threads", "1"}
	code, one, stderr := run(append(base, "--reference", "train")...)
	if code != 0 {
		t.Fatalf("calibrate --reference train: exit %d\n%s", code, stderr)
	}
	if m := load(); m.Diffusion.Noises() != 1 || m.Map.Reference == nil {
		t.Fatalf("after calibrating with one noise: ensemble %d, reference %+v", m.Diffusion.Ensemble, m.Map.Reference)
	}
	// the reference holds for one noise: three would put thresholds on a reference they do not match
	if code, _, stderr := run(append(base, "--ensemble", "3")...); code == 0 || !strings.Contains(stderr, "measured with 1 start noise(s)") {
		t.Errorf("calibrate --ensemble 3 keeping a 1-noise reference: exit %d, stderr %q, want a refusal naming the count", code, stderr)
	}
	code, two, stderr := run(append(base, "--ensemble", "2", "--reference", "train")...)
	if code != 0 {
		t.Fatalf("calibrate --ensemble 2 --reference train: exit %d\n%s", code, stderr)
	}
	m := load()
	if m.Diffusion.Ensemble != 2 || m.Map.Reference == nil || m.Map.Reference.Noises != 2 {
		t.Fatalf("after --ensemble 2: ensemble %d, reference %+v; want both 2", m.Diffusion.Ensemble, m.Map.Reference)
	}
	if two == one {
		t.Errorf("the thresholds with two noises are those with one:\n%s", two)
	}
	// without the flag the bundle's count is kept, and its scorer uses it
	if code, again, stderr := run(base...); code != 0 || again != two {
		t.Errorf("calibrate without --ensemble: exit %d, table\n%s\nwant the 2-noise one\n%s\n%s", code, again, two, stderr)
	}
	if m := load(); m.Diffusion.Ensemble != 2 {
		t.Errorf("calibrate without --ensemble changed the count to %d", m.Diffusion.Ensemble)
	}
	if code, _, stderr := run("eval", "--bundle", bundle, "--data", data, "--val-fraction", "0", "--threads", "1", "--ensemble", "3", "--out", filepath.Join(dir, "e3")); code != 0 {
		t.Errorf("eval --ensemble 3: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := run(append(base, "--ensemble", "1", "--reference", "none")...); code != 0 {
		t.Fatalf("calibrate --ensemble 1 --reference none: exit %d\n%s", code, stderr)
	}
	if m := load(); m.Diffusion.Ensemble != 0 || m.Map.Reference != nil {
		t.Errorf("after --ensemble 1 --reference none: ensemble %d (want the field absent), reference %+v", m.Diffusion.Ensemble, m.Map.Reference)
	}
	if code, _, stderr := run(append(base, "--ensemble", "-2")...); code == 0 || !strings.Contains(stderr, "--ensemble -2") {
		t.Errorf("calibrate --ensemble -2: exit %d, stderr %q", code, stderr)
	}
}

// cliRun runs a vlmdiff command line and returns its exit code, stdout and stderr.
func cliRun(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// calibrateTree writes a one-class dataset with train normals 000..train-1 and a copy of the demo bundle, for
// the calibrate commands to change; it skips without ONNX Runtime.
func calibrateTree(t *testing.T, train int) (dir, data, bundle string) {
	t.Helper()
	if err := pipeline.InitRuntime(""); err != nil {
		t.Skipf("ONNX Runtime not available: %v", err)
	}
	dir = t.TempDir()
	data = filepath.Join(dir, "data")
	files := []string{"widget/test/good/000.png", "widget/test/blob/000.png", "widget/ground_truth/blob/000_mask.png"}
	for i := range train {
		files = append(files, fmt.Sprintf("widget/train/good/%03d.png", i))
	}
	writeTestTree(t, data, files...)
	bundle = filepath.Join(dir, "bundle")
	if err := models.CopyBundle("../../models/demo", bundle); err != nil {
		t.Fatal(err)
	}
	return dir, data, bundle
}

// TestWeighAndSetFeatureWeights: `vlmdiff eval --weigh-layers` ranks every weighting of the bundle's layers on
// the --val-data set (the bundle's own first in the table's marks) and writes nothing; `vlmdiff calibrate
// --feature-weights` writes a choice, refusing to keep a reference measured with the old weights, names that
// are not feature outputs, and weightings without a layer.
func TestWeighAndSetFeatureWeights(t *testing.T) {
	_, data, bundle := calibrateTree(t, 3)
	run := cliRun
	base := []string{"calibrate", "--bundle", bundle, "--data", data, "--val-fraction", "0", "--split", "train", "--threads", "1"}
	if code, _, stderr := run(append(base, "--reference", "train")...); code != 0 {
		t.Fatalf("calibrate --reference train: exit %d\n%s", code, stderr)
	}
	before, err := os.ReadFile(filepath.Join(bundle, models.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	weigh := []string{"eval", "--bundle", bundle, "--data", data, "--val-fraction", "0", "--threads", "1", "--weigh-layers", "0,1"}
	code, table, stderr := run(append(weigh, "--val-data", data)...)
	if code != 0 {
		t.Fatalf("eval --weigh-layers: exit %d\n%s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(table), "\n")
	// two layers of [0, 1] with one at 1: 0/1, 1/0 and the bundle's 1/1
	if len(lines) != 4 || !strings.Contains(lines[0], "layer1 / layer2") || strings.Count(table, "<- the bundle's") != 1 ||
		!strings.Contains(table, "1/1") || !strings.Contains(table, "0/1") || !strings.Contains(table, "1/0") {
		t.Fatalf("eval --weigh-layers table:\n%s", table)
	}
	if after, _ := os.ReadFile(filepath.Join(bundle, models.ManifestFile)); !bytes.Equal(after, before) {
		t.Errorf("eval --weigh-layers changed the bundle")
	}
	if code, _, stderr := run(weigh...); code == 0 || !strings.Contains(stderr, "--val-data") {
		t.Errorf("eval --weigh-layers without --val-data: exit %d, stderr %q", code, stderr)
	}
	for _, tc := range []struct{ flag, value, want string }{
		{"--feature-weights", "layer1=1,layer2=0", "--reference train"}, // the kept reference holds for 1/1
		{"--feature-weights", "layer9=1", "not an output"},
		{"--feature-weights", "layer1=0,layer2=0", "no layer with a weight above 0"},
		{"--feature-weights", "layer1=1,layer1=2", "appears twice"},
		{"--feature-weights", "layer1", "want name=weight"},
		{"--feature-match", "layer1=1", "--reference train"}, // a match radius changes every map too
		{"--feature-match", "layer1=4", "radii of 0..3"},
		{"--feature-match", "layer1=-1", "radii of 0..3"},
		{"--feature-match", "layer9=1", "not one of the bundle's scoring layers"},
		{"--feature-match", "layer1=1,layer1=0", "appears twice"},
		{"--map-sigma", "2", "--reference train"}, // a smoothing changes every map too
		{"--map-sigma", "-1", "from 0 (no smoothing) to"},
		{"--map-sigma", "x", "from 0 (no smoothing) to"},
		{"--map-sigma", "NaN", "from 0 (no smoothing) to"},
		{"--map-sigma", "1000", "an eighth of the"},
		{"--map-guided", "4,1e-3", "--reference train"}, // a guided filter changes every map too
		{"--map-guided", "4", "want R,EPS"},
		{"--map-guided", "0,1e-3", "want R,EPS"},
		{"--map-guided", "4,0", "want R,EPS"},
		{"--map-guided", "4,x", "want R,EPS"},
		{"--start-step", "501", "--reference train"}, // a start step changes every reconstruction
		{"--start-step", "0", "from 1 to"},
		{"--start-step", "1000", "from 1 to"},
		{"--start-step", "x", "from 1 to"},
		{"--pool-repeat", "-1", "0 or more"},
		{"--pool-repeat", "x", "0 or more"},
		{"--pool-repeat", "200", "leave nothing of a"},
	} {
		if code, _, stderr := run(append(base, tc.flag, tc.value)...); code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("calibrate %s %s: exit %d, stderr %q, want %q", tc.flag, tc.value, code, stderr, tc.want)
		}
	}
	if after, _ := os.ReadFile(filepath.Join(bundle, models.ManifestFile)); !bytes.Equal(after, before) {
		t.Fatalf("a refused --feature-weights changed the bundle")
	}
	code, out, stderr := run(append(base, "--feature-weights", "layer1=0,layer2=0.5", "--reference", "train")...)
	if code != 0 {
		t.Fatalf("calibrate --feature-weights layer1=0,layer2=0.5 --reference train: exit %d\n%s", code, stderr)
	}
	b, err := models.Load(bundle)
	if err != nil {
		t.Fatalf("the bundle no longer loads: %v", err)
	}
	if l := b.Manifest.Features.Layers; len(l) != 1 || l[0].Name != "layer2" || l[0].Weight != 0.5 || b.Manifest.Map.Reference == nil {
		t.Fatalf("after --feature-weights: layers %+v, reference %+v", l, b.Manifest.Map.Reference)
	}
	// the same weights again keep the reference: nothing changes, so nothing is refused
	if code, again, stderr := run(append(base, "--feature-weights", "layer2=0.5")...); code != 0 || again != out {
		t.Errorf("calibrate with the bundle's own weights: exit %d, table\n%s\nwant\n%s\n%s", code, again, out, stderr)
	}
	// a match radius, measured with a new reference; new weights keep it, and 0 takes it away
	if code, _, stderr := run(append(base, "--feature-match", "layer2=1", "--reference", "train")...); code != 0 {
		t.Fatalf("calibrate --feature-match layer2=1 --reference train: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := run(append(base, "--feature-weights", "layer2=1", "--reference", "train")...); code != 0 {
		t.Fatalf("calibrate --feature-weights layer2=1: exit %d\n%s", code, stderr)
	}
	if b, err = models.Load(bundle); err != nil {
		t.Fatal(err)
	}
	if l := b.Manifest.Features.Layers; len(l) != 1 || l[0].Match != 1 || l[0].Weight != 1 {
		t.Fatalf("after --feature-match layer2=1 and new weights: layers %+v", l)
	}
	if code, _, stderr := run(append(base, "--feature-match", "layer2=0", "--reference", "train")...); code != 0 {
		t.Fatalf("calibrate --feature-match layer2=0: exit %d\n%s", code, stderr)
	}
	if b, err = models.Load(bundle); err != nil || b.Manifest.Features.Layers[0].Match != 0 {
		t.Fatalf("after --feature-match layer2=0: %v %+v", err, b.Manifest.Features.Layers)
	}
	// a smoothing, measured with a new reference: the maps and so the thresholds move; 0 is no smoothing
	sigma0 := b.Manifest.Map.Sigma
	for _, v := range []float64{sigma0 / 2, 0} {
		arg := strconv.FormatFloat(v, 'g', -1, 64)
		code, table, stderr := run(append(base, "--map-sigma", arg, "--reference", "train")...)
		if code != 0 {
			t.Fatalf("calibrate --map-sigma %s --reference train: exit %d\n%s", arg, code, stderr)
		}
		if b, err = models.Load(bundle); err != nil || b.Manifest.Map.Sigma != v || b.Manifest.Map.Reference == nil {
			t.Fatalf("after --map-sigma %s: %v, sigma %v", arg, err, b.Manifest.Map.Sigma)
		}
		if table == out {
			t.Errorf("--map-sigma %s left the thresholds as they were:\n%s", arg, table)
		}
		out = table
	}
	// a guided filter on the unsmoothed map, measured with a new reference: the maps and thresholds move; a
	// radius past a quarter of the map is refused by the manifest's check and leaves the bundle as it was; none
	// takes the filter away
	code, table, stderr = run(append(base, "--map-guided", "4,1e-3", "--reference", "train")...)
	if code != 0 {
		t.Fatalf("calibrate --map-guided 4,1e-3 --reference train: exit %d\n%s", code, stderr)
	}
	if b, err = models.Load(bundle); err != nil || b.Manifest.Map.Guided == nil || *b.Manifest.Map.Guided != (models.GuidedFilter{Radius: 4, Eps: 1e-3}) {
		t.Fatalf("after --map-guided 4,1e-3: %v, guided %+v", err, b.Manifest.Map.Guided)
	}
	if table == out {
		t.Errorf("--map-guided 4,1e-3 left the thresholds as they were:\n%s", table)
	}
	out = table
	guidedManifest, _ := os.ReadFile(filepath.Join(bundle, models.ManifestFile))
	if code, _, stderr := run(append(base, "--map-guided", "500,1e-3", "--reference", "train")...); code == 0 || !strings.Contains(stderr, "map.guided.radius") {
		t.Errorf("calibrate --map-guided 500,1e-3: exit %d, stderr %q", code, stderr)
	}
	if after, _ := os.ReadFile(filepath.Join(bundle, models.ManifestFile)); !bytes.Equal(after, guidedManifest) {
		t.Fatalf("a refused --map-guided changed the bundle")
	}
	if code, table, stderr = run(append(base, "--map-guided", "none", "--reference", "train")...); code != 0 {
		t.Fatalf("calibrate --map-guided none --reference train: exit %d\n%s", code, stderr)
	}
	if b, err = models.Load(bundle); err != nil || b.Manifest.Map.Guided != nil {
		t.Fatalf("after --map-guided none: %v, guided %+v", err, b.Manifest.Map.Guided)
	}
	out = table
	// a start step, measured with a new reference: below the schedule's last only the DDIM steps at or below it
	// run (sampler_from_start_step), so the reconstructions and the thresholds move; the last is the paper's again
	last := b.Manifest.Diffusion.TrainSteps - 1
	for _, tc := range []struct {
		step     int
		truncate bool
	}{{301, true}, {last, false}} {
		arg := strconv.Itoa(tc.step)
		code, table, stderr := run(append(base, "--start-step", arg, "--reference", "train")...)
		if code != 0 {
			t.Fatalf("calibrate --start-step %s --reference train: exit %d\n%s", arg, code, stderr)
		}
		if b, err = models.Load(bundle); err != nil {
			t.Fatal(err)
		}
		if d := b.Manifest.Diffusion; d.StartStep != tc.step || d.SamplerFromStartStep != tc.truncate || b.Manifest.Map.Reference == nil {
			t.Fatalf("after --start-step %s: start %d, sampler_from_start_step %v, reference %v", arg, d.StartStep, d.SamplerFromStartStep, b.Manifest.Map.Reference)
		}
		if table == out {
			t.Errorf("--start-step %s left the thresholds as they were:\n%s", arg, table)
		}
		out = table
	}
	// a pooling: the maps and their reference stay (no --reference needed), the raw scores and so the image
	// thresholds move; --dry-run would print thresholds the bundle does not score with
	if code, _, stderr := run(append(base, "--pool-repeat", "2", "--dry-run")...); code == 0 || !strings.Contains(stderr, "--dry-run") {
		t.Errorf("calibrate --pool-repeat 2 --dry-run: exit %d, stderr %q", code, stderr)
	}
	ref := b.Manifest.Map.Reference.File
	refSum := b.Manifest.Files[ref].SHA256
	code, table, stderr = run(append(base, "--pool-repeat", "2")...)
	if code != 0 {
		t.Fatalf("calibrate --pool-repeat 2: exit %d\n%s", code, stderr)
	}
	if b, err = models.Load(bundle); err != nil || b.Manifest.Score.PoolRepeat != 2 || b.Manifest.Map.Reference == nil ||
		b.Manifest.Map.Reference.File != ref || b.Manifest.Files[ref].SHA256 != refSum {
		t.Fatalf("after --pool-repeat 2: %v, score %+v, reference %+v (was %s, %s): the maps' reference must be kept", err, b.Manifest.Score, b.Manifest.Map.Reference, ref, refSum)
	}
	if table == out {
		t.Errorf("--pool-repeat 2 left the thresholds as they were:\n%s", table)
	}
}

// TestCalibrateKnnFactor: `vlmdiff calibrate --reference train --knn-factor A --knn-backbone F --knn-layers a,b`
// builds the nearest-normal term into a bundle without one and sizes it with the reference (the bundle verifies,
// thresholds move); a later --reference train without the flag keeps it; --knn-factor 0 removes it; the
// combinations that cannot work are refused by name.
func TestCalibrateKnnFactor(t *testing.T) {
	_, data, bundle := calibrateTree(t, 4)
	for i := range 4 { // normals that differ, as a line's do
		writeNoisyPNG(t, filepath.Join(data, fmt.Sprintf("widget/train/good/%03d.png", i)), 128, 96, uint64(i))
	}
	trainer, err := filepath.Abs("../python")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("VLMDIFF_TRAINER", trainer)
	backbone, err := filepath.Abs("../../models/testdata/fixture/features.onnx")
	if err != nil {
		t.Fatal(err)
	}
	run := cliRun
	base := []string{"calibrate", "--bundle", bundle, "--data", data, "--val-fraction", "0", "--split", "train", "--threads", "1"}
	if code, _, stderr := run(append(base, "--reference", "train", "--knn-factor", "1")...); code == 0 || !strings.Contains(stderr, "--knn-backbone and --knn-layers") {
		t.Fatalf("--knn-factor without a term or a backbone: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := run(append(base, "--knn-factor", "1")...); code == 0 || !strings.Contains(stderr, "give --reference train") {
		t.Fatalf("--knn-factor with the reference kept: exit %d\n%s", code, stderr)
	}
	code, plain, stderr := run(append(base, "--reference", "train")...)
	if code != 0 {
		t.Fatalf("calibrate --reference train: exit %d\n%s", code, stderr)
	}
	knn := append(base, "--reference", "train", "--knn-factor", "1", "--knn-backbone", backbone, "--knn-layers", "layer1,layer2", "--knn-bank", "32")
	code, withTerm, stderr := run(knn...)
	if code != 0 || !strings.Contains(stderr, "nearest-normal banks: 2 classes x 32 vectors of 56 values from 4 training normals") ||
		!strings.Contains(stderr, "nearest-normal term: factor 1, weight") {
		t.Fatalf("calibrate --knn-factor 1: exit %d\n%s", code, stderr)
	}
	if withTerm == plain {
		t.Errorf("thresholds did not change with the nearest-normal term:\n%s", withTerm)
	}
	b, err := models.Load(bundle)
	if err != nil {
		t.Fatalf("bundle no longer loads: %v", err)
	}
	k, r := b.Manifest.Map.Knn, b.Manifest.Map.Reference
	if k == nil || k.Factor != 1 || !(k.Weight > 0) || r == nil || r.KnnWeight != k.Weight {
		t.Fatalf("map.knn %+v, reference %+v", k, r)
	}
	// the fixture's graph has the demo bundle's layer names but other weights: the term runs on the image
	if k.LayersGraph != "" || !strings.Contains(stderr, "the knn graph runs on the frame: the feature graph does not share the knn layers: layer layer1: the graphs differ") {
		t.Fatalf("map.knn.layers_graph %q; stderr:\n%s", k.LayersGraph, stderr)
	}
	if code, _, stderr := run(append(base, "--reference", "train")...); code != 0 || !strings.Contains(stderr, "nearest-normal term: factor 1") {
		t.Fatalf("calibrate --reference train keeping the term: exit %d\n%s", code, stderr)
	}
	checkKnnSigmaFlag(t, base, bundle)
	// the mean of the k nearest for a class: the banks built anew with the graph of its count of nearest
	// distances, and the bundle verifies and scores
	if code, _, stderr := run(slices.Concat(knn, []string{"--knn-ks", "widget=4"})...); code != 0 || !strings.Contains(stderr, `the mean of the k nearest for ["widget" 4]`) {
		t.Fatalf("calibrate --knn-ks widget=4: exit %d\n%s", code, stderr)
	}
	if b, err := models.Load(bundle); err != nil || b.Manifest.Map.Knn.KMax != 4 || b.Manifest.Map.Knn.KFor("widget") != 4 || b.Manifest.Map.Knn.KFor("") != 1 {
		t.Fatalf("after --knn-ks widget=4: %v, map.knn %+v", err, b.Manifest.Map.Knn)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{slices.Concat(knn, []string{"--knn-ks", "gizmo=2"}), `--knn-ks: classes ["gizmo"] have no training normals`},
		{slices.Concat(knn, []string{"--knn-ks", "widget=100"}), "--knn-ks: nearest-normal term: k_max 100"},
		{slices.Concat(knn, []string{"--knn-ks", "widget"}), "--knn-ks: \"widget\": want CLASS=K"},
		{slices.Concat(base, []string{"--reference", "train", "--knn-ks", "widget=2"}), "--knn-ks: the bundle's banks are kept unless they are built anew"},
	} {
		if code, _, stderr := run(c.args...); code == 0 || !strings.Contains(stderr, c.want) {
			t.Errorf("calibrate %v: exit %d, want %q\n%s", c.args[len(base):], code, c.want, stderr)
		}
	}
	// built on the bundle's own feature graph (a copy of it), the scorer feeds the term that graph's layers
	own := filepath.Join(t.TempDir(), "own-features.onnx")
	if err := fsutil.CopyFile(filepath.Join(bundle, b.Manifest.Graphs[models.RoleFeatures].File), own); err != nil {
		t.Fatal(err)
	}
	knnOwn := append(base, "--reference", "train", "--knn-factor", "1", "--knn-backbone", own, "--knn-layers", "layer1,layer2", "--knn-bank", "32")
	if code, _, stderr = run(knnOwn...); code != 0 || !strings.Contains(stderr, "the frame's layers come from the feature graph (knn_layers.onnx)") {
		t.Fatalf("calibrate with the bundle's own feature graph as the knn backbone: exit %d\n%s", code, stderr)
	}
	if b, err = models.Load(bundle); err != nil || b.Manifest.Map.Knn.LayersGraph != eval.KnnLayersGraphFile {
		t.Fatalf("after a build on the bundle's own feature graph: %v, map.knn %+v", err, b.Manifest.Map.Knn)
	}
	if k := b.Manifest.Map.Knn; k.Sigma == nil || *k.Sigma != 0.5 || !strings.Contains(stderr, "smoothed at sigma 0.5") {
		t.Errorf("the banks built anew dropped the term's own smoothing: map.knn.sigma %v", k.Sigma)
	}
	// a layer of the term leaves features.layers: the feature graph still outputs it, so the term keeps its layers
	// graph (the scorer fetches layer2 for the term alone) and its banks
	if code, _, stderr := run(append(base, "--reference", "train", "--feature-weights", "layer1=1,layer2=0")...); code != 0 {
		t.Fatalf("--feature-weights layer1=1,layer2=0: exit %d\n%s", code, stderr)
	}
	if b, err = models.Load(bundle); err != nil || b.Manifest.Map.Knn == nil || b.Manifest.Map.Knn.LayersGraph != eval.KnnLayersGraphFile {
		t.Fatalf("after layer2 left features.layers: %v, map.knn %+v", err, b.Manifest.Map.Knn)
	}
	if got := models.KnnOnlyLayers(b.Manifest); len(got) != 1 || got[0] != "layer2" {
		t.Errorf("the term's layers the map does not weigh: %v, want [layer2]", got)
	}
	if code, _, stderr := run(append(base, "--reference", "train", "--feature-weights", "layer1=1,layer2=1")...); code != 0 {
		t.Fatalf("--feature-weights layer1=1,layer2=1: exit %d\n%s", code, stderr)
	}
	// a bank recipe flag without a build would be silently ignored: refused by name instead
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--knn-sampling", "random"}, "--knn-sampling: the banks are built with the nearest-normal term: give --reference train and --knn-factor above 0"},
		{[]string{"--reference", "train", "--knn-factor", "0", "--knn-bank", "16"}, "--knn-bank: the banks are built"},
		{[]string{"--reference", "train", "--knn-sampling", "random"}, "--knn-sampling: the bundle's banks are kept unless they are built anew: give --knn-backbone"},
		{[]string{"--reference", "train", "--knn-factor", "1", "--knn-sampling", "random", "--knn-isolated", "0.1"}, "--knn-isolated, --knn-sampling: the bundle's banks are kept unless they are built anew: give --knn-backbone"},
	} {
		if code, _, stderr := run(append(base, c.args...)...); code == 0 || !strings.Contains(stderr, c.want) {
			t.Errorf("calibrate %v: exit %d, want %q\n%s", c.args, code, c.want, stderr)
		}
	}
	weigh := []string{"eval", "--bundle", bundle, "--data", data, "--val-fraction", "0", "--threads", "1", "--weigh-layers", "0,1", "--val-data", data}
	if code, _, stderr := run(weigh...); code == 0 || !strings.Contains(stderr, "nearest-normal term") {
		t.Errorf("eval --weigh-layers on a bundle with the term: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := run(append(base, "--reference", "train", "--knn-factor", "0")...); code != 0 {
		t.Fatalf("--knn-factor 0: exit %d\n%s", code, stderr)
	}
	if b, err := models.Load(bundle); err != nil || b.Manifest.Map.Knn != nil || b.Manifest.Map.Reference == nil {
		t.Fatalf("after --knn-factor 0: %v, map %+v", err, b.Manifest.Map)
	}
	if _, err := os.Stat(filepath.Join(bundle, eval.KnnBankFile)); !os.IsNotExist(err) {
		t.Errorf("the bank stays after --knn-factor 0: %v", err)
	}
}

// TestCalibratePixelFactor: `vlmdiff calibrate --reference train --pixel-factor A` writes the mean frames and
// sizes the term's weight with the reference (the bundle verifies, thresholds move); a later --reference train
// without the flag keeps the factor and measures again; --pixel-factor 0 and --reference none remove the
// term; the combinations that cannot work are refused by name.
func TestCalibratePixelFactor(t *testing.T) {
	_, data, bundle := calibrateTree(t, 4)
	run := cliRun
	base := []string{"calibrate", "--bundle", bundle, "--data", data, "--val-fraction", "0", "--split", "train", "--threads", "1"}
	// identical normals have no spread to size the term by: it is kept at weight 0, and said so
	if code, _, stderr := run(append(base, "--reference", "train", "--pixel-factor", "0.5")...); code != 0 || !strings.Contains(stderr, "cannot be sized") {
		t.Fatalf("--pixel-factor on identical normals: exit %d\n%s", code, stderr)
	}
	for i := range 4 { // normals that differ, as a line's do
		writeNoisyPNG(t, filepath.Join(data, fmt.Sprintf("widget/train/good/%03d.png", i)), 128, 96, uint64(i))
	}
	code, plain, stderr := run(append(base, "--reference", "train", "--pixel-factor", "0")...)
	if code != 0 {
		t.Fatalf("calibrate --reference train: exit %d\n%s", code, stderr)
	}
	code, withTerm, stderr := run(append(base, "--reference", "train", "--pixel-factor", "0.5")...)
	if code != 0 || !strings.Contains(stderr, "mean-frame term: factor 0.5, weight") {
		t.Fatalf("calibrate --pixel-factor 0.5: exit %d\n%s", code, stderr)
	}
	if withTerm == plain {
		t.Errorf("thresholds did not change with the mean-frame term:\n%s", withTerm)
	}
	b, err := models.Load(bundle)
	if err != nil {
		t.Fatalf("bundle no longer loads: %v", err)
	}
	p, r := b.Manifest.Map.Pixel, b.Manifest.Map.Reference
	if p == nil || p.Factor != 0.5 || !(p.Weight > 0) || r == nil || r.PixelWeight != p.Weight || b.MeanFrameFor("widget") == nil {
		t.Fatalf("map.pixel %+v, reference %+v", p, r)
	}
	if code, _, stderr := run(append(base, "--reference", "train")...); code != 0 || !strings.Contains(stderr, "mean-frame term: factor 0.5") {
		t.Fatalf("calibrate --reference train keeping the term: exit %d\n%s", code, stderr)
	}
	// the term's own smoothing: written with its reference, kept by a later --reference train
	code, sharp, stderr := run(append(base, "--reference", "train", "--pixel-sigma", "0")...)
	if code != 0 || !strings.Contains(stderr, "smoothed at sigma 0") {
		t.Fatalf("calibrate --pixel-sigma 0: exit %d\n%s", code, stderr)
	}
	if sharp == withTerm {
		t.Errorf("thresholds did not change with the term unsmoothed:\n%s", sharp)
	}
	for _, args := range [][]string{nil, {"--reference", "train"}} {
		if args != nil {
			if code, _, stderr := run(append(base, args...)...); code != 0 || !strings.Contains(stderr, "smoothed at sigma 0") {
				t.Fatalf("calibrate %v after --pixel-sigma 0: exit %d\n%s", args, code, stderr)
			}
		}
		b, err := models.Load(bundle)
		if err != nil {
			t.Fatal(err)
		}
		p, r := b.Manifest.Map.Pixel, b.Manifest.Map.Reference
		if p == nil || p.Sigma == nil || *p.Sigma != 0 || r == nil || r.PixelSigma == nil || *r.PixelSigma != 0 || !(p.Weight > 0) {
			t.Fatalf("after --pixel-sigma 0 and %v: map.pixel %+v, reference %+v", args, p, r)
		}
	}
	if code, _, stderr := run(append(base, "--reference", "train", "--pixel-factor", "0")...); code != 0 {
		t.Fatalf("--pixel-factor 0: exit %d\n%s", code, stderr)
	}
	if b, err := models.Load(bundle); err != nil || b.Manifest.Map.Pixel != nil || b.Manifest.Map.Reference == nil {
		t.Fatalf("after --pixel-factor 0: %v, map %+v", err, b.Manifest.Map)
	}
	if code, _, stderr := run(append(base, "--reference", "train", "--pixel-factor", "1")...); code != 0 {
		t.Fatalf("--pixel-factor 1: exit %d\n%s", code, stderr)
	}
	// weighing the layers with the term runs on a copy: 3 weightings x 2 factors, the bundle's 1/1+pixel1 marked
	before, err := os.ReadFile(filepath.Join(bundle, models.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	weigh := []string{"eval", "--bundle", bundle, "--data", data, "--val-fraction", "0", "--threads", "1", "--weigh-layers", "0,1", "--val-data", data}
	code, table, stderr := run(append(weigh, "--pixel-factors", "0,1")...)
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if code != 0 || len(lines) != 7 || strings.Count(table, "+pixel1") != 3 || !strings.Contains(table, "1/1+pixel1") ||
		strings.Count(table, "<- the bundle's") != 1 || !strings.Contains(lines[slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "<-") })], "1/1+pixel1") {
		t.Fatalf("eval --weigh-layers --pixel-factors: exit %d\n%s\n%s", code, table, stderr)
	}
	if after, _ := os.ReadFile(filepath.Join(bundle, models.ManifestFile)); !bytes.Equal(after, before) {
		t.Errorf("eval --weigh-layers --pixel-factors changed the bundle")
	}
	if code, _, stderr := run(weigh...); code == 0 || !strings.Contains(stderr, "give --pixel-factors") {
		t.Errorf("eval --weigh-layers on a bundle with the term, without --pixel-factors: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := run(append(base, "--reference", "none")...); code != 0 {
		t.Fatalf("--reference none: exit %d\n%s", code, stderr)
	}
	if b, err := models.Load(bundle); err != nil || b.Manifest.Map.Pixel != nil || b.Manifest.Map.Reference != nil {
		t.Fatalf("after --reference none: %v, map %+v", err, b.Manifest.Map)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--pixel-factor", "0.5"}, "give --reference train"},
		{[]string{"--reference", "train", "--pixel-factor", "x"}, `--pixel-factor "x"`},
		{[]string{"--reference", "train", "--pixel-factor", "9"}, "want 0 (off) to 4"},
		{[]string{"--pixel-sigma", "1"}, "--pixel-sigma: the mean-frame term's weight"},
		{[]string{"--reference", "train", "--pixel-sigma", "-1"}, "want 0 (no smoothing) to 64"},
	} {
		if code, _, stderr := run(append(base, tc.args...)...); code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("calibrate %v: exit %d, want an error naming %q\n%s", tc.args, code, tc.want, stderr)
		}
	}
}

// checkKnnSigmaFlag: --knn-sigma writes the term's own smoothing into the term and its reference (base: the
// calibrate command on a bundle with the term), a later run without the flag keeps it, and bad uses are refused
// by name.
func checkKnnSigmaFlag(t *testing.T, base []string, bundle string) {
	t.Helper()
	run := cliRun
	if code, _, stderr := run(append(base, "--reference", "train", "--knn-sigma", "0.5")...); code != 0 || !strings.Contains(stderr, "smoothed at sigma 0.5") {
		t.Fatalf("calibrate --knn-sigma 0.5: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := run(append(base, "--reference", "train")...); code != 0 || !strings.Contains(stderr, "smoothed at sigma 0.5") {
		t.Fatalf("calibrate --reference train keeping the term's smoothing: exit %d\n%s", code, stderr)
	}
	if b, err := models.Load(bundle); err != nil || b.Manifest.Map.Knn.Sigma == nil || *b.Manifest.Map.Knn.Sigma != 0.5 ||
		b.Manifest.Map.Reference.KnnSigma == nil || *b.Manifest.Map.Reference.KnnSigma != 0.5 {
		t.Fatalf("after --knn-sigma 0.5: %v, map.knn %+v", err, b.Manifest.Map)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--knn-sigma", "1"}, "--knn-sigma: the nearest-normal term's weight"},
		{[]string{"--reference", "train", "--knn-sigma", "-1"}, "want 0 (no smoothing) to 64"},
	} {
		if code, _, stderr := run(append(base, c.args...)...); code == 0 || !strings.Contains(stderr, c.want) {
			t.Errorf("calibrate %v: exit %d, want %q\n%s", c.args, code, c.want, stderr)
		}
	}
}

// writeNoisyPNG writes a 16-level grey gradient with seeded per-pixel colour noise.
func writeNoisyPNG(t *testing.T, path string, w, h int, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 9))
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			v := 64 + 8*(x*16/w)
			img.Set(x, y, color.RGBA{R: uint8(v + r.IntN(40)), G: uint8(v + r.IntN(40)), B: uint8(v + r.IntN(40)), A: 255})
		}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
}
