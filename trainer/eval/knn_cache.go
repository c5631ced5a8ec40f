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
// `vlmdiff train` the select stage builds the term for its candidate bundles (the layer weighing, the start
// steps, the smoothing, the pooling) and the calibrate stage for the exported bundle: up to five builds of the
// same banks from the same normals (41 s for the noisy-background part's 100 normals, 1m42s-1m48s for PIPED's
// 383, 2 cores). The banks are the same when the term's recipe (KnnSpec, the backbone file's contents), the
// bundle's input (size, resize, normalisation: what the frames are preprocessed with), the normals (paths,
// classes, sizes, modification times) and the source are; a candidate's feature layers and weights, terms and
// thresholds do not enter, since the banks come from the knn graph on the frame. The graph fed from a bundle's
// feature graph (models.KnnTerm.LayersGraph) is kept per feature graph (its contents), with the verdict of the
// check that made it. BuildKnnBanks is deterministic (seeded draws), so a rebuild would write the same banks;
// the cache skips the work, not a decision.
//
// One cache serves AddKnn calls with the same pipeline.Options (the ONNX Runtime settings the graph ran
// with). The zero value is ready; it is not safe for concurrent use.
type KnnCache struct {
	terms map[string]*knnCached
}

// knnCached is a built term: its banks (LayersGraph and NotShared ""), its knn graph's bytes, and the layers
// graphs made for feature graphs by their sha256.
type knnCached struct {
	kb    KnnBanks
	graph []byte
	feds  map[string]knnFed
}

// knnFed is the layers graph made for one feature graph: its bytes, or why that feature graph cannot feed it.
type knnFed struct {
	features  string // the feature graph's sha256
	graph     []byte
	notShared string
}

// knnCacheKey identifies the banks AddKnn builds (see KnnCache).
func knnCacheKey(m *models.Manifest, spec KnnSpec, normal []dataset.Item, source string) (string, error) {
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
	data, err := json.Marshal(struct {
		Spec     KnnSpec
		Backbone string
		Input    models.Input
		Normals  []item
		Source   string
	}{spec, backbone, m.Input, items, source})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

// AddKnn is eval.AddKnn through the cache: banks built before with the same key (see KnnCache) are written
// into bundleDir from what the cache kept, and the returned banks say Reused; any others are built and kept.
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

// keep stores banks just built with their knn graph at graph, and returns the entry (nil without a cache).
func (c *KnnCache) keep(key string, kb *KnnBanks, graph string) (*knnCached, error) {
	if c == nil {
		return nil, nil
	}
	e := &knnCached{kb: *kb}
	e.kb.LayersGraph, e.kb.NotShared, e.kb.Reused = "", "", false
	var err error
	if e.graph, err = os.ReadFile(graph); err != nil {
		return nil, fmt.Errorf("keeping the knn graph: %w", err)
	}
	if c.terms == nil {
		c.terms = map[string]*knnCached{}
	}
	c.terms[key] = e
	return e, nil
}

// restore writes a kept term's knn graph into dir and returns its banks (Reused) and the graph's path.
func (e *knnCached) restore(dir string) (kb *KnnBanks, graph string, err error) {
	kb = new(KnnBanks)
	*kb = e.kb
	kb.Reused = true
	graph = filepath.Join(dir, KnnGraphFile)
	if err := os.WriteFile(graph, e.graph, 0o644); err != nil {
		return nil, "", err
	}
	return kb, graph, nil
}

// fed returns the layers graph kept for the feature graph at path and whether there is one; without one, a
// knnFed naming that feature graph for keepFed. A nil entry (no cache) keeps nothing.
func (e *knnCached) fed(path string) (knnFed, bool, error) {
	if e == nil {
		return knnFed{}, false, nil
	}
	sum, err := models.FileSHA256(path)
	if err != nil {
		return knnFed{}, false, fmt.Errorf("feature graph: %w", err)
	}
	f, ok := e.feds[sum]
	if !ok {
		f.features = sum
	}
	return f, ok, nil
}

// keepFed stores a layers graph made for f.features.
func (e *knnCached) keepFed(f knnFed) {
	if e == nil {
		return
	}
	if e.feds == nil {
		e.feds = map[string]knnFed{}
	}
	e.feds[f.features] = f
}
