package eval

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
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
	n := 3 * m.Input.Width * m.Input.Height
	sums := map[string][]float64{"": make([]float64, n)}
	counts := map[string]int{}
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
		for _, c := range []string{it.Class, ""} {
			if sums[c] == nil {
				sums[c] = make([]float64, n)
			}
			for i, v := range x {
				sums[c][i] += float64(v)
			}
			counts[c]++
			if c == "" {
				break
			}
		}
	}
	mf := &MeanFrames{Width: m.Input.Width, Height: m.Input.Height, Source: source}
	for c := range sums {
		mf.Classes = append(mf.Classes, c)
	}
	sort.Strings(mf.Classes)
	for _, c := range mf.Classes {
		row := make([]float32, n)
		for i, v := range sums[c] {
			row[i] = float32(v / float64(counts[c]))
		}
		mf.Frames = append(mf.Frames, row)
		mf.Images = append(mf.Images, counts[c])
	}
	return mf, nil
}

// WritePixel stores the mean frames in the bundle (PixelFile and map.pixel) with the term's factor and weight 0,
// or removes the term when mf is nil. The weight is the calibrate stage's to measure (BuildReference, then
// WriteReference), so a map reference measured with another weight is removed in the same write: the bundle
// then scores raw maps until its reference is measured again, instead of subtracting a reference that no
// longer matches. The bundle is verified afterwards.
func WritePixel(bundleDir string, mf *MeanFrames, factor float64) error {
	if err := CheckPixelFactor(factor); err != nil {
		return err
	}
	m, err := models.ReadManifest(bundleDir)
	if err != nil {
		return fmt.Errorf("mean-frame term: %w", err)
	}
	if old := m.Map.Pixel; old != nil {
		delete(m.Files, old.File)
	}
	m.Map.Pixel = nil
	path := filepath.Join(bundleDir, PixelFile)
	if mf == nil {
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("mean-frame term: %w", err)
		}
	} else {
		rows := models.MapRows{File: PixelFile, Width: mf.Width, Height: mf.Height, Classes: mf.Classes, Images: mf.Images, Source: mf.Source}
		if err := writeRows(bundleDir, m, rows, mf.Frames); err != nil {
			return fmt.Errorf("mean-frame term: %w", err)
		}
		m.Map.Pixel = &models.PixelTerm{MapRows: rows, Factor: factor}
	}
	if r := m.Map.Reference; r != nil && r.PixelWeight != 0 {
		delete(m.Files, r.File)
		m.Map.Reference = nil
		if err := os.Remove(filepath.Join(bundleDir, r.File)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("mean-frame term: %w", err)
		}
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("mean-frame term: manifest with the term is invalid: %w", err)
	}
	if err := models.WriteManifest(bundleDir, m); err != nil {
		return fmt.Errorf("mean-frame term: writing manifest: %w", err)
	}
	if err := models.Verify(bundleDir); err != nil {
		return fmt.Errorf("mean-frame term: bundle no longer verifies: %w", err)
	}
	return nil
}

// spread accumulates, per class and pixel, the sums and sums of squares of one kind of map over normal images,
// for the pooled within-class standard deviation: the spread of each map around its class's mean map, over
// every class, image and pixel.
type spread struct {
	sum, sq map[string][]float64
	n       map[string]int
}

func newSpread() *spread {
	return &spread{sum: map[string][]float64{}, sq: map[string][]float64{}, n: map[string]int{}}
}

func (s *spread) add(class string, m []float32) {
	if s.sum[class] == nil {
		s.sum[class], s.sq[class] = make([]float64, len(m)), make([]float64, len(m))
	}
	sum, sq := s.sum[class], s.sq[class]
	for i, v := range m {
		f := float64(v)
		sum[i] += f
		sq[i] += f * f
	}
	s.n[class]++
}

// std is the pooled within-class standard deviation: sqrt(sum over classes and pixels of (sq - sum^2/n) /
// (images x pixels)).
func (s *spread) std() float64 {
	var ss float64
	var cnt int
	for c, sum := range s.sum {
		n := float64(s.n[c])
		for i, v := range sum {
			ss += s.sq[c][i] - v*v/n
		}
		cnt += s.n[c] * len(sum)
	}
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

// MeasureReference measures a bundle's map reference on the normal items and writes it, with the mean-frame
// term at factor (0: no term): the mean frames first (no model), then one scoring pass that measures the
// reference and the term's weight together (BuildReference). open opens the bundle as it is on disk at that
// point; it must set pipeline.Options.NoReference and PixelMap.
func MeasureReference(ctx context.Context, bundleDir string, open func() (*pipeline.Scorer, error), normal []dataset.Item, source string, factor float64, opts Options) (*Reference, error) {
	if err := CheckPixelFactor(factor); err != nil {
		return nil, err
	}
	var mf *MeanFrames
	if factor > 0 {
		m, err := models.ReadManifest(bundleDir)
		if err != nil {
			return nil, err
		}
		if mf, err = BuildMeanFrames(ctx, m, normal, source); err != nil {
			return nil, err
		}
	}
	if err := WritePixel(bundleDir, mf, factor); err != nil {
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
