package synth

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"
)

// flatImage is a w x h image of one value.
func flatImage(w, h, c int, v uint8) Image {
	im := NewImage(w, h, c)
	for i := range im.Pix {
		im.Pix[i] = v
	}
	return im
}

// noiseImage is base plus uniform noise of +-amp per channel, seeded: a stochastic texture that differs in
// every normal.
func noiseImage(w, h, c int, base, amp int, seed uint64) Image {
	im := NewImage(w, h, c)
	r := rngFor(seed, "noise-image")
	for i := range im.Pix {
		im.Pix[i] = uint8(max(0, min(255, base-amp+r.IntN(2*amp+1))))
	}
	return im
}

// TestNewVariationIsTheMedianPairDifference checks the variation on normals whose differences are known: flat
// frames of 100, 110 and 130 differ pairwise by 10, 20 and 30 everywhere, at both scales, so the median is 20.
func TestNewVariationIsTheMedianPairDifference(t *testing.T) {
	v := NewVariation([]Image{flatImage(20, 10, 3, 100), flatImage(20, 10, 3, 110), flatImage(20, 10, 3, 130)})
	if v == nil || v.Pairs != 3 || v.W != 20 || v.H != 10 || v.C != 3 {
		t.Fatalf("variation %+v: want 3 pairs of 20x10x3 frames", v)
	}
	for i := range v.Pixel {
		if v.Pixel[i] != 20 || v.Window[i] != 20 {
			t.Fatalf("pixel %d: variation %v / %v, want 20 / 20", i, v.Pixel[i], v.Window[i])
		}
	}
	if NewVariation([]Image{flatImage(4, 4, 1, 0)}) != nil {
		t.Error("a variation from one normal")
	}
	// Noise of +-40 per pixel: single pixels differ by tens of levels, 7x7 windows by a few.
	var noisy []Image
	for s := range 12 {
		noisy = append(noisy, noiseImage(40, 30, 1, 128, 40, uint64(s)))
	}
	v = NewVariation(noisy)
	if v.Pairs != maxVariationPairs {
		t.Errorf("%d pairs of 12 normals, want the cap %d", v.Pairs, maxVariationPairs)
	}
	var px, win float64
	for i := range v.Pixel {
		px += float64(v.Pixel[i])
		win += float64(v.Window[i])
	}
	px, win = px/float64(len(v.Pixel)), win/float64(len(v.Window))
	// |a-b| of two uniform(-40, 40) values has median 80*(1-1/sqrt(2)) = 23.4; a 7x7 mean of it shrinks ~7x
	if px < 18 || px > 29 || win < 1.5 || win > 8 {
		t.Errorf("noise +-40: variation %.1f per pixel, %.1f per window; want about 23 and 4", px, win)
	}
	shapes := []Image{flatImage(8, 8, 1, 0), flatImage(8, 8, 1, 9), flatImage(9, 8, 1, 0), flatImage(8, 8, 3, 0)}
	if m := variations(shapes, Params{}); len(m) != 1 || m[[3]int{8, 8, 1}].Pairs != 1 {
		t.Errorf("variations by shape: %v, want one for the two 8x8 grey frames", m)
	}
	// at a model input of 8 px the 9 x 8 frame is seen at 8 x 8 too: three grey frames, three pairs
	if m := variations(shapes, Params{InputSize: 8}); len(m) != 1 || m[[3]int{8, 8, 1}].Pairs != 3 {
		t.Errorf("variations by view: %v, want one for the three grey frames", m)
	}
}

// TestVisibility checks the measure on defects whose answer is known.
func TestVisibility(t *testing.T) {
	var quiet, noisy []Image
	for s := range 6 {
		quiet = append(quiet, noiseImage(48, 48, 3, 128, 2, uint64(s)))
		noisy = append(noisy, noiseImage(48, 48, 3, 128, 60, uint64(s)))
	}
	vq, vn := NewVariation(quiet), NewVariation(noisy)
	square := func(img Image, x0, y0, side, delta int) (Image, []uint8) {
		out := img.Clone()
		mask := make([]uint8, img.W*img.H)
		for y := y0; y < y0+side; y++ {
			for x := x0; x < x0+side; x++ {
				i := y*img.W + x
				mask[i] = 1
				for c := 0; c < img.C; c++ {
					out.Pix[i*img.C+c] = uint8(int(img.Pix[i*img.C+c]) + delta)
				}
			}
		}
		return out, mask
	}
	for _, tc := range []struct {
		name           string
		v              *Variation
		img            Image
		side, delta    int
		atLeast, below float64
	}{
		{"speck of 30 levels on quiet paper", vq, quiet[0], 2, 30, 5, math.Inf(1)},
		{"stain of 6 levels on quiet paper", vq, quiet[0], 12, 6, 1.5, math.Inf(1)},
		{"speck of 30 levels on +-60 noise", vn, noisy[0], 2, 30, 0, 1},
		{"patch of 30 levels on +-60 noise", vn, noisy[0], 14, 30, 2, math.Inf(1)},
	} {
		out, mask := square(tc.img, 17, 19, tc.side, tc.delta)
		got := Visibility(tc.img, out, mask, tc.v)
		if got < tc.atLeast || got >= tc.below {
			t.Errorf("%s: visibility %.2f, want [%v, %v)", tc.name, got, tc.atLeast, tc.below)
		}
	}
	if got := Visibility(quiet[0], quiet[0], make([]uint8, 48*48), vq); got != 0 {
		t.Errorf("an empty mask: visibility %v, want 0", got)
	}
}

// TestPaintAmongRedrawsFaintDefects checks that a defect within the normals' own variation is never kept: on a
// texture whose normals differ by tens of levels a faint speck is redrawn until none is left (ErrInvisible),
// the check off paints it anyway, and strong specks pass it.
func TestPaintAmongRedrawsFaintDefects(t *testing.T) {
	var noisy []Image
	for s := range 5 {
		noisy = append(noisy, noiseImage(64, 48, 3, 128, 60, uint64(s)))
	}
	v := NewVariation(noisy)
	faint := Params{MinSize: 0.02, MaxSize: 0.05, MinContrast: 0.03, MaxContrast: 0.05, MinVisibility: 1}
	_, _, n, err := PaintAmong(noisy[0], DefectSpeck, nil, nil, v, faint, rngFor(1))
	if !errors.Is(err, ErrInvisible) || n != 50 || !strings.Contains(err.Error(), "within the normals' own variation") {
		t.Errorf("faint specks on +-60 noise: %d redrawn, err %v; want 50 and ErrInvisible naming the variation", n, err)
	}
	off := faint
	off.MinVisibility = 0
	if _, _, n, err := PaintAmong(noisy[0], DefectSpeck, nil, nil, v, off, rngFor(1)); err != nil || n != 0 {
		t.Errorf("the check off: %d redrawn, %v", n, err)
	}
	strong := Params{MinSize: 0.02, MaxSize: 0.05, MinContrast: 0.6, MaxContrast: 0.8, MinVisibility: 1}
	for s := range 10 {
		out, mask, _, err := PaintAmong(noisy[1], DefectScratch, nil, nil, v, strong, rngFor(2, s))
		if err != nil {
			t.Fatalf("strong scratch %d: %v", s, err)
		}
		if vis := Visibility(noisy[1], out, mask, v); vis < 1 {
			t.Errorf("strong scratch %d kept at visibility %.2f", s, vis)
		}
	}
	// Without a variation of the image's shape the check cannot apply, as in Paint.
	if _, _, n, err := PaintAmong(noiseImage(40, 40, 3, 128, 60, 9), DefectSpeck, nil, nil, v, faint, rngFor(1)); err != nil || n != 0 {
		t.Errorf("a 40x40 image with a 64x48 variation: %d redrawn, %v", n, err)
	}
	if err := (Params{MinSize: .1, MaxSize: .2, MinContrast: .1, MaxContrast: .2, MinVisibility: -1}).Validate(); err == nil {
		t.Error("a negative visibility accepted")
	}
}

// faintParams paint defects of at most 15 grey levels, which +-90 noise hides and +-2 noise does not.
var (
	faintParams = Params{MinSize: 0.02, MaxSize: 0.04, MinContrast: 0.04, MaxContrast: 0.06, MinVisibility: 1}
	faintKinds  = []string{DefectScratch, DefectSpeck, DefectStain}
)

// paperAndGravel writes two classes of held-out normals into dir, one per size: "paper" of +-2 noise around
// 128, "gravel" of +-90.
func paperAndGravel(t *testing.T, dir string, sizes [][2]int) []Normal {
	t.Helper()
	var normals []Normal
	for s, sz := range sizes {
		for _, cls := range []struct {
			name string
			amp  int
		}{{"paper", 2}, {"gravel", 90}} {
			p := filepath.Join(dir, cls.name, fmt.Sprintf("n%d.png", s))
			if err := noiseImage(sz[0], sz[1], 3, 128, cls.amp, uint64(s)).WritePNG(p); err != nil {
				t.Fatal(err)
			}
			normals = append(normals, Normal{Path: p, Class: cls.name})
		}
	}
	return normals
}

// TestWriteDefectsSkipsWhatCannotBeSeen checks the policy of WriteDefects: a class whose normals vary more than
// any allowed defect gets none (counted as skipped), a quiet class beside it gets all of its defects, and a
// set in which nothing at all can be painted is an error that says why.
func TestWriteDefectsSkipsWhatCannotBeSeen(t *testing.T) {
	dir := t.TempDir()
	normals := paperAndGravel(t, dir, [][2]int{{64, 48}, {64, 48}, {64, 48}, {64, 48}})
	sum, err := WriteDefects(context.Background(), normals, DefectsOptions{Out: filepath.Join(dir, "val"), PerImage: 2, Seed: 3, Kinds: faintKinds, Params: faintParams})
	if err != nil {
		t.Fatal(err)
	}
	kinds, faint := faintKinds, faintParams
	var sb strings.Builder
	sum.Write(&sb)
	painted := func(class string) int {
		n := 0
		for _, k := range kinds {
			n += sum[class]["test/"+k]
		}
		return n
	}
	if painted("paper") != 8 || sum["paper"][SkippedInvisible] != 0 {
		t.Errorf("quiet paper: %d of 8 defects painted\n%s", painted("paper"), sb.String())
	}
	if painted("gravel") != 0 || sum["gravel"][SkippedInvisible] != 8 || sum["gravel"][RedrawnFaint] == 0 {
		t.Errorf("gravel (+-90 per pixel) with defects of at most 15 levels: want all 8 skipped\n%s", sb.String())
	}
	if !strings.Contains(sb.String(), SkippedInvisible+" 8") {
		t.Errorf("the summary does not say what was skipped:\n%s", sb.String())
	}
	var gravel []Normal
	for _, n := range normals {
		if n.Class == "gravel" {
			gravel = append(gravel, n)
		}
	}
	_, err = WriteDefects(context.Background(), gravel, DefectsOptions{Out: filepath.Join(dir, "none"), PerImage: 1, Seed: 3, Kinds: kinds, Params: faint})
	if !errors.Is(err, ErrInvisible) || !strings.Contains(err.Error(), "stands out from the normals") {
		t.Errorf("nothing paintable: %v, want ErrInvisible saying why", err)
	}
	// With the check off the same gravel gets its defects, faint as they are.
	off := faint
	off.MinVisibility = 0
	sum, err = WriteDefects(context.Background(), gravel, DefectsOptions{Out: filepath.Join(dir, "off"), PerImage: 1, Seed: 3, Kinds: kinds, Params: off})
	if err != nil || painted("gravel") != 4 {
		t.Errorf("check off: %d of 4 painted, %v", painted("gravel"), err)
	}
}

// TestResizedVariation checks the variation of a frame whose size no other normal shares: flat normals of 100,
// 110 and 130 of three sizes differ pairwise by 10, 20 and 30 at any common size, so the median is 20, at the
// frame's size; normals of other channels do not count, and a frame alone has none.
func TestResizedVariation(t *testing.T) {
	img := flatImage(30, 20, 1, 100)
	normals := []Image{img, flatImage(41, 17, 1, 110), flatImage(30, 20, 3, 0), flatImage(16, 33, 1, 130)}
	for _, tc := range []struct {
		p    Params
		w, h int
	}{{Params{}, 30, 20}, {Params{InputSize: 64}, 30, 20}, {Params{InputSize: 16}, 16, 16}} {
		v := ResizedVariation(img, normals, tc.p)
		if v == nil || v.W != tc.w || v.H != tc.h || v.Pairs != 3 {
			t.Fatalf("input size %d: variation %+v, want %dx%d from 3 pairs", tc.p.InputSize, v, tc.w, tc.h)
		}
		for i := range v.Pixel {
			if v.Pixel[i] != 20 || v.Window[i] != 20 {
				t.Fatalf("input size %d, pixel %d: %v / %v, want 20 at both scales", tc.p.InputSize, i, v.Pixel[i], v.Window[i])
			}
		}
	}
	if v := ResizedVariation(img, []Image{img, flatImage(30, 20, 3, 9)}, Params{}); v != nil {
		t.Errorf("no other grey normal: %+v, want none", v)
	}
}

// TestWriteDefectsFloorOnNormalsOfManySizes checks the floor where no two held-out normals share a size (tiles
// cut to the piece): a class of +-90 noise gets none of its faint defects, as a class of one size does
// (TestWriteDefectsSkipsWhatCannotBeSeen); without ResizedVariation all eight were painted, unchecked.
func TestWriteDefectsFloorOnNormalsOfManySizes(t *testing.T) {
	dir := t.TempDir()
	normals := paperAndGravel(t, dir, [][2]int{{64, 48}, {60, 52}, {72, 44}, {56, 56}})
	kinds := faintKinds
	sum, err := WriteDefects(context.Background(), normals, DefectsOptions{Out: filepath.Join(dir, "val"), PerImage: 2, Seed: 3, Kinds: kinds, Params: faintParams})
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	sum.Write(&sb)
	for _, tc := range []struct {
		class            string
		painted, skipped int
	}{{"paper", 8, 0}, {"gravel", 0, 8}} {
		n := 0
		for _, k := range kinds {
			n += sum[tc.class]["test/"+k]
		}
		if n != tc.painted || sum[tc.class][SkippedInvisible] != tc.skipped || sum[tc.class][FloorResized] != 8 {
			t.Errorf("%s: %d painted, %d skipped; want %d and %d, all 8 floors on resized normals\n%s",
				tc.class, n, sum[tc.class][SkippedInvisible], tc.painted, tc.skipped, sb.String())
		}
	}
}

// TestWriteDefectsFloorAtTheModelInput paints small faint specks on quiet 240 x 240 frames for a model that sees
// them at 32 x 32. At the frame's own size every speck stands out (20-30 grey levels on +-2 noise); shrunk 7.5
// times, a speck of a few pixels changes its view pixel by a grey level or two. With Params.InputSize every
// painted speck must stand out where the model sees it; without it, the set holds specks that do not.
func TestWriteDefectsFloorAtTheModelInput(t *testing.T) {
	dir := t.TempDir()
	var normals []Normal
	var imgs []Image
	for s := range 4 {
		im := noiseImage(240, 240, 3, 128, 2, uint64(s))
		p := filepath.Join(dir, "paper", fmt.Sprintf("n%d.png", s))
		if err := im.WritePNG(p); err != nil {
			t.Fatal(err)
		}
		normals = append(normals, Normal{Path: p, Class: "paper"})
		imgs = append(imgs, im)
	}
	const input = 32
	view := Params{InputSize: input}
	v := variations(imgs, view)[[3]int{input, input, 3}]
	if v == nil {
		t.Fatal("no variation at the model's input")
	}
	// lowest visibility at the model's input among the painted specks, and how many were painted
	lowest := func(p Params) (float64, int, Summary) {
		out := filepath.Join(dir, fmt.Sprintf("val%d", p.InputSize))
		sum, err := WriteDefects(context.Background(), normals, DefectsOptions{Out: out, PerImage: 4, Seed: 5, Kinds: []string{DefectSpeck}, Params: p})
		if err != nil {
			t.Fatal(err)
		}
		low, n := math.Inf(1), 0
		for i := range normals {
			for k := range 4 {
				name := fmt.Sprintf("n%d_%d", i, k)
				img, err := Decode(filepath.Join(out, "paper", "test", DefectSpeck, name+".png"))
				if err != nil {
					continue // skipped: nothing visible
				}
				m, err := Decode(filepath.Join(out, "paper", "ground_truth", DefectSpeck, name+"_mask.png"))
				if err != nil {
					t.Fatal(err)
				}
				low = math.Min(low, visibilityAt(view.view(imgs[i]), imgs[i], img, m.Pix, v))
				n++
			}
		}
		return low, n, sum
	}
	p := Params{MinSize: 0.01, MaxSize: 0.02, MinContrast: 0.08, MaxContrast: 0.12, MinVisibility: 1}
	lowFrame, nFrame, sumFrame := lowest(p)
	p.InputSize = input
	lowInput, nInput, sumInput := lowest(p)
	var sb strings.Builder
	sumFrame.Write(&sb)
	sumInput.Write(&sb)
	t.Logf("faintest speck at the model's input: %.2f with the floor at the frame's size (%d painted), %.2f at the input's (%d painted, %d draws redrawn)",
		lowFrame, nFrame, lowInput, nInput, sumInput["paper"][RedrawnFaint])
	if nFrame != 16 || lowFrame >= 1 {
		t.Errorf("floor at the frame's size: %d of 16 painted, the faintest %.2f at the model's input; want all 16, some under 1\n%s", nFrame, lowFrame, sb.String())
	}
	if nInput == 0 || lowInput < 1 || sumInput["paper"][RedrawnFaint] == 0 {
		t.Errorf("floor at the model's input: %d painted, the faintest %.2f, %d redrawn; want some, none under 1, some redrawn\n%s",
			nInput, lowInput, sumInput["paper"][RedrawnFaint], sb.String())
	}
}
