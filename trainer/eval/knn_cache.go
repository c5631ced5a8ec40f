package eval

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

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

// knnCached is a built term: its banks (LayersGraph and NotShared ""), its knn graphs' bytes by k_max (the
// banks do not depend on how many nearest distances the graph gives), and the layers graphs made for feature
// graphs by their sha256 and k_max.
type knnCached struct {
	kb     KnnBanks
	graphs map[int][]byte
	feds   map[string]knnFed
}

// knnFed is the layers graph made for one feature graph: its bytes, or why that feature graph cannot feed it.
type knnFed struct {
	features  string // the feature graph's sha256 and the graph's count of nearest distances
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
	// the banks alone: the graph's count of nearest distances (kept per count in the entry) and each class's
	// count (map.knn.ks only) leave them the same
	spec.Ks, spec.KMax = nil, 0
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

// keep stores banks just built with their knn graph of kmax nearest distances at graph, and returns the entry
// (nil without a cache).
func (c *KnnCache) keep(key string, kb *KnnBanks, graph string, kmax int) (*knnCached, error) {
	if c == nil {
		return nil, nil
	}
	e := &knnCached{kb: *kb}
	e.kb.LayersGraph, e.kb.NotShared, e.kb.Reused = "", "", false
	if err := e.keepGraph(graph, kmax); err != nil {
		return nil, err
	}
	if c.terms == nil {
		c.terms = map[string]*knnCached{}
	}
	c.terms[key] = e
	return e, nil
}

// keepGraph stores the knn graph of kmax nearest distances at path.
func (e *knnCached) keepGraph(path string, kmax int) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("keeping the knn graph: %w", err)
	}
	if e.graphs == nil {
		e.graphs = map[int][]byte{}
	}
	e.graphs[max(kmax, 1)] = b
	return nil
}

// restore returns a kept term's banks (Reused) and writes its knn graph of kmax nearest distances into dir,
// returning the graph's path, or "" when none of that count was kept (the caller makes it: keepGraph).
func (e *knnCached) restore(dir string, kmax int) (kb *KnnBanks, graph string, err error) {
	kb = new(KnnBanks)
	*kb = e.kb
	kb.Reused = true
	g, ok := e.graphs[max(kmax, 1)]
	if !ok {
		return kb, "", nil
	}
	graph = filepath.Join(dir, KnnGraphFile)
	if err := os.WriteFile(graph, g, 0o644); err != nil {
		return nil, "", err
	}
	return kb, graph, nil
}

// fed returns the layers graph of kmax nearest distances kept for the feature graph at path and whether there
// is one; without one, a knnFed naming that feature graph and count for keepFed. A nil entry (no cache) keeps
// nothing.
func (e *knnCached) fed(path string, kmax int) (knnFed, bool, error) {
	if e == nil {
		return knnFed{}, false, nil
	}
	sum, err := models.FileSHA256(path)
	if err != nil {
		return knnFed{}, false, fmt.Errorf("feature graph: %w", err)
	}
	sum += "/k" + strconv.Itoa(max(kmax, 1))
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
