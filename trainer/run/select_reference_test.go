package run

import (
	"strings"
	"testing"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
)

// TestReferenceRecipeMismatch: the calibrate stage takes the select stage's map reference only for the recipe it
// was measured for; any difference that changes a reference normal's map or a term's weight is named.
func TestReferenceRecipeMismatch(t *testing.T) {
	normals := []dataset.Item{{Path: "/d/a.png", Class: "bolt"}, {Path: "/d/b.png", Class: "nut"}}
	m := &models.Manifest{Files: map[string]models.FileEntry{"bank": {SHA256: "b1"}, "src": {SHA256: "s1"}}}
	m.Diffusion.Ensemble, m.Diffusion.StartStep = 8, 999
	m.Features.Layers = []models.FeatureLayer{{Name: "stage1", Weight: 1}, {Name: "stage3", Weight: 0.5}}
	m.Map.Sigma, m.Map.Truncate = 5, 4
	m.Map.Knn = &models.KnnTerm{Bank: "bank", Sources: "src"}
	base := recipeOf(m, eval.Terms{Pixel: 0.5, Knn: 4}, normals)
	one := 1.0
	if base.KnnBanks != "b1+s1" || base.Noises != 8 {
		t.Fatalf("recipe %+v", base)
	}
	if why := base.mismatch(recipeOf(m, eval.Terms{Pixel: 0.5, Knn: 4}, normals)); why != "" {
		t.Errorf("the same recipe: %q", why)
	}
	change := func(f func(m *models.Manifest)) *models.Manifest {
		c := *m
		c.Files = map[string]models.FileEntry{"bank": {SHA256: "b1"}, "src": {SHA256: "s1"}}
		c.Features.Layers = append([]models.FeatureLayer(nil), m.Features.Layers...)
		f(&c)
		return &c
	}
	for _, c := range []struct {
		name       string
		m          *models.Manifest
		pixel, knn float64
		sigma      *float64
		knnSigma   *float64
		normals    []dataset.Item
		want       string
	}{
		{"noises", change(func(m *models.Manifest) { m.Diffusion.Ensemble = 4 }), 0.5, 4, nil, nil, normals, "start noises"},
		{"a layer's weight", change(func(m *models.Manifest) { m.Features.Layers[1].Weight = 1 }), 0.5, 4, nil, nil, normals, "feature layers"},
		{"a layer dropped", change(func(m *models.Manifest) { m.Features.Layers = m.Features.Layers[:1] }), 0.5, 4, nil, nil, normals, "feature layers"},
		{"start step", change(func(m *models.Manifest) { m.Diffusion.StartStep = 301 }), 0.5, 4, nil, nil, normals, "start step"},
		{"sigma", change(func(m *models.Manifest) { m.Map.Sigma = 2.5 }), 0.5, 4, nil, nil, normals, "sigma"},
		{"a guided filter", change(func(m *models.Manifest) { m.Map.Guided = &models.GuidedFilter{Radius: 8, Eps: 1e-4} }), 0.5, 4, nil, nil, normals,
			"measured with no guided filter, the bundle has guided filter r 8 eps 0.0001"},
		{"mean-frame factor", m, 0.25, 4, nil, nil, normals, "mean-frame term"},
		{"knn factor", m, 0.5, 2, nil, nil, normals, "nearest-normal term at factor"},
		{"the term's own smoothing", m, 0.5, 4, &one, nil, normals, "smoothed at sigma 5, calibrating 1"},
		{"the knn term's own smoothing", m, 0.5, 4, nil, &one, normals, "nearest-normal term smoothed at sigma 5, calibrating 1"},
		{"other banks", change(func(m *models.Manifest) { m.Files["bank"] = models.FileEntry{SHA256: "b2"} }), 0.5, 4, nil, nil, normals, "banks"},
		{"other normals", m, 0.5, 4, nil, nil, normals[:1], "reference normals"},
		{"normals in another class", m, 0.5, 4, nil, nil, []dataset.Item{normals[0], {Path: "/d/b.png", Class: "bolt"}}, "reference normals"},
	} {
		if why := base.mismatch(recipeOf(c.m, eval.Terms{Pixel: c.pixel, PixelSigma: c.sigma, Knn: c.knn, KnnSigma: c.knnSigma}, c.normals)); !strings.Contains(why, c.want) {
			t.Errorf("%s: mismatch %q, want one naming %q", c.name, why, c.want)
		}
	}
	// another guided filter is another map
	g := recipeOf(change(func(m *models.Manifest) { m.Map.Guided = &models.GuidedFilter{Radius: 8, Eps: 1e-4} }), eval.Terms{Pixel: 0.5, Knn: 4}, normals)
	if why := g.mismatch(recipeOf(change(func(m *models.Manifest) { m.Map.Guided = &models.GuidedFilter{Radius: 4, Eps: 1e-4} }), eval.Terms{Pixel: 0.5, Knn: 4}, normals)); !strings.Contains(why, "r 8 eps 0.0001, the bundle has guided filter r 4") {
		t.Errorf("another guided filter: mismatch %q", why)
	}
	// the map's sigma named explicitly is the same smoothing; without the term its smoothing does not matter
	five := 5.0
	if why := base.mismatch(recipeOf(m, eval.Terms{Pixel: 0.5, PixelSigma: &five, Knn: 4, KnnSigma: &five}, normals)); why != "" {
		t.Errorf("the terms at the map's sigma, named: %q", why)
	}
	if why := recipeOf(m, eval.Terms{Knn: 4}, normals).mismatch(recipeOf(m, eval.Terms{PixelSigma: &one, Knn: 4}, normals)); why != "" {
		t.Errorf("no term, another smoothing: %q", why)
	}
	// without the term its banks and smoothing do not matter
	noKnn := recipeOf(m, eval.Terms{Pixel: 0.5}, normals)
	if why := noKnn.mismatch(recipeOf(change(func(m *models.Manifest) { m.Files["bank"] = models.FileEntry{SHA256: "b2"} }), eval.Terms{Pixel: 0.5, KnnSigma: &one}, normals)); why != "" {
		t.Errorf("factor 0 with other banks: %q", why)
	}
}
