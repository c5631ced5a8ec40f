package eval

import (
	"fmt"
	"slices"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/metrics"
)

// WeighPooling returns the mean metrics of scored images (Evaluate's results, maps kept) with each image's raw
// score pooled again from its map with counts[i] passes of a kernel x kernel box average, then the maximum
// (pipeline.PooledMax, the scorer's own pooling): what bundles with those score.pool_repeat values report on the
// same images. The pooling reads the map and changes nothing in it, so one scoring pass serves every count and
// the pixel metrics are the same in every row. scored is left as it was.
func WeighPooling(scored []ImageResult, kernel int, counts []int) ([]metrics.Metrics, error) {
	out := make([]metrics.Metrics, len(counts))
	again := slices.Clone(scored)
	for i, n := range counts {
		for j, r := range scored {
			again[j].Result.RawScore = pipeline.PooledMax(r.Result.Map, r.Result.MapHeight, r.Result.MapWidth, kernel, n)
		}
		rep, err := Metrics(again)
		if err != nil {
			return nil, fmt.Errorf("%d pooling passes: %w", n, err)
		}
		out[i] = rep.Mean
	}
	return out, nil
}

// SetPoolRepeat writes n pooling passes into the bundle's score (score.pool_repeat). The map and its reference
// do not change; the raw scores, and so the calibration's image thresholds, do. Passes that leave nothing of
// the map's shorter side are refused by the manifest check before anything is written.
func SetPoolRepeat(bundleDir string, n int) error {
	return updateManifest(bundleDir, fmt.Sprintf("%d pooling passes", n), func(m *models.Manifest) error {
		m.Score.PoolRepeat = n
		return nil
	})
}
