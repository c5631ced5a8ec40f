package pipeline

// SmoothMap smooths an h x w anomaly map in place with the pipeline's Gaussian (scipy's gaussian_filter,
// mode "reflect"), so that a map made outside the model (a baseline, a region-of-interest rescoring) is
// smoothed exactly as the scorer smooths its own.
func SmoothMap(m []float64, h, w int, sigma, truncate float64) {
	gaussianFilter(m, h, w, sigma, truncate)
}
