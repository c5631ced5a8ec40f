package roi

import (
	"image"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/pipeline"
)

func TestValidate(t *testing.T) {
	sq := [][]float64{{10, 10}, {30, 10}, {30, 20}, {10, 20}}
	cases := []struct {
		name string
		c    Config
		want []string // substrings, one per expected error; none = valid
	}{
		{"empty", Config{}, nil},
		{"crop and mask", Config{Crop: &Rect{0, 0, 40, 30}, Mask: sq, Fit: FitLetterbox}, nil},
		{"bad fit", Config{Fit: "stretch"}, []string{`fit: must be squash or letterbox, not "stretch"`}},
		{"negative corner", Config{Crop: &Rect{-1, 0, 10, 10}}, []string{"crop: x and y must be"}},
		{"zero size", Config{Crop: &Rect{0, 0, 0, 10}}, []string{"crop: width and height must be 1.."}},
		{"two points", Config{Mask: [][]float64{{0, 0}, {1, 1}}}, []string{"mask: a polygon needs at least 3 points [x, y], has 2"}},
		{"three numbers", Config{Mask: [][]float64{{0, 0, 1}, {1, 1}, {0, 1}}}, []string{"mask[0]: a point is [x, y], not 3 numbers"}},
		{"NaN", Config{Mask: [][]float64{{0, 0}, {math.NaN(), 1}, {0, 1}}}, []string{"mask[1]: coordinates must be finite"}},
		{"Inf", Config{Mask: [][]float64{{0, 0}, {1, 1}, {math.Inf(1), 1}}}, []string{"mask[2]: coordinates must be finite"}},
		{"collinear", Config{Mask: [][]float64{{0, 0}, {1, 1}, {2, 2}}}, []string{"mask: the polygon encloses no area"}},
		{"mask outside crop", Config{Crop: &Rect{100, 100, 50, 50}, Mask: sq}, []string{"mask: the polygon lies entirely outside crop (x=100 y=100 width=50 height=50)"}},
		{"several at once", Config{Fit: "x", Crop: &Rect{0, 0, -1, 5}}, []string{"fit:", "crop: width"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			errs := tc.c.Validate()
			if len(errs) != len(tc.want) {
				t.Fatalf("got %d errors %v, want %d (%q)", len(errs), errs, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(errs[i].Error(), w) {
					t.Errorf("error %d = %q, want it to contain %q", i, errs[i], w)
				}
			}
		})
	}
}

func TestGeometryRects(t *testing.T) {
	cases := []struct {
		name           string
		c              *Config
		fw, fh, mw, mh int
		crop, content  image.Rectangle
		err            string
	}{
		{"nil is the frame", nil, 320, 240, 64, 64, image.Rect(0, 0, 320, 240), image.Rect(0, 0, 64, 64), ""},
		// 320x240 scaled by 0.2 is 64x48, centred: 8 rows of padding above and below.
		{"letterbox whole frame", &Config{Fit: FitLetterbox}, 320, 240, 64, 64, image.Rect(0, 0, 320, 240), image.Rect(0, 8, 64, 56), ""},
		{"squash crop", &Config{Crop: &Rect{10, 20, 100, 50}}, 320, 240, 64, 64, image.Rect(10, 20, 110, 70), image.Rect(0, 0, 64, 64), ""},
		{"letterbox wide crop", &Config{Crop: &Rect{10, 40, 100, 50}, Fit: FitLetterbox}, 320, 240, 64, 64, image.Rect(10, 40, 110, 90), image.Rect(0, 16, 64, 48), ""},
		{"letterbox tall crop", &Config{Crop: &Rect{40, 10, 50, 100}, Fit: FitLetterbox}, 320, 240, 64, 64, image.Rect(40, 10, 90, 110), image.Rect(16, 0, 48, 64), ""},
		// 100x55 scaled by 0.64 is 64x35.2 -> 35 rows; 29 rows of padding: 14 above, 15 below.
		{"odd padding goes after", &Config{Crop: &Rect{0, 0, 100, 55}, Fit: FitLetterbox}, 320, 240, 64, 64, image.Rect(0, 0, 100, 55), image.Rect(0, 14, 64, 49), ""},
		{"2:1 model", &Config{Crop: &Rect{100, 0, 100, 100}, Fit: FitLetterbox}, 320, 240, 64, 32, image.Rect(100, 0, 200, 100), image.Rect(16, 0, 48, 32), ""},
		// A line-scan strip stays a strip: at least one model row, never a huge padded copy.
		{"extreme aspect", &Config{Crop: &Rect{0, 0, 16384, 4}, Fit: FitLetterbox}, 16384, 4, 64, 64, image.Rect(0, 0, 16384, 4), image.Rect(0, 31, 64, 32), ""},
		{"crop exactly the frame", &Config{Crop: &Rect{0, 0, 320, 240}}, 320, 240, 64, 64, image.Rect(0, 0, 320, 240), image.Rect(0, 0, 64, 64), ""},
		{"crop past the right edge", &Config{Crop: &Rect{300, 0, 21, 10}}, 320, 240, 64, 64, image.Rectangle{}, image.Rectangle{}, "roi.crop (x=300 y=0 width=21 height=10) does not fit in the 320x240 frame"},
		{"crop below the frame", &Config{Crop: &Rect{0, 240, 10, 10}}, 320, 240, 64, 64, image.Rectangle{}, image.Rectangle{}, "does not fit in the 320x240 frame"},
		{"negative corner (unvalidated)", &Config{Crop: &Rect{-5, 0, 10, 10}}, 320, 240, 64, 64, image.Rectangle{}, image.Rectangle{}, "does not fit"},
		{"negative size (unvalidated)", &Config{Crop: &Rect{50, 0, -10, 10}}, 320, 240, 64, 64, image.Rectangle{}, image.Rectangle{}, "has no pixels"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, err := tc.c.Geometry(tc.fw, tc.fh, tc.mw, tc.mh, [3]byte{}, "")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if g.Crop != tc.crop || g.Content != tc.content {
				t.Errorf("crop %v content %v, want %v %v", g.Crop, g.Content, tc.crop, tc.content)
			}
		})
	}
}

// testImage is w x h with pixel (x, y) = (x, y, 7).
func testImage(w, h int) pipeline.Image {
	pix := make([]byte, w*h*3)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			pix[(y*w+x)*3], pix[(y*w+x)*3+1], pix[(y*w+x)*3+2] = byte(x), byte(y), 7
		}
	}
	return pipeline.Image{Width: w, Height: h, Pix: pix}
}

func TestPrepare(t *testing.T) {
	img := testImage(40, 30)
	pad := [3]byte{124, 116, 104}
	// Squash crop: exactly the crop's pixels (the pipeline resizes them).
	g, err := (&Config{Crop: &Rect{5, 6, 10, 4}}).Geometry(40, 30, 8, 8, pad, "")
	if err != nil {
		t.Fatal(err)
	}
	out, err := g.Prepare(img)
	if err != nil || out.Width != 10 || out.Height != 4 {
		t.Fatalf("crop is %dx%d (%v), want 10x4", out.Width, out.Height, err)
	}
	for y := 0; y < 4; y++ {
		for x := 0; x < 10; x++ {
			p := out.Pix[(y*10+x)*3:]
			if p[0] != byte(5+x) || p[1] != byte(6+y) || p[2] != 7 {
				t.Fatalf("crop pixel (%d,%d) = %v, want frame pixel (%d,%d)", x, y, p[:3], 5+x, 6+y)
			}
		}
	}
	// Letterbox: a 10x4 crop into a 20x20 input is scaled by 2 to 20x8 (Pillow's bilinear, the bundle's
	// default filter) in rows 6..13; the other rows are the pad colour.
	for _, filter := range []string{"pil_bilinear", "bilinear"} {
		g, err = (&Config{Crop: &Rect{5, 6, 10, 4}, Fit: FitLetterbox}).Geometry(40, 30, 20, 20, pad, filter)
		if err != nil {
			t.Fatal(err)
		}
		out, err = g.Prepare(img)
		if err != nil || out.Width != 20 || out.Height != 20 {
			t.Fatalf("%s: letterboxed input is %dx%d (%v), want 20x20", filter, out.Width, out.Height, err)
		}
		crop, _ := (&Config{Crop: &Rect{5, 6, 10, 4}}).Geometry(40, 30, 20, 20, pad, "")
		plain, _ := crop.Prepare(img)
		scaled, err := pipeline.Resize(plain, 20, 8, filter)
		if err != nil {
			t.Fatal(err)
		}
		for y := 0; y < 20; y++ {
			for x := 0; x < 20; x++ {
				p := [3]byte(out.Pix[(y*20+x)*3:][:3])
				want := pad
				if y >= 6 && y < 14 {
					want = [3]byte(scaled.Pix[((y-6)*20+x)*3:][:3])
				}
				if p != want {
					t.Fatalf("%s: letterboxed pixel (%d,%d) = %v, want %v", filter, x, y, p, want)
				}
			}
		}
	}
	// No region: the frame itself, not a copy.
	g, _ = (*Config)(nil).Geometry(40, 30, 8, 8, pad, "")
	if out, _ := g.Prepare(img); &out.Pix[0] != &img.Pix[0] {
		t.Error("a whole-frame squash copied the frame")
	}
}

func count(b []bool) int {
	n := 0
	for _, v := range b {
		if v {
			n++
		}
	}
	return n
}

func TestMasks(t *testing.T) {
	// A rectangle polygon: exactly the pixels whose centres lie inside, x 10..29 and y 10..19.
	g, _ := (&Config{Mask: [][]float64{{10, 10}, {30, 10}, {30, 20}, {10, 20}}}).Geometry(40, 30, 8, 8, [3]byte{}, "")
	fm := g.FrameMask()
	for y := 0; y < 30; y++ {
		for x := 0; x < 40; x++ {
			want := x >= 10 && x < 30 && y >= 10 && y < 20
			if fm[y*40+x] != want {
				t.Fatalf("rectangle mask at (%d,%d) = %v, want %v", x, y, fm[y*40+x], want)
			}
		}
	}
	// A right triangle (0,0),(10,0),(0,10): centres with x+y+1 < 10, i.e. 9+8+...+1 = 45 pixels.
	g, _ = (&Config{Mask: [][]float64{{0, 0}, {10, 0}, {0, 10}}}).Geometry(20, 20, 8, 8, [3]byte{}, "")
	fm = g.FrameMask()
	if n := count(fm); n != 45 {
		t.Errorf("triangle mask has %d pixels, want 45", n)
	}
	for y := 0; y < 20; y++ {
		for x := 0; x < 20; x++ {
			if fm[y*20+x] != (x+y < 9) {
				t.Fatalf("triangle mask at (%d,%d) = %v", x, y, fm[y*20+x])
			}
		}
	}
	// Crop and mask together: the crop limits the mask.
	g, _ = (&Config{Crop: &Rect{0, 0, 20, 40}, Mask: [][]float64{{10, 10}, {30, 10}, {30, 20}, {10, 20}}}).Geometry(40, 40, 8, 8, [3]byte{}, "")
	if n := count(g.FrameMask()); n != 10*10 {
		t.Errorf("crop x mask has %d pixels, want 100", n)
	}
	// Letterbox of a 100x50 crop into a 64x64 model: the crop is 64x32 in rows 16..47, which count; every
	// column does.
	g, _ = (&Config{Crop: &Rect{10, 40, 100, 50}, Fit: FitLetterbox}).Geometry(320, 240, 64, 64, [3]byte{}, "")
	mm := g.ModelMask()
	for j := 0; j < 64; j++ {
		for i := 0; i < 64; i++ {
			if mm[j*64+i] != (j >= 16 && j <= 47) {
				t.Fatalf("letterbox model mask at (%d,%d) = %v", i, j, mm[j*64+i])
			}
		}
	}
	// A plain crop: every model pixel counts.
	g, _ = (&Config{Crop: &Rect{10, 40, 100, 50}}).Geometry(320, 240, 64, 64, [3]byte{}, "")
	if n := count(g.ModelMask()); n != 64*64 {
		t.Errorf("plain crop model mask has %d of %d pixels", n, 64*64)
	}
}

func TestFrameMap(t *testing.T) {
	// A model map of 4x2 whose value is its column, covering a 8x4 crop at (2,1) of a 12x6 frame: frame
	// pixel x samples column (x-2+0.5)/2-0.5, clamped to 0..3; outside the crop 0.
	g, _ := (&Config{Crop: &Rect{2, 1, 8, 4}}).Geometry(12, 6, 4, 2, [3]byte{}, "")
	m := []float32{0, 1, 2, 3, 0, 1, 2, 3}
	fm := g.FrameMap(m)
	row := []float32{0, 0, 0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3, 0, 0}
	for y := 0; y < 6; y++ {
		for x := 0; x < 12; x++ {
			want := row[x]
			if y == 0 || y == 5 {
				want = 0
			}
			if fm[y*12+x] != want {
				t.Fatalf("frame map at (%d,%d) = %v, want %v", x, y, fm[y*12+x], want)
			}
		}
	}
	// Letterbox: an 8x4 crop into a 4x4 model lies in model rows 1..2; the padding rows never reach the frame,
	// not even through the bilinear weights at the crop's edge: a constant 5 inside the crop.
	g, _ = (&Config{Crop: &Rect{0, 2, 8, 4}, Fit: FitLetterbox}).Geometry(8, 8, 4, 4, [3]byte{}, "")
	c := make([]float32, 16)
	for i := range c {
		c[i] = 5
	}
	c[0] = 1000 // a padding pixel (model row 0): it must not bleed in
	fm = g.FrameMap(c)
	for y := 0; y < 8; y++ {
		for x := 0; x < 8; x++ {
			want := float32(0)
			if y >= 2 && y < 6 {
				want = 5
			}
			if fm[y*8+x] != want {
				t.Fatalf("letterboxed frame map at (%d,%d) = %v, want %v", x, y, fm[y*8+x], want)
			}
		}
	}
}

func TestProject(t *testing.T) {
	// An 8x8 model map of 1 with a 2x2 block of 9 in the top-left corner; the mask leaves that corner out.
	mk := func() *pipeline.Result {
		m := make([]float32, 64)
		for i := range m {
			m[i] = 1
		}
		m[0], m[1], m[8], m[9] = 9, 9, 9, 9
		return &pipeline.Result{RawScore: 123, Map: m, MapWidth: 8, MapHeight: 8}
	}
	mask := [][]float64{{4, 0}, {16, 0}, {16, 16}, {0, 16}, {0, 4}, {4, 4}} // frame 16x16: model pixel = 2x2 frame pixels; leaves out [0,4)x[0,4)
	cases := []struct {
		name      string
		c         *Config
		k, repeat int
		want      float64
	}{
		// Unpooled, the score is the largest kept value: 1, the 9s are outside.
		{"mask, no pooling", &Config{Mask: mask}, 1, 0, 1},
		// One 2x2 pass: the best window lies wholly inside the mask, mean 1.
		{"mask, 2x2 pooling", &Config{Mask: mask}, 2, 1, 1},
		// A plain crop keeps the scorer's own score.
		{"plain crop", &Config{Crop: &Rect{0, 0, 16, 16}}, 2, 1, 123},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, err := tc.c.Geometry(16, 16, 8, 8, [3]byte{}, "")
			if err != nil {
				t.Fatal(err)
			}
			r := mk()
			if err := g.Project(r, tc.k, tc.repeat); err != nil {
				t.Fatal(err)
			}
			if r.RawScore != tc.want {
				t.Errorf("raw score %v, want %v", r.RawScore, tc.want)
			}
			if r.MapWidth != 16 || r.MapHeight != 16 || len(r.Map) != 256 {
				t.Errorf("map %dx%d (%d values), want the 16x16 frame", r.MapWidth, r.MapHeight, len(r.Map))
			}
		})
	}
	// Without the mask the same map scores the 9s: the mask is what changed the score.
	g, _ := (&Config{Fit: FitSquash, Mask: [][]float64{{0, 0}, {16, 0}, {16, 16}, {0, 16}}}).Geometry(16, 16, 8, 8, [3]byte{}, "")
	r := mk()
	if err := g.Project(r, 1, 0); err != nil || r.RawScore != 123 {
		t.Errorf("a mask covering everything: raw %v err %v, want the scorer's 123", r.RawScore, err)
	}
	// A mask thinner than a model pixel: nothing to score is an error, not a 0.
	g, _ = (&Config{Mask: [][]float64{{0.1, 0.1}, {15, 0.1}, {15, 0.2}}}).Geometry(16, 16, 8, 8, [3]byte{}, "")
	if err := g.Project(mk(), 1, 0); err == nil || !strings.Contains(err.Error(), "no pixel of the model's 8x8 map") {
		t.Errorf("empty region: %v", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c, err := Load(write("ok.yaml", "roi:\n  crop: {x: 1, y: 2, width: 3, height: 4}\n  mask: [[1, 2], [4, 2], [4, 6]]\n  fit: letterbox\n"))
	if err != nil || *c.Crop != (Rect{1, 2, 3, 4}) || len(c.Mask) != 3 || c.Fit != FitLetterbox {
		t.Fatalf("Load: %+v %v", c, err)
	}
	c, err = Load(write("ok.json", `{"roi": {"crop": {"x": 0, "y": 0, "width": 8, "height": 8}}}`))
	if err != nil || c.Crop.Width != 8 {
		t.Fatalf("Load JSON: %+v %v", c, err)
	}
	for _, tc := range []struct{ body, want string }{
		{"crop: {x: 1}\n", `crop: unknown field (line 1); did you mean "roi"?`},
		{"# nothing\n", "no roi block"},
		{"roi: {crop: {x: 1, y: 2, widht: 3, height: 4}}\n", "widht"},
		{"roi: {mask: [[0, 0], [1, .nan], [2, 0]]}\n", "roi.mask[1]: coordinates must be finite"},
		{"roi: {fit: zoom}\n", `roi.fit: must be squash or letterbox, not "zoom"`},
	} {
		if _, err := Load(write("bad.yaml", tc.body)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%q): %v, want %q", tc.body, err, tc.want)
		}
	}
}
