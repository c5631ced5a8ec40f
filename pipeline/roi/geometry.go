package roi

import (
	"fmt"
	"image"
	"math"

	"github.com/vlmdiff/edge/pipeline"
)

// Geometry is a Config resolved for one frame size and one model input size: where the crop is in the frame,
// where it lands in the model's input, and which pixels count.
//
// The crop maps onto Content, a rectangle of the model's input: the whole input for squash; for letterbox the
// crop scaled by min(W/w, H/h), rounded to whole model pixels and centred, the rest padding. A model coordinate
// m and a frame coordinate f (continuous, pixel edges at integers) are then related per axis by
// f = crop0 + (m - content0) * cropSize / contentSize. Pixels are points at their centres: frame pixel (x, y)
// is (x+0.5, y+0.5), model pixel (i, j) is (i+0.5, j+0.5). A pixel counts when its point lies in the crop
// (for a model pixel: in Content, so padding never counts) and, with a mask, in the polygon (even-odd rule,
// as PNPOLY).
type Geometry struct {
	FrameW, FrameH int
	ModelW, ModelH int
	// Crop is the crop in frame pixels.
	Crop image.Rectangle
	// Content is where the crop lies in the model's input, in model pixels.
	Content image.Rectangle
	// PadColor fills the letterbox padding (RGB).
	PadColor [3]byte
	// Filter is the bundle's resize filter (manifest input.resize), used to scale a letterboxed crop.
	Filter string
	poly   [][]float64
}

// Geometry resolves c for a frame of frameW x frameH and a model input of modelW x modelH; padColor fills
// letterbox padding and filter is the bundle's resize filter. A crop that does not fit in the frame is an error
// naming it and the frame's size: the frame is refused rather than scored on a region that is not the
// configured one.
func (c *Config) Geometry(frameW, frameH, modelW, modelH int, padColor [3]byte, filter string) (*Geometry, error) {
	if frameW < 1 || frameH < 1 || modelW < 1 || modelH < 1 {
		return nil, fmt.Errorf("roi: frame %dx%d or model input %dx%d has no pixels", frameW, frameH, modelW, modelH)
	}
	g := &Geometry{FrameW: frameW, FrameH: frameH, ModelW: modelW, ModelH: modelH, PadColor: padColor, Filter: filter,
		Crop: image.Rect(0, 0, frameW, frameH), Content: image.Rect(0, 0, modelW, modelH)}
	if c != nil && c.Crop != nil {
		r := c.Crop
		if r.Width < 1 || r.Height < 1 {
			return nil, fmt.Errorf("roi.crop (%s) has no pixels", r)
		}
		g.Crop = image.Rect(r.X, r.Y, r.X+r.Width, r.Y+r.Height)
		if r.X < 0 || r.Y < 0 || !g.Crop.In(image.Rect(0, 0, frameW, frameH)) {
			return nil, fmt.Errorf("roi.crop (%s) does not fit in the %dx%d frame (it must lie within x 0..%d, y 0..%d)",
				r, frameW, frameH, frameW, frameH)
		}
	}
	if c.FitOrDefault() == FitLetterbox {
		g.Content = letterbox(g.Crop.Dx(), g.Crop.Dy(), modelW, modelH)
	}
	if c != nil {
		g.poly = c.Mask
	}
	return g, nil
}

// letterbox returns where a w x h crop lands in a modelW x modelH input with its aspect kept: scaled by
// min(modelW/w, modelH/h), rounded to whole pixels (at least 1), centred (an odd padding puts the extra pixel
// after the crop).
func letterbox(w, h, modelW, modelH int) image.Rectangle {
	s := min(float64(modelW)/float64(w), float64(modelH)/float64(h))
	cw := min(modelW, max(1, int(math.Round(float64(w)*s))))
	ch := min(modelH, max(1, int(math.Round(float64(h)*s))))
	x0, y0 := (modelW-cw)/2, (modelH-ch)/2
	return image.Rect(x0, y0, x0+cw, y0+ch)
}

// Prepare returns the image the model is given. Squash: the crop, which the pipeline resizes to its input.
// Letterbox: the crop resized to Content with the bundle's filter and pasted into an input-sized image of the
// pad colour, which the pipeline then takes as it is (it is already the input's size).
func (g *Geometry) Prepare(img pipeline.Image) (pipeline.Image, error) {
	crop := img
	if g.Crop != image.Rect(0, 0, img.Width, img.Height) {
		w, h := g.Crop.Dx(), g.Crop.Dy()
		crop = pipeline.Image{Width: w, Height: h, Pix: make([]byte, w*h*3)}
		for y := 0; y < h; y++ {
			src := ((g.Crop.Min.Y+y)*img.Width + g.Crop.Min.X) * 3
			copy(crop.Pix[y*w*3:(y+1)*w*3], img.Pix[src:src+w*3])
		}
	}
	if g.Content == image.Rect(0, 0, g.ModelW, g.ModelH) {
		return crop, nil
	}
	cw, ch := g.Content.Dx(), g.Content.Dy()
	scaled, err := pipeline.Resize(crop, cw, ch, g.Filter)
	if err != nil {
		return pipeline.Image{}, fmt.Errorf("roi: letterbox resize: %w", err)
	}
	out := pipeline.Image{Width: g.ModelW, Height: g.ModelH, Pix: make([]byte, g.ModelW*g.ModelH*3)}
	for i := 0; i < len(out.Pix); i += 3 {
		out.Pix[i], out.Pix[i+1], out.Pix[i+2] = g.PadColor[0], g.PadColor[1], g.PadColor[2]
	}
	for y := 0; y < ch; y++ {
		dst := ((g.Content.Min.Y+y)*g.ModelW + g.Content.Min.X) * 3
		copy(out.Pix[dst:dst+cw*3], scaled.Pix[y*cw*3:(y+1)*cw*3])
	}
	return out, nil
}

// toFrame maps a model coordinate to a frame coordinate on one axis.
func toFrame(m float64, content0, contentSize, crop0, cropSize int) float64 {
	return float64(crop0) + (m-float64(content0))*float64(cropSize)/float64(contentSize)
}

// ModelMask reports, per model map pixel (row-major ModelH x ModelW), whether it counts.
func (g *Geometry) ModelMask() []bool {
	keep := make([]bool, g.ModelW*g.ModelH)
	for j := g.Content.Min.Y; j < g.Content.Max.Y; j++ {
		y := toFrame(float64(j)+0.5, g.Content.Min.Y, g.Content.Dy(), g.Crop.Min.Y, g.Crop.Dy())
		xs := g.crossings(y)
		for i := g.Content.Min.X; i < g.Content.Max.X; i++ {
			x := toFrame(float64(i)+0.5, g.Content.Min.X, g.Content.Dx(), g.Crop.Min.X, g.Crop.Dx())
			keep[j*g.ModelW+i] = g.inPoly(xs, x)
		}
	}
	return keep
}

// FrameMask reports, per frame pixel (row-major FrameH x FrameW), whether it counts.
func (g *Geometry) FrameMask() []bool {
	keep := make([]bool, g.FrameW*g.FrameH)
	for y := g.Crop.Min.Y; y < g.Crop.Max.Y; y++ {
		xs := g.crossings(float64(y) + 0.5)
		for x := g.Crop.Min.X; x < g.Crop.Max.X; x++ {
			keep[y*g.FrameW+x] = g.inPoly(xs, float64(x)+0.5)
		}
	}
	return keep
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

// sample is the bilinear value of a model map at model coordinates (u, v) (pixel centres at integers),
// clamped to the content's columns and rows r: inside it what OpenCV's INTER_LINEAR resize computes, at its
// edges a replicated border, so letterbox padding never bleeds into the crop's values.
func sample(m []float32, w int, u, v float64, r image.Rectangle) float32 {
	u = min(max(u, float64(r.Min.X)), float64(r.Max.X-1))
	v = min(max(v, float64(r.Min.Y)), float64(r.Max.Y-1))
	i0, j0 := int(u), int(v)
	i1, j1 := min(i0+1, r.Max.X-1), min(j0+1, r.Max.Y-1)
	fu, fv := float32(u-float64(i0)), float32(v-float64(j0))
	top := m[j0*w+i0]*(1-fu) + m[j0*w+i1]*fu
	bot := m[j1*w+i0]*(1-fu) + m[j1*w+i1]*fu
	return top*(1-fv) + bot*fv
}

// FrameMap projects a model map (ModelH x ModelW) into a map of the whole frame: bilinear inside the pixels
// that count (from the model pixels of Content only), 0 everywhere else (outside the crop, outside the mask).
func (g *Geometry) FrameMap(m []float32) []float32 {
	out := make([]float32, g.FrameW*g.FrameH)
	keep := g.FrameMask()
	sx := float64(g.Content.Dx()) / float64(g.Crop.Dx())
	sy := float64(g.Content.Dy()) / float64(g.Crop.Dy())
	for y := g.Crop.Min.Y; y < g.Crop.Max.Y; y++ {
		v := float64(g.Content.Min.Y) + (float64(y)+0.5-float64(g.Crop.Min.Y))*sy - 0.5
		for x := g.Crop.Min.X; x < g.Crop.Max.X; x++ {
			k := y*g.FrameW + x
			if keep[k] {
				u := float64(g.Content.Min.X) + (float64(x)+0.5-float64(g.Crop.Min.X))*sx - 0.5
				out[k] = sample(m, g.ModelW, u, v, g.Content)
			}
		}
	}
	return out
}
