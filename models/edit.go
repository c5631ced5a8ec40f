package models

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vlmdiff/edge/internal/fsutil"
)

// CopyBundle copies every file of a bundle into dst (created if needed).
func CopyBundle(src, dst string) error {
	m, err := ReadManifest(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	names := []string{ManifestFile}
	for n := range m.Files {
		names = append(names, n)
	}
	for _, n := range names {
		if err := fsutil.CopyFile(filepath.Join(src, n), filepath.Join(dst, n)); err != nil {
			return err
		}
	}
	return nil
}

// FeatureSwap describes a feature backbone to put into a bundle.
type FeatureSwap struct {
	Graph  string         // path of the ONNX feature graph
	Input  string         // its input tensor name
	Layers []FeatureLayer // outputs to use and their weights
	Tokens bool           // outputs are ViT tokens [B,1+N,D]
	Mean   []float32      // the backbone's input normalisation, when it differs from the bundle's
	Std    []float32
	// Precision is the new graph's Features.Precision ("" for float32), and WeightBits its Features.WeightBits.
	Precision  string
	WeightBits int
}

// ErrFeatureGraph is wrapped by ReplaceFeatures' error when the feature graph does not fit the swap: not a
// readable ONNX file, not exactly one input of the given name, or lacking a requested output.
var ErrFeatureGraph = errors.New("feature graph does not fit")

// ReplaceFeatures writes into dst a copy of the bundle src whose feature graph is fs.Graph: the same
// reconstruction scored with another backbone (ResNet50, DINO, MobileNetV2, ...). The graph's declared inputs
// and outputs are read from the file, checked against fs, and the result is verified.
//
// It is all or nothing: the new bundle is built and verified in a temporary directory beside dst, synced to
// disk, and renamed into place; dst may be a new path, an existing bundle to replace, or src itself. On any
// failure src and dst are as they were and no temporary directory is left behind.
func ReplaceFeatures(src, dst string, fs FeatureSwap) (*Manifest, error) {
	m, err := ReadManifest(src)
	if err != nil {
		return nil, err
	}
	graph, err := featureGraphSpec(fs)
	if err != nil {
		return nil, err
	}
	dst = filepath.Clean(dst)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("set features: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op once tmp has become dst
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	if err := writeSwapped(src, tmp, m, fs, graph); err != nil {
		return nil, err
	}
	if err := replaceDir(tmp, dst); err != nil {
		return nil, fmt.Errorf("set features: %w", err)
	}
	return m, nil
}

// featureGraphSpec reads the graph's declared tensors and returns its spec for the manifest: its one input, and
// only the chosen outputs (the session asks for just those).
func featureGraphSpec(fs FeatureSwap) (GraphSpec, error) {
	gio, err := ReadGraphIO(fs.Graph)
	if err != nil {
		return GraphSpec{}, fmt.Errorf("%w: %s: %v", ErrFeatureGraph, fs.Graph, err)
	}
	if len(gio.Inputs) != 1 || gio.Inputs[0].Name != fs.Input {
		return GraphSpec{}, fmt.Errorf("%w: %s must have exactly one input named %q, has %v", ErrFeatureGraph, fs.Graph, fs.Input, gio.Inputs)
	}
	spec := GraphSpec{File: featuresFile, Inputs: gio.Inputs}
	for _, l := range fs.Layers {
		i := slices.IndexFunc(gio.Outputs, func(o TensorSpec) bool { return o.Name == l.Name })
		if i < 0 {
			var have []string
			for _, o := range gio.Outputs {
				have = append(have, o.Name)
			}
			return GraphSpec{}, fmt.Errorf("%w: %s has no output %q (outputs: %s)", ErrFeatureGraph, fs.Graph, l.Name, strings.Join(have, ", "))
		}
		spec.Outputs = append(spec.Outputs, gio.Outputs[i])
	}
	return spec, nil
}

// featuresFile is the name a swapped-in feature graph gets inside the bundle.
const featuresFile = "features.onnx"

// writeSwapped writes into the empty directory dir the bundle src with its feature graph replaced, updates m to
// the new manifest, verifies the result and syncs it to disk.
func writeSwapped(src, dir string, m *Manifest, fs FeatureSwap, graph GraphSpec) error {
	delete(m.Files, m.Graphs[RoleFeatures].File)
	DropKnnLayersGraph(m) // the new graph's layers are not the values the banks were built from
	for name := range m.Files {
		if err := fsutil.CopyFile(filepath.Join(src, name), filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	if err := writeFeatureGraph(fs, filepath.Join(dir, featuresFile)); err != nil {
		return err
	}
	m.Graphs[RoleFeatures] = graph
	m.Features = Features{Input: fs.Input, Layers: fs.Layers, Tokens: fs.Tokens, Mean: fs.Mean, Std: fs.Std, Precision: fs.Precision, WeightBits: fs.WeightBits}
	m.Files[featuresFile] = FileEntry{}
	m.Version += "+" + strings.TrimSuffix(filepath.Base(fs.Graph), filepath.Ext(fs.Graph))
	if err := m.Validate(); err != nil {
		return err
	}
	if err := Rehash(dir, m); err != nil {
		return err
	}
	if err := Verify(dir); err != nil {
		return err
	}
	if err := syncPath(filepath.Join(dir, ManifestFile)); err != nil {
		return err
	}
	return syncPath(dir)
}

// writeFeatureGraph writes fs.Graph to dst cut to fs.Layers (CutGraph: ONNX Runtime would run the layers the
// bundle does not map on every frame); a graph with control flow, or one with nothing to cut, is copied whole.
func writeFeatureGraph(fs FeatureSwap, dst string) error {
	data, err := os.ReadFile(fs.Graph)
	if err != nil {
		return err
	}
	names := make([]string, len(fs.Layers))
	for i, l := range fs.Layers {
		names[i] = l.Name
	}
	cut, removed, err := CutGraph(data, names)
	switch {
	case errors.Is(err, ErrNotCut):
		return fsutil.CopyFile(fs.Graph, dst)
	case err != nil:
		return fmt.Errorf("%w: %s: %v", ErrFeatureGraph, fs.Graph, err)
	case removed == 0:
		return fsutil.CopyFile(fs.Graph, dst)
	}
	return fsutil.WriteFileAtomic(dst, cut, 0o644)
}

// replaceDir renames the directory tmp to dst. An existing dst is moved aside first and removed after; if tmp
// cannot take its place, it is moved back.
func replaceDir(tmp, dst string) error {
	parent := filepath.Dir(dst)
	if _, err := os.Lstat(dst); err == nil {
		old, err := os.MkdirTemp(parent, "."+filepath.Base(dst)+".old-")
		if err != nil {
			return err
		}
		if err := os.Rename(dst, filepath.Join(old, "bundle")); err != nil {
			os.Remove(old)
			return fmt.Errorf("moving the old %s aside: %w", dst, err)
		}
		if err := os.Rename(tmp, dst); err != nil {
			if rerr := os.Rename(filepath.Join(old, "bundle"), dst); rerr != nil {
				return fmt.Errorf("%w; and restoring the old bundle failed (it is in %s): %v", err, old, rerr)
			}
			os.Remove(old)
			return err
		}
		os.RemoveAll(old) // best effort: the new bundle is in place either way
	} else if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	return syncPath(parent)
}

// syncPath flushes a file or a directory (its entries) to disk.
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
