package pipeline

import "github.com/vlmdiff/edge/models"

// Image is a decoded frame: packed 8-bit RGB, row-major, Width*Height*3 bytes. It is a plain Go value (no cgo
// memory), so frames can cross goroutines, queues and stores without lifetime rules.
type Image struct {
	Width  int
	Height int
	Pix    []byte
}

// Request is one frame to score.
type Request struct {
	Image Image
	// Class selects per-class calibration and, when the bundle has one, the class's text conditioning.
	// Empty means the bundle's defaults.
	Class string
	// Seq is the frame's sequence number; with the "per_frame" seed policy it seeds the start noise.
	Seq uint64
	// Noise, when set, replaces the generated start noise (tests and the parity check use it).
	Noise *Noise
}

// Noise holds the two Gaussian draws of the method, each shaped like the latent [C,h,w] once per start noise of
// the ensemble ([K,C,h,w], noise k at k*C*h*w): Posterior is used only when the bundle samples the VAE
// posterior, Start is the q_sample noise.
type Noise struct {
	Posterior []float32
	Start     []float32
}

// posterior returns the posterior draw of start noise k (n values), or nil when the override has none (the
// bundle takes the posterior mean, so it is not read).
func (nz *Noise) posterior(k, n int) []float32 {
	if len(nz.Posterior) < (k+1)*n {
		return nil
	}
	return nz.Posterior[k*n : (k+1)*n]
}

// Result is the outcome of scoring one frame.
type Result struct {
	// RawScore is the pooled maximum of the anomaly map (docs/algorithm.md §1.10).
	RawScore float64 `json:"raw_score"`
	// Score is RawScore calibrated to 0..1; Threshold maps to 0.5.
	Score     float64 `json:"score"`
	Threshold float64 `json:"threshold"`
	Verdict   string  `json:"verdict"` // "OK" or "NG"
	// AnomalyAreaPct is the share of map pixels above the calibrated pixel threshold, in percent.
	AnomalyAreaPct float64 `json:"anomaly_area_pct"`
	// Map is the anomaly map at the model's input resolution, MapHeight x MapWidth, row-major. It covers the
	// whole image scored; pipeline/roi replaces it with a map of the whole frame, at the frame's size, when a
	// region of interest was scored.
	Map       []float32 `json:"-"`
	MapWidth  int       `json:"-"`
	MapHeight int       `json:"-"`
	// LayerMaps, only with Options.LayerMaps, holds one map per feature layer in the bundle's order: that
	// layer's distance map upsampled and smoothed exactly like Map, but with weight 1 and without the map
	// reference. Every step after the distance is linear, so sum_l w_l LayerMaps[l], minus the same sum of
	// per-layer references, is the map a bundle with layer weights w gives: the select stage compares layer
	// weights from one scoring pass.
	LayerMaps [][]float32 `json:"-"`
	// PrefixLayerMaps, only with Options.NoisePrefixes, holds for each prefix n (in that order) the layer maps
	// of the first n start noises alone, as LayerMaps holds them for all: the maps a bundle with n noises
	// gives. A prefix of the whole ensemble shares LayerMaps' slices.
	PrefixLayerMaps [][][]float32 `json:"-"`
	// PixelMap, with Options.PixelMap or Options.LayerMaps and a bundle with the mean-frame term (map.pixel),
	// is the term's own smoothed map: the frame's distance to its class's mean frame, with weight 1 and without
	// the map reference. Map adds it times map.pixel.weight; the calibrate stage measures the weight from it.
	PixelMap []float32 `json:"-"`
	// PixelMaps, with Options.PixelSigmas, holds the same map smoothed at each of those sigmas, in their order.
	PixelMaps [][]float32 `json:"-"`
	// KnnMap, with Options.KnnMap or Options.LayerMaps and a bundle with the nearest-normal term (map.knn), is
	// the term's own smoothed map with weight 1 and without the map reference, as PixelMap is the mean-frame
	// term's.
	KnnMap []float32 `json:"-"`
	// KnnMaps, with Options.KnnSigmas, holds the same map smoothed at each of those sigmas, in their order.
	KnnMaps [][]float32 `json:"-"`
	// KnnKMaps, with Options.KnnKs, holds the term's map (its own smoothing) as the mean of each of those counts
	// of nearest bank vectors, in their order.
	KnnKMaps [][]float32 `json:"-"`
	// LatencyMS holds per-stage wall time in milliseconds (stage names: Stage* constants); for a batch, each
	// frame carries the batch's stage time divided by the batch size.
	LatencyMS map[string]float64 `json:"latency_ms"`
	Model     ModelRef           `json:"model"`
	// Class is the class whose calibration was applied ("" = global).
	Class string `json:"class,omitempty"`
	// Err is set when this frame could not be scored (bad image, non-finite model output); the other
	// fields are then zero. Errors of the whole batch are returned by Score instead.
	Err error `json:"-"`
}

// ModelRef names the bundle that produced a result.
type ModelRef struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// Verdicts.
const (
	VerdictOK = "OK"
	VerdictNG = "NG"
)

// Stage names used in Result.LatencyMS and in benchmarks.
const (
	StagePreprocess = "preprocess"
	StageEncode     = "encode"
	StageHint       = "hint"
	StageDenoise    = "denoise"
	StageDecode     = "decode"
	StageFeatures   = "features"
	StageKnn        = "knn" // the nearest-normal term's graph (map.knn), only in bundles with the term
	StageMap        = "map"
	StageTotal      = "total"
)

// refOf returns the ModelRef of a manifest.
func refOf(m *models.Manifest) ModelRef { return ModelRef{Name: m.Name, Version: m.Version} }
