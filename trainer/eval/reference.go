package eval

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"

	"github.com/vlmdiff/edge/internal/fsutil"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// ReferenceFile is the bundle file holding the map reference (models.MapReference).
const ReferenceFile = "map_reference.f32"

// Reference choices of the calibrate stage and command.
const (
	ReferenceTrain = "train" // measure the mean normal maps on the training normals (the default)
	ReferenceNone  = "none"  // no reference: raw maps, as the paper scores them
	ReferenceKeep  = "keep"  // leave the bundle's reference as it is (vlmdiff calibrate only)
)

// DefaultReferencePerClass bounds the normal images per class averaged into the reference: enough for a stable
// mean of smoothed maps, and a bounded cost on a line that collected thousands of samples.
const DefaultReferencePerClass = 64

// Reference is a measured map reference: the mean smoothed map of each class's normal images, and of all of
// them together under the class "".
type Reference struct {
	Width, Height int
	Classes       []string // sorted, "" first
	Maps          [][]float32
	Images        []int
	Source        string
	// Noises is the scorer's start-noise count the maps were measured with (pipeline.Scorer.Ensemble).
	Noises int
}

// ReferenceItems picks at most perClass normal items of each class, evenly spread over the class's items in
// their order (deterministic), so the reference sees the whole range of a class's normals.
func ReferenceItems(normal []dataset.Item, perClass int) []dataset.Item {
	by := map[string][]dataset.Item{}
	var classes []string
	for _, it := range normal {
		if _, ok := by[it.Class]; !ok {
			classes = append(classes, it.Class)
		}
		by[it.Class] = append(by[it.Class], it)
	}
	var out []dataset.Item
	for _, c := range classes {
		its := by[c]
		if perClass <= 0 || len(its) <= perClass {
			out = append(out, its...)
			continue
		}
		for k := 0; k < perClass; k++ {
			out = append(out, its[k*len(its)/perClass])
		}
	}
	return out
}

// BuildReference scores normal items and averages their smoothed maps per class and over all of them. s must
// score raw maps (pipeline.Options.NoReference): a reference measured through an older reference would
// subtract it twice. Only whole-frame maps at the model's size are accepted.
func BuildReference(ctx context.Context, s *pipeline.Scorer, normal []dataset.Item, source string, opts Options) (*Reference, error) {
	if len(normal) == 0 {
		return nil, fmt.Errorf("map reference: no normal images")
	}
	if opts.ROI.Active() {
		return nil, fmt.Errorf("map reference: measured on whole frames; a region of interest is not supported")
	}
	res, err := ScoreItems(ctx, s, normal, opts)
	if err != nil {
		return nil, fmt.Errorf("map reference: %w", err)
	}
	m := s.Manifest()
	W, H := m.Input.Width, m.Input.Height
	sums := map[string][]float64{"": make([]float64, W*H)}
	counts := map[string]int{}
	for _, r := range res {
		if r.Result.MapWidth != W || r.Result.MapHeight != H {
			return nil, fmt.Errorf("map reference: %s has a %dx%d map, want %dx%d", r.Item.Path, r.Result.MapWidth, r.Result.MapHeight, W, H)
		}
		for _, c := range []string{r.Item.Class, ""} {
			if sums[c] == nil {
				sums[c] = make([]float64, W*H)
			}
			for i, v := range r.Result.Map {
				sums[c][i] += float64(v)
			}
			counts[c]++
			if c == "" {
				break
			}
		}
	}
	ref := &Reference{Width: W, Height: H, Source: source, Noises: s.Ensemble()}
	for c := range sums {
		ref.Classes = append(ref.Classes, c)
	}
	sort.Strings(ref.Classes) // "" sorts first
	for _, c := range ref.Classes {
		row := make([]float32, W*H)
		for i, v := range sums[c] {
			row[i] = float32(v / float64(counts[c]))
		}
		ref.Maps = append(ref.Maps, row)
		ref.Images = append(ref.Images, counts[c])
	}
	return ref, nil
}

// WriteReference stores ref in the bundle (ReferenceFile and map.reference), or removes the bundle's reference
// when ref is nil. A reference measured with another start-noise count than the bundle's sets the bundle's
// count to its own (diffusion.ensemble) in the same write: the maps it averages are the maps the bundle then
// scores. The file is listed with its checksum; the bundle is verified afterwards.
func WriteReference(bundleDir string, ref *Reference) error {
	m, err := models.ReadManifest(bundleDir)
	if err != nil {
		return fmt.Errorf("map reference: %w", err)
	}
	if old := m.Map.Reference; old != nil {
		delete(m.Files, old.File)
	}
	m.Map.Reference = nil
	path := filepath.Join(bundleDir, ReferenceFile)
	if ref == nil {
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("map reference: %w", err)
		}
	} else {
		buf := make([]byte, 0, len(ref.Maps)*ref.Width*ref.Height*4)
		for _, row := range ref.Maps {
			for _, v := range row {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					return fmt.Errorf("map reference: non-finite mean map value")
				}
				buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
			}
		}
		if err := fsutil.WriteFileAtomic(path, buf, 0o644); err != nil {
			return fmt.Errorf("map reference: %w", err)
		}
		sum, err := models.FileSHA256(path)
		if err != nil {
			return fmt.Errorf("map reference: %w", err)
		}
		m.Files[ReferenceFile] = models.FileEntry{SHA256: sum, Size: int64(len(buf))}
		m.Map.Reference = &models.MapReference{File: ReferenceFile, Width: ref.Width, Height: ref.Height,
			Classes: ref.Classes, Images: ref.Images, Source: ref.Source}
		if ref.Noises > 1 {
			m.Map.Reference.Noises = ref.Noises
		}
		setEnsemble(m, ref.Noises)
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("map reference: manifest with the reference is invalid: %w", err)
	}
	if err := models.WriteManifest(bundleDir, m); err != nil {
		return fmt.Errorf("map reference: writing manifest: %w", err)
	}
	if err := models.Verify(bundleDir); err != nil {
		return fmt.Errorf("map reference: bundle no longer verifies: %w", err)
	}
	return nil
}

// setEnsemble sets the bundle's start-noise count; 0 keeps it, 1 is written as the field's absence (the
// manifest of a single-noise bundle stays as it was before the field existed).
func setEnsemble(m *models.Manifest, noises int) {
	switch {
	case noises == 1:
		m.Diffusion.Ensemble = 0
	case noises > 1:
		m.Diffusion.Ensemble = noises
	}
}
