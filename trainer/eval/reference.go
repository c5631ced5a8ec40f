package eval

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"

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
	// PixelWeight is the mean-frame term's measured weight (map.pixel.weight; 0 without the term): the rows
	// include the term's mean map times it.
	PixelWeight float64
	// PixelSigma is the sigma the term's maps were smoothed at (models.PixelTerm.SmoothingSigma; with the
	// term): the rows hold the term's mean at that smoothing.
	PixelSigma float64
	// KnnWeight is the nearest-normal term's measured weight (map.knn.weight), sized the same way.
	KnnWeight float64
	// KnnSigma is the sigma the nearest-normal term's maps were smoothed at (models.KnnTerm.SmoothingSigma; with
	// the term), as PixelSigma is the mean-frame term's.
	KnnSigma float64
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
//
// With the mean-frame term (map.pixel, factor above 0) s must also return the term's own map
// (pipeline.Options.PixelMap). The term's weight is measured here, in the same pass: factor x the spread of the
// feature maps around their class's mean map / the same spread of the term's maps, pooled over every class,
// normal and pixel (models.PixelTerm). The reference of the sum is the sum of the references, so each row is
// the features' mean map plus weight x the term's mean map; Reference.PixelWeight carries the weight to
// WriteReference.
func BuildReference(ctx context.Context, s *pipeline.Scorer, normal []dataset.Item, source string, opts Options) (*Reference, error) {
	if len(normal) == 0 {
		return nil, fmt.Errorf("map reference: no normal images")
	}
	if opts.ROI.Active() {
		return nil, fmt.Errorf("map reference: measured on whole frames; a region of interest is not supported")
	}
	m := s.Manifest()
	var factor, weight, kfactor, kweight float64
	if t := m.Map.Pixel; t != nil {
		factor, weight = t.Factor, t.Weight
	}
	if t := m.Map.Knn; t != nil {
		kfactor, kweight = t.Factor, t.Weight
	}
	res, err := ScoreItems(ctx, s, normal, opts)
	if err != nil {
		return nil, fmt.Errorf("map reference: %w", err)
	}
	W, H := m.Input.Width, m.Input.Height
	feat, term, knn := newClassSums(factor > 0 || kfactor > 0), newClassSums(true), newClassSums(true)
	for _, r := range res {
		if r.Result.MapWidth != W || r.Result.MapHeight != H {
			return nil, fmt.Errorf("map reference: %s has a %dx%d map, want %dx%d", r.Item.Path, r.Result.MapWidth, r.Result.MapHeight, W, H)
		}
		f := r.Result.Map
		if kfactor > 0 {
			k := r.Result.KnnMap
			if len(k) != len(f) {
				return nil, fmt.Errorf("map reference: %s has no map of the nearest-normal term (open the scorer with pipeline.Options.KnnMap)", r.Item.Path)
			}
			f = subtractScaled(f, k, kweight) // the map without the term it added
			knn.add(r.Item.Class, k)
		}
		if factor > 0 {
			d := r.Result.PixelMap
			if len(d) != len(f) {
				return nil, fmt.Errorf("map reference: %s has no map of the mean-frame term (open the scorer with pipeline.Options.PixelMap)", r.Item.Path)
			}
			if weight != 0 { // the features' own map: the bundle's map minus the term it added
				f = slices.Clone(f)
				for i, v := range d {
					f[i] -= float32(weight) * v
				}
			}
			term.add(r.Item.Class, d)
		}
		feat.add(r.Item.Class, f)
	}
	ref := &Reference{Width: W, Height: H, Source: source, Noises: s.Ensemble(), Classes: feat.classes()}
	if factor > 0 {
		ref.PixelWeight = pixelWeight(factor, feat.std(), term.std())
		ref.PixelSigma = m.Map.Pixel.SmoothingSigma(m.Map.Sigma)
	}
	if kfactor > 0 {
		ref.KnnWeight = pixelWeight(kfactor, feat.std(), knn.std())
		ref.KnnSigma = m.Map.Knn.SmoothingSigma(m.Map.Sigma)
	}
	for _, c := range ref.Classes {
		row := make([]float32, W*H)
		fm := feat.mean(c)
		var tm, km []float64
		if ref.PixelWeight != 0 {
			tm = term.mean(c)
		}
		if ref.KnnWeight != 0 {
			km = knn.mean(c)
		}
		for i, v := range fm {
			if tm != nil {
				v += ref.PixelWeight * tm[i]
			}
			if km != nil {
				v += ref.KnnWeight * km[i]
			}
			row[i] = float32(v)
		}
		ref.Maps = append(ref.Maps, row)
		ref.Images = append(ref.Images, feat.n[c])
	}
	return ref, nil
}

// WriteReference stores ref in the bundle (ReferenceFile and map.reference), or removes the bundle's reference
// when ref is nil, and the mean-frame term with it (map.pixel: sized and centred on the reference normals). A reference measured with another start-noise count than the bundle's sets the bundle's
// count to its own (diffusion.ensemble) in the same write: the maps it averages are the maps the bundle then
// scores. The file is listed with its checksum; the bundle is verified afterwards.
func WriteReference(bundleDir string, ref *Reference) error {
	return updateManifest(bundleDir, "map reference", func(m *models.Manifest) error {
		if ref != nil && ref.PixelWeight != 0 && m.Map.Pixel == nil { // refused before any file is written
			return fmt.Errorf("measured with the mean-frame term at weight %g, but the bundle has no term", ref.PixelWeight)
		}
		if t := m.Map.Pixel; ref != nil && ref.PixelWeight != 0 && t != nil && ref.PixelSigma != t.SmoothingSigma(m.Map.Sigma) {
			return fmt.Errorf("measured with the mean-frame term smoothed at sigma %g, but the bundle smooths it at %g", ref.PixelSigma, t.SmoothingSigma(m.Map.Sigma))
		}
		if ref != nil && ref.KnnWeight != 0 && m.Map.Knn == nil {
			return fmt.Errorf("measured with the nearest-normal term at weight %g, but the bundle has no term", ref.KnnWeight)
		}
		if t := m.Map.Knn; ref != nil && ref.KnnWeight != 0 && t != nil && ref.KnnSigma != t.SmoothingSigma(m.Map.Sigma) {
			return fmt.Errorf("measured with the nearest-normal term smoothed at sigma %g, but the bundle smooths it at %g", ref.KnnSigma, t.SmoothingSigma(m.Map.Sigma))
		}
		if old := m.Map.Reference; old != nil {
			delete(m.Files, old.File)
		}
		m.Map.Reference = nil
		if ref == nil { // the terms are sized and centred by the reference: they go with it
			var drop []string
			if t := m.Map.Pixel; t != nil {
				drop = append(drop, t.File)
				m.Map.Pixel = nil
			}
			if t := m.Map.Knn; t != nil {
				drop = append(drop, t.Graph, t.Bank, t.Sources)
				m.Map.Knn = nil
			}
			for _, f := range drop {
				if f == "" {
					continue
				}
				delete(m.Files, f)
				if err := os.Remove(filepath.Join(bundleDir, f)); err != nil && !os.IsNotExist(err) {
					return err
				}
			}
			if err := os.Remove(filepath.Join(bundleDir, ReferenceFile)); err != nil && !os.IsNotExist(err) {
				return err
			}
			return nil
		}
		rows := models.MapRows{File: ReferenceFile, Width: ref.Width, Height: ref.Height, Classes: ref.Classes, Images: ref.Images, Source: ref.Source}
		if err := writeRows(bundleDir, m, rows, ref.Maps); err != nil {
			return err
		}
		m.Map.Reference = &models.MapReference{MapRows: rows}
		if ref.Noises > 1 {
			m.Map.Reference.Noises = ref.Noises
		}
		if t := m.Map.Pixel; t != nil {
			t.Weight = ref.PixelWeight
			m.Map.Reference.PixelWeight = ref.PixelWeight
			if t.Sigma != nil && ref.PixelWeight != 0 {
				sigma := *t.Sigma
				m.Map.Reference.PixelSigma = &sigma
			}
		}
		if t := m.Map.Knn; t != nil {
			t.Weight = ref.KnnWeight
			m.Map.Reference.KnnWeight = ref.KnnWeight
			if t.Sigma != nil && ref.KnnWeight != 0 {
				sigma := *t.Sigma
				m.Map.Reference.KnnSigma = &sigma
			}
		}
		setEnsemble(m, ref.Noises)
		return nil
	})
}

// updateManifest reads the bundle's manifest, lets edit change it (and write the files it lists), then
// validates, writes and verifies it: the one way the calibrate steps change a bundle. what names the step in
// errors.
func updateManifest(bundleDir, what string, edit func(m *models.Manifest) error) error {
	m, err := models.ReadManifest(bundleDir)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := edit(m); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("%s: the changed manifest is invalid: %w", what, err)
	}
	if err := models.WriteManifest(bundleDir, m); err != nil {
		return fmt.Errorf("%s: writing manifest: %w", what, err)
	}
	if err := models.Verify(bundleDir); err != nil {
		return fmt.Errorf("%s: bundle no longer verifies: %w", what, err)
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

// writeRows writes a per-class map file of the bundle (rows.File: the rows as raw little-endian float32) and
// lists it with its checksum in m.Files. A non-finite value is refused before anything is written.
func writeRows(bundleDir string, m *models.Manifest, rows models.MapRows, data [][]float32) error {
	var buf []byte
	for _, row := range data {
		for _, v := range row {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("%s: non-finite value", rows.File)
			}
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
		}
	}
	path := filepath.Join(bundleDir, rows.File)
	if err := fsutil.WriteFileAtomic(path, buf, 0o644); err != nil {
		return err
	}
	sum, err := models.FileSHA256(path)
	if err != nil {
		return err
	}
	m.Files[rows.File] = models.FileEntry{SHA256: sum, Size: int64(len(buf))}
	return nil
}

// SavedReferenceFile and SavedReferenceRows are a reference saved outside a bundle (SaveReference): its
// description as JSON and its rows as raw little-endian float32, one class after another.
const (
	SavedReferenceFile = "reference.json"
	SavedReferenceRows = "reference.f32"
)

// SaveReference writes ref into dir (SavedReferenceFile, SavedReferenceRows): how the select stage hands the
// reference of its chosen recipe to the calibrate stage.
func SaveReference(dir string, ref *Reference) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var buf []byte
	for _, row := range ref.Maps {
		if len(row) != ref.Width*ref.Height {
			return fmt.Errorf("saving a map reference: a row of %d values for %dx%d maps", len(row), ref.Width, ref.Height)
		}
		for _, v := range row {
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
		}
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, SavedReferenceRows), buf, 0o644); err != nil {
		return err
	}
	meta := *ref
	meta.Maps = nil
	b, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(dir, SavedReferenceFile), append(b, '\n'), 0o644)
}

// LoadReference reads a reference SaveReference wrote, checking that its rows match its description.
func LoadReference(dir string) (*Reference, error) {
	b, err := os.ReadFile(filepath.Join(dir, SavedReferenceFile))
	if err != nil {
		return nil, fmt.Errorf("saved map reference: %w", err)
	}
	var ref Reference
	if err := json.Unmarshal(b, &ref); err != nil {
		return nil, fmt.Errorf("saved map reference %s: %w", filepath.Join(dir, SavedReferenceFile), err)
	}
	data, err := os.ReadFile(filepath.Join(dir, SavedReferenceRows))
	if err != nil {
		return nil, fmt.Errorf("saved map reference: %w", err)
	}
	n := ref.Width * ref.Height
	if n <= 0 || len(ref.Classes) == 0 || len(ref.Images) != len(ref.Classes) || len(data) != 4*n*len(ref.Classes) {
		return nil, fmt.Errorf("saved map reference %s: %d bytes for %d classes of %dx%d maps", dir, len(data), len(ref.Classes), ref.Width, ref.Height)
	}
	for c := range ref.Classes {
		row := make([]float32, n)
		for i := range row {
			row[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*(c*n+i):]))
		}
		ref.Maps = append(ref.Maps, row)
	}
	return &ref, nil
}
