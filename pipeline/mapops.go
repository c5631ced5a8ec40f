package pipeline

// SmoothMap smooths an h x w anomaly map in place with the pipeline's Gaussian (scipy's gaussian_filter,
// mode "reflect"), so that a map made outside the model (a baseline, a region-of-interest rescoring) is
// smoothed exactly as the scorer smooths its own.
func SmoothMap(m []float64, h, w int, sigma, truncate float64) {
	gaussianFilter(m, h, w, sigma, truncate)
}

// subtractReference removes the class's mean normal map (models.MapReference) from a smoothed map, so the score
// and the pixel threshold see what differs from the class's usual reconstruction error at each place. ref nil
// (no reference in the bundle) leaves the map as it is. Python twin: reference.Scorer.score.
func subtractReference(amap []float64, ref []float32) {
	if ref == nil {
		return
	}
	for i, v := range ref {
		amap[i] -= float64(v)
	}
}
