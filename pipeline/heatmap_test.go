package pipeline

import (
	"fmt"
	"testing"
)

// TestHeatmapBlend: each heatmap pixel is half the frame's and half the colour map's, channel by channel, in
// the frame's order (a red frame stays red on the left of the blend). A zero map is JET's darkest blue,
// RGB (0, 0, 128).
func TestHeatmapBlend(t *testing.T) {
	const w, h = 40, 30
	img := Image{Width: w, Height: h, Pix: make([]byte, w*h*3)}
	for i := 0; i < len(img.Pix); i += 3 {
		img.Pix[i], img.Pix[i+1], img.Pix[i+2] = 200, byte(i%97), 10
	}
	r := &Result{Map: make([]float32, 16*16), MapWidth: 16, MapHeight: 16}
	data, err := RenderHeatmap(img, r, 1, "png")
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeImage(data)
	if err != nil {
		t.Fatal(err)
	}
	if got.Width != w || got.Height != h {
		t.Fatalf("heatmap is %dx%d, want the frame's %dx%d", got.Width, got.Height, w, h)
	}
	jet := [3]int{0, 0, 128}
	for i := 0; i < len(img.Pix); i++ {
		want := (int(img.Pix[i]) + jet[i%3] + 1) / 2
		if d := int(got.Pix[i]) - want; d < -1 || d > 1 {
			t.Fatalf("byte %d (pixel %d channel %d) = %d, want %d±1", i, i/3, i%3, got.Pix[i], want)
		}
	}
}

func TestDownscale(t *testing.T) {
	img := testImage(640, 480, 5)
	for _, tc := range []struct {
		max, w, h int
		same      bool
	}{
		{0, 640, 480, true}, {640, 640, 480, true}, {1000, 640, 480, true},
		{320, 320, 240, false}, {256, 256, 192, false}, {100, 100, 75, false},
	} {
		t.Run(fmt.Sprint(tc.max), func(t *testing.T) {
			got, err := Downscale(img, tc.max)
			if err != nil {
				t.Fatal(err)
			}
			if got.Width != tc.w || got.Height != tc.h || got.Validate() != nil {
				t.Fatalf("%dx%d (%d bytes), want %dx%d", got.Width, got.Height, len(got.Pix), tc.w, tc.h)
			}
			if same := &got.Pix[0] == &img.Pix[0]; same != tc.same {
				t.Fatalf("shares the input's pixels: %v, want %v", same, tc.same)
			}
		})
	}
	// Area averaging: a 2:1 shrink of a 2x2 checker of 0 and 200 is 100 everywhere.
	chk := Image{Width: 4, Height: 4, Pix: make([]byte, 48)}
	for i := range chk.Pix {
		if ((i/3)%4+(i/3)/4)%2 == 0 {
			chk.Pix[i] = 200
		}
	}
	got, err := Downscale(chk, 2)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range got.Pix {
		if v != 100 {
			t.Fatalf("byte %d = %d, want 100 (the mean of its 2x2 block)", i, v)
		}
	}
	if _, err := Downscale(Image{Width: 2, Height: 2, Pix: make([]byte, 5)}, 1); err == nil {
		t.Error("an image with the wrong number of bytes was accepted")
	}
}
