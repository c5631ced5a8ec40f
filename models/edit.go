package models

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
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
		if err := copyFile(filepath.Join(src, n), filepath.Join(dst, n)); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// FeatureSwap describes a feature backbone to put into a bundle.
type FeatureSwap struct {
	Graph  string         // path of the ONNX feature graph
	Input  string         // its input tensor name
	Layers []FeatureLayer // outputs to use and their weights
	Tokens bool           // outputs are ViT tokens [B,1+N,D]
	Mean   []float32      // the backbone's input normalisation, when it differs from the bundle's
	Std    []float32
}

// ReplaceFeatures writes into dst a copy of the bundle src whose feature graph is fs.Graph: the same
// reconstruction scored with another backbone (ResNet50, DINO, MobileNetV2, ...). The graph's declared inputs
// and outputs are read from the file, checked against fs, and the result is verified.
func ReplaceFeatures(src, dst string, fs FeatureSwap) (*Manifest, error) {
	if err := CopyBundle(src, dst); err != nil {
		return nil, err
	}
	m, err := ReadManifest(dst)
	if err != nil {
		return nil, err
	}
	gio, err := ReadGraphIO(fs.Graph)
	if err != nil {
		return nil, err
	}
	old := m.Graphs[RoleFeatures]
	delete(m.Files, old.File)
	if old.File != "" {
		os.Remove(filepath.Join(dst, old.File))
	}
	name := "features.onnx"
	if err := copyFile(fs.Graph, filepath.Join(dst, name)); err != nil {
		return nil, err
	}
	// Only the chosen outputs are declared; the session asks for just those.
	var outs []TensorSpec
	for _, l := range fs.Layers {
		found := false
		for _, o := range gio.Outputs {
			if o.Name == l.Name {
				outs = append(outs, o)
				found = true
				break
			}
		}
		if !found {
			var have []string
			for _, o := range gio.Outputs {
				have = append(have, o.Name)
			}
			return nil, fmt.Errorf("%s has no output %q (outputs: %s)", fs.Graph, l.Name, strings.Join(have, ", "))
		}
	}
	var ins []TensorSpec
	for _, i := range gio.Inputs {
		if i.Name == fs.Input {
			ins = append(ins, i)
		}
	}
	if len(ins) == 0 || len(gio.Inputs) != 1 {
		return nil, fmt.Errorf("%s must have exactly one input named %q, has %v", fs.Graph, fs.Input, gio.Inputs)
	}
	m.Graphs[RoleFeatures] = GraphSpec{File: name, Inputs: ins, Outputs: outs}
	m.Features = Features{Input: fs.Input, Layers: fs.Layers, Tokens: fs.Tokens, Mean: fs.Mean, Std: fs.Std}
	m.Files[name] = FileEntry{}
	m.Version += "+" + strings.TrimSuffix(filepath.Base(fs.Graph), filepath.Ext(fs.Graph))
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if err := Rehash(dst, m); err != nil {
		return nil, err
	}
	if err := Verify(dst); err != nil {
		return nil, err
	}
	return m, nil
}
