package pipeline

import (
	"fmt"
	"image"

	"gocv.io/x/gocv"
)

// Heatmap renders a result's anomaly map as a JET colour map blended over the frame, at the frame's size,
// encoded as "png" or "jpeg". Colours are absolute, not per-frame normalised, so that a normal frame looks
// calm and the same defect looks the same in every frame: 0 is blue, the calibrated pixel threshold is
// green-yellow (the middle of the scale), twice the threshold and above is red.
func (s *Scorer) Heatmap(img Image, r *Result, format string) ([]byte, error) {
	hi := 2 * s.m.CalibrationFor(r.Class).PixelThreshold
	return RenderHeatmap(img, r, hi, format)
}

// RenderHeatmap is Heatmap with an explicit top of the colour scale (map values >= hi are red).
func RenderHeatmap(img Image, r *Result, hi float64, format string) ([]byte, error) {
	if err := img.Validate(); err != nil {
		return nil, err
	}
	if len(r.Map) == 0 || len(r.Map) != r.MapWidth*r.MapHeight {
		return nil, fmt.Errorf("heatmap: result has no anomaly map")
	}
	if !(hi > 0) {
		hi = 0
		for _, v := range r.Map {
			hi = max(hi, float64(v))
		}
		if hi == 0 {
			hi = 1
		}
	}
	grey := make([]byte, len(r.Map))
	for i, v := range r.Map {
		grey[i] = byte(min(max(float64(v)/hi, 0), 1) * 255)
	}
	g, err := gocv.NewMatFromBytes(r.MapHeight, r.MapWidth, gocv.MatTypeCV8UC1, grey)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	gs := gocv.NewMat()
	defer gs.Close()
	gocv.Resize(g, &gs, image.Pt(img.Width, img.Height), 0, 0, gocv.InterpolationLinear)
	col := gocv.NewMat()
	defer col.Close()
	gocv.ApplyColorMap(gs, &col, gocv.ColormapJet)

	bgr := make([]byte, len(img.Pix))
	for i := 0; i < len(img.Pix); i += 3 {
		bgr[i], bgr[i+1], bgr[i+2] = img.Pix[i+2], img.Pix[i+1], img.Pix[i]
	}
	frame, err := gocv.NewMatFromBytes(img.Height, img.Width, gocv.MatTypeCV8UC3, bgr)
	if err != nil {
		return nil, err
	}
	defer frame.Close()
	out := gocv.NewMat()
	defer out.Close()
	gocv.AddWeighted(frame, 0.5, col, 0.5, 0, &out)
	ext := gocv.PNGFileExt
	switch format {
	case "png", "":
	case "jpeg", "jpg":
		ext = gocv.JPEGFileExt
	default:
		return nil, fmt.Errorf("heatmap: unknown format %q (want png or jpeg)", format)
	}
	buf, err := gocv.IMEncode(ext, out)
	if err != nil {
		return nil, fmt.Errorf("heatmap: encode %s: %w", format, err)
	}
	defer buf.Close()
	return append([]byte(nil), buf.GetBytes()...), nil
}
