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

	// The frame is packed RGB and the encoders take BGR: OpenCV swaps the channels (vectorised, and without a
	// frame-sized Go buffer per heatmap); the Mat only borrows img.Pix.
	rgb, err := gocv.NewMatFromBytes(img.Height, img.Width, gocv.MatTypeCV8UC3, img.Pix)
	if err != nil {
		return nil, err
	}
	defer rgb.Close()
	frame := gocv.NewMat()
	defer frame.Close()
	gocv.CvtColor(rgb, &frame, gocv.ColorBGRToRGB) // the same swap both ways
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

// Downscale returns img shrunk (area averaging, aspect kept) so that its longer side is at most maxSide
// pixels; img itself when it already fits or maxSide <= 0. The daemon renders heatmaps of large frames at a
// bounded size (mqtt.heatmap.max_size): encoding is by far the dearest part of a heatmap, and its cost and
// size grow with the pixels, while the anomaly map behind it has the model's resolution (256 px for the small
// preset) whatever the camera's.
func Downscale(img Image, maxSide int) (Image, error) {
	if err := img.Validate(); err != nil {
		return Image{}, err
	}
	long := max(img.Width, img.Height)
	if maxSide <= 0 || long <= maxSide {
		return img, nil
	}
	w := max(1, (img.Width*maxSide+long/2)/long)
	h := max(1, (img.Height*maxSide+long/2)/long)
	src, err := gocv.NewMatFromBytes(img.Height, img.Width, gocv.MatTypeCV8UC3, img.Pix)
	if err != nil {
		return Image{}, fmt.Errorf("downscale: %w", err)
	}
	defer src.Close()
	dst := gocv.NewMat()
	defer dst.Close()
	gocv.Resize(src, &dst, image.Pt(w, h), 0, 0, gocv.InterpolationArea)
	pix, err := dst.DataPtrUint8()
	if err != nil {
		return Image{}, fmt.Errorf("downscale: %w", err)
	}
	return Image{Width: w, Height: h, Pix: append([]byte(nil), pix...)}, nil
}
