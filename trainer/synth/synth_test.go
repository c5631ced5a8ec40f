package synth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/trainer/dataset"
)

// diffMask is the set of pixels where a and b differ on any channel.
func diffMask(t *testing.T, a, b Image) []uint8 {
	t.Helper()
	if a.W != b.W || a.H != b.H || a.C != b.C {
		t.Fatalf("images %dx%dx%d and %dx%dx%d", a.W, a.H, a.C, b.W, b.H, b.C)
	}
	m := make([]uint8, a.W*a.H)
	for i := range m {
		for c := 0; c < a.C; c++ {
			if a.Pix[i*a.C+c] != b.Pix[i*a.C+c] {
				m[i] = 1
			}
		}
	}
	return m
}

func count(m []uint8) int {
	n := 0
	for _, v := range m {
		if v != 0 {
			n++
		}
	}
	return n
}

func TestPaintMaskIsExactlyTheChangedPixels(t *testing.T) {
	specs := []ClassSpec{
		{Name: "f", Surface: SurfaceFractal, W: 120, H: 80},
		{Name: "g", Surface: SurfaceGrain, W: 64, H: 96, Gray: true},
		{Name: "p", Surface: SurfacePart, W: 100, H: 70},
	}
	invisible := 0
	for _, spec := range specs {
		for _, kind := range Defects {
			for i := 0; i < 6; i++ {
				img, region := Render(spec, 3, "x", i)
				donor, _ := Render(spec, 3, "donor", i)
				before := img.Clone()
				p := DefaultParams
				if i%2 == 1 { // the hard end: tiny and faint
					p = Params{MinSize: 0.01, MaxSize: 0.02, MinContrast: 0.03, MaxContrast: 0.05}
				}
				out, mask, err := Paint(img, kind, &donor, region, p, rngFor(9, spec.Name, kind, i))
				if kind == DefectCutPaste && i%2 == 1 && errors.Is(err, ErrInvisible) {
					invisible++ // a patch of a pixel or two of the same grain cannot be seen
					continue
				}
				if err != nil {
					t.Fatalf("%s %s %d: %v", spec.Name, kind, i, err)
				}
				if !bytes.Equal(img.Pix, before.Pix) {
					t.Fatalf("%s %s: Paint modified its input", spec.Name, kind)
				}
				if len(mask) != img.W*img.H || out.W != img.W || out.H != img.H || out.C != img.C {
					t.Fatalf("%s %s: mask %d for %dx%d, out %dx%dx%d", spec.Name, kind, len(mask), img.W, img.H, out.W, out.H, out.C)
				}
				if kind == DefectCutPaste && meanChange(img, out, mask) < 255*p.MinContrast/6 {
					t.Errorf("%s %d: a faint cut-paste kept (mean change %.1f levels)", spec.Name, i, meanChange(img, out, mask))
				}
				if want := diffMask(t, img, out); !bytes.Equal(mask, want) {
					t.Errorf("%s %s %d: mask (%d px) is not the changed pixels (%d px)", spec.Name, kind, i, count(mask), count(want))
				}
				if n := count(mask); n < MinArea || n > img.W*img.H/2 {
					t.Errorf("%s %s %d: %d changed pixels", spec.Name, kind, i, n)
				}
				if region != nil {
					in := 0
					for p, v := range mask {
						if v != 0 && region[p] {
							in++
						}
					}
					if in == 0 {
						t.Errorf("%s %s %d: defect entirely off the part", spec.Name, kind, i)
					}
				}
			}
		}
	}
	if invisible > len(specs) {
		t.Errorf("%d of %d tiny faint cut-pastes were invisible", invisible, 3*len(specs))
	}
	if _, _, err := Paint(NewImage(8, 8, 1), "dent", nil, nil, DefaultParams, rngFor(1)); err == nil || !strings.Contains(err.Error(), `"dent"`) {
		t.Errorf("unknown kind: %v", err)
	}
	if _, _, err := Paint(NewImage(8, 8, 1), DefectSpeck, nil, nil, Params{MinSize: 0.2, MaxSize: 0.1, MinContrast: 0.1, MaxContrast: 0.2}, rngFor(1)); err == nil {
		t.Errorf("inverted size range accepted")
	}
}

// TestInvisibleCutPaste checks that a cut-paste that cannot be seen (paper pasted onto paper) is never kept:
// Paint redraws it and reports ErrInvisible, and WriteDefects paints the next kind instead.
func TestInvisibleCutPaste(t *testing.T) {
	flat := func(v uint8) Image {
		im := NewImage(64, 48, 3)
		for i := range im.Pix {
			im.Pix[i] = v
		}
		return im
	}
	img := flat(128)
	threshold := 255 * DefaultParams.MinContrast / 3
	for _, tc := range []struct {
		donor   uint8
		visible bool
	}{{130, false}, {128 + uint8(threshold/2), false}, {128 + uint8(3*threshold), true}, {40, true}} {
		donor := flat(tc.donor)
		out, mask, err := Paint(img, DefectCutPaste, &donor, nil, DefaultParams, rngFor(3, "flat", int(tc.donor)))
		if !tc.visible {
			if !errors.Is(err, ErrInvisible) || !strings.Contains(err.Error(), "cut-paste on a 64x48 image") {
				t.Errorf("donor %d on 128: err %v, want ErrInvisible naming the image", tc.donor, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("donor %d on 128: %v", tc.donor, err)
		}
		maxd := 0
		for i := range out.Pix {
			maxd = max(maxd, int(out.Pix[i])-128, 128-int(out.Pix[i]))
		}
		if want := max(int(tc.donor)-128, 128-int(tc.donor)); maxd > want || float64(maxd) < threshold || count(mask) < MinArea {
			t.Errorf("donor %d: largest change %d (want %.1f..%d) over %d px", tc.donor, maxd, threshold, want, count(mask))
		}
	}

	// The same random texture, only misplaced: single pixels change a lot, the material does not.
	noisy := func(seed uint64) Image {
		im := NewImage(64, 48, 3)
		r := rngFor(seed, "noise")
		for i := range im.Pix {
			im.Pix[i] = uint8(88 + r.IntN(81))
		}
		return im
	}
	tex, other := noisy(1), noisy(2)
	if _, _, err := Paint(tex, DefectCutPaste, &other, nil, DefaultParams, rngFor(4)); !errors.Is(err, ErrInvisible) {
		t.Errorf("noise pasted onto the same noise: %v, want ErrInvisible", err)
	}

	// Two near-identical flat normals: every cut-paste would be invisible, so scratches take their place.
	dir := t.TempDir()
	var normals []Normal
	for i, v := range []uint8{128, 130} {
		p := filepath.Join(dir, fmt.Sprintf("n%d.png", i))
		if err := flat(v).WritePNG(p); err != nil {
			t.Fatal(err)
		}
		normals = append(normals, Normal{Path: p, Class: "paper"})
	}
	sum, err := WriteDefects(context.Background(), normals, DefectsOptions{Out: filepath.Join(dir, "val"), PerImage: 2,
		Seed: 1, Kinds: []string{DefectCutPaste, DefectScratch}})
	if err != nil {
		t.Fatal(err)
	}
	if got := sum["paper"]; got["test/"+DefectCutPaste] != 0 || got["test/"+DefectScratch] != 4 {
		t.Errorf("summary %v: want 4 scratches and no cut-paste", got)
	}
	// cut-paste alone has nothing to fall back on: the error says why
	_, err = WriteDefects(context.Background(), normals, DefectsOptions{Out: filepath.Join(dir, "only"), PerImage: 1,
		Seed: 1, Kinds: []string{DefectCutPaste}})
	if !errors.Is(err, ErrInvisible) {
		t.Errorf("cut-paste only on flat normals: %v, want ErrInvisible", err)
	}
}

// TestFibreIsLongThinAndMostlyDark checks one fibre's shape on a flat frame, where every changed pixel is the
// fibre's: it reaches far (its extent is at least half its drawn length, bends and gaps and all), stays thin (its
// area over its length is within the widest fibre plus its soft edges), and most fibres are darker than the
// surface, as hairs and threads are. Gray and colour frames both.
func TestFibreIsLongThinAndMostlyDark(t *testing.T) {
	const side, size = 400, 0.1
	length := 8 * size * side
	p := Params{MinSize: size, MaxSize: size, MinContrast: 0.3, MaxContrast: 0.3} // centred: no fibre leaves the frame
	for _, ch := range []int{1, 3} {
		img := NewImage(side, side, ch)
		for i := range img.Pix {
			img.Pix[i] = 128
		}
		dark := 0
		const draws = 20
		for i := 0; i < draws; i++ {
			// one fibre (the kind adds companions half the time: TestFibresBreakIntoPieces)
			out, mask, _ := composite(img, fibre(img, newLayer(img), side/2, side/2, length, p.MinContrast, rngFor(5, ch, i)))
			x0, y0, x1, y1, area, sum := side, side, -1, -1, 0, 0
			for k, v := range mask {
				if v == 0 {
					continue
				}
				x, y := k%side, k/side
				x0, y0, x1, y1 = min(x0, x), min(y0, y), max(x1, x), max(y1, y)
				area++
				sum += int(out.Pix[k*ch]) - 128
			}
			extent := math.Hypot(float64(x1-x0), float64(y1-y0))
			if extent < length/2 {
				t.Errorf("%d channels, draw %d: extent %.0f px, want at least half the length %.0f", ch, i, extent, length)
			}
			if wide := float64(area) / length; wide > 0.04*side+2*3+2 {
				t.Errorf("%d channels, draw %d: %d px over %.0f px of length: %.1f px wide", ch, i, area, length, wide)
			}
			if sum < 0 {
				dark++
			}
		}
		if dark < draws/2 || dark == draws {
			t.Errorf("%d channels: %d of %d fibres darker; want most, not all", ch, dark, draws)
		}
	}
}

// TestFibresBreakIntoPieces checks the broken fibres: on a flat frame about half of single fibres are one region
// of the mask and the others several separate pieces (8-connected, as AU-PRO counts them), the way real hairs on
// a textured surface are annotated; and about half the fibre defects bring companions (more of the frame's
// pixels changed than their first fibre's).
func TestFibresBreakIntoPieces(t *testing.T) {
	const side, draws = 300, 40
	img := NewImage(side, side, 1)
	for i := range img.Pix {
		img.Pix[i] = 128
	}
	p := Params{MinSize: 0.1, MaxSize: 0.1, MinContrast: 0.3, MaxContrast: 0.3}
	whole, broken, grouped := 0, 0, 0
	for i := 0; i < draws; i++ {
		_, mask, _ := composite(img, fibre(img, newLayer(img), side/2, side/2, 0.1*side*8, 0.3, rngFor(9, i)))
		switch n := countRegions(mask, side, side); {
		case n == 1:
			whole++
		case n >= 3:
			broken++
		}
		_, first, one := composite(img, fibre(img, newLayer(img), side/2, side/2, 0.1*side*8, 0.3, rngFor(10, i)))
		_, all, area := composite(img, fibres(img, side/2, side/2, 0.1*side, 0.3, p, rngFor(10, i)))
		for k, v := range first {
			if v != 0 && all[k] == 0 {
				t.Fatalf("draw %d: the group lost pixel %d of its first fibre", i, k)
			}
		}
		if area > one {
			grouped++
		}
	}
	if whole < draws/4 || broken < draws/4 {
		t.Errorf("%d fibres: %d in one piece, %d in three or more; want at least a quarter each", draws, whole, broken)
	}
	if grouped < draws/4 || grouped > draws*3/4 {
		t.Errorf("%d fibre defects: %d with companions; want about half", draws, grouped)
	}
}

// countRegions counts the 8-connected regions of mask != 0.
func countRegions(mask []uint8, w, h int) int {
	seen := make([]bool, len(mask))
	n := 0
	for start, v := range mask {
		if v == 0 || seen[start] {
			continue
		}
		n++
		stack := []int{start}
		seen[start] = true
		for len(stack) > 0 {
			i := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			x, y := i%w, i/w
			for dy := -1; dy <= 1; dy++ {
				for dx := -1; dx <= 1; dx++ {
					nx, ny := x+dx, y+dy
					if nx < 0 || ny < 0 || nx >= w || ny >= h {
						continue
					}
					if j := ny*w + nx; mask[j] != 0 && !seen[j] {
						seen[j] = true
						stack = append(stack, j)
					}
				}
			}
		}
	}
	return n
}

// TestStainIsFaint checks that stains stay low-contrast: the largest change is a small fraction of full scale.
func TestStainIsFaint(t *testing.T) {
	spec := ClassSpec{Name: "s", Surface: SurfaceGrain, W: 96, H: 96}
	img, _ := Render(spec, 1, "x", 0)
	out, mask, err := Paint(img, DefectStain, nil, nil, DefaultParams, rngFor(2))
	if err != nil {
		t.Fatal(err)
	}
	maxd := 0
	for i := range img.Pix {
		d := int(out.Pix[i]) - int(img.Pix[i])
		maxd = max(maxd, d, -d)
	}
	if maxd > 80 || count(mask) == 0 {
		t.Errorf("stain changes up to %d levels over %d px; want faint (<= 80)", maxd, count(mask))
	}
}

func TestParseClassSpec(t *testing.T) {
	tests := []struct {
		in   string
		want ClassSpec
		err  string
	}{
		{"fractal", ClassSpec{Name: "fractal", Surface: "fractal", W: 256, H: 256}, ""},
		{"woven:gray", ClassSpec{Name: "woven-gray", Surface: "woven", W: 256, H: 256, Gray: true}, ""},
		{"part:800x600", ClassSpec{Name: "part-800x600", Surface: "part", W: 800, H: 600}, ""},
		{"grain:grey:300x400=tiles", ClassSpec{Name: "tiles", Surface: "grain", W: 300, H: 400, Gray: true}, ""},
		{"marble", ClassSpec{}, `unknown surface "marble"`},
		{"woven:blue", ClassSpec{}, `option "blue"`},
		{"woven:8x8", ClassSpec{}, "16 <= W, H"},
		{"woven=a/b", ClassSpec{}, "plain directory name"},
		{"grain:gray:240x200-400x360", ClassSpec{Name: "grain-gray-240x200-400x360", Surface: "grain", W: 240, H: 200, MaxW: 400, MaxH: 360, Gray: true}, ""},
		{"part:300x200-300x260=parts", ClassSpec{Name: "parts", Surface: "part", W: 300, H: 200, MaxW: 300, MaxH: 260}, ""},
		{"grain:400x360-240x200", ClassSpec{}, "smallest size first"},
		{"grain:240x200-240x200", ClassSpec{}, "smallest size first"},
		{"grain:240x200-9x9", ClassSpec{}, "16 <= W, H"},
	}
	for _, tc := range tests {
		got, err := ParseClassSpec(tc.in, 256, 256)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %+v %v, want %+v", tc.in, got, err, tc.want)
		}
	}
}

// readTree returns every file under dir with its bytes.
func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func decodeModel(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, _, err := image.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// sourceDataset renders a two-class MVTec dataset to paint on: a grey non-square class and a colour class.
func sourceDataset(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	_, err := WriteSurfaces(context.Background(), SurfacesOptions{Out: root, Train: 12, TestGood: 1, PerKind: 1, Seed: 5,
		Kinds:   []string{DefectSpeck},
		Classes: []ClassSpec{{Name: "tiles", Surface: SurfaceGrain, W: 72, H: 48, Gray: true}, {Name: "cloth", Surface: SurfaceWoven, W: 48, H: 48}}})
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func TestWriteDefectsFromHeldOutNormals(t *testing.T) {
	src := sourceDataset(t)
	const frac = 0.4
	normals, err := HeldOutNormals(src, dataset.LayoutAuto, frac, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Exactly the trainer's val split: the same reader and hash, nothing from train or test.
	items, err := dataset.OpenWith(src, dataset.Options{ValFraction: frac})
	if err != nil {
		t.Fatal(err)
	}
	var want []Normal
	for _, it := range items {
		if it.Split == dataset.SplitVal {
			want = append(want, Normal{Path: it.Path, Class: it.Class})
		}
	}
	if len(want) == 0 || !reflect.DeepEqual(normals, want) {
		t.Fatalf("held-out normals\n got %v\nwant %v", normals, want)
	}
	for _, n := range normals {
		if !strings.Contains(n.Path, filepath.Join("train", "good")) {
			t.Errorf("%s is not a train/good image", n.Path)
		}
	}

	out := filepath.Join(t.TempDir(), "val")
	sum, err := WriteDefects(context.Background(), normals, DefectsOptions{Out: out, PerImage: 4, Seed: 11})
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	sum.Write(&sb)
	t.Logf("summary:\n%s", sb.String())
	// The tree reads back as a dataset, every anomalous image with a mask that marks pixels.
	got, err := dataset.Open(out, dataset.LayoutAuto)
	if err != nil {
		t.Fatal(err)
	}
	checked, issues, err := dataset.CheckMasks(got, dataset.LabelByFolder)
	if err != nil || len(issues) != 0 {
		t.Fatalf("mask issues %v (%v)", issues, err)
	}
	srcOf := map[string]string{} // class/stem -> source path
	for _, n := range normals {
		srcOf[n.Class+"/"+strings.TrimSuffix(filepath.Base(n.Path), ".png")] = n.Path
	}
	kinds := map[string]int{}
	for _, it := range checked {
		if it.Split != dataset.SplitTest || it.Label != dataset.LabelAnomalous {
			continue
		}
		kinds[it.Defect]++
		stem := filepath.Base(it.Path)
		stem = stem[:strings.LastIndexByte(stem, '_')]
		orig, err := Decode(srcOf[it.Class+"/"+stem])
		if err != nil {
			t.Fatal(err)
		}
		img, err := Decode(it.Path)
		if err != nil {
			t.Fatal(err)
		}
		mask, err := Decode(it.Mask)
		if err != nil {
			t.Fatal(err)
		}
		if mask.C != 1 || mask.W != orig.W || mask.H != orig.H {
			t.Fatalf("%s: mask %dx%dx%d for a %dx%d image", it.Mask, mask.W, mask.H, mask.C, orig.W, orig.H)
		}
		changed := diffMask(t, orig, img)
		for p := range changed {
			if (mask.Pix[p] == 255) != (changed[p] == 1) || (mask.Pix[p] != 0 && mask.Pix[p] != 255) {
				t.Fatalf("%s: mask pixel %d = %d, changed %v", it.Path, p, mask.Pix[p], changed[p] == 1)
			}
		}
		if count(changed) == 0 {
			t.Errorf("%s: no pixel changed", it.Path)
		}
		if it.Class == "tiles" {
			if _, ok := decodeModel(t, it.Path).(*image.Gray); !ok || img.C != 1 {
				t.Errorf("%s: a grey source must give a grey PNG", it.Path)
			}
		}
	}
	for _, k := range Defects {
		if kinds[k] == 0 {
			t.Errorf("no %s defect in %v", k, kinds)
		}
	}

	// Same seed: identical bytes. Another seed: different defects.
	again := filepath.Join(t.TempDir(), "val")
	if _, err := WriteDefects(context.Background(), normals, DefectsOptions{Out: again, PerImage: 4, Seed: 11}); err != nil {
		t.Fatal(err)
	}
	a, b := readTree(t, out), readTree(t, again)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("two runs with seed 11 differ")
	}
	other := filepath.Join(t.TempDir(), "val")
	if _, err := WriteDefects(context.Background(), normals, DefectsOptions{Out: other, PerImage: 4, Seed: 12}); err != nil {
		t.Fatal(err)
	}
	c := readTree(t, other)
	diff := 0
	for k := range a {
		if strings.Contains(k, "ground_truth") && !bytes.Equal(a[k], c[k]) {
			diff++
		}
	}
	if diff == 0 {
		t.Errorf("seeds 11 and 12 gave the same masks")
	}
}

func TestHeldOutNormalsErrors(t *testing.T) {
	src := sourceDataset(t)
	if _, err := HeldOutNormals(src, dataset.LayoutAuto, 0, nil); err == nil || !strings.Contains(err.Error(), "val fraction > 0") {
		t.Errorf("fraction 0: %v", err)
	}
	if _, err := HeldOutNormals(src, dataset.LayoutAuto, 0.0001, nil); err == nil || !strings.Contains(err.Error(), "holds out no normal") {
		t.Errorf("tiny fraction: %v", err)
	}
	if _, err := HeldOutNormals(src, dataset.LayoutAuto, 0.4, []string{"tiles", "bricks"}); err == nil || !strings.Contains(err.Error(), "no class bricks (classes: cloth, tiles)") {
		t.Errorf("unknown class: %v", err)
	}
	empty := t.TempDir()
	if _, err := HeldOutNormals(empty, dataset.LayoutAuto, 0.1, nil); err == nil || !strings.Contains(err.Error(), "found neither") {
		t.Errorf("empty folder: %v", err)
	}
	// A plain folder: all its images, one class named after it.
	plain := filepath.Join(t.TempDir(), "parts")
	img, _ := Render(ClassSpec{Name: "x", Surface: SurfaceFractal, W: 32, H: 24}, 1, "x", 0)
	for _, n := range []string{"b.png", "a.png"} {
		if err := img.WritePNG(filepath.Join(plain, n)); err != nil {
			t.Fatal(err)
		}
	}
	ns, err := HeldOutNormals(plain, dataset.LayoutAuto, 0.1, nil)
	if err != nil || len(ns) != 2 || ns[0].Class != "parts" || filepath.Base(ns[0].Path) != "a.png" {
		t.Errorf("plain folder: %v %v", ns, err)
	}
}

func TestWriteSurfaces(t *testing.T) {
	specs := []ClassSpec{}
	for _, s := range []string{"fractal:80x60", "woven:gray:48x64", "brushed:64x64", "grain:gray:64x48", "part:96x72", "grain:gray:40x36-72x64"} {
		c, err := ParseClassSpec(s, 64, 64)
		if err != nil {
			t.Fatal(err)
		}
		specs = append(specs, c)
	}
	o := SurfacesOptions{Out: filepath.Join(t.TempDir(), "s"), Classes: specs, Train: 3, TestGood: 2, PerKind: 2, Seed: 4}
	sum, err := WriteSurfaces(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	sum.Write(&sb)
	t.Logf("summary:\n%s", sb.String())
	items, err := dataset.Open(o.Out, dataset.LayoutAuto)
	if err != nil {
		t.Fatal(err)
	}
	if _, issues, err := dataset.CheckMasks(items, ""); err != nil || len(issues) != 0 {
		t.Fatalf("mask issues %v %v", issues, err)
	}
	perClass := map[string]int{}
	sizes := map[string]map[[2]int]bool{}
	for _, it := range items {
		perClass[it.Class]++
		m := decodeModel(t, it.Path)
		spec := specs[0]
		for _, s := range specs {
			if s.Name == it.Class {
				spec = s
			}
		}
		b := m.Bounds()
		if sizes[it.Class] == nil {
			sizes[it.Class] = map[[2]int]bool{}
		}
		sizes[it.Class][[2]int{b.Dx(), b.Dy()}] = true
		switch {
		case spec.MaxW == 0 && (b.Dx() != spec.W || b.Dy() != spec.H):
			t.Errorf("%s: %v, want %dx%d", it.Path, b, spec.W, spec.H)
		case spec.MaxW > 0 && (b.Dx() < spec.W || b.Dx() > spec.MaxW || b.Dy() < spec.H || b.Dy() > spec.MaxH):
			t.Errorf("%s: %v, want %dx%d to %dx%d", it.Path, b, spec.W, spec.H, spec.MaxW, spec.MaxH)
		}
		if _, gray := m.(*image.Gray); gray != spec.Gray {
			t.Errorf("%s: grey %v, want %v", it.Path, gray, spec.Gray)
		}
		if it.Label == dataset.LabelAnomalous {
			// The mask is exactly the change from the defect-free render of the same image.
			kind := it.Defect
			var i int
			if _, err := fmtSscan(filepath.Base(it.Path), &i); err != nil {
				t.Fatal(err)
			}
			orig, _ := Render(spec, o.Seed, "defect-"+kind, i)
			img, _ := Decode(it.Path)
			mask, _ := Decode(it.Mask)
			ch := diffMask(t, orig, img)
			for p := range ch {
				if (mask.Pix[p] != 0) != (ch[p] == 1) {
					t.Fatalf("%s: mask differs from the changed pixels at %d", it.Path, p)
				}
			}
		}
	}
	// Every defect is written, or skipped because nothing stood out from the class's test normals; the files
	// are what the summary says.
	skipped := 0
	for _, s := range specs {
		n := sum[s.Name][SkippedInvisible]
		skipped += n
		if perClass[s.Name] != 3+2+2*len(Defects)-n {
			t.Errorf("class %s: %d images, want %d (%d skipped)", s.Name, perClass[s.Name], 3+2+2*len(Defects)-n, n)
		}
	}
	// The class of many sizes has them, and its defects' visibility floor was measured on resized normals (it
	// has no two test normals of one size); the fixed-size classes measure theirs as before.
	for _, s := range specs {
		n, resized := len(sizes[s.Name]), sum[s.Name][FloorResized]
		if s.MaxW > 0 && (n < 5 || resized != 2*len(Defects)) {
			t.Errorf("class %s: %d frame sizes, %d floors on resized normals; want many sizes and %d", s.Name, n, resized, 2*len(Defects))
		}
		if s.MaxW == 0 && (n != 1 || resized != 0) {
			t.Errorf("class %s: %d frame sizes, %d floors on resized normals; want 1 and 0", s.Name, n, resized)
		}
	}
	if skipped > 2 {
		t.Errorf("%d of %d defects skipped as invisible; the default contrast should stand out on most surfaces", skipped, len(specs)*2*len(Defects))
	}
	// Stochastic textures: two train images of a class differ; the same seed renders them again identically.
	a, _ := Render(specs[0], 4, "train", 0)
	b, _ := Render(specs[0], 4, "train", 1)
	if bytes.Equal(a.Pix, b.Pix) {
		t.Errorf("two fractal renders are identical")
	}
	again := o
	again.Out = filepath.Join(t.TempDir(), "s")
	if _, err := WriteSurfaces(context.Background(), again); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(readTree(t, o.Out), readTree(t, again.Out)) {
		t.Errorf("two renders with one seed differ")
	}
}

func fmtSscan(name string, i *int) (int, error) {
	return fmt.Sscanf(strings.TrimSuffix(name, ".png"), "%d", i)
}

// meanChange is the mean over the mask's pixels of the largest channel change, in grey levels (0 for an empty
// mask).
func meanChange(img, out Image, mask []uint8) float64 {
	sum, n := 0.0, 0
	for i, m := range mask {
		if m == 0 {
			continue
		}
		d := 0
		for c := 0; c < img.C; c++ {
			v := int(out.Pix[i*img.C+c]) - int(img.Pix[i*img.C+c])
			d = max(d, v, -v)
		}
		sum += float64(d)
		n++
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}
