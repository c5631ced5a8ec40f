package eval

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// PixelFile is the bundle file holding the mean frames of the mean-frame term (models.PixelTerm).
const PixelFile = "map_pixel_mean.f32"

// MaxPixelFactor bounds map.pixel.factor: at 4 the term's spread is four times the features', and the features
// no longer say much.
const MaxPixelFactor = 4

// CheckPixelFactor checks a mean-frame term factor (calibrate.pixel_factor, vlmdiff calibrate --pixel-factor).
func CheckPixelFactor(a float64) error {
	if !(a >= 0 && a <= MaxPixelFactor) {
		return fmt.Errorf("mean-frame term factor %v: want 0 (off) to %d", a, MaxPixelFactor)
	}
	return nil
}

// MeanFrames is each class's mean preprocessed normal frame ([3*H*W], the bundle's normalised input space), and
// the mean over all of them under the class "".
type MeanFrames struct {
	Width, Height int
	Classes       []string // sorted, "" first
	Frames        [][]float32
	Images        []int
	Source        string
}

// BuildMeanFrames reads the normal items and averages them per class, preprocessed exactly as the scorer
// preprocesses a frame of the bundle m (pipeline.Preprocess). It runs no model.
func BuildMeanFrames(ctx context.Context, m *models.Manifest, normal []dataset.Item, source string) (*MeanFrames, error) {
	if len(normal) == 0 {
		return nil, fmt.Errorf("mean frames: no normal images")
	}
	sums := newClassSums(false)
	for _, it := range normal {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		img, err := pipeline.ReadImage(it.Path)
		if err != nil {
			return nil, fmt.Errorf("mean frames: reading image %s: %w", it.Path, err)
		}
		x, err := pipeline.Preprocess(m, img)
		if err != nil {
			return nil, fmt.Errorf("mean frames: %s: %w", it.Path, err)
		}
		sums.add(it.Class, x)
	}
	mf := &MeanFrames{Width: m.Input.Width, Height: m.Input.Height, Source: source, Classes: sums.classes()}
	for _, c := range mf.Classes {
		row := make([]float32, len(sums.sum[c]))
		for i, v := range sums.mean(c) {
			row[i] = float32(v)
		}
		mf.Frames = append(mf.Frames, row)
		mf.Images = append(mf.Images, sums.n[c])
	}
	return mf, nil
}

// WritePixel stores the mean frames in the bundle (PixelFile and map.pixel) with the term's factor and weight 0,
// or removes the term when mf is nil. sigma, when set, is the term's smoothing (CheckPixelSigma); nil keeps the
// old term's own (the map's for a new term). The weight is the calibrate stage's to measure (BuildReference, then
// WriteReference), so a map reference measured with another weight is removed in the same write: the bundle
// then scores raw maps until its reference is measured again, instead of subtracting a reference that no
// longer matches. The bundle is verified afterwards.
func WritePixel(bundleDir string, mf *MeanFrames, factor float64, sigma *float64) error {
	if err := CheckPixelFactor(factor); err != nil {
		return err
	}
	if sigma != nil {
		if err := CheckPixelSigma(*sigma); err != nil {
			return err
		}
	}
	if mf == nil {
		m, err := models.ReadManifest(bundleDir)
		if err != nil {
			return fmt.Errorf("mean-frame term: %w", err)
		}
		if m.Map.Pixel == nil { // nothing to remove: no manifest write, no verify of every file's checksum
			return nil
		}
	}
	return updateManifest(bundleDir, "mean-frame term", func(m *models.Manifest) error {
		if old := m.Map.Pixel; old != nil {
			delete(m.Files, old.File)
			if sigma == nil { // the term's own smoothing outlives new mean frames
				sigma = old.Sigma
			}
		}
		m.Map.Pixel = nil
		if mf == nil {
			if err := os.Remove(filepath.Join(bundleDir, PixelFile)); err != nil && !os.IsNotExist(err) {
				return err
			}
		} else {
			rows := models.MapRows{File: PixelFile, Width: mf.Width, Height: mf.Height, Classes: mf.Classes, Images: mf.Images, Source: mf.Source}
			if err := writeRows(bundleDir, m, rows, mf.Frames); err != nil {
				return err
			}
			var own *float64
			if sigma != nil {
				v := *sigma
				own = &v
			}
			m.Map.Pixel = &models.PixelTerm{MapRows: rows, Factor: factor, Sigma: own}
		}
		if r := m.Map.Reference; r != nil && r.PixelWeight != 0 {
			delete(m.Files, r.File)
			m.Map.Reference = nil
			if err := os.Remove(filepath.Join(bundleDir, r.File)); err != nil && !os.IsNotExist(err) {
				return err
			}
		}
		return nil
	})
}

// CheckPixelSigma checks a mean-frame term sigma (calibrate.pixel_sigma, select.pixel_sigmas, vlmdiff
// calibrate --pixel-sigma).
func CheckPixelSigma(v float64) error {
	if !(v >= 0 && v <= models.MaxPixelSigma) {
		return fmt.Errorf("mean-frame term sigma %v: want 0 (no smoothing) to %d map pixels", v, models.MaxPixelSigma)
	}
	return nil
}

// SetPixelSigma sets the smoothing sigma of the bundle's mean-frame term (map.pixel.sigma; nil: the map's). A map
// reference measured with the term at another sigma is removed in the same write (its rows hold the term's mean
// at the old smoothing, and its weight was sized on it): the bundle scores raw maps until its reference is
// measured again.
func SetPixelSigma(bundleDir string, sigma *float64) error {
	if sigma != nil {
		if err := CheckPixelSigma(*sigma); err != nil {
			return err
		}
	}
	return updateManifest(bundleDir, "mean-frame term sigma", func(m *models.Manifest) error {
		t := m.Map.Pixel
		if t == nil {
			return errors.New("the bundle has no mean-frame term (map.pixel)")
		}
		before := t.SmoothingSigma(m.Map.Sigma)
		t.Sigma = nil
		if sigma != nil {
			v := *sigma
			t.Sigma = &v
		}
		if r := m.Map.Reference; r != nil && r.PixelWeight != 0 && t.SmoothingSigma(m.Map.Sigma) != before {
			delete(m.Files, r.File)
			m.Map.Reference = nil
			t.Weight = 0
			if err := os.Remove(filepath.Join(bundleDir, r.File)); err != nil && !os.IsNotExist(err) {
				return err
			}
		}
		return nil
	})
}

// classSums accumulates maps per class and over all of them (the global row ""): each row's mean map, and with
// squares the pooled within-class spread of the maps around their class's mean map, over every class, image
// and pixel.
type classSums struct {
	sum, sq map[string][]float64
	n       map[string]int
	squares bool
}

func newClassSums(squares bool) *classSums {
	return &classSums{sum: map[string][]float64{}, sq: map[string][]float64{}, n: map[string]int{}, squares: squares}
}

// add adds m to its class's row and to the global row (once, for an item without a class).
func (s *classSums) add(class string, m []float32) {
	for _, c := range []string{class, ""} {
		if s.sum[c] == nil {
			s.sum[c] = make([]float64, len(m))
			if s.squares {
				s.sq[c] = make([]float64, len(m))
			}
		}
		sum, sq := s.sum[c], s.sq[c]
		for i, v := range m {
			f := float64(v)
			sum[i] += f
			if sq != nil {
				sq[i] += f * f
			}
		}
		s.n[c]++
		if c == "" {
			break
		}
	}
}

// classes is the rows' names, sorted ("" first).
func (s *classSums) classes() []string {
	out := slices.Collect(maps.Keys(s.sum))
	sort.Strings(out)
	return out
}

// mean is row c's mean map.
func (s *classSums) mean(c string) []float64 {
	out := make([]float64, len(s.sum[c]))
	n := float64(s.n[c])
	for i, v := range s.sum[c] {
		out[i] = v / n
	}
	return out
}

// std is the pooled within-class standard deviation (needs squares): sqrt(sum over the classes' rows and pixels
// of (sq - sum^2/n) / (images x pixels)). The global row is the classes' union, not another class: it counts
// only when it is the only row.
func (s *classSums) std() float64 {
	var ss float64
	var cnt int
	for c, sum := range s.sum {
		if c == "" && len(s.sum) > 1 {
			continue
		}
		n := float64(s.n[c])
		for i, v := range sum {
			ss += s.sq[c][i] - v*v/n
		}
		cnt += s.n[c] * len(sum)
	}
	return pooledStd(ss, cnt)
}

// pooledStd is sqrt(ss / cnt) for a sum of squared deviations over cnt values; 0 when there is none (or
// rounding left ss at or below 0).
func pooledStd(ss float64, cnt int) float64 {
	if cnt == 0 || ss <= 0 {
		return 0
	}
	return math.Sqrt(ss / float64(cnt))
}

// pixelWeight turns a factor into the term's weight: factor x feature spread / term spread. A term without
// spread (every reference normal is its class's mean frame) gets weight 0: it cannot be sized, and it would
// add nothing but a constant.
func pixelWeight(factor, featureStd, termStd float64) float64 {
	if factor == 0 || !(termStd > 0) {
		return 0
	}
	return factor * featureStd / termStd
}

// Terms is what MeasureReference measures the map reference with: the mean-frame term at Pixel (0: no term),
// smoothed at PixelSigma (nil: the bundle's term's, the map's for a new term), and the nearest-normal term at
// Knn (0: none; above 0 the bundle must have its banks, AddKnn), smoothed at KnnSigma (nil: the bundle's).
type Terms struct {
	Pixel      float64
	PixelSigma *float64
	Knn        float64
	KnnSigma   *float64
}

// MeasureReference measures a bundle's map reference on the normal items and writes it, with the terms t: the
// mean frames first (WriteMeanFrames, no model), then one scoring pass that measures the reference and the
// terms' weights together (BuildReference). open opens the bundle as it is on disk at that point; it must set
// pipeline.Options.NoReference, PixelMap, KnnMap and KnnLeaveOneOut.
func MeasureReference(ctx context.Context, bundleDir string, open func() (*pipeline.Scorer, error), normal []dataset.Item, source string, t Terms, opts Options) (*Reference, error) {
	if err := ApplyTerms(ctx, bundleDir, normal, source, t); err != nil {
		return nil, err
	}
	s, err := open()
	if err != nil {
		return nil, err
	}
	ref, err := BuildReference(ctx, s, normal, source, opts)
	s.Close()
	if err != nil {
		return nil, err
	}
	if err := WriteReference(bundleDir, ref); err != nil {
		return nil, err
	}
	return ref, nil
}

// ApplyTerms writes the terms t into the bundle before its reference is measured or written (their weights not
// yet measured): the nearest-normal term's factor (0 removes it; its banks are built beforehand, AddKnn) and
// smoothing, and the mean-frame term with the mean frames of the normal items (WriteMeanFrames).
func ApplyTerms(ctx context.Context, bundleDir string, normal []dataset.Item, source string, t Terms) error {
	if err := CheckPixelFactor(t.Pixel); err != nil {
		return err
	}
	if err := SetKnnFactor(bundleDir, t.Knn); err != nil {
		return err
	}
	if t.Knn > 0 && t.KnnSigma != nil {
		if err := SetKnnSigma(bundleDir, t.KnnSigma); err != nil {
			return err
		}
	}
	return WriteMeanFrames(ctx, bundleDir, normal, source, t.Pixel, t.PixelSigma)
}

// WriteMeanFrames writes the mean-frame term at factor into the bundle with the mean frames of the normal items
// (no model runs), its weight not yet measured; factor 0 removes the term. sigma, when set, is the term's
// smoothing; nil keeps the bundle's term's (the map's for a new term); both go in one manifest write (WritePixel).
// BuildReference (through MeasureReference) measures the weight; WeighKnn measures it from its own pass when
// nothing else has.
func WriteMeanFrames(ctx context.Context, bundleDir string, normal []dataset.Item, source string, factor float64, sigma *float64) error {
	if err := CheckPixelFactor(factor); err != nil {
		return err
	}
	var mf *MeanFrames
	if factor > 0 {
		m, err := models.ReadManifest(bundleDir)
		if err != nil {
			return err
		}
		if mf, err = BuildMeanFrames(ctx, m, normal, source); err != nil {
			return err
		}
	}
	return WritePixel(bundleDir, mf, factor, sigma)
}

// PixelFactor is the mean-frame term factor of a bundle on disk: map.pixel.factor, 0 without the term.
func PixelFactor(bundleDir string) (float64, error) {
	m, err := models.ReadManifest(bundleDir)
	if err != nil {
		return 0, err
	}
	if m.Map.Pixel == nil {
		return 0, nil
	}
	return m.Map.Pixel.Factor, nil
}

// DescribePixel says what the calibrate stage made of a mean-frame term factor: its weight, or why it has none.
func DescribePixel(factor, weight float64) string {
	if weight == 0 {
		return fmt.Sprintf("factor %g, weight 0: the training normals do not differ from their mean frames, so the term cannot be sized and adds nothing", factor)
	}
	return fmt.Sprintf("factor %g, weight %.6g", factor, weight)
}
