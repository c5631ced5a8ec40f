package roi

import (
	"fmt"
	"image"
	"math"

	"github.com/vlmdiff/edge/pipeline"
)

// Geometry is a Config resolved for one frame size and one model input size: where the crop is, where the
// (letterbox-padded) image the model sees lies in the frame, and which pixels count.
//
// Pixels are points at their centres: frame pixel (x, y) is the point (x+0.5, y+0.5), and model map pixel
// (i, j) is the point of the padded image at ((i+0.5) pw/W, (j+0.5) ph/H). A pixel counts when its point lies
// in the crop and, with a mask, in the polygon (even-odd rule, as PNPOLY). The letterbox padding lies outside
// the crop, so it never counts.
type Geometry struct {
	FrameW, FrameH int
	ModelW, ModelH int
	// Crop is the crop in frame pixels.
	Crop image.Rectangle
	// Padded is the image the model sees, in frame pixels: Crop itself for squash; for letterbox the crop
	// centred in the smallest rectangle of the model's aspect that holds it (it may reach outside the frame).
	Padded image.Rectangle
	// PadColor fills the letterbox padding (RGB).
	PadColor [3]byte
	poly     [][]float64
}

// Geometry resolves c for a frame of frameW x frameH and a model input of modelW x modelH; padColor fills
// letterbox padding. A crop that does not fit in the frame is an error naming it and the frame's size: the
// frame is refused rather than scored on a region that is not the configured one.
func (c *Config) Geometry(frameW, frameH, modelW, modelH int, padColor [3]byte) (*Geometry, error) {
	if frameW < 1 || frameH < 1 || modelW < 1 || modelH < 1 {
		return nil, fmt.Errorf("roi: frame %dx%d or model input %dx%d has no pixels", frameW, frameH, modelW, modelH)
	}
	g := &Geometry{FrameW: frameW, FrameH: frameH, ModelW: modelW, ModelH: modelH, PadColor: padColor,
		Crop: image.Rect(0, 0, frameW, frameH)}
	if c != nil && c.Crop != nil {
		r := c.Crop
		g.Crop = image.Rect(r.X, r.Y, r.X+r.Width, r.Y+r.Height)
		if !g.Crop.In(image.Rect(0, 0, frameW, frameH)) {
			return nil, fmt.Errorf("roi.crop (%s) does not fit in the %dx%d frame (it must lie within x 0..%d, y 0..%d)",
				r, frameW, frameH, frameW, frameH)
		}
	}
	g.Padded = g.Crop
	if c.FitOrDefault() == FitLetterbox {
		g.Padded = letterbox(g.Crop, modelW, modelH)
	}
	if c != nil {
		g.poly = c.Mask
	}
	return g, nil
}

// letterbox returns the smallest rectangle of the model's aspect (rounded to whole pixels) that holds crop,
// with crop centred in it (an odd padding puts the extra pixel after the crop).
func letterbox(crop image.Rectangle, modelW, modelH int) image.Rectangle {
	w, h := crop.Dx(), crop.Dy()
	pw, ph := w, h
	if w*modelH > h*modelW {
		ph = max(h, int(math.Round(float64(w)*float64(modelH)/float64(modelW))))
	} else {
		pw = max(w, int(math.Round(float64(h)*float64(modelW)/float64(modelH))))
	}
	x0, y0 := crop.Min.X-(pw-w)/2, crop.Min.Y-(ph-h)/2
	return image.Rect(x0, y0, x0+pw, y0+ph)
}

// Prepare returns the image the model is given: the crop, padded for letterbox. The pipeline then resizes it
// to the model's input (squashing an exact-aspect image only scales it).
func (g *Geometry) Prepare(img pipeline.Image) pipeline.Image {
	if g.Padded == image.Rect(0, 0, img.Width, img.Height) {
		return img
	}
	pw, ph := g.Padded.Dx(), g.Padded.Dy()
	pix := make([]byte, pw*ph*3)
	if g.Padded != g.Crop {
		for i := 0; i < len(pix); i += 3 {
			pix[i], pix[i+1], pix[i+2] = g.PadColor[0], g.PadColor[1], g.PadColor[2]
		}
	}
	ox, oy := g.Crop.Min.X-g.Padded.Min.X, g.Crop.Min.Y-g.Padded.Min.Y
	rowBytes := g.Crop.Dx() * 3
	for y := 0; y < g.Crop.Dy(); y++ {
		src := ((g.Crop.Min.Y+y)*img.Width + g.Crop.Min.X) * 3
		dst := ((oy+y)*pw + ox) * 3
		copy(pix[dst:dst+rowBytes], img.Pix[src:src+rowBytes])
	}
	return pipeline.Image{Width: pw, Height: ph, Pix: pix}
}

// modelPoint is the frame point of model map pixel (i, j)'s centre.
func (g *Geometry) modelPoint(i, j int) (x, y float64) {
	x = float64(g.Padded.Min.X) + (float64(i)+0.5)*float64(g.Padded.Dx())/float64(g.ModelW)
	y = float64(g.Padded.Min.Y) + (float64(j)+0.5)*float64(g.Padded.Dy())/float64(g.ModelH)
	return x, y
}

// ModelMask reports, per model map pixel (row-major ModelH x ModelW), whether it counts.
func (g *Geometry) ModelMask() []bool {
	keep := make([]bool, g.ModelW*g.ModelH)
	for j := 0; j < g.ModelH; j++ {
		_, y := g.modelPoint(0, j)
		xs := g.crossings(y)
		for i := 0; i < g.ModelW; i++ {
			x, _ := g.modelPoint(i, j)
			keep[j*g.ModelW+i] = g.inCrop(x, y) && g.inPoly(xs, x)
		}
	}
	return keep
}

// FrameMask reports, per frame pixel (row-major FrameH x FrameW), whether it counts.
func (g *Geometry) FrameMask() []bool {
	keep := make([]bool, g.FrameW*g.FrameH)
	for y := g.Crop.Min.Y; y < g.Crop.Max.Y; y++ {
		fy := float64(y) + 0.5
		xs := g.crossings(fy)
		for x := g.Crop.Min.X; x < g.Crop.Max.X; x++ {
			keep[y*g.FrameW+x] = g.inPoly(xs, float64(x)+0.5)
		}
	}
	return keep
}

func (g *Geometry) inCrop(x, y float64) bool {
	return x >= float64(g.Crop.Min.X) && x < float64(g.Crop.Max.X) && y >= float64(g.Crop.Min.Y) && y < float64(g.Crop.Max.Y)
}

// crossings returns the x of every polygon edge that the horizontal line at y crosses (PNPOLY's rule: an edge
// counts when its end points lie on different sides of y, y1 > y != y2 > y). Nil without a polygon.
func (g *Geometry) crossings(y float64) []float64 {
	if len(g.poly) == 0 {
		return nil
	}
	var xs []float64
	n := len(g.poly)
	for i, j := 0, n-1; i < n; j, i = i, i+1 {
		a, b := g.poly[i], g.poly[j]
		if (a[1] > y) != (b[1] > y) {
			xs = append(xs, (b[0]-a[0])*(y-a[1])/(b[1]-a[1])+a[0])
		}
	}
	return xs
}

// inPoly reports whether x is inside the polygon on the line whose crossings are xs: an odd number of
// crossings to its right (PNPOLY). True without a polygon.
func (g *Geometry) inPoly(xs []float64, x float64) bool {
	if len(g.poly) == 0 {
		return true
	}
	in := false
	for _, cx := range xs {
		if x < cx {
			in = !in
		}
	}
	return in
}

// contentBand returns the first and last model columns (or rows) whose centres lie in the crop: the model
// pixels that saw the frame rather than letterbox padding. n is the model size, p0 and p the padded image's
// start and size, c0 and c1 the crop's start and end on the same axis.
func contentBand(n, p0, p, c0, c1 int) (lo, hi int) {
	lo, hi = n, -1
	for i := 0; i < n; i++ {
		x := float64(p0) + (float64(i)+0.5)*float64(p)/float64(n)
		if x >= float64(c0) && x < float64(c1) {
			lo, hi = min(lo, i), max(hi, i)
		}
	}
	if hi < 0 { // a crop thinner than a model pixel: the nearest one
		lo = min(n-1, max(0, int((float64(c0+c1)/2-float64(p0))*float64(n)/float64(p))))
		hi = lo
	}
	return lo, hi
}

// sample is the bilinear value of a model map at model coordinates (u, v) (pixel centres at integers),
// clamped to the band of columns u0..u1 and rows v0..v1: inside it what OpenCV's INTER_LINEAR resize computes,
// and at its edges a replicated border, so letterbox padding never bleeds into the crop's values.
func sample(m []float32, w int, u, v float64, u0, u1, v0, v1 int) float32 {
	u = min(max(u, float64(u0)), float64(u1))
	v = min(max(v, float64(v0)), float64(v1))
	i0, j0 := int(u), int(v)
	i1, j1 := min(i0+1, u1), min(j0+1, v1)
	fu, fv := float32(u-float64(i0)), float32(v-float64(j0))
	top := m[j0*w+i0]*(1-fu) + m[j0*w+i1]*fu
	bot := m[j1*w+i0]*(1-fu) + m[j1*w+i1]*fu
	return top*(1-fv) + bot*fv
}

// FrameMap projects a model map (ModelH x ModelW, covering Padded) into a map of the whole frame: bilinear
// inside the pixels that count (from the model pixels that saw the crop only), 0 everywhere else (outside the
// crop, in the padding, outside the mask).
func (g *Geometry) FrameMap(m []float32) []float32 {
	out := make([]float32, g.FrameW*g.FrameH)
	keep := g.FrameMask()
	u0, u1 := contentBand(g.ModelW, g.Padded.Min.X, g.Padded.Dx(), g.Crop.Min.X, g.Crop.Max.X)
	v0, v1 := contentBand(g.ModelH, g.Padded.Min.Y, g.Padded.Dy(), g.Crop.Min.Y, g.Crop.Max.Y)
	sx := float64(g.ModelW) / float64(g.Padded.Dx())
	sy := float64(g.ModelH) / float64(g.Padded.Dy())
	for y := g.Crop.Min.Y; y < g.Crop.Max.Y; y++ {
		v := (float64(y)+0.5-float64(g.Padded.Min.Y))*sy - 0.5
		for x := g.Crop.Min.X; x < g.Crop.Max.X; x++ {
			k := y*g.FrameW + x
			if keep[k] {
				u := (float64(x)+0.5-float64(g.Padded.Min.X))*sx - 0.5
				out[k] = sample(m, g.ModelW, u, v, u0, u1, v0, v1)
			}
		}
	}
	return out
}
