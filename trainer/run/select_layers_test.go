package run

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/trainer/eval"
)

// TestBestLayers: another weighting replaces the bundle's own (row 0) only on an informative set and by at
// least min_gain; among equal scores the bundle's own stays.
func TestBestLayers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		scores []float64
		want   int
		reason string
	}{
		{"a clear lead", []float64{0.68, 0.70, 0.72}, 2, "leads the bundle's own"},
		{"a lead under min_gain", []float64{0.68, 0.685, 0.689}, 0, "less than select.min_gain"},
		{"own is best", []float64{0.70, 0.65, 0.70}, 0, "score highest"},
		{"a set at chance", []float64{0.40, 0.45, 0.52}, 0, "keeping the bundle's own"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := make([]candidateResult, len(tc.scores))
			for i, s := range tc.scores {
				rs[i] = scored(string(rune('a'+i)), s)
			}
			got, why := bestLayers(rs, 0.01)
			if got != tc.want || !strings.Contains(why, tc.reason) {
				t.Fatalf("bestLayers(%v) = %d (%s), want %d (%q)", tc.scores, got, why, tc.want, tc.reason)
			}
		})
	}
}

// TestChooseMap: the weightings without the mean-frame term compete as bestLayers has them; a recipe with the
// term replaces their winner only on an informative set and by at least min_gain over it (not over the
// bundle's own weights).
func TestChooseMap(t *testing.T) {
	w := func(v ...float64) []float64 { return v }
	cands := []eval.MapCandidate{{Weights: w(1, 1)}, {Weights: w(1, 1), Pixel: 0.5}, {Weights: w(0, 1)}, {Weights: w(0, 1), Pixel: 0.5}}
	for _, tc := range []struct {
		name   string
		scores []float64 // in the order of cands
		want   int
		reason string
	}{
		{"the term leads the best without it", []float64{0.68, 0.69, 0.71, 0.73}, 3, "leads the best without the mean-frame term (0/1) by 2.00"},
		{"the term leads own, not the best without it", []float64{0.68, 0.715, 0.71, 0.70}, 2, "the best with it (1/1+pixel0.5) leads by 0.50"},
		{"no term wins", []float64{0.70, 0.60, 0.65, 0.60}, 0, "the best with it (1/1+pixel0.5) scores 10.00 lower"},
		{"a set at chance", []float64{0.40, 0.53, 0.45, 0.54}, 0, "its best recipe's image and pixel AUROC do not reach 55.00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := make([]candidateResult, len(cands))
			for i, s := range tc.scores {
				rs[i] = scored(cands[i].Name(), s)
			}
			got, why := chooseMap(cands, rs, 0, 0.01)
			if got != tc.want || !strings.Contains(why, tc.reason) {
				t.Fatalf("chooseMap(%v) = %d (%s), want %d (%q)", tc.scores, got, why, tc.want, tc.reason)
			}
		})
	}
}

// TestSelectedLayers: the export stage reads the select stage's choice back, and a damaged file is an error
// naming it rather than a bundle with other layers.
func TestSelectedLayers(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, file string
		want       [][2]any
		err        string
	}{
		{"two layers", `[["stage2",1],["stage3",0.5]]`, [][2]any{{"stage2", 1.0}, {"stage3", 0.5}}, ""},
		{"a zero weight", `[["stage2",0]]`, nil, "not [name, weight > 0]"},
		{"a missing weight", `[["stage2"]]`, nil, "not [name, weight > 0]"},
		{"no layer", `[]`, nil, "no layer"},
		{"not json", `stage2`, nil, "feature_layers.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, LayersChoiceFile)
			if err := os.WriteFile(p, []byte(tc.file), 0o644); err != nil {
				t.Fatal(err)
			}
			sc := &StageContext{Dir: dir, records: map[string]*Record{"select": {Outputs: map[string]string{"feature_layers": p}}}}
			got, err := selectedLayers(sc)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("selectedLayers = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestSelectedGuided: the export stage reads the smoothing step's guided filter back (none when the step wrote
// none), and a damaged or missing file is an error naming it rather than a bundle smoothed otherwise.
func TestSelectedGuided(t *testing.T) {
	dir := t.TempDir()
	p, err := writeGuided(dir, &models.GuidedFilter{Radius: 8, Eps: 1e-4})
	if err != nil {
		t.Fatal(err)
	}
	sc := &StageContext{Dir: dir, records: map[string]*Record{"select": {Outputs: map[string]string{"guided": p}}}}
	if g, err := selectedGuided(sc); err != nil || g == nil || *g != (models.GuidedFilter{Radius: 8, Eps: 1e-4}) {
		t.Fatalf("round trip: %v, %v", g, err)
	}
	if g, err := selectedGuided(&StageContext{Dir: dir, records: map[string]*Record{"select": {Outputs: map[string]string{}}}}); g != nil || err != nil {
		t.Fatalf("no choice: %v, %v; want nil, nil", g, err)
	}
	for _, tc := range []struct{ name, file, want string }{
		{"radius 0", `{"radius":0,"eps":0.001}`, "radius 0, eps 0.001 is not a filter"},
		{"no eps", `{"radius":8}`, "radius 8, eps 0 is not a filter"},
		{"not json", `8,1e-4`, GuidedChoiceFile},
	} {
		if err := os.WriteFile(p, []byte(tc.file), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := selectedGuided(sc); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %q", tc.name, err, tc.want)
		}
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, err := selectedGuided(sc); err == nil || !strings.Contains(err.Error(), "choice of a guided filter") {
		t.Errorf("a missing file: error %v", err)
	}
}
