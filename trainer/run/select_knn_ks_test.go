package run

import (
	"maps"
	"math"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/trainer/eval"
	"github.com/vlmdiff/edge/trainer/metrics"
)

// TestChooseKnnKs: each class takes the best count whose score (select.metric, the mean of I-AUROC, P-AUROC and
// AU-PRO by default) leads k = 1 by min_gain on its own painted images; a class whose scores are not all defined
// keeps 1, and so does the global bank.
func TestChooseKnnKs(t *testing.T) {
	m := func(v float64) metrics.Metrics { return metrics.Metrics{ImageAUROC: v, PixelAUROC: v, AUPRO: v} }
	ks := []int{1, 2, 4, 8}
	cases := []struct {
		name   string
		scores []float64 // per count
		metric string
		want   int
	}{
		{"k = 1 best", []float64{0.9, 0.89, 0.88, 0.85}, "", 1},
		{"4 leads by 2 points", []float64{0.80, 0.81, 0.82, 0.815}, "", 4},
		{"2 leads by less than min_gain", []float64{0.80, 0.805, 0.79, 0.78}, "", 1},
		{"a lead just over min_gain", []float64{0.80, 0.80, 0.80, 0.8101}, "", 8},
		{"a NaN: no painted defects", []float64{math.NaN(), math.NaN(), math.NaN(), math.NaN()}, "", 1},
		{"by AU-PRO alone", []float64{0.5, 0.7, 0.6, 0.6}, "au_pro", 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ms := make([]metrics.Metrics, len(c.scores))
			for i, v := range c.scores {
				ms[i] = m(v)
			}
			got := chooseKnnKs(map[string][]metrics.Metrics{"part": ms}, ks, c.metric, 0.01)
			if got["part"] != c.want || got[""] != 1 || len(got) != 2 {
				t.Errorf("chose %v, want part %d and the global bank 1", got, c.want)
			}
		})
	}
}

// TestWithKs: the chosen counts become the spec's k_max and ks; the plain graph when every class keeps the
// nearest alone; a count the graph cannot give is refused.
func TestWithKs(t *testing.T) {
	base := eval.KnnSpec{Backbone: "m.onnx", Layers: []string{"a"}, KMax: 8}
	s, err := base.WithKs(map[string]int{"": 1, "a": 4, "b": 2})
	if err != nil || s.KMax != 4 || !maps.Equal(s.Ks, map[string]int{"": 1, "a": 4, "b": 2}) {
		t.Errorf("counts 4 and 2: k_max %d ks %v (%v)", s.KMax, s.Ks, err)
	}
	s, err = base.WithKs(map[string]int{"": 1, "a": 1})
	if err != nil || s.KMax != 1 || s.Ks != nil {
		t.Errorf("every class at 1: k_max %d ks %v (%v), want the plain graph", s.KMax, s.Ks, err)
	}
	if _, err := base.WithKs(map[string]int{"a": 100}); err == nil || !strings.Contains(err.Error(), "k_max") {
		t.Errorf("a count of 100: %v", err)
	}
	for _, c := range []struct {
		in   string
		want map[string]int
		err  string
	}{
		{"=1,part=4", map[string]int{"": 1, "part": 4}, ""},
		{" fabric = 2 ", map[string]int{"fabric": 2}, ""},
		{"part", nil, "want CLASS=K"},
		{"part=x", nil, "want CLASS=K"},
		{"a=2,a=4", nil, "given twice"},
	} {
		got, err := eval.ParseKs(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseKs(%q): %v, want an error with %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || !maps.Equal(got, c.want) {
			t.Errorf("ParseKs(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
}
