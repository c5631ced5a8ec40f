package pilresize

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestChannelsResizeAlike checks that every channel count resizes each channel as one grey image would: an
// image whose channels are copies of one grey image must come out as copies of that grey image resized. The
// three-channel path is the one tied to Pillow's own output (pipeline's TestResizePIL); this ties the grey and
// four-channel paths to it, shrinking, enlarging and both at once.
func TestChannelsResizeAlike(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct{ w0, h0, w, h int }{{37, 23, 16, 16}, {9, 7, 31, 12}, {40, 10, 13, 29}, {8, 8, 8, 8}, {50, 3, 50, 9}} {
		grey := make([]byte, tc.w0*tc.h0)
		for i := range grey {
			grey[i] = byte(r.IntN(256))
		}
		want := Resize(grey, tc.w0, tc.h0, 1, tc.w, tc.h)
		if len(want) != tc.w*tc.h {
			t.Fatalf("%+v: %d bytes, want %d", tc, len(want), tc.w*tc.h)
		}
		for _, c := range []int{3, 4} {
			pix := make([]byte, len(grey)*c)
			for i, v := range grey {
				for ch := range c {
					pix[i*c+ch] = v
				}
			}
			got := Resize(pix, tc.w0, tc.h0, c, tc.w, tc.h)
			for i, v := range want {
				for ch := range c {
					if got[i*c+ch] != v {
						t.Fatalf("%+v, %d channels: pixel %d channel %d is %d, grey %d", tc, c, i, ch, got[i*c+ch], v)
					}
				}
			}
		}
	}
}

// TestResizeKnownAnswers: a flat image stays flat at any size, Pillow's 2x antialiased shrink of a ramp, and the
// same size gives a copy.
func TestResizeKnownAnswers(t *testing.T) {
	flat := bytes.Repeat([]byte{77}, 7*5*3)
	if out := Resize(flat, 7, 5, 3, 13, 3); bytes.Count(out, []byte{77}) != 13*3*3 {
		t.Errorf("flat 7x5 -> 13x3: %v", out)
	}
	// out x = 0: centre 1, triangle of half-width 2 over x = 0, 1, 2 with weights 3, 3, 1 (/7);
	// x = 1: centre 3, weights 1, 3, 3 over x = 1, 2, 3 (x = 4 is outside the frame)
	ramp := []byte{0, 70, 140, 210}
	want := []byte{(0*3 + 70*3 + 140*1 + 3) / 7, (70*1 + 140*3 + 210*3 + 3) / 7}
	if out := Resize(ramp, 4, 1, 1, 2, 1); !bytes.Equal(out, want) {
		t.Errorf("halving a ramp: %v, want %v", out, want)
	}
	same := []byte{1, 2, 3, 4, 5, 6}
	if out := Resize(same, 3, 2, 1, 3, 2); !bytes.Equal(out, same) || &out[0] == &same[0] {
		t.Error("resizing to the same size is not a copy")
	}
}
