package eval

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
)

// KnnCache remembers the nearest-normal terms that AddKnn built, so that a later AddKnn of the same term writes
// the same files without running every normal through the knn graph and drawing the coresets again. In one
// `vlmdiff train` the select stage builds the term for its candidate bundle, its pooling step for another, and
// the calibrate stage for the exported bundle: three builds of the same banks from the same normals (1m42s to
// 1m48s each for PIPED's 383 normals on 2 cores). A term is the same when its recipe (KnnSpec, the backbone
// file's contents), the bundle's input (size, resize, normalisation: what the frames are preprocessed with),
// whether its feature graph can feed the term's layers and, where it can, that graph's contents and
// normalisation (what the layers graph is made from), the normals (paths, classes, sizes, modification times)
// and the source are; a candidate's feature weights, other layers, terms and thresholds do not enter. BuildKnnBanks is deterministic (seeded draws), so a rebuild would write the same
// banks; the cache skips the work, not a decision.
//
// One cache serves AddKnn calls with the same pipeline.Options (the ONNX Runtime settings the graph ran
// with). The zero value is ready; it is not safe for concurrent use.
type KnnCache struct {
	terms map[string]*knnCached
}

// knnCached is a built term: its banks (LayersGraph "") and its graphs' bytes.
type knnCached struct {
	kb            KnnBanks
	graph, layers []byte // layers nil: the knn graph runs on the frame
}

// knnCacheKey identifies a term built by AddKnn (see KnnCache).
func knnCacheKey(bundleDir string, m *models.Manifest, spec KnnSpec, normal []dataset.Item, source string) (string, error) {
	backbone, err := models.FileSHA256(spec.Backbone)
	if err != nil {
		return "", fmt.Errorf("nearest-normal term: backbone: %w", err)
	}
	type item struct {
		Path, Class string
		Size        int64
		Modified    int64
	}
	items := make([]item, len(normal))
	for i, it := range normal {
		st, err := os.Stat(it.Path)
		if err != nil {
			return "", fmt.Errorf("nearest-normal term: normal image: %w", err)
		}
		items[i] = item{Path: it.Path, Class: it.Class, Size: st.Size(), Modified: st.ModTime().UnixNano()}
	}
	// the feature graph enters only where AddKnn makes a layers graph from it: a candidate's graph that lacks the
	// term's layers, or keeps other ones, leaves the banks as they are
	type featureGraph struct {
		Shared                  bool
		Graph, Input, Precision string
		Mean, Std               []float32
	}
	fg := featureGraph{Shared: knnNotShared(m, spec.Layers) == ""}
	if fg.Shared {
		g, ok := m.Graphs[models.RoleFeatures]
		if !ok {
			return "", fmt.Errorf("nearest-normal term: the bundle has no %s graph", models.RoleFeatures)
		}
		if fg.Graph, err = models.FileSHA256(filepath.Join(bundleDir, g.File)); err != nil {
			return "", fmt.Errorf("nearest-normal term: feature graph: %w", err)
		}
		fg.Input, fg.Precision, fg.Mean, fg.Std = m.Features.Input, m.Features.Precision, m.Features.Mean, m.Features.Std
	}
	data, err := json.Marshal(struct {
		Spec         KnnSpec
		Backbone     string
		Input        models.Input
		FeatureGraph featureGraph
		Normals      []item
		Source       string
	}{spec, backbone, m.Input, fg, items, source})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

// AddKnn is eval.AddKnn through the cache: a term built before with the same key (see KnnCache) is written
// into bundleDir from what the cache kept, and the returned banks say Reused; any other is built and kept.
func (c *KnnCache) AddKnn(ctx context.Context, bundleDir string, spec KnnSpec, makeGraph MakeKnnGraph, normal []dataset.Item, factor float64, opt pipeline.Options, source string) (*KnnBanks, error) {
	return addKnn(ctx, bundleDir, spec, makeGraph, normal, factor, opt, source, c)
}

// lookup returns the term kept under key, or nil.
func (c *KnnCache) lookup(key string) *knnCached {
	if c == nil {
		return nil
	}
	return c.terms[key]
}

// keep stores a term just built: kb with its graph at graph and, when kb.LayersGraph is set, that graph.
func (c *KnnCache) keep(key string, kb *KnnBanks, graph string) error {
	if c == nil {
		return nil
	}
	e := &knnCached{kb: *kb}
	e.kb.LayersGraph, e.kb.Reused = "", false
	var err error
	if e.graph, err = os.ReadFile(graph); err != nil {
		return fmt.Errorf("keeping the knn graph: %w", err)
	}
	if kb.LayersGraph != "" {
		if e.layers, err = os.ReadFile(kb.LayersGraph); err != nil {
			return fmt.Errorf("keeping the knn layers graph: %w", err)
		}
	}
	if c.terms == nil {
		c.terms = map[string]*knnCached{}
	}
	c.terms[key] = e
	return nil
}

// restore writes a kept term's graphs into dir and returns its banks pointing at them.
func (e *knnCached) restore(dir string) (kb *KnnBanks, graph string, err error) {
	kb = new(KnnBanks)
	*kb = e.kb
	kb.Reused = true
	graph = filepath.Join(dir, KnnGraphFile)
	if err := os.WriteFile(graph, e.graph, 0o644); err != nil {
		return nil, "", err
	}
	if e.layers != nil {
		kb.LayersGraph = filepath.Join(dir, KnnLayersGraphFile)
		if err := os.WriteFile(kb.LayersGraph, e.layers, 0o644); err != nil {
			return nil, "", err
		}
	}
	return kb, graph, nil
}
