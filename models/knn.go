package models

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
)

// The nearest-normal term's tensors (docs/bundle.md, "map.knn"): the knn graph takes the frame and its class's
// memory bank and returns the frame's pooled feature vectors and each position's distance to the nearest one
// in the bank.
const (
	KnnImage    = "image"    // [B, 3, H, W], the bundle's normalised input
	KnnBank     = "bank"     // [B, N, D], each frame's bank
	KnnFeatures = "features" // [B, D, h, w]
	KnnDistance = "distance" // [B, K, h, w]: the K = map.knn.k_max nearest distances, nearest first
)

// MaxKnnK bounds map.knn.k_max: a position's value is the mean of at most this many nearest bank vectors. The
// measured gains stop by 16 (docs/algorithm.md §1.9, "Mean of the k nearest"); past that the mean drifts from
// "the nearest normal" to "the class's average patch".
const MaxKnnK = 64

// MaxKnnBank bounds map.knn.size: the distance costs h*w x size x dims multiply-adds a frame.
const MaxKnnBank = 16384

// KnnTerm is the nearest-normal term (docs/algorithm.md §1.9, "the nearest-normal term"): a memory bank per
// class of the feature vectors of the training normals, and the distance of each of a frame's vectors to the
// nearest in its class's bank, smoothed and added to the map with Weight. The reconstruction answers "what would
// a normal part look like here"; the bank answers "has anything like this patch been seen on a normal part",
// without drawing a texture anew, which holds on stochastic backgrounds and parts that move.
type KnnTerm struct {
	// Graph is the knn graph's file (inputs KnnImage and KnnBank, outputs KnnFeatures and KnnDistance).
	Graph string `json:"graph"`
	// LayersGraph, when set, is the same graph without its backbone: it takes the frames' Layers (one input
	// [B, C, h, w] per layer, named as the layer) and KnnBank. The bundle's feature graph computes those layers
	// for the frame anyway, and the term was built only after checking that it gives the knn backbone's values
	// (vlmdiff_train.knn_graph --from-layers), so the scorer feeds them on instead of running the backbone on
	// the frame a second time. The map need not weigh those layers (KnnOnlyLayers). Graph stays: the banks are
	// built with it, and it serves when the feature graph is replaced (DropKnnLayersGraph).
	LayersGraph string `json:"layers_graph,omitempty"`
	// Bank is the banks' file: raw little-endian float32 [len(Classes)][Size][Dims].
	Bank string `json:"bank"`
	// Sources, when set, is a file of raw little-endian uint64 [len(Classes)][Size]: for each bank vector the
	// FNV-64a hash of the preprocessed frame it came from (SourceHash). Scoring a training normal against a bank
	// without its own vectors (pipeline.Options.KnnLeaveOneOut) needs it: a training normal's nearest
	// neighbour is itself.
	Sources string `json:"sources,omitempty"`
	// Classes names the banks; "" is drawn from every class, for a frame whose class has no bank.
	Classes []string `json:"classes"`
	Size    int      `json:"size"` // vectors per bank
	Dims    int      `json:"dims"` // values per vector
	// Height and Width are the distance map's size (the first layer's, before it is upsampled to the map).
	Height int `json:"height"`
	Width  int `json:"width"`
	// Layers, Backbone, Images and Source say where the vectors came from, for the record.
	Layers   []string `json:"layers,omitempty"`
	Backbone string   `json:"backbone,omitempty"`
	Sampling string   `json:"sampling,omitempty"` // how the bank was drawn: "coreset" (k-center greedy) or "random"
	Isolated float64  `json:"isolated,omitempty"` // the fraction of candidates dropped first as the most isolated from other normals
	Images   []int    `json:"images,omitempty"`
	Source   string   `json:"source,omitempty"`
	// Factor and Weight as models.PixelTerm's: Weight = Factor x (feature map spread) / (term spread) over the
	// reference normals, measured by the calibrate stage; 0 until then.
	Factor float64 `json:"factor"`
	Weight float64 `json:"weight"`
	// Sigma is the Gaussian sigma, in map pixels, that smooths the term's map after it is upsampled (0: not
	// smoothed; absent: map.sigma, as bundles before it had). The term's vectors are already 3 x 3 averages of
	// cells a few pixels wide, so the map's Gaussian, sized for the reconstruction's feature distance, widens
	// them a second time and flattens defects of a few pixels (docs/algorithm.md §1.9, "The nearest-normal
	// term's own smoothing").
	Sigma *float64 `json:"sigma,omitempty"`
	// KMax is how many nearest distances the knn graph gives each position (its KnnDistance output is
	// [B, KMax, h, w], nearest first); 0 is 1, the nearest alone, as bundles before it had.
	KMax int `json:"k_max,omitempty"`
	// Ks, aligned with Classes, is how many of those nearest distances a class's frames average (1..KMax;
	// absent: 1 for every class). Why a mean: a coreset keeps the rarest normal patches, and with k > 1 one
	// isolated bank vector that happens to resemble a defect vouches for it only in part. Why per class: the
	// select stage's painted set wants k > 1 on some materials (a moving part, a fractal texture) and k = 1 on
	// others (a woven texture), and the test splits agreed class by class (docs/algorithm.md §1.9).
	Ks []int `json:"ks,omitempty"`
}

// KMaxOrOne is KMax, 1 when absent.
func (t *KnnTerm) KMaxOrOne() int {
	return max(t.KMax, 1)
}

// KFor is how many nearest distances a frame of class averages: its bank's entry of Ks (the global bank's for
// a class without a bank), 1 without Ks.
func (t *KnnTerm) KFor(class string) int {
	if len(t.Ks) != len(t.Classes) {
		return 1
	}
	i := slices.Index(t.Classes, class)
	if i < 0 {
		i = slices.Index(t.Classes, "")
	}
	if i < 0 {
		return 1
	}
	return t.Ks[i]
}

// SmoothingSigma is the sigma the term's map is smoothed with: Sigma, else the map's (mapSigma).
func (t *KnnTerm) SmoothingSigma(mapSigma float64) float64 {
	if t.Sigma != nil {
		return *t.Sigma
	}
	return mapSigma
}

func (m *Manifest) validateKnn(p *problems) {
	t := m.Map.Knn
	if t == nil {
		return
	}
	for field, f := range map[string]string{"graph": t.Graph, "bank": t.Bank, "sources": t.Sources, "layers_graph": t.LayersGraph} {
		if f == "" {
			if field != "sources" && field != "layers_graph" {
				p.bad("map.knn."+field, "is empty")
			}
			continue
		}
		if _, ok := m.Files[f]; !ok {
			p.bad("map.knn."+field, "%s is not listed in files", f)
		}
	}
	seen := map[string]bool{}
	for _, c := range t.Classes {
		if seen[c] {
			p.bad("map.knn.classes", "%q appears twice", c)
		}
		seen[c] = true
	}
	if !seen[""] {
		p.bad("map.knn.classes", "needs the global bank \"\" for frames without a class")
	}
	if len(t.Images) != 0 && len(t.Images) != len(t.Classes) {
		p.bad("map.knn.images", "has %d counts for %d classes", len(t.Images), len(t.Classes))
	}
	if t.LayersGraph != "" {
		switch missing := MissingFeatureOutputs(m, t.Layers); {
		case len(t.Layers) == 0:
			p.bad("map.knn.layers_graph", "needs map.knn.layers, the feature graph's outputs it takes")
		case m.Features.Tokens:
			p.bad("map.knn.layers_graph", "takes maps [B, C, h, w]; the feature graph gives ViT tokens")
		case len(missing) > 0:
			p.bad("map.knn.layers_graph", "takes layers %v that are not outputs of the feature graph (graphs.features.outputs)", missing)
		}
	}
	if t.Size < 1 || t.Size > MaxKnnBank {
		p.bad("map.knn.size", "must be 1..%d vectors, got %d", MaxKnnBank, t.Size)
	}
	if t.Dims < 1 {
		p.bad("map.knn.dims", "must be at least 1, got %d", t.Dims)
	}
	if t.Height < 1 || t.Width < 1 || t.Height > m.Input.Height || t.Width > m.Input.Width {
		p.bad("map.knn", "a %dx%d distance map: want 1..%dx%d (at most the input size)", t.Height, t.Width, m.Input.Height, m.Input.Width)
	}
	if !(t.Factor >= 0) || math.IsInf(t.Factor, 0) {
		p.bad("map.knn.factor", "must be a finite number >= 0, got %v", t.Factor)
	}
	if !(t.Weight >= 0) || math.IsInf(t.Weight, 0) {
		p.bad("map.knn.weight", "must be a finite number >= 0, got %v", t.Weight)
	}
	if !(t.Isolated >= 0 && t.Isolated < 1) {
		p.bad("map.knn.isolated", "must be a fraction in [0, 1), got %v", t.Isolated)
	}
	if t.KMax < 0 || t.KMax > MaxKnnK || (t.Size >= 1 && t.KMax > t.Size) {
		p.bad("map.knn.k_max", "must be 1..%d nearest distances and at most map.knn.size (%d), got %d", MaxKnnK, t.Size, t.KMax)
	}
	if len(t.Ks) != 0 && len(t.Ks) != len(t.Classes) {
		p.bad("map.knn.ks", "has %d values for %d classes", len(t.Ks), len(t.Classes))
	}
	for i, k := range t.Ks {
		if k < 1 || k > t.KMaxOrOne() {
			c := ""
			if i < len(t.Classes) {
				c = t.Classes[i]
			}
			p.bad("map.knn.ks", "class %q averages %d nearest distances: want 1..%d (map.knn.k_max)", c, k, t.KMaxOrOne())
		}
	}
	if t.Sigma != nil && (!(*t.Sigma >= 0) || *t.Sigma > MaxPixelSigma || (*t.Sigma > 0 && !(m.Map.Truncate > 0))) {
		p.bad("map.knn.sigma", "must be a number from 0 to %g (with map.truncate > 0 when above 0), got %v", float64(MaxPixelSigma), *t.Sigma)
	}
}

// MissingFeatureOutputs lists the layers that the feature graph's declared outputs (graphs.features.outputs)
// lack: those a knn layers graph could not be fed (map.knn.layers_graph). The map need not weigh a layer for the
// term to take it: the scorer fetches the term's layers beside the map's (KnnOnlyLayers), so a map that drops a
// layer (a texture's painted set often drops MobileNetV2's block2) does not make the frame run the backbone twice.
func MissingFeatureOutputs(m *Manifest, layers []string) []string {
	outs := m.Graphs[RoleFeatures].Outputs
	var missing []string
	for _, l := range layers {
		if !slices.ContainsFunc(outs, func(o TensorSpec) bool { return o.Name == l }) {
			missing = append(missing, l)
		}
	}
	return missing
}

// KnnOnlyLayers lists the layers the term's layers graph takes that features.layers does not weigh: the scorer
// fetches them from the feature graph after the map's layers. Empty without a layers graph.
func KnnOnlyLayers(m *Manifest) []string {
	t := m.Map.Knn
	if t == nil || t.LayersGraph == "" {
		return nil
	}
	var only []string
	for _, l := range t.Layers {
		if !slices.ContainsFunc(m.Features.Layers, func(f FeatureLayer) bool { return f.Name == l }) {
			only = append(only, l)
		}
	}
	return only
}

// DropKnnLayersGraph makes the scorer run the knn graph on the image again: after the feature graph is replaced
// (another or a quantised one gives other values than the backbone the banks were built with) or no longer
// outputs a layer the layers graph takes. It removes map.knn.layers_graph from m and its file from m.Files, and
// returns the file's name for the caller to delete ("" when there was none).
func DropKnnLayersGraph(m *Manifest) string {
	t := m.Map.Knn
	if t == nil || t.LayersGraph == "" {
		return ""
	}
	f := t.LayersGraph
	delete(m.Files, f)
	t.LayersGraph = ""
	return f
}

// verifyKnn checks the knn graph's tensors against map.knn.
func verifyKnn(dir string, m *Manifest) error {
	t := m.Map.Knn
	if t == nil {
		return nil
	}
	gio, err := ReadGraphIO(filepath.Join(dir, t.Graph))
	if err != nil {
		return &CheckError{Check: "knn", File: t.Graph, Err: err}
	}
	in, h, w, d, k := m.Input, int64(t.Height), int64(t.Width), int64(t.Dims), int64(t.KMaxOrOne())
	f32 := func(name string, shape ...int64) TensorSpec {
		return TensorSpec{Name: name, Type: "float32", Shape: shape}
	}
	if err := errors.Join(
		matchTensors("input", []TensorSpec{f32(KnnImage, 0, 3, int64(in.Height), int64(in.Width)), f32(KnnBank, 0, 0, d)}, gio.Inputs, false),
		matchTensors("output", []TensorSpec{f32(KnnFeatures, 0, d, h, w), f32(KnnDistance, 0, k, h, w)}, gio.Outputs, false),
	); err != nil {
		return &CheckError{Check: "knn", File: t.Graph, Err: err}
	}
	if t.LayersGraph == "" {
		return nil
	}
	lio, err := ReadGraphIO(filepath.Join(dir, t.LayersGraph))
	if err != nil {
		return &CheckError{Check: "knn", File: t.LayersGraph, Err: err}
	}
	// its inputs are the feature graph's outputs of those layers, for the frames alone
	var ins []TensorSpec
	for _, l := range t.Layers {
		i := slices.IndexFunc(m.Graphs[RoleFeatures].Outputs, func(o TensorSpec) bool { return o.Name == l })
		if i < 0 {
			return &CheckError{Check: "knn", File: t.LayersGraph, Err: fmt.Errorf("layer %q is not an output of the feature graph", l)}
		}
		o := m.Graphs[RoleFeatures].Outputs[i]
		if len(o.Shape) != 4 {
			return &CheckError{Check: "knn", File: t.LayersGraph, Err: fmt.Errorf("layer %q has shape %v in the feature graph, want [B, C, h, w]", l, o.Shape)}
		}
		ins = append(ins, f32(l, 0, o.Shape[1], o.Shape[2], o.Shape[3]))
	}
	if err := errors.Join(
		matchTensors("input", append(ins, f32(KnnBank, 0, 0, d)), lio.Inputs, true),
		matchTensors("output", []TensorSpec{f32(KnnFeatures, 0, d, h, w), f32(KnnDistance, 0, k, h, w)}, lio.Outputs, false),
	); err != nil {
		return &CheckError{Check: "knn", File: t.LayersGraph, Err: err}
	}
	return nil
}

// KnnBanks is a bundle's decoded map.knn: each class's bank, [Size*Dims], and its vectors' source hashes.
type KnnBanks struct {
	Rows    map[string][]float32
	Sources map[string][]uint64 // nil without map.knn.sources
}

func loadKnn(dir string, m *Manifest) (*KnnBanks, error) {
	t := m.Map.Knn
	if t == nil {
		return nil, nil
	}
	rows, err := loadRows(dir, "knn", t.Bank, t.Classes, t.Size*t.Dims)
	if err != nil {
		return nil, err
	}
	kb := &KnnBanks{Rows: rows}
	if t.Sources == "" {
		return kb, nil
	}
	data, err := os.ReadFile(filepath.Join(dir, t.Sources))
	if err != nil {
		return nil, &CheckError{Check: "knn", File: t.Sources, Err: err}
	}
	if len(data) != len(t.Classes)*t.Size*8 {
		return nil, checkErr("knn", t.Sources, "has %d bytes, want %d classes x %d vectors x 8 = %d", len(data), len(t.Classes), t.Size, len(t.Classes)*t.Size*8)
	}
	kb.Sources = make(map[string][]uint64, len(t.Classes))
	for i, c := range t.Classes {
		row := make([]uint64, t.Size)
		for j := range row {
			row[j] = binary.LittleEndian.Uint64(data[(i*t.Size+j)*8:])
		}
		kb.Sources[c] = row
	}
	return kb, nil
}

// KnnBankFor returns a class's bank and its sources, falling back to the global bank; nil when the bundle has
// no nearest-normal term.
func (b *Bundle) KnnBankFor(class string) ([]float32, []uint64) {
	if b == nil || b.Knn == nil {
		return nil, nil
	}
	if _, ok := b.Knn.Rows[class]; !ok {
		class = ""
	}
	return b.Knn.Rows[class], b.Knn.Sources[class]
}

// SourceHash is the FNV-64a hash of a preprocessed frame's float32 values (little-endian bytes): the identity of
// a bank vector's source frame (KnnTerm.Sources).
func SourceHash(x []float32) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for _, v := range x {
		u := math.Float32bits(v)
		for k := 0; k < 4; k++ {
			h ^= uint64(byte(u >> (8 * k)))
			h *= prime
		}
	}
	return h
}
