package dataset

import (
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// writePNG writes a real 8x8 PNG (gray level v) at path, creating directories.
func writePNG(t *testing.T, path string, v uint8) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	img := image.NewGray(image.Rect(0, 0, 8, 8))
	for i := range img.Pix {
		img.Pix[i] = v
	}
	img.Set(1, 1, color.Gray{Y: 255})
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, string(b))
}

// mvtecTree builds two classes: bottle (2 train, 1 good test, 2 broken with masks) and cable (1 train,
// 1 cut with a mask named like the image).
func mvtecTree(t *testing.T) string {
	r := t.TempDir()
	writePNG(t, filepath.Join(r, "bottle/train/good/000.png"), 10)
	writePNG(t, filepath.Join(r, "bottle/train/good/001.png"), 11)
	writePNG(t, filepath.Join(r, "bottle/test/good/000.png"), 12)
	writePNG(t, filepath.Join(r, "bottle/test/broken/000.png"), 13)
	writePNG(t, filepath.Join(r, "bottle/test/broken/001.png"), 14)
	writePNG(t, filepath.Join(r, "bottle/ground_truth/broken/000_mask.png"), 255)
	writePNG(t, filepath.Join(r, "bottle/ground_truth/broken/001_mask.png"), 255)
	writePNG(t, filepath.Join(r, "cable/train/good/a.png"), 20)
	writePNG(t, filepath.Join(r, "cable/test/cut/b.png"), 21)
	writePNG(t, filepath.Join(r, "cable/ground_truth/cut/b.png"), 255)
	writeFile(t, filepath.Join(r, "license.txt"), "not a class")
	return r
}

// rel strips root from the paths of items, for readable expectations.
func rel(t *testing.T, root string, items []Item) []Item {
	t.Helper()
	root, _ = filepath.Abs(root)
	out := make([]Item, len(items))
	for i, it := range items {
		for _, p := range []*string{&it.Path, &it.Mask} {
			if *p == "" {
				continue
			}
			r, err := filepath.Rel(root, *p)
			if err != nil || strings.HasPrefix(r, "..") {
				t.Fatalf("%s is not under %s", *p, root)
			}
			*p = filepath.ToSlash(r)
		}
		out[i] = it
	}
	return out
}

func TestMVTec(t *testing.T) {
	r := mvtecTree(t)
	want := []Item{
		{Path: "bottle/train/good/000.png", Class: "bottle", Split: "train"},
		{Path: "bottle/train/good/001.png", Class: "bottle", Split: "train"},
		{Path: "bottle/test/broken/000.png", Mask: "bottle/ground_truth/broken/000_mask.png", Class: "bottle", Split: "test", Label: 1, Defect: "broken"},
		{Path: "bottle/test/broken/001.png", Mask: "bottle/ground_truth/broken/001_mask.png", Class: "bottle", Split: "test", Label: 1, Defect: "broken"},
		{Path: "bottle/test/good/000.png", Class: "bottle", Split: "test"},
		{Path: "cable/train/good/a.png", Class: "cable", Split: "train"},
		{Path: "cable/test/cut/b.png", Mask: "cable/ground_truth/cut/b.png", Class: "cable", Split: "test", Label: 1, Defect: "cut"},
	}
	for _, layout := range []string{"auto", "mvtec"} {
		items, err := Open(r, layout)
		if err != nil {
			t.Fatalf("%s: %v", layout, err)
		}
		if got := rel(t, r, items); !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", layout, got, want)
		}
	}
}

func TestMVTecErrors(t *testing.T) {
	tests := []struct {
		name  string
		build func(t *testing.T, r string)
		want  string // substring of the error
	}{
		{"no train/good", func(t *testing.T, r string) {
			writePNG(t, filepath.Join(r, "bottle/test/good/0.png"), 1)
		}, "bottle/train/good: missing: expected <class>/train/good with images"},
		{"empty train/good", func(t *testing.T, r string) {
			os.MkdirAll(filepath.Join(r, "bottle/train/good"), 0o755)
			writePNG(t, filepath.Join(r, "bottle/test/good/0.png"), 1)
		}, "bottle/train/good: missing"},
		{"no test", func(t *testing.T, r string) {
			writePNG(t, filepath.Join(r, "bottle/train/good/0.png"), 1)
		}, "bottle/test: missing"},
		{"no class directories", func(t *testing.T, r string) {
			writePNG(t, filepath.Join(r, "loose.png"), 1)
		}, "found no directories, 1 images and 0 other files"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := t.TempDir()
			tc.build(t, r)
			_, err := Open(r, "mvtec")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "mvtec: "+r) {
				t.Errorf("error %q does not start with the layout and path", err)
			}
		})
	}
}

func TestVisA(t *testing.T) {
	r := t.TempDir()
	writePNG(t, filepath.Join(r, "candle/Data/Images/Normal/0000.JPG"), 1)
	writePNG(t, filepath.Join(r, "candle/Data/Images/Normal/0001.JPG"), 2)
	writePNG(t, filepath.Join(r, "candle/Data/Images/Anomaly/000.JPG"), 3)
	writePNG(t, filepath.Join(r, "candle/Data/Masks/Anomaly/000.png"), 255)
	writePNG(t, filepath.Join(r, "pcb1/Data/Images/Normal/0000.JPG"), 4)
	writeFile(t, filepath.Join(r, "split_csv/1cls.csv"), "object,split,label,image,mask\n"+
		"candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n"+
		"candle,test,normal,candle/Data/Images/Normal/0001.JPG,\n"+
		"candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n"+
		"pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,\n")
	want := []Item{
		{Path: "candle/Data/Images/Normal/0000.JPG", Class: "candle", Split: "train"},
		{Path: "candle/Data/Images/Normal/0001.JPG", Class: "candle", Split: "test"},
		{Path: "candle/Data/Images/Anomaly/000.JPG", Mask: "candle/Data/Masks/Anomaly/000.png", Class: "candle", Split: "test", Label: 1, Defect: "anomaly"},
		{Path: "pcb1/Data/Images/Normal/0000.JPG", Class: "pcb1", Split: "train"},
	}
	items, err := Open(r, "auto")
	if err != nil {
		t.Fatal(err)
	}
	if got := rel(t, r, items); !reflect.DeepEqual(got, want) {
		t.Errorf("\n got %+v\nwant %+v", got, want)
	}
}

func TestVisAErrors(t *testing.T) {
	tests := []struct {
		name, csv, want string
	}{
		{"bad header", "object,split,image\n", `missing column "label"`},
		{"bad split", "object,split,label,image,mask\ncandle,dev,normal,x.JPG,\n", `line 2: split "dev"`},
		{"bad label", "object,split,label,image,mask\ncandle,train,odd,x.JPG,\n", `line 2: label "odd"`},
		{"missing image", "object,split,label,image,mask\ncandle,train,normal,nope.JPG,\n", "nope.JPG: missing"},
		{"escape", "object,split,label,image,mask\ncandle,train,normal,../../etc/passwd,\n", "outside the dataset root"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := t.TempDir()
			writeFile(t, filepath.Join(r, "split_csv/1cls.csv"), tc.csv)
			_, err := Open(r, "visa")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := Open(t.TempDir(), "visa"); err == nil || !strings.Contains(err.Error(), "split_csv/1cls.csv") {
		t.Errorf("missing csv: %v", err)
	}
}

func TestRealIAD(t *testing.T) {
	for _, nested := range []bool{false, true} {
		t.Run(fmt.Sprintf("nested=%v", nested), func(t *testing.T) {
			r := t.TempDir()
			img := r
			jdir := filepath.Join(r, "realiad_jsons")
			if nested {
				img = filepath.Join(r, "realiad_256")
				jdir = filepath.Join(r, "realiad_jsons", "realiad_jsons")
			}
			writePNG(t, filepath.Join(img, "audiojack/OK/S0001/a_OK_C1.jpg"), 1)
			writePNG(t, filepath.Join(img, "audiojack/OK/S0002/b_OK_C1.jpg"), 2)
			writePNG(t, filepath.Join(img, "audiojack/NG/QS/S0100/c_NG_QS_C2.jpg"), 3)
			writePNG(t, filepath.Join(img, "audiojack/NG/QS/S0100/c_NG_QS_C2.png"), 255)
			writeJSON(t, filepath.Join(jdir, "audiojack.json"), map[string]any{
				"meta":  map[string]any{"prefix": "", "normal_class": "OK", "pre_transform": nil},
				"train": []any{map[string]any{"category": "audiojack", "anomaly_class": "OK", "image_path": "OK/S0001/a_OK_C1.jpg", "mask_path": nil}},
				"test": []any{
					map[string]any{"category": "audiojack", "anomaly_class": "OK", "image_path": "OK/S0002/b_OK_C1.jpg", "mask_path": nil},
					map[string]any{"category": "audiojack", "anomaly_class": "QS", "image_path": "NG/QS/S0100/c_NG_QS_C2.jpg", "mask_path": "NG/QS/S0100/c_NG_QS_C2.png"},
				},
			})
			items, err := Open(r, "auto")
			if err != nil {
				t.Fatal(err)
			}
			p := ""
			if nested {
				p = "realiad_256/"
			}
			want := []Item{
				{Path: p + "audiojack/OK/S0001/a_OK_C1.jpg", Class: "audiojack", Split: "train"},
				{Path: p + "audiojack/OK/S0002/b_OK_C1.jpg", Class: "audiojack", Split: "test"},
				{Path: p + "audiojack/NG/QS/S0100/c_NG_QS_C2.jpg", Mask: p + "audiojack/NG/QS/S0100/c_NG_QS_C2.png", Class: "audiojack", Split: "test", Label: 1, Defect: "QS"},
			}
			if got := rel(t, r, items); !reflect.DeepEqual(got, want) {
				t.Errorf("\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestRealIADErrors(t *testing.T) {
	r := t.TempDir()
	writeFile(t, filepath.Join(r, "realiad_jsons/toy.json"), `{"meta":{},"train":[{"category":"toy","anomaly_class":"OK","image_path":"OK/x.jpg"}]}`)
	if _, err := Open(r, "realiad"); err == nil || !strings.Contains(err.Error(), "toy: missing: expected the image directory") {
		t.Errorf("missing class dir: %v", err)
	}
	os.MkdirAll(filepath.Join(r, "toy"), 0o755)
	if _, err := Open(r, "realiad"); err == nil || !strings.Contains(err.Error(), "train[0]: image") {
		t.Errorf("missing image: %v", err)
	}
	writeFile(t, filepath.Join(r, "realiad_jsons/toy.json"), `[1,2]`)
	if _, err := Open(r, "realiad"); err == nil || !strings.Contains(err.Error(), "toy.json") {
		t.Errorf("bad json: %v", err)
	}
	if _, err := Open(t.TempDir(), "realiad"); err == nil || !strings.Contains(err.Error(), "realiad_jsons: missing") {
		t.Errorf("no jsons: %v", err)
	}
}

func TestCOCOAD(t *testing.T) {
	r := t.TempDir()
	writePNG(t, filepath.Join(r, "train2017/000000000009.jpg"), 1)
	writePNG(t, filepath.Join(r, "val2017/000000000139.jpg"), 2)
	writePNG(t, filepath.Join(r, "val2017/000000000285.jpg"), 3)
	writePNG(t, filepath.Join(r, "val2017_mask_ad_20_1/000000000285.png"), 255)
	meta := func(testAnom int) map[string]any {
		return map[string]any{
			"train": map[string]any{"coco": []any{map[string]any{"img_path": "train2017/000000000009.jpg", "mask_path": "", "cls_name": "coco", "specie_name": "", "anomaly": 0}}},
			"test": map[string]any{"coco": []any{
				map[string]any{"img_path": "val2017/000000000139.jpg", "mask_path": "", "cls_name": "coco", "specie_name": "", "anomaly": 0},
				map[string]any{"img_path": "val2017/000000000285.jpg", "mask_path": "val2017_mask_ad_20_1/000000000285.png", "cls_name": "coco", "specie_name": "", "anomaly": testAnom},
			}},
		}
	}
	writeJSON(t, filepath.Join(r, "meta_20_0.json"), meta(0))
	writeJSON(t, filepath.Join(r, "meta_20_1.json"), meta(1))
	items, err := OpenWith(r, Options{Layout: "auto", COCOPart: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := []Item{
		{Path: "train2017/000000000009.jpg", Class: "coco", Split: "train"},
		{Path: "val2017/000000000139.jpg", Class: "coco", Split: "test"},
		{Path: "val2017/000000000285.jpg", Mask: "val2017_mask_ad_20_1/000000000285.png", Class: "coco", Split: "test", Label: 1},
	}
	if got := rel(t, r, items); !reflect.DeepEqual(got, want) {
		t.Errorf("\n got %+v\nwant %+v", got, want)
	}
	items, err = OpenWith(r, Options{Layout: "cocoad", COCOPart: 0})
	if err != nil {
		t.Fatal(err)
	}
	if items[2].Label != 0 || items[2].Mask != "" {
		t.Errorf("part 0 read the wrong meta file: %+v", items[2])
	}
	if _, err := OpenWith(r, Options{Layout: "cocoad", COCOPart: 2}); err == nil || !strings.Contains(err.Error(), "meta_20_2.json: missing") {
		t.Errorf("missing part: %v", err)
	}
}

func TestCollected(t *testing.T) {
	r := t.TempDir()
	writePNG(t, filepath.Join(r, "cam1/000001.png"), 1)
	writePNG(t, filepath.Join(r, "cam2/000007.png"), 2)
	writeFile(t, filepath.Join(r, "samples.jsonl"),
		`{"file":"cam1/000001.png","camera":"cam1","class":"bracket","seq":1,"captured_at":"2026-01-02T03:04:05Z","score":0.1}`+"\n\n"+
			`{"file":"cam2/000007.png","camera":"cam2","class":"","seq":7,"captured_at":"2026-01-02T03:04:06Z","score":0.2}`+"\n")
	items, err := Open(r, "auto")
	if err != nil {
		t.Fatal(err)
	}
	want := []Item{
		{Path: "cam1/000001.png", Class: "bracket", Split: "train"},
		{Path: "cam2/000007.png", Class: "cam2", Split: "train"},
	}
	if got := rel(t, r, items); !reflect.DeepEqual(got, want) {
		t.Errorf("\n got %+v\nwant %+v", got, want)
	}
	writeFile(t, filepath.Join(r, "samples.jsonl"), `{"file":"cam1/000001.png","class":"a"}`+"\n"+`{"file":"gone.png","class":"a"}`+"\n")
	if _, err := Open(r, "collected"); err == nil || !strings.Contains(err.Error(), "line 2: file") || !strings.Contains(err.Error(), "gone.png: missing") {
		t.Errorf("missing file: %v", err)
	}
	writeFile(t, filepath.Join(r, "samples.jsonl"), "{not json\n")
	if _, err := Open(r, "collected"); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bad line: %v", err)
	}
}

func TestDetectUnknown(t *testing.T) {
	r := t.TempDir()
	writePNG(t, filepath.Join(r, "photos/a.png"), 1)
	_, err := Open(r, "auto")
	if err == nil || !strings.Contains(err.Error(), "unknown layout") || !strings.Contains(err.Error(), r) {
		t.Fatalf("got %v", err)
	}
	if _, err := Open(r, "kitti"); err == nil || !strings.Contains(err.Error(), `unknown layout "kitti"`) {
		t.Errorf("bad layout name: %v", err)
	}
	if _, err := Open(filepath.Join(r, "nope"), "auto"); err == nil {
		t.Error("missing root: no error")
	}
}

func TestHoldOut(t *testing.T) {
	r := t.TempDir()
	for i := 0; i < 200; i++ {
		writePNG(t, filepath.Join(r, fmt.Sprintf("part/train/good/%03d.png", i)), uint8(i))
	}
	writePNG(t, filepath.Join(r, "part/test/good/x.png"), 1)
	a, err := OpenWith(r, Options{ValFraction: 0.25})
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenWith(r, Options{ValFraction: 0.25})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatal("hold-out is not deterministic")
	}
	val := 0
	for _, it := range a {
		if it.Split == SplitVal {
			val++
		}
		if it.Split == SplitVal && strings.Contains(it.Path, "/test/") {
			t.Errorf("test item moved to val: %s", it.Path)
		}
	}
	// 200 draws at p=0.25: mean 50, sd 6.1; 25..75 is a 4-sigma band, so a correct hash fails this ~never.
	if val < 25 || val > 75 {
		t.Errorf("%d of 200 train normals held out, want about 50", val)
	}
	// Adding images must not move old ones: the choice depends on the path only.
	writePNG(t, filepath.Join(r, "part/train/good/zzz.png"), 1)
	c, err := OpenWith(r, Options{ValFraction: 0.25})
	if err != nil {
		t.Fatal(err)
	}
	split := map[string]string{}
	for _, it := range c {
		split[it.Path] = it.Split
	}
	for _, it := range a {
		if split[it.Path] != it.Split {
			t.Errorf("%s moved from %s to %s after adding an image", it.Path, it.Split, split[it.Path])
		}
	}
	if _, err := OpenWith(r, Options{ValFraction: 1}); err == nil {
		t.Error("fraction 1 accepted")
	}
}

// TestHoldOutKeepsTwoPerClass checks the per-class minimum at a fraction of 0.05 on classes the hash alone
// serves badly (the fixture's hashes hold out none of c's 40 normals and none of k's 30): c (share 2) gets two,
// k (share 1.5, rounded down 1) one, a (10 normals, share 0.5) keeps what its hashes give, b (100) too, being
// past the minimum; the top-up takes the lowest hashes, so the held-out set is the same whatever the order of
// the items; with fraction 0 nothing moves.
func TestHoldOutKeepsTwoPerClass(t *testing.T) {
	n := map[string]int{"a": 10, "b": 100, "c": 40, "k": 30}
	items := func() []Item {
		var out []Item
		for _, c := range []string{"a", "b", "c", "k"} {
			for i := range n[c] {
				out = append(out, Item{Path: fmt.Sprintf("/d/%s/train/good/%03d.png", c, i), Class: c, Split: SplitTrain, Label: LabelNormal})
			}
			out = append(out, Item{Path: fmt.Sprintf("/d/%s/test/bad/0.png", c), Class: c, Split: SplitTest, Label: LabelAnomalous})
		}
		return out
	}
	count := func(its []Item) map[string]int {
		m := map[string]int{}
		for _, it := range its {
			if it.Split == SplitVal {
				m[it.Class]++
			}
			if it.Split == SplitVal && it.Label != LabelNormal {
				t.Errorf("%s: an anomalous item held out", it.Path)
			}
		}
		return m
	}
	const f = 0.05
	byHash := items()
	holdOutByHash(byHash, "/d", f)
	hash := count(byHash)
	if hash["c"] != 0 || hash["k"] != 0 || hash["b"] < 2 {
		t.Fatalf("the fixture's hashes hold out %v, not what this test is about", hash)
	}
	its := items()
	HoldOut(its, "/d", f)
	got := count(its)
	for c, want := range map[string]int{"a": hash["a"], "b": hash["b"], "c": 2, "k": 1} {
		if got[c] != want {
			t.Errorf("class %s of %d: %d held out, want %d (the hash alone: %d)", c, n[c], got[c], want, hash[c])
		}
	}
	for i, it := range byHash { // every image the hash holds out stays held out
		if it.Split == SplitVal && its[i].Split != SplitVal {
			t.Errorf("%s: held out by its hash, not by HoldOut", it.Path)
		}
	}
	rev := items()
	slices.Reverse(rev)
	HoldOut(rev, "/d", f)
	held := map[string]bool{}
	for _, it := range its {
		held[it.Path] = it.Split == SplitVal
	}
	for _, it := range rev {
		if held[it.Path] != (it.Split == SplitVal) {
			t.Errorf("%s: held out in one order and not in the other", it.Path)
		}
	}
	none := items()
	HoldOut(none, "/d", 0)
	if m := count(none); len(m) != 0 {
		t.Errorf("fraction 0 held out %v", m)
	}
}

// holdOutByHash is the hash rule alone (HoldOut before the per-class minimum), for comparison.
func holdOutByHash(items []Item, root string, fraction float64) {
	for i := range items {
		it := &items[i]
		if it.Split != SplitTrain || it.Label != LabelNormal {
			continue
		}
		if splitHash(root, it.Path) < fraction {
			it.Split = SplitVal
		}
	}
}

func TestIndexRoundTrip(t *testing.T) {
	r := mvtecTree(t)
	items, err := Open(r, "auto")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), IndexFile)
	if err := WriteIndex(p, items); err != nil {
		t.Fatal(err)
	}
	got, err := ReadIndex(p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, items) {
		t.Errorf("round trip changed the index")
	}
	// The wire format is what the Python trainer reads: check the keys of one line.
	b, _ := os.ReadFile(p)
	var m map[string]any
	if err := json.Unmarshal([]byte(strings.SplitN(string(b), "\n", 2)[0]), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"path", "mask", "class", "split", "label"} {
		if _, ok := m[k]; !ok {
			t.Errorf("index line lacks key %q: %s", k, b[:80])
		}
	}

	bad := []struct{ name, text, want string }{
		{"split", `{"path":"/a.png","mask":"","class":"c","split":"dev","label":0}`, `line 1: /a.png: split "dev"`},
		{"label", `{"path":"/a.png","mask":"","class":"c","split":"test","label":2}`, "label 2"},
		{"syntax", "\n{\"path\":", "line 2"},
		{"unknown key", `{"path":"/a.png","clas":"c","split":"test","label":0}`, "unknown field"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			q := filepath.Join(t.TempDir(), "bad.jsonl")
			writeFile(t, q, tc.text)
			if _, err := ReadIndex(q); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
	if err := WriteIndex(filepath.Join(t.TempDir(), "x.jsonl"), []Item{{Path: "a", Class: "c", Split: "nope"}}); err == nil {
		t.Error("WriteIndex accepted a bad split")
	}
}

// TestPiped reads the project's shared dataset when it is present (it is not part of the repository).
func TestPiped(t *testing.T) {
	root := filepath.Join("..", "..", "..", "shared", "datasets", "piped")
	if !isDir(root) {
		t.Skipf("%s not present", root)
	}
	items, err := Open(root, "auto")
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, it := range items {
		counts[it.Split]++
		if it.Label == LabelAnomalous && it.Mask == "" {
			t.Errorf("anomalous %s has no mask", it.Path)
		}
		if it.Label == LabelNormal && it.Mask != "" {
			t.Errorf("normal %s has a mask", it.Path)
		}
	}
	if n := len(Classes(items)); n != 12 {
		t.Errorf("%d classes, want 12", n)
	}
	if counts["train"] != 432 || counts["test"] != 720 {
		t.Errorf("splits %v, want train 432, test 720", counts)
	}
}
