package pipeline

// layerOutput is one output of the feature graph for a batch of B+B*K images (the frames, then the K
// reconstructions of each frame in turn) and its weight in the summed map.
type layerOutput struct {
	Name   string
	Weight float64
	Match  int // models.FeatureLayer.Match: the search radius in cells, 0 for the same position
	Data   []float32
	// Rec, when set, holds the reconstructions' items and Data only the frames': the frames' features ran
	// apart, beside the reconstruction (Scorer.overlapFeatures). Item indices run over both as one batch.
	Rec   []float32
	Shape []int64 // [B+B*K,C,h,w], or [B+B*K,1+N,D] for ViT tokens, over Data and Rec together
}

// item returns item idx of the batch, per values long, from Data or, past the frames, from Rec.
func (l layerOutput) item(idx, per int) []float32 {
	if l.Rec != nil {
		if f := len(l.Data) / per; idx >= f {
			idx -= f
			return l.Rec[idx*per : (idx+1)*per]
		}
	}
	return l.Data[idx*per : (idx+1)*per]
}

// featureInput returns the feature graph's input batch: the frames x [B,3,hw], then their reconstructions rec
// [B*K,3,hw], both in the bundle's normalised input space, renormalised into the backbone's when mean and std are set
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
