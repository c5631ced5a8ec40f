package pipeline

import (
	"fmt"
	"math"
)

// layerOutput is one output of the feature graph for a batch of 2B images (the frames, then their
// reconstructions) and its weight in the summed map.
type layerOutput struct {
	Name   string
	Weight float64
	Data   []float32
	Shape  []int64 // [2B,C,h,w], or [2B,1+N,D] for ViT tokens
}

// featureInput returns the feature graph's input batch: the frames x, then their reconstructions rec, both
// [B,3,hw] in the bundle's normalised input space, renormalised into the backbone's when mean and std are set
// (docs/algorithm.md §1.9). Python twin: reference.Scorer.feature_input.
func featureInput(x, rec []float32, hw int, inMean, inStd [3]float32, mean, std []float32) []float32 {
	both := make([]float32, len(x)+len(rec))
	copy(both, x)
	copy(both[len(x):], rec)
	if len(mean) == 3 {
		renormalize(both, hw, inMean, inStd, mean, std)
	}
	return both
}

// renormalize converts [N,3,hw] tensors from the bundle's input normalisation to the feature backbone's.
func renormalize(t []float32, hw int, inMean, inStd [3]float32, mean, std []float32) {
	n := len(t) / (3 * hw)
	for i := 0; i < n; i++ {
		for c := 0; c < 3; c++ {
			p := t[(i*3+c)*hw : (i*3+c+1)*hw]
			for j := range p {
				p[j] = ((p[j]*inStd[c] + inMean[c]) - mean[c]) / std[c]
			}
		}
	}
}

// anomalyMap returns frame i's anomaly map at H x W before smoothing: for each layer, 1 - cos between the
// frame's and its reconstruction's features at every position, upsampled bilinearly with aligned corners and
// added with the layer's weight (docs/algorithm.md §1.9). frames is B; the reconstruction of frame i is item
// B+i of each layer's batch. Python twin: reference.anomaly_map.
func anomalyMap(layers []layerOutput, i, frames int, tokens bool, H, W int) ([]float64, error) {
	amap := make([]float64, H*W)
	for _, l := range layers {
		in, c, h, w, err := l.planes(i, tokens)
		if err != nil {
			return nil, err
		}
		rec, _, _, _, err := l.planes(frames+i, tokens)
		if err != nil {
			return nil, err
		}
		d := make([]float64, h*w)
		cosineDistance(in, rec, c, h*w, d)
		upsampleAlignCorners(d, h, w, amap, H, W, l.Weight)
	}
	return amap, nil
}

// planes returns item k of the layer's batch as c channel planes of h x w; ViT tokens drop the CLS token and
// lay the patch tokens out on their square grid.
func (l layerOutput) planes(k int, tokens bool) (p []float32, c, h, w int, err error) {
	sh := l.Shape
	if tokens {
		if len(sh) != 3 {
			return nil, 0, 0, 0, fmt.Errorf("feature %s has shape %v, want [2B, 1+N, D]", l.Name, sh)
		}
		ntok, d := int(sh[1])-1, int(sh[2])
		side := int(math.Round(math.Sqrt(float64(ntok))))
		if side*side != ntok {
			return nil, 0, 0, 0, fmt.Errorf("feature %s has %d patch tokens, not a square grid", l.Name, ntok)
		}
		per := (ntok + 1) * d
		return tokensToPlanes(l.Data[k*per:(k+1)*per], ntok, d), d, side, side, nil
	}
	if len(sh) != 4 {
		return nil, 0, 0, 0, fmt.Errorf("feature %s has shape %v, want [2B, C, h, w]", l.Name, sh)
	}
	c, h, w = int(sh[1]), int(sh[2]), int(sh[3])
	per := c * h * w
	return l.Data[k*per : (k+1)*per], c, h, w, nil
}
