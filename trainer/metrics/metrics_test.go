package metrics

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"math"
	"os"
	"strings"
	"testing"
)

const tol = 1e-6

func near(a, b float64) bool {
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.IsNaN(a) && math.IsNaN(b)
	}
	return math.Abs(a-b) <= tol
}

// TestCurvesHandWorked checks the curve metrics on small cases worked by hand with sklearn's definitions.
func TestCurvesHandWorked(t *testing.T) {
	tests := []struct {
		name          string
		scores        []float64
		labels        []bool
		auroc, ap, f1 float64
	}{
		// Thresholds .9 (tp1 fp0), .8 (tp2 fp1), .1 (tp2 fp2). ROC (0,0),(0,.5),(.5,1),(1,1): area .375+.5.
		// AP = .5*1 + .5*(2/3). F1: (P1,R.5) -> 2/3, (P2/3,R1) -> .8.
		{"tie", []float64{.9, .8, .8, .1}, []bool{true, false, true, false}, .875, .5 + 1.0/3, .8},
		// Perfectly wrong ranking: the true AUC is 0 (the paper flip would report 1, see TestPaperAUROCFlip); AP = R from .5 at P=1/3... see below.
		// Descending: .9 neg, .8 neg, .2 pos, .1 pos. AP = .5*(1/3) + .5*(2/4) = 1/6 + 1/4. F1 at
		// (P1/3,R.5) = 2*(1/6)/(5/6) = .4, at (P.5,R1) = 2/3.
		{"flip", []float64{.9, .8, .2, .1}, []bool{false, false, true, true}, 0, 1.0/6 + .25, 2.0 / 3},
		// All scores equal: one threshold, ROC (0,0)->(1,1), AUC .5; AP = precision = .5; F1 = 2*.5/1.5.
		{"constant", []float64{3, 3, 3, 3}, []bool{true, false, true, false}, .5, .5, 2.0 / 3},
		// Top score negative: the first point is P=0,R=0 (0/0 dropped from F1).
		{"top negative", []float64{5, 4, 3}, []bool{false, true, false}, .5, .5, 2.0 / 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := AUROC(tc.scores, tc.labels); !near(got, tc.auroc) {
				t.Errorf("AUROC %v, want %v", got, tc.auroc)
			}
			if got := AveragePrecision(tc.scores, tc.labels); !near(got, tc.ap) {
				t.Errorf("AP %v, want %v", got, tc.ap)
			}
			if got := F1Max(tc.scores, tc.labels); !near(got, tc.f1) {
				t.Errorf("F1max %v, want %v", got, tc.f1)
			}
		})
	}
	if v := AUROC([]float64{1, 2}, []bool{false, false}); !math.IsNaN(v) {
		t.Errorf("AUROC without positives = %v, want NaN", v)
	}
}

// proCase builds a 10x2 map and mask from the listed pixels; every other pixel is a normal pixel of value 0.
func proCase(mask map[[2]int]float32, normal map[[2]int]float32) ([][]float64, [][]uint8) {
	const w, h = 10, 2
	a := make([]float64, w*h)
	m := make([]uint8, w*h)
	for p, v := range mask {
		a[p[0]*w+p[1]] = float64(v)
		m[p[0]*w+p[1]] = 1
	}
	for p, v := range normal {
		a[p[0]*w+p[1]] = float64(v)
	}
	return [][]float64{a}, [][]uint8{m}
}

// TestAUPROHandWorked checks AU-PRO on maps whose curve can be followed by hand. In both cases min 0, max 10,
// so the thresholds are t_i = 0.05*i, i = 0..199, and the normal pixels are zeros plus 2.01, 4.01, 6.01, 8.01.
// The normal pixels above t are 4 for t < 2.01, 3 up to 4.01, 2 up to 6.01, 1 up to 8.01, then 0; all these
// FPRs are below 0.3, so every point is kept and FPR/maxFPR steps 1, .75, .5, .25, 0 at t = 2.01, 4.01, 6.01, 8.01.
// The area is therefore sum over the four FPR steps of 0.25 * PRO there (PRO is constant across each step).
func TestAUPROHandWorked(t *testing.T) {
	normal := map[[2]int]float32{{1, 0}: 2.01, {1, 1}: 4.01, {1, 2}: 6.01, {1, 3}: 8.01}
	tests := []struct {
		name string
		mask map[[2]int]float32
		want float64
	}{
		// One region of four pixels 10, 7.01, 3.01, 1.01 in a row. PRO = share of them above t:
		// at t=2.01 -> 3/4, 4.01 -> 2/4, 6.01 -> 2/4, 8.01 -> 1/4. Area = .25*(.75+.5+.5+.25) = .5.
		{"one region", map[[2]int]float32{{0, 0}: 10, {0, 1}: 7.01, {0, 2}: 3.01, {0, 3}: 1.01}, 0.5},
		// (0,0)=10 and (1,1)... would clash with normal; use (0,5)=10 and (1,6)=1.01, which touch only at a corner:
		// one 8-connected region {10, 1.01}, plus a lone pixel (0,9)=10. Above t >= 1.01 the pair scores 1/2 and
		// the lone pixel 1, so PRO = .75 at every FPR step: area .75. (4-connectivity would give 3 regions, 2/3.)
		{"diagonal pair", map[[2]int]float32{{0, 5}: 10, {1, 6}: 1.01, {0, 9}: 10}, 0.75},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, m := proCase(tc.mask, normal)
			if got := auPRO(a, m, 10, 2, nil); !near(got, tc.want) {
				t.Errorf("AU-PRO %v, want %v", got, tc.want)
			}
		})
	}
	// All normal pixels at the minimum: no threshold is below them, every FPR is 0, and the division by the
	// max kept FPR is 0/0: NaN, as in the seed.
	a := [][]float64{{10, 5, 5, 5}}
	m := [][]uint8{{1, 0, 0, 0}}
	if got := auPRO(a, m, 4, 1, nil); !math.IsNaN(got) {
		t.Errorf("degenerate AU-PRO %v, want NaN", got)
	}
}

func TestLabelRegions(t *testing.T) {
	// 1 1 0 0 1
	// 0 0 1 0 0
	// 0 0 0 0 1
	mask := []uint8{1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1}
	amap := make([]float64, len(mask))
	got := labelRegions(amap, mask, 5, 3)
	sizes := []int{}
	for _, r := range got {
		sizes = append(sizes, len(r))
	}
	// {(0,0),(0,1),(1,2)} through the corner, {(0,4)}, {(2,4)}.
	if len(sizes) != 3 || sizes[0] != 3 || sizes[1] != 1 || sizes[2] != 1 {
		t.Errorf("region sizes %v, want [3 1 1]", sizes)
	}
}

type refsFile struct {
	Classes []struct {
		Name          string              `json:"name"`
		Width         int                 `json:"width"`
		Height        int                 `json:"height"`
		Scores        []float64           `json:"scores"`
		Labels        []int               `json:"labels"`
		Maps          [][]float64         `json:"maps"`
		Masks         [][]uint8           `json:"masks"`
		PROThresholds []float64           `json:"pro_thresholds"`
		Expected      map[string]*float64 `json:"expected"`
	} `json:"classes"`
	Mean map[string]*float64 `json:"mean"`
}

// TestAgainstReference compares with values computed by sklearn/skimage/numpy in
// trainer/python/refs/make_metric_refs.py on seeded random maps (testdata/refs.json).
func TestAgainstReference(t *testing.T) {
	b, err := os.ReadFile("testdata/refs.json")
	if err != nil {
		t.Fatal(err)
	}
	var refs refsFile
	if err := json.Unmarshal(b, &refs); err != nil {
		t.Fatal(err)
	}
	classes := map[string]*ClassData{}
	for _, c := range refs.Classes {
		cd := &ClassData{}
		for i := range c.Scores {
			m := make([]float32, len(c.Maps[i]))
			for j, v := range c.Maps[i] {
				m[j] = float32(v)
			}
			if err := cd.Add(Sample{Score: c.Scores[i], Label: c.Labels[i], Map: m, W: c.Width, H: c.Height, Mask: c.Masks[i]}); err != nil {
				t.Fatalf("%s: %v", c.Name, err)
			}
		}
		classes[c.Name] = cd
		// The threshold grid must be numpy's np.arange exactly, or pixels near a threshold flip.
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, m := range c.Maps {
			for _, v := range m {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
		got := proThresholds(lo, hi, PROThresholds)
		if len(got) != len(c.PROThresholds) {
			t.Errorf("%s: %d thresholds, numpy has %d", c.Name, len(got), len(c.PROThresholds))
		} else {
			for i := range got {
				if got[i] != c.PROThresholds[i] {
					t.Errorf("%s: threshold %d = %v, numpy %v", c.Name, i, got[i], c.PROThresholds[i])
					break
				}
			}
		}
	}
	// The seed flips AUROCs below 0.5; the reference reproduces the seed, so compare with the flip requested.
	rep := EvaluateWith(classes, Options{PaperAUROCFlip: true})
	check := func(row string, m Metrics, want map[string]*float64) {
		for i, v := range m.values() {
			key := metricNames[i].Key
			w := math.NaN()
			if p := want[key]; p != nil {
				w = *p
			}
			if !near(v, w) {
				t.Errorf("%s %s = %.9f, reference %.9f", row, key, v, w)
			}
		}
	}
	if len(rep.Classes) != len(refs.Classes) {
		t.Fatalf("%d classes in the report, want %d", len(rep.Classes), len(refs.Classes))
	}
	for _, c := range refs.Classes {
		for _, rc := range rep.Classes {
			if rc.Class == c.Name {
				check(c.Name, rc.Metrics, c.Expected)
			}
		}
	}
	check("mean", rep.Mean, refs.Mean)
}

func TestAddRejects(t *testing.T) {
	okMap := make([]float32, 4)
	tests := []struct {
		name string
		prev *Sample
		s    Sample
		want string
	}{
		{"label", nil, Sample{Label: 2}, "label 2"},
		{"nan score", nil, Sample{Score: math.NaN()}, "NaN"},
		{"map size", nil, Sample{Map: okMap, W: 3, H: 2}, "4 values for 3x2"},
		{"mask size", nil, Sample{Map: okMap, W: 2, H: 2, Mask: []uint8{0}}, "mask has 1 values"},
		{"label vs mask", nil, Sample{Label: 0, Map: okMap, W: 2, H: 2, Mask: []uint8{0, 255, 0, 0}}, "contradicts"},
		{"empty mask", nil, Sample{Label: 1, Map: okMap, W: 2, H: 2, Mask: []uint8{0, 0, 0, 0}}, "contradicts"},
		{"nan map", nil, Sample{Map: []float32{0, float32(math.NaN()), 0, 0}, W: 2, H: 2}, "map value 1 is NaN"},
		{"mixed", &Sample{Score: 1}, Sample{Map: okMap, W: 2, H: 2}, "all samples or for none"},
		{"other size", &Sample{Map: okMap, W: 2, H: 2}, Sample{Map: okMap, W: 4, H: 1}, "4x1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c ClassData
			if tc.prev != nil {
				if err := c.Add(*tc.prev); err != nil {
					t.Fatal(err)
				}
			}
			n := c.Len()
			err := c.Add(tc.s)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if c.Len() != n {
				t.Errorf("a refused sample was counted")
			}
		})
	}
}

// TestMissingMaskMeansAllAnomalous checks the loaders' substitute: an anomalous image without a mask counts
// all its pixels as anomalous.
func TestMissingMaskMeansAllAnomalous(t *testing.T) {
	var c ClassData
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.Add(Sample{Score: 1, Label: 1, Map: []float32{5, 6}, W: 2, H: 1}))
	must(c.Add(Sample{Score: 0, Label: 0, Map: []float32{1, 2}, W: 2, H: 1}))
	m := c.Compute()
	if m.PixelAUROC != 1 || m.ImageAUROC != 1 {
		t.Errorf("pixel AUROC %v image AUROC %v, want 1 and 1", m.PixelAUROC, m.ImageAUROC)
	}
}

func TestReportWriters(t *testing.T) {
	var a, b ClassData
	for i, s := range []Sample{{Score: .9, Label: 1}, {Score: .2, Label: 0}, {Score: .5, Label: 1}, {Score: .6, Label: 0}} {
		if err := a.Add(s); err != nil {
			t.Fatal(i, err)
		}
	}
	if err := b.Add(Sample{Score: .3, Label: 0}); err != nil {
		t.Fatal(err)
	}
	rep := Evaluate(map[string]*ClassData{"zeta": &b, "alpha": &a})
	if rep.Classes[0].Class != "alpha" || rep.Classes[1].Class != "zeta" {
		t.Fatalf("classes not sorted: %+v", rep.Classes)
	}
	// alpha: .9+ .6- .5+ .2-: ROC (0,.5),(.5,.5),(.5,1),(1,1) -> .75. zeta has no anomaly: NaN, left out of the mean.
	if !near(rep.Mean.ImageAUROC, .75) || !math.IsNaN(rep.Classes[1].ImageAUROC) || !math.IsNaN(rep.Mean.PixelAUROC) {
		t.Errorf("mean %+v", rep.Mean)
	}

	var tb bytes.Buffer
	if err := rep.WriteTable(&tb); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(tb.String()), "\n")
	if len(lines) != 5 || !strings.Contains(lines[0], "clsname") || !strings.Contains(lines[0], "AU-PRO") ||
		!strings.HasPrefix(lines[1], "|:") || !strings.Contains(lines[2], "75.00") || !strings.Contains(lines[4], "mean") ||
		!strings.Contains(lines[3], "nan") {
		t.Errorf("table:\n%s", tb.String())
	}
	for _, l := range lines {
		if len(l) != len(lines[0]) {
			t.Errorf("ragged table:\n%s", tb.String())
			break
		}
	}

	var jb bytes.Buffer
	if err := rep.WriteJSON(&jb); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(jb.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Classes) != 2 || !near(back.Mean.ImageAUROC, .75) || !math.IsNaN(back.Mean.AUPRO) || back.Classes[0].Anomalous != 2 {
		t.Errorf("JSON round trip: %s", jb.String())
	}

	var cb bytes.Buffer
	if err := rep.WriteCSV(&cb); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&cb).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 4 || recs[0][3] != "i_auroc" || recs[1][3] != "0.75" || recs[2][3] != "" || recs[3][0] != "mean" {
		t.Errorf("CSV %v", recs)
	}
}

// TestPaperAUROCFlip checks that the true AUROC is the default, that the paper's flip happens only on request,
// and that the report names every value the flip changed.
func TestPaperAUROCFlip(t *testing.T) {
	inverted := func() *ClassData {
		var c ClassData
		// Defects score below normals; pixels too: anomalous pixels 1, normal pixels 5.
		for i, s := range []Sample{
			{Score: .1, Label: 1, Map: []float32{1, 5}, W: 2, H: 1, Mask: []uint8{255, 0}},
			{Score: .2, Label: 1, Map: []float32{1, 5}, W: 2, H: 1, Mask: []uint8{255, 0}},
			{Score: .8, Label: 0, Map: []float32{5, 5}, W: 2, H: 1},
			{Score: .9, Label: 0, Map: []float32{5, 5}, W: 2, H: 1},
		} {
			if err := c.Add(s); err != nil {
				t.Fatal(i, err)
			}
		}
		return &c
	}
	if v := PaperAUROC([]float64{.9, .1}, []bool{false, true}); v != 1 {
		t.Errorf("PaperAUROC of a perfectly inverted ranking = %v, want 1", v)
	}
	tests := []struct {
		name        string
		opts        Options
		iAUC, pAUC  float64
		flipped     int
		noteContain string
	}{
		{"true by default", Options{}, 0, 0, 0, ""},
		{"paper flip", Options{PaperAUROCFlip: true}, 1, 1, 2, "APPLIED to: inv I-AUROC 0.0000 -> 1.0000; inv P-AUROC 0.0000 -> 1.0000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep := EvaluateWith(map[string]*ClassData{"inv": inverted()}, tc.opts)
			if !near(rep.Mean.ImageAUROC, tc.iAUC) || !near(rep.Mean.PixelAUROC, tc.pAUC) {
				t.Errorf("I-AUROC %v P-AUROC %v, want %v %v", rep.Mean.ImageAUROC, rep.Mean.PixelAUROC, tc.iAUC, tc.pAUC)
			}
			if len(rep.Flipped) != tc.flipped {
				t.Errorf("flipped %v, want %d entries", rep.Flipped, tc.flipped)
			}
			var tb bytes.Buffer
			if err := rep.WriteTable(&tb); err != nil {
				t.Fatal(err)
			}
			if tc.noteContain == "" && strings.Contains(tb.String(), "flip") {
				t.Errorf("table mentions a flip that was not requested:\n%s", tb.String())
			}
			if !strings.Contains(tb.String(), tc.noteContain) {
				t.Errorf("table lacks %q:\n%s", tc.noteContain, tb.String())
			}
			var jb bytes.Buffer
			if err := rep.WriteJSON(&jb); err != nil {
				t.Fatal(err)
			}
			var back Report
			if err := json.Unmarshal(jb.Bytes(), &back); err != nil {
				t.Fatal(err)
			}
			if back.PaperAUROCFlip != tc.opts.PaperAUROCFlip || len(back.Flipped) != tc.flipped {
				t.Errorf("JSON round trip lost the flip record: %s", jb.String())
			}
		})
	}
}

// TestEmptyMaskOK checks the label_by: folder policy's sample: an anomalous image whose mask marks nothing is
// accepted only when the sample says so, and then counts as anomalous for images and normal for pixels.
func TestEmptyMaskOK(t *testing.T) {
	var c ClassData
	s := Sample{Score: .9, Label: 1, Map: []float32{3, 3}, W: 2, H: 1, Mask: []uint8{0, 0}}
	if err := c.Add(s); err == nil {
		t.Fatal("empty mask with label 1 accepted without EmptyMaskOK")
	}
	s.EmptyMaskOK = true
	for i, smp := range []Sample{s, {Score: .1, Label: 0, Map: []float32{1, 1}, W: 2, H: 1},
		{Score: .5, Label: 1, Map: []float32{9, 0}, W: 2, H: 1, Mask: []uint8{1, 0}}} {
		if err := c.Add(smp); err != nil {
			t.Fatal(i, err)
		}
	}
	m := c.Compute()
	// Image: anomalous .9, .5 vs normal .1 -> 1. Pixels: the one anomalous pixel (9) above all five normal ones.
	if m.ImageAUROC != 1 || m.PixelAUROC != 1 {
		t.Errorf("I-AUROC %v P-AUROC %v, want 1 and 1", m.ImageAUROC, m.PixelAUROC)
	}
}
