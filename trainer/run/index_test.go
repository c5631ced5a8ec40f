package run

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
	"github.com/vlmdiff/edge/trainer/metrics"
)

func writeGrayPNG(t *testing.T, path string, mark bool) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	img := image.NewGray(image.Rect(0, 0, 8, 8))
	if mark {
		img.SetGray(3, 3, color.Gray{Y: 255})
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

// TestIndexStageMaskPolicy runs the real index stage on a dataset with an empty and a missing mask: it must
// not fail, must warn listing both files, and must label them by the configured policy.
func TestIndexStageMaskPolicy(t *testing.T) {
	root := t.TempDir()
	writeGrayPNG(t, filepath.Join(root, "tile/train/good/a.png"), false)
	writeGrayPNG(t, filepath.Join(root, "tile/test/good/g.png"), false)
	for _, n := range []string{"ok", "empty", "missing"} {
		writeGrayPNG(t, filepath.Join(root, "tile/test/hole", n+".png"), true)
	}
	writeGrayPNG(t, filepath.Join(root, "tile/ground_truth/hole/ok_mask.png"), true)
	writeGrayPNG(t, filepath.Join(root, "tile/ground_truth/hole/empty_mask.png"), false)

	for _, tc := range []struct {
		policy    string
		anomalous int
		say       string
	}{
		{"", 3, "kept as anomalous (label_by: folder"},
		{"mask", 1, "relabelled as normal (label_by: mask)"},
	} {
		t.Run("label_by "+tc.policy, func(t *testing.T) {
			y := "data:\n  root: " + root + "\n  val_fraction: 0\nfinetune_ae:\n  max_steps: 1\ntrain:\n  max_steps: 1\n"
			if tc.policy != "" {
				y = strings.Replace(y, "  val_fraction: 0\n", "  val_fraction: 0\n  label_by: "+tc.policy+"\n", 1)
			}
			cfg, err := ParseConfig([]byte(y), "/base")
			if err != nil {
				t.Fatal(err)
			}
			var prog bytes.Buffer
			sc := &StageContext{Name: "index", Dir: t.TempDir(), Progress: &prog}
			out, err := (&Training{Config: cfg}).runIndex(context.Background(), sc)
			if err != nil {
				t.Fatalf("index stage failed: %v", err)
			}
			items, err := dataset.ReadIndex(out["index"])
			if err != nil {
				t.Fatal(err)
			}
			anom := 0
			for _, it := range items {
				anom += it.Label
			}
			if anom != tc.anomalous {
				t.Errorf("%d anomalous items, want %d", anom, tc.anomalous)
			}
			p := prog.String()
			for _, s := range []string{"[index] WARNING: 2 anomalous test images", tc.say, "empty_mask.png", "missing_mask.png"} {
				if !strings.Contains(p, s) {
					t.Errorf("progress lacks %q:\n%s", s, p)
				}
			}
		})
	}
	if _, err := ParseConfig([]byte("data:\n  root: /x\n  label_by: majority\nfinetune_ae:\n  max_steps: 1\ntrain:\n  max_steps: 1\n"), "/base"); err == nil ||
		!strings.Contains(err.Error(), `data.label_by`) {
		t.Errorf("bad label_by: %v", err)
	}
}

// TestLabelByDefaultKeepsIndexHash checks that a config without data.label_by hashes its data section as before
// the key existed, so existing run directories are not retrained after an upgrade.
func TestLabelByDefaultKeepsIndexHash(t *testing.T) {
	cfg, err := ParseConfig([]byte("data:\n  root: /x\nfinetune_ae:\n  max_steps: 1\ntrain:\n  max_steps: 1\n"), "/base")
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(cfg.Data)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "LabelBy") {
		t.Errorf("default data section hashes a LabelBy field: %s", b)
	}
	cfg.Data.LabelBy = dataset.LabelByMask
	b, _ = json.Marshal(cfg.Data)
	if !strings.Contains(string(b), `"LabelBy":"mask"`) {
		t.Errorf("label_by: mask does not change the index hash: %s", b)
	}
}

// TestFingerprintFollowsLinks checks that the index stage's dataset fingerprint sees images behind a linked
// class directory (adding one must redo the index), counts a plain tree as a plain walk does, and survives a
// link loop.
func TestFingerprintFollowsLinks(t *testing.T) {
	real := t.TempDir()
	writeGrayPNG(t, filepath.Join(real, "tile/train/good/a.png"), false)
	root := t.TempDir()
	if err := os.Symlink(filepath.Join(real, "tile"), filepath.Join(root, "tile")); err != nil {
		t.Skipf("symlinks: %v", err)
	}
	os.Symlink(root, filepath.Join(real, "tile", "loop")) // a loop back to the root
	fp1, err := fingerprint(root)
	if err != nil {
		t.Fatal(err)
	}
	if fp1["files"].(int64) != 1 {
		t.Errorf("files %v, want the 1 image behind the link", fp1["files"])
	}
	writeGrayPNG(t, filepath.Join(real, "tile/train/good/b.png"), true)
	fp2, err := fingerprint(root)
	if err != nil {
		t.Fatal(err)
	}
	if fp2["files"].(int64) != 2 || fp2["bytes"] == fp1["bytes"] {
		t.Errorf("an image added behind the link is not seen: %v -> %v", fp1, fp2)
	}
	plain, err := fingerprint(real)
	if err != nil {
		t.Fatal(err)
	}
	if plain["files"].(int64) != 2 {
		t.Errorf("plain tree: %v", plain)
	}
}

// TestIndexStageReportsDuplicates: a test image that is a copy of a training image is warned about by name and
// listed in DuplicatesFile; an index of data without copies removes an earlier list.
func TestIndexStageReportsDuplicates(t *testing.T) {
	leaky, clean := t.TempDir(), t.TempDir()
	writeGrayPNG(t, filepath.Join(leaky, "tile/train/good/a.png"), false)
	writeGrayPNG(t, filepath.Join(leaky, "tile/train/good/b.png"), true)
	writeGrayPNG(t, filepath.Join(leaky, "tile/test/good/copy-of-a.png"), false)
	writeGrayPNG(t, filepath.Join(clean, "tile/train/good/a.png"), false)
	writeGrayPNG(t, filepath.Join(clean, "tile/test/good/g.png"), true)
	dir := t.TempDir()
	index := func(root string) string {
		cfg, err := ParseConfig([]byte("data:\n  root: "+root+"\n  val_fraction: 0\nfinetune_ae:\n  max_steps: 1\ntrain:\n  max_steps: 1\n"), "/base")
		if err != nil {
			t.Fatal(err)
		}
		var prog bytes.Buffer
		sc := &StageContext{Name: "index", Dir: dir, Progress: &prog}
		if _, err := (&Training{Config: cfg}).runIndex(context.Background(), sc); err != nil {
			t.Fatalf("index stage failed: %v", err)
		}
		return prog.String()
	}
	list := filepath.Join(dir, DuplicatesFile)
	prog := index(leaky)
	pair := "train:tile/train/good/a.png = test:tile/test/good/copy-of-a.png"
	if !strings.Contains(prog, "1 test images are byte-identical") || !strings.Contains(prog, pair) || !strings.Contains(prog, list) {
		t.Errorf("index log does not name the copy and the list:\n%s", prog)
	}
	b, err := os.ReadFile(list)
	if err != nil || !strings.Contains(string(b), pair) {
		t.Fatalf("%s: %q, %v; want the pair", list, b, err)
	}
	if prog := index(clean); strings.Contains(prog, "byte-identical") {
		t.Errorf("clean data warned:\n%s", prog)
	}
	if _, err := os.Stat(list); !os.IsNotExist(err) {
		t.Errorf("the list of the earlier data is still there after indexing clean data: %v", err)
	}
}

// TestTestWithoutCopies: the evaluate stage's extra line recomputes the test metrics without the test images
// that are copies of training images, and says nothing when there is none.
func TestTestWithoutCopies(t *testing.T) {
	root := t.TempDir()
	train, copyOf, good := filepath.Join(root, "train/a.png"), filepath.Join(root, "test/copy.png"), filepath.Join(root, "test/g.png")
	writeGrayPNG(t, train, false)
	writeGrayPNG(t, copyOf, false)
	writeGrayPNG(t, good, true)
	bad := filepath.Join(root, "test/bad.png")
	if err := os.WriteFile(bad, []byte("not the same bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	items := []dataset.Item{{Path: train, Class: "c", Split: dataset.SplitTrain}, {Path: copyOf, Class: "c", Split: dataset.SplitTest},
		{Path: good, Class: "c", Split: dataset.SplitTest}, {Path: bad, Class: "c", Split: dataset.SplitTest, Label: dataset.LabelAnomalous}}
	result := func(it dataset.Item, score float32) eval.ImageResult {
		m := []float32{score, 0, 0, 0}
		mask := []uint8{0, 0, 0, 0}
		if it.Label == dataset.LabelAnomalous {
			mask[0] = 1
		}
		return eval.ImageResult{Item: it, Mask: mask, Result: pipeline.Result{Map: m, MapWidth: 2, MapHeight: 2, RawScore: float64(score)}}
	}
	// the copy scores above the defect: with it the image AUROC is 0.5, without it 1
	res := []eval.ImageResult{result(items[1], 0.9), result(items[2], 0.1), result(items[3], 0.8)}
	all, err := eval.Metrics(res)
	if err != nil {
		t.Fatal(err)
	}
	line, err := testWithoutCopies(context.Background(), items, res, all.Mean, metrics.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(line, "without its 1 copies") || !strings.Contains(line, "I-AUROC 100.00") || !strings.Contains(line, "(with them: 50.00 /") {
		t.Errorf("line %q", line)
	}
	if line, err := testWithoutCopies(context.Background(), items[1:], res, all.Mean, metrics.Options{}); err != nil || line != "" {
		t.Errorf("without the training image there is no copy: %q, %v", line, err)
	}
}

// TestCopiedDatasetKeepsTraining runs the real index and caption stages, then gives every image a new
// modification time, as a dataset restored from a backup or copied to a new disk has: the index is redone (its
// fingerprint changed) but reads the same, so the caption stage, and with it every stage after, is kept. A
// changed image redoes both.
func TestCopiedDatasetKeepsTraining(t *testing.T) {
	root := t.TempDir()
	writeGrayPNG(t, filepath.Join(root, "tile/train/good/a.png"), false)
	writeGrayPNG(t, filepath.Join(root, "tile/train/good/b.png"), true)
	writeGrayPNG(t, filepath.Join(root, "tile/test/good/g.png"), false)
	cfg, err := ParseConfig([]byte("data:\n  root: "+root+"\n  val_fraction: 0\nfinetune_ae:\n  max_steps: 1\ntrain:\n  max_steps: 1\n"), "/base")
	if err != nil {
		t.Fatal(err)
	}
	tr := &Training{Config: cfg, Dir: t.TempDir()}
	run := func() []string {
		t.Helper()
		var out bytes.Buffer
		tr.Out = &out
		sum, err := tr.Runner("", "caption").Run(context.Background())
		if err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		t.Logf("runner output:\n%s", out.String())
		return sum.Ran
	}
	if ran := run(); strings.Join(ran, ",") != "index,caption" {
		t.Fatalf("first run ran %v", ran)
	}
	later := time.Now().Add(time.Hour)
	err = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Chtimes(p, later, later)
	})
	if err != nil {
		t.Fatal(err)
	}
	if ran := run(); strings.Join(ran, ",") != "index" {
		t.Fatalf("after the copy ran %v, want the index alone", ran)
	}
	writeGrayPNG(t, filepath.Join(root, "tile/train/good/c.png"), true) // a new image
	if ran := run(); strings.Join(ran, ",") != "index,caption" {
		t.Fatalf("after a new image ran %v, want index and caption", ran)
	}
}
