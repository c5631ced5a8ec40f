package metrics

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// regionClass is one anomalous 32 x 32 image and one normal one: a 5 x 5 region (25 px) valued above every normal
// pixel, a 1 x 2 speck (2 px) valued at the normal pixels' 80th percentile, and, when big, a 20 x 20 region (400
// px) valued at their 95th percentile. The normal pixels are distinct values spread evenly over [0, 1).
func regionClass(t *testing.T, big bool) *ClassData {
	t.Helper()
	const w, h = 32, 32
	anom, mask := make([]float32, w*h), make([]uint8, w*h)
	set := func(x0, y0, x1, y1 int, v float32) {
		for y := y0; y < y1; y++ {
			for x := x0; x < x1; x++ {
				anom[y*w+x], mask[y*w+x] = v, 1
			}
		}
	}
	norm := make([]float32, w*h)
	// the normal pixels of both images, distinct: the anomalous image's background first, then the normal image
	n := 0
	set(1, 1, 6, 6, 2)
	set(10, 1, 12, 2, -1) // value filled below
	if big {
		set(8, 8, 28, 28, -2)
	}
	for i := range anom {
		if mask[i] == 0 {
			n++
		}
	}
	n += len(norm)
	k := 0
	val := func() float32 { v := float32(k) / float32(n); k++; return v }
	for i := range anom {
		if mask[i] == 0 {
			anom[i] = val()
		}
	}
	for i := range norm {
		norm[i] = val()
	}
	for i := range anom {
		switch anom[i] {
		case -1:
			anom[i] = 0.8
		case -2:
			anom[i] = 0.95
		}
	}
	var c ClassData
	for _, s := range []Sample{{Score: 1, Label: 1, Map: anom, W: w, H: h, Mask: mask}, {Score: 0, Label: 0, Map: norm, W: w, H: h}} {
		if err := c.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	return &c
}

// TestRegionRecallBuckets checks the breakdown by region size on regions whose overlap at each operating point
// is known: a region above every normal pixel is found at every false-positive rate, one at the 80th percentile
// only at 30%, one at the 95th at 30% and 10% but not 3%.
func TestRegionRecallBuckets(t *testing.T) {
	nan := math.NaN()
	cases := []struct {
		name    string
		big     bool
		all     []float64
		buckets [][]float64 // overlaps per bucket: < 16, 16-63, 64-255, >= 256
		counts  []int
	}{
		{"speck and blob", false, []float64{1, 0.5, 0.5}, [][]float64{{1, 0, 0}, {1, 1, 1}, {nan, nan, nan}, {nan, nan, nan}}, []int{1, 1, 0, 0}},
		{"with a large faint region", true, []float64{1, 2.0 / 3, 1.0 / 3}, [][]float64{{1, 0, 0}, {1, 1, 1}, {nan, nan, nan}, {1, 1, 0}}, []int{1, 1, 0, 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rep := Evaluate(map[string]*ClassData{"part": regionClass(t, tc.big)})
			rr := rep.Classes[0].Regions
			if rr == nil {
				t.Fatal("no regions")
			}
			total := 0
			for _, c := range tc.counts {
				total += c
			}
			if rr.Width != 32 || rr.Height != 32 || rr.All.Regions != total {
				t.Errorf("grid %dx%d, %d regions", rr.Width, rr.Height, rr.All.Regions)
			}
			for k, want := range tc.all {
				if !near(rr.All.Overlap[k], want) {
					t.Errorf("all regions at FPR %v: %v, want %v", RegionFPRs[k], rr.All.Overlap[k], want)
				}
			}
			if len(rr.Buckets) != len(tc.buckets) {
				t.Fatalf("%d buckets", len(rr.Buckets))
			}
			for b, want := range tc.buckets {
				if rr.Buckets[b].Regions != tc.counts[b] {
					t.Errorf("bucket %s: %d regions, want %d", rr.Buckets[b].Name(), rr.Buckets[b].Regions, tc.counts[b])
				}
				for k, w := range want {
					if !near(rr.Buckets[b].Overlap[k], w) {
						t.Errorf("bucket %s at FPR %v: %v, want %v", rr.Buckets[b].Name(), RegionFPRs[k], rr.Buckets[b].Overlap[k], w)
					}
				}
			}
			// the same regions serve AU-PRO (labelled once): a NaN or zero here would mean they did not reach it
			if au := rep.Classes[0].AUPRO; !(au > 0 && au <= 1) {
				t.Errorf("AU-PRO %v", au)
			}
		})
	}
}

// TestRegionReportWriters checks the regions table, its note and the JSON round trip, and that a class without
// maps (image-level only) has no regions and adds no row.
func TestRegionReportWriters(t *testing.T) {
	var imageOnly ClassData
	if err := imageOnly.Add(Sample{Score: .3, Label: 0}); err != nil {
		t.Fatal(err)
	}
	rep := Evaluate(map[string]*ClassData{"part": regionClass(t, false), "zeta": &imageOnly})
	if rep.Classes[1].Regions != nil {
		t.Errorf("a class without maps has regions: %+v", rep.Classes[1].Regions)
	}
	var b bytes.Buffer
	if err := rep.WriteRegions(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"32 x 32 evaluation grid", "30% / 10% / 3%", "< 16 px", "16-63 px", "64-255 px", ">= 256 px",
		"2: 100 / 50 / 50", "1: 100 / 0 / 0", "1: 100 / 100 / 100"} {
		if !strings.Contains(out, want) {
			t.Errorf("regions table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "zeta") {
		t.Errorf("a class without regions has a row:\n%s", out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 { // note, head, rule, one class
		t.Errorf("%d lines:\n%s", len(lines), out)
	}

	var jb bytes.Buffer
	if err := rep.WriteJSON(&jb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(jb.String(), `"fprs"`) || strings.Count(jb.String(), `"regions": {`) != 1 {
		t.Errorf("JSON: %s", jb.String())
	}
	var back Report
	if err := json.Unmarshal(jb.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	got, want := back.Classes[0].Regions, rep.Classes[0].Regions
	if got == nil || got.All.Regions != want.All.Regions || len(got.Buckets) != len(want.Buckets) ||
		!near(got.All.Overlap[1], want.All.Overlap[1]) || !math.IsNaN(got.Buckets[2].Overlap[0]) || got.Buckets[3].MaxArea != 0 ||
		got.Buckets[3].MinArea != 256 {
		t.Errorf("JSON round trip: %+v", got)
	}

	// no class with regions: nothing written
	empty := Evaluate(map[string]*ClassData{"zeta": &imageOnly})
	b.Reset()
	if err := empty.WriteRegions(&b); err != nil || b.Len() != 0 {
		t.Errorf("regions of a report without maps: %q, %v", b.String(), err)
	}
}
