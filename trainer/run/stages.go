package run

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vlmdiff/edge/internal/fsutil"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/caption"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
	"github.com/vlmdiff/edge/trainer/metrics"
)

// StageNames are the training stages in order.
var StageNames = []string{"index", "caption", "finetune-ae", "build", "train", "select", "export", "calibrate", "evaluate", "register"}

// Training is one configured run: the config, the run directory and the tools the stages use.
type Training struct {
	Config *Config
	Dir    string
	Python Python
	// ORT configures the Go scoring pipeline for calibrate and evaluate.
	ORT    pipeline.Options
	Out    io.Writer
	Logger *slog.Logger

	// knn keeps the nearest-normal banks built in this run: the select stage's candidates and the calibrate
	// stage's bundle get the same term from the same normals (eval.KnnCache).
	knn eval.KnnCache
}

// Preflight checks, before any work, that the config is usable, that Python imports torch and vlmdiff_train,
// that the ONNX Runtime library loads, and that the dataset is there in a known layout. It returns the one-line summary printed by `vlmdiff train`.
func (t *Training) Preflight(ctx context.Context) (string, error) {
	c := t.Config
	py, err := t.Python.Check(ctx)
	if err != nil {
		return "", err
	}
	if err := t.checkStageSettings(ctx); err != nil {
		return "", err
	}
	if st, err := os.Stat(c.Data.Root); err != nil || !st.IsDir() {
		return "", fmt.Errorf("data.root %s: not a readable directory", c.Data.Root)
	}
	layout := c.Data.Layout
	if layout == dataset.LayoutAuto {
		if layout, err = dataset.Detect(c.Data.Root); err != nil {
			return "", fmt.Errorf("data.root: %w", err)
		}
	}
	for _, f := range []struct{ field, path string }{
		{"finetune_ae.init", c.FinetuneAE.Init}, {"finetune_ae.perceptual_onnx", c.FinetuneAE.PerceptualONNX},
		{"build.sd_checkpoint", c.Build.SDCheckpoint}, {"build.tokenizer", c.Build.Tokenizer},
		{"export.features_onnx", c.Export.FeaturesONNX},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return "", fmt.Errorf("%s: %w", f.field, err)
		}
	}
	// calibrate and evaluate score through ONNX Runtime: find out now, not after hours of training.
	if err := pipeline.InitRuntime(t.ORT.Library); err != nil {
		return "", fmt.Errorf("onnx runtime (for calibrate and evaluate): %w", err)
	}
	return fmt.Sprintf("check ok: config %s (preset %s, %dpx, device %s); %s; onnxruntime %s; dataset %s (%s)",
		c.Path(), c.Preset, c.Data.Size, c.Device, py, pipeline.RuntimeLibrary(), c.Data.Root, layout), nil
}

// checkStageSettings hands Python the config each Python stage will be given (the earlier stages' outputs as
// placeholders) and returns what it refuses. Why: the Go config passes each section's `extra` on as it is, so an
// unknown key, a wrong type or a value out of range there (build.extra.res_block for res_blocks, res_blocks: 0)
// otherwise fails only when that stage
// starts, after the stages before it: the autoencoder's 10-25 minutes on 2 cores. The placeholders lie in a
// directory that is never made, so nothing of an earlier run (its index) is read here.
func (t *Training) checkStageSettings(ctx context.Context) error {
	cfgs := t.pythonStageConfigs(placeholderRun(filepath.Join(t.Dir, "check-stages")))
	f, err := os.CreateTemp("", "vlmdiff-stages-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := json.NewEncoder(f).Encode(cfgs); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := t.Python.Module(ctx, "vlmdiff_train", "check-stages", "--config", f.Name())
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("config %s: the Python stages refuse their settings (each section's extra passes on to its stage as it is): %v: %s",
			t.Config.Path(), err, lastLine(stderr.String()))
	}
	return nil
}

// placeholderRun is a run context in dir whose upstream stages (index, caption, finetune-ae, build, train) have
// recorded outputs, so the stage config builders write what they write in a real run: for the check line
// (checkStageSettings) and the schema test.
func placeholderRun(dir string) *StageContext {
	rec := func(outs map[string]string) *Record { return &Record{Outputs: outs} }
	return &StageContext{Dir: dir, records: map[string]*Record{
		"index":       rec(map[string]string{"index": "index.jsonl"}),
		"caption":     rec(map[string]string{"captions": "captions/captions.json"}),
		"finetune-ae": rec(map[string]string{"autoencoder": "ae/ae.pt"}),
		"build":       rec(map[string]string{"model": "model.pt"}),
		"train":       rec(map[string]string{"model": "train/model-trained.pt"}),
	}}
}

// pythonStageConfigs is the config of each Python stage as the runner writes it in sc.
func (t *Training) pythonStageConfigs(sc *StageContext) map[string]map[string]any {
	return map[string]map[string]any{"finetune-ae": t.finetuneAEConfig(sc), "build": t.buildConfig(sc),
		"train": t.trainConfig(sc), "export": t.exportConfig(sc)}
}

// Runner returns the stage runner of this training.
func (t *Training) Runner(from, until string) *Runner {
	return &Runner{Dir: t.Dir, Stages: t.Stages(), From: from, Until: until, Out: t.Out, Logger: t.Logger}
}

// common are the keys every Python stage accepts.
func (t *Training) common(sc *StageContext, sub string) map[string]any {
	c := t.Config
	return map[string]any{"run_dir": sc.Path(sub), "seed": c.Seed, "device": c.Device, "threads": c.Threads}
}

// data adds the dataset keys of the stages that read images.
func (t *Training) data(sc *StageContext, m map[string]any) {
	c := t.Config
	m["index"] = sc.Output("index", "index")
	if *c.Train.UseCaptions {
		m["captions"] = sc.Output("caption", "captions")
	} else {
		m["default_caption"] = ""
	}
	if len(c.Data.Classes) > 0 {
		m["classes"] = c.Data.Classes
	}
	m["height"], m["width"] = c.Data.Size, c.Data.Size
	if c.Data.Augment {
		m["augment"] = true
	}
}

func setIf[T comparable](m map[string]any, k string, v T) {
	var zero T
	if v != zero {
		m[k] = v
	}
}

func merge(m map[string]any, extra map[string]any) map[string]any {
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// Stages builds the stage table.
func (t *Training) Stages() []Stage {
	c := t.Config
	return []Stage{
		// index and caption are cut off (Runner): a dataset copied anew redoes the index, and when the index
		// reads the same the stages after it are kept.
		{Name: "index", Inputs: func() (any, error) {
			fp, err := fingerprint(c.Data.Root)
			return map[string]any{"data": c.Data, "files": fp}, err
		}, Run: t.runIndex, Cutoff: true},
		{Name: "caption", Inputs: func() (any, error) {
			cc := c.Caption
			return cc, nil // the API key is read from the environment and not hashed
		}, Run: t.runCaption, Cutoff: true},
		{Name: "finetune-ae", Inputs: func() (any, error) {
			return map[string]any{"ae": c.FinetuneAE, "preset": c.Preset, "seed": c.Seed, "size": c.Data.Size, "aug": c.Data.Augment}, nil
		}, Run: func(ctx context.Context, sc *StageContext) (map[string]string, error) {
			return t.python(ctx, sc, "finetune-ae", t.finetuneAEConfig(sc), nil)
		}},
		{Name: "build", Inputs: func() (any, error) {
			return map[string]any{"build": c.Build, "preset": c.Preset, "seed": c.Seed, "classes": c.Data.Classes}, nil
		}, Run: func(ctx context.Context, sc *StageContext) (map[string]string, error) {
			return t.python(ctx, sc, "build", t.buildConfig(sc), nil)
		}},
		{Name: "train", Inputs: func() (any, error) {
			return map[string]any{"train": c.Train, "seed": c.Seed, "device": c.Device, "size": c.Data.Size, "aug": c.Data.Augment}, nil
		}, Run: func(ctx context.Context, sc *StageContext) (map[string]string, error) {
			return t.python(ctx, sc, "train", t.trainConfig(sc), c.Train.Launcher)
		}},
		// select exports and scores each candidate: the export section and whether a reference is measured shape
		// its scores as much as its own section does (its reference count is select.reference_per_class, already
		// resolved from calibrate's when unset).
		{Name: "select", Inputs: func() (any, error) {
			in := map[string]any{"select": c.Select, "export": c.Export, "reference": c.Calibrate.Reference}
			if len(c.Select.KnnFactors) > 0 { // the nearest-normal term is weighed as calibrate.knn builds it
				in["knn"] = c.Calibrate.Knn
			}
			if c.Calibrate.PixelFactor > 0 { // the candidates are scored with the term (absent before the field: same hash)
				in["pixel_factor"] = c.Calibrate.PixelFactor
			}
			if c.Calibrate.PixelSigma != nil { // the term's own smoothing, weighed and scored with it
				in["pixel_sigma"] = *c.Calibrate.PixelSigma
			}
			return in, nil
		}, Run: t.runSelect},
		{Name: "export", Inputs: func() (any, error) {
			return map[string]any{"export": c.Export, "name": c.Name, "version": c.Version, "classes": c.Data.Classes, "config": c.sum}, nil
		}, Run: t.runExport},
		{Name: "calibrate", Inputs: func() (any, error) { return c.Calibrate, nil }, Run: t.runCalibrate},
		{Name: "evaluate", Inputs: func() (any, error) { return c.Evaluate, nil }, Run: t.runEvaluate},
		{Name: "register", Inputs: func() (any, error) { return c.Register, nil }, Run: t.runRegister},
	}
}

// The CONFIG.json of each Python stage. The keys, their types and defaults are defined by the stage's dataclass
// in trainer/python/vlmdiff_train/stage_config.py; TestStageConfigsMatchPythonSchema checks every config these
// functions build (for each committed configs/train/*.yaml) against that definition.

// finetuneAEConfig is the finetune-ae stage's config.
func (t *Training) finetuneAEConfig(sc *StageContext) map[string]any {
	c := t.Config
	m := t.common(sc, "ae")
	t.data(sc, m)
	f := c.FinetuneAE
	m["preset"], m["max_steps"] = c.Preset, f.MaxSteps
	setIf(m, "init", f.Init)
	setIf(m, "perceptual_onnx", f.PerceptualONNX)
	if len(f.PerceptualLayers) > 0 {
		m["perceptual_layers"] = f.PerceptualLayers
	}
	setIf(m, "batch_size", f.BatchSize)
	setIf(m, "accumulate", f.Accumulate)
	setIf(m, "lr", f.LR)
	setIf(m, "save_every", f.SaveEvery)
	return merge(m, f.Extra)
}

// buildConfig is the build stage's config.
func (t *Training) buildConfig(sc *StageContext) map[string]any {
	c := t.Config
	m := t.common(sc, "build")
	b := c.Build
	m["preset"] = c.Preset
	m["autoencoder"] = sc.Output("finetune-ae", "autoencoder")
	m["out"] = sc.Path("model.pt")
	m["index"] = sc.Output("index", "index")
	if *c.Train.UseCaptions {
		m["captions"] = sc.Output("caption", "captions")
	}
	m["classes"] = t.classes(sc)
	setIf(m, "sd_checkpoint", b.SDCheckpoint)
	setIf(m, "tokenizer", b.Tokenizer)
	return merge(m, b.Extra)
}

// trainConfig is the train stage's config.
func (t *Training) trainConfig(sc *StageContext) map[string]any {
	c := t.Config
	m := t.common(sc, "train")
	t.data(sc, m)
	tr := c.Train
	m["model"] = sc.Output("build", "model")
	setIf(m, "max_steps", tr.MaxSteps)
	setIf(m, "epochs", tr.Epochs)
	setIf(m, "batch_size", tr.BatchSize)
	setIf(m, "accumulate", tr.Accumulate)
	setIf(m, "lr", tr.LR)
	setIf(m, "save_every", tr.SaveEvery)
	setIf(m, "amp", tr.AMP)
	setIf(m, "grad_clip", tr.GradClip)
	setIf(m, "posterior", tr.Posterior)
	setIf(m, "snapshot_every", tr.SnapshotEvery)
	return merge(m, tr.Extra)
}

// exportConfig is the export stage's config. With export.feature_layers, features_onnx names the copy of the
// backbone pruned to those layers that runExport writes first (prunedFeatures).
func (t *Training) exportConfig(sc *StageContext) map[string]any {
	c := t.Config
	e := c.Export
	m := t.common(sc, "export")
	m["model"] = trainedModel(sc)
	m["out"] = sc.Path("bundle")
	m["name"], m["version"] = c.Name, t.version()
	m["classes"] = t.classes(sc)
	m["dataset"] = c.Data.Root
	m["probes"] = sc.Path("probes")
	if c.Data.Size != 0 {
		m["input_size"] = c.Data.Size // trained at a size other than the preset's: export at that size
	}
	if e.FeaturesONNX != "" && len(e.FeatureLayers) > 0 {
		m["features_onnx"] = prunedFeatures(sc)
	} else {
		setIf(m, "features_onnx", e.FeaturesONNX)
	}
	if len(e.FeatureLayers) > 0 {
		m["feature_layers"] = e.FeatureLayers
	}
	if keep := t.knnKeepOutputs(); len(keep) > 0 {
		m["keep_outputs"] = keep
	}
	if len(e.FeatureMatch) > 0 {
		m["feature_match"] = e.FeatureMatch
	}
	setIf(m, "description", e.Description)
	setIf(m, "prompt_template", e.PromptTemplate)
	setIf(m, "posterior", e.Posterior)
	setIf(m, "ddim_steps", e.DDIMSteps)
	if e.Sigma != nil {
		m["sigma"] = *e.Sigma
	}
	return merge(m, e.Extra)
}

// prunedFeatures is where runExport writes the feature backbone pruned to export.feature_layers.
func prunedFeatures(sc *StageContext) string { return sc.Path("export", "features.onnx") }

// pruneFeatures writes prunedFeatures, export.features_onnx pruned to the layers named: layers when given
// (the select stage's choice), else export.feature_layers; nothing without export.features_onnx or names. A
// pruned graph computes nothing past its deepest layer.
func (t *Training) pruneFeatures(ctx context.Context, sc *StageContext, layers [][2]any) error {
	e := t.Config.Export
	if len(layers) == 0 {
		layers = e.FeatureLayers
	}
	if e.FeaturesONNX == "" || len(layers) == 0 {
		return nil
	}
	keep := make([]string, len(layers))
	for i, l := range layers {
		keep[i] = l[0].(string)
	}
	for _, k := range t.knnKeepOutputs() {
		if !slices.Contains(keep, k) {
			keep = append(keep, k)
		}
	}
	pruned := prunedFeatures(sc)
	if err := os.MkdirAll(filepath.Dir(pruned), 0o755); err != nil {
		return err
	}
	if err := t.Python.PruneONNXOutputs(ctx, e.FeaturesONNX, pruned, keep); err != nil {
		return fmt.Errorf("export.features_onnx: %w", err)
	}
	return nil
}

// knnKeepOutputs are the nearest-normal term's layers (calibrate.knn.layers) that export.features_onnx outputs,
// when the term's backbone is that same file: the feature graph keeps them as outputs whether or not the map
// weighs them (export's keep_outputs), so the scorer feeds the term the frame's layers from the feature graph
// instead of running the backbone a second time (models.KnnOnlyLayers; a texture's painted set often drops
// MobileNetV2's block2 from the map, which the term takes). Whether the values really are the same is checked
// where the term is built (vlmdiff_train.knn_graph --from-layers).
func (t *Training) knnKeepOutputs() []string {
	c := t.Config
	k := c.Calibrate.Knn
	if k == nil || c.Export.FeaturesONNX == "" || filepath.Clean(k.BackboneONNX) != filepath.Clean(c.Export.FeaturesONNX) {
		return nil
	}
	io, err := models.ReadGraphIO(c.Export.FeaturesONNX)
	if err != nil {
		return nil // the export stage names the unreadable file
	}
	var keep []string
	for _, l := range k.Layers {
		if slices.ContainsFunc(io.Outputs, func(o models.TensorSpec) bool { return o.Name == l }) {
			keep = append(keep, l)
		}
	}
	return keep
}

// trainedModel is the model file the bundle is exported from: the select stage's choice, or the train stage's
// model when no select stage ran (runs recorded before it existed).
func trainedModel(sc *StageContext) string {
	if m := sc.Output("select", "model"); m != "" {
		return m
	}
	return sc.Output("train", "model")
}

func (t *Training) python(ctx context.Context, sc *StageContext, stage string, cfg map[string]any, launcher []string) (map[string]string, error) {
	outs, err := t.Python.RunStage(ctx, sc, stage, cfg, launcher)
	if err != nil {
		return nil, err
	}
	return fileOutputs(sc.Dir, outs), nil
}

// fileOutputs keeps the outputs of a Python stage's "done" event that name existing files: the stage's record
// lists files, and the event also carries facts (a preset's name, a count). A relative name is relative to dir,
// the run directory the stage ran in, never to this process's working directory: a run directory named after its
// preset (`--run-dir taef2`, started from its parent) made the build stage's "preset": "taef2" look like a file.
func fileOutputs(dir string, outs map[string]any) map[string]string {
	res := map[string]string{}
	for k, v := range outs {
		if s, ok := v.(string); ok && s != "" {
			if _, err := os.Stat(absIn(dir, s)); err == nil {
				res[k] = s
			}
		}
	}
	return res
}

// classes are the classes of the index (or the configured subset).
func (t *Training) classes(sc *StageContext) []string {
	if len(t.Config.Data.Classes) > 0 {
		return t.Config.Data.Classes
	}
	items, err := dataset.ReadIndex(sc.Output("index", "index"))
	if err != nil {
		return nil
	}
	return dataset.Classes(items)
}

func (t *Training) runIndex(ctx context.Context, sc *StageContext) (map[string]string, error) {
	c := t.Config
	items, err := dataset.OpenWith(c.Data.Root, dataset.Options{Layout: c.Data.Layout, ValFraction: *c.Data.ValFraction, COCOPart: c.Data.COCOPart})
	if err != nil {
		return nil, err
	}
	if len(c.Data.Classes) > 0 {
		var keep []dataset.Item
		for _, it := range items {
			if slices.Contains(c.Data.Classes, it.Class) {
				keep = append(keep, it)
			}
		}
		if len(keep) == 0 {
			return nil, fmt.Errorf("data.classes %v: none of them is in the dataset (classes: %v)", c.Data.Classes, dataset.Classes(items))
		}
		items = keep
	}
	// Masks are checked now, before any training: an empty or missing mask used to fail the evaluate stage.
	items, issues, err := dataset.CheckMasks(items, c.Data.LabelBy)
	if err != nil {
		return nil, err
	}
	if warn := dataset.FormatMaskIssues(issues, c.Data.LabelBy); warn != "" && sc.Progress != nil {
		fmt.Fprint(prefixed(sc.Progress, "[index] "), warn)
	}
	if err := reportDuplicates(ctx, sc, items, c.Data.Root); err != nil {
		return nil, err
	}
	counts := map[string]int{}
	for _, it := range items {
		counts[it.Split+"/"+map[bool]string{true: "anomalous", false: "normal"}[it.Label == 1]]++
	}
	if counts["train/normal"] == 0 {
		return nil, fmt.Errorf("dataset %s: no normal training images", c.Data.Root)
	}
	fmt.Fprintf(sc.Progress, "[index] %d images, %d classes: %d train, %d val (held out for calibration), %d test normal, %d test anomalous\n",
		len(items), len(dataset.Classes(items)), counts["train/normal"], counts["val/normal"], counts["test/normal"], counts["test/anomalous"])
	if counts["val/normal"] > 0 {
		fmt.Fprintf(sc.Progress, "[index] held out per class (the select stage paints on these, at least %d each where the class's share allows): %s\n",
			dataset.MinValPerClass, valPerClass(items))
	}
	p := sc.Path(dataset.IndexFile)
	if err := dataset.WriteIndex(p, items); err != nil {
		return nil, err
	}
	return map[string]string{"index": p}, nil
}

// valPerClass lists each class's held-out normals, "a 3, b 2, c 0".
func valPerClass(items []dataset.Item) string {
	n := map[string]int{}
	for _, it := range items {
		if it.Split == dataset.SplitVal {
			n[it.Class]++
		}
	}
	var parts []string
	for _, c := range dataset.Classes(items) {
		parts = append(parts, fmt.Sprintf("%s %d", c, n[c]))
	}
	return strings.Join(parts, ", ")
}

// DuplicatesFile lists every group of byte-identical images the index stage found (RUN/duplicates.txt, beside
// the index), written only when there is one.
const DuplicatesFile = "duplicates.txt"

// reportDuplicates finds the byte-identical images among items and warns about them: copies across splits
// are a leak that makes the metrics read better than new frames would (PIPED has 10 test normals that are
// training normals). The log shows the first groups, DuplicatesFile all of them.
func reportDuplicates(ctx context.Context, sc *StageContext, items []dataset.Item, root string) error {
	dups, err := dataset.FindDuplicates(ctx, items)
	if err != nil {
		return err
	}
	p := sc.Path(DuplicatesFile)
	if len(dups) == 0 { // a list from an earlier index of other data would mislead
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			return err
		}
		return nil
	}
	if err := os.WriteFile(p, []byte(dataset.FormatDuplicates(dups, root, 0)), 0o644); err != nil {
		return err
	}
	if sc.Progress != nil {
		fmt.Fprint(prefixed(sc.Progress, "[index] "), dataset.FormatDuplicates(dups, root, 10))
		fmt.Fprintf(sc.Progress, "[index] every copy: %s\n", p)
	}
	return nil
}

func (t *Training) runCaption(ctx context.Context, sc *StageContext) (map[string]string, error) {
	c := t.Config.Caption
	items, err := dataset.ReadIndex(sc.Output("index", "index"))
	if err != nil {
		return nil, err
	}
	dir := sc.Path("captions")
	opts := caption.Options{Template: c.Template, Concurrency: c.Concurrency, FallbackTemplate: c.Fallback, Logger: sc.Logger}
	model, prompt := "", ""
	if c.Endpoint == "" {
		opts.Offline = true
		fmt.Fprintf(sc.Progress, "[caption] no caption.endpoint: offline template captions (%q)\n", caption.Template(c.Template, "{class}"))
	} else {
		cl := &caption.Client{Endpoint: c.Endpoint, Model: c.Model, Prompt: c.Prompt, Logger: sc.Logger}
		if c.APIKeyEnv != "" {
			cl.APIKey = os.Getenv(c.APIKeyEnv)
			if cl.APIKey == "" {
				return nil, fmt.Errorf("caption.api_key_env: $%s is empty", c.APIKeyEnv)
			}
		}
		cache, err := caption.OpenCache(filepath.Join(dir, "cache.json"))
		if err != nil {
			return nil, err
		}
		opts.Client, opts.Cache = cl, cache
		model, prompt = c.Model, c.Prompt
		if prompt == "" {
			prompt = caption.DefaultPrompt
		}
	}
	caps, err := caption.Run(ctx, items, opts)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := caption.WriteOutputs(dir, caps, model, prompt, caption.SeedLayout{}); err != nil {
		return nil, err
	}
	return map[string]string{"captions": filepath.Join(dir, caption.CaptionsFile)}, nil
}

func (t *Training) version() string {
	if t.Config.Version != "" {
		return t.Config.Version
	}
	return time.Now().UTC().Format("20060102-150405")
}

func (t *Training) runExport(ctx context.Context, sc *StageContext) (map[string]string, error) {
	c := t.Config
	e := c.Export
	m := t.exportConfig(sc)
	if m["model"] == "" {
		return nil, fmt.Errorf("the train stage recorded no model output")
	}
	k, err := selectedEnsemble(sc)
	if err != nil {
		return nil, err
	}
	if k > 0 {
		m["ensemble"] = k // chosen on the validation set (select.ensembles), over export.extra.ensemble
		fmt.Fprintf(sc.Progress, "[export] %d start noise(s) per frame, as the select stage chose\n", k)
	}
	layers, err := selectedLayers(sc)
	if err != nil {
		return nil, err
	}
	if layers != nil {
		m["feature_layers"] = layers // chosen on the validation set (select.layer_weights), over export.feature_layers
		if e.FeaturesONNX != "" {
			m["features_onnx"] = prunedFeatures(sc)
		}
		fmt.Fprintf(sc.Progress, "[export] feature layers %v, as the select stage chose\n", layers)
	}
	sigma, err := selectedSigma(sc)
	if err != nil {
		return nil, err
	}
	if sigma >= 0 {
		m["sigma"] = sigma // chosen on the validation set (select.smoothing), over export.sigma
		fmt.Fprintf(sc.Progress, "[export] map sigma %g, as the select stage chose\n", sigma)
	}
	bundle := sc.Path("bundle")
	if err := t.pruneFeatures(ctx, sc, layers); err != nil {
		return nil, err
	}
	if _, err := t.python(ctx, sc, "export", m, nil); err != nil {
		return nil, err
	}
	// Provenance the Python side does not know: the config's hash and the git commit.
	man, err := models.ReadManifest(bundle)
	if err != nil {
		return nil, err
	}
	start, err := selectedStart(sc)
	if err != nil {
		return nil, err
	}
	if start > 0 && start != man.Diffusion.StartStep {
		if err := applyStart(bundle, start); err != nil { // chosen on the validation set (select.start_steps)
			return nil, fmt.Errorf("the select stage's %w", err)
		}
		if man, err = models.ReadManifest(bundle); err != nil {
			return nil, err
		}
		fmt.Fprintf(sc.Progress, "[export] start step %s, as the select stage chose\n", man.Diffusion.DescribeStart())
	}
	pool, err := selectedPoolRepeat(sc)
	if err != nil {
		return nil, err
	}
	if pool >= 0 && pool != man.Score.PoolRepeat {
		if err := eval.SetPoolRepeat(bundle, pool); err != nil { // chosen on the validation set (select.pool_repeats)
			return nil, fmt.Errorf("the select stage's %w", err)
		}
		if man, err = models.ReadManifest(bundle); err != nil {
			return nil, err
		}
		fmt.Fprintf(sc.Progress, "[export] image score: %d pooling passes of %d x %d, as the select stage chose\n", pool, man.Score.PoolKernel, man.Score.PoolKernel)
	}
	guided, err := selectedGuided(sc)
	if err != nil {
		return nil, err
	}
	if guided != nil { // chosen on the validation set (select.guided), in place of the Gaussian (sigma 0 above)
		man.Map.Sigma, man.Map.Guided = 0, guided
		fmt.Fprintf(sc.Progress, "[export] map smoothing: a guided filter of radius %d, eps %g, as the select stage chose\n", guided.Radius, guided.Eps)
	}
	man.Provenance.Config = c.sum
	if man.Provenance.GitCommit == "" {
		man.Provenance.GitCommit = gitCommit(t.Python.TrainerDir)
	}
	if err := models.WriteManifest(bundle, man); err != nil {
		return nil, err
	}
	if err := models.Verify(bundle); err != nil {
		return nil, fmt.Errorf("exported bundle does not verify: %w", err)
	}
	// ONNX Runtime must compute what PyTorch computed: the exporter recorded every graph's outputs on seeded
	// inputs (there is no Python ONNX Runtime here); a graph that differs fails the export.
	tol := e.ParityTolerance
	if tol == 0 {
		tol = pipeline.DefaultParityTolerance
	}
	res, err := pipeline.CheckProbes(bundle, sc.Path("probes"), tol, t.ORT)
	if err != nil {
		return nil, fmt.Errorf("export parity check: %w", err)
	}
	worst := 0.0
	for _, r := range res {
		worst = max(worst, r.RelL2)
	}
	sc.Logger.Info("export parity: ONNX Runtime matches PyTorch", "outputs", len(res), "worst_rel_l2", worst, "tolerance", tol)
	return map[string]string{"bundle": bundle, "manifest": filepath.Join(bundle, models.ManifestFile)}, nil
}

func (t *Training) scorer(sc *StageContext) (*pipeline.Scorer, error) {
	b := sc.Output("export", "bundle")
	s, err := pipeline.Open(b, t.ORT)
	if err != nil {
		return nil, fmt.Errorf("opening bundle %s: %w", b, err)
	}
	return s, nil
}

func (t *Training) runCalibrate(ctx context.Context, sc *StageContext) (map[string]string, error) {
	c := t.Config
	items, err := dataset.ReadIndex(sc.Output("index", "index"))
	if err != nil {
		return nil, err
	}
	normal := eval.Select(items, dataset.SplitVal, c.Data.Classes, true)
	if len(normal) == 0 {
		normal = eval.Select(items, dataset.SplitTrain, c.Data.Classes, true)
		fmt.Fprintf(sc.Progress, "[calibrate] WARNING: no validation normals (data.val_fraction is 0): calibrating on the %d training normals, which the model has seen; thresholds will be low\n", len(normal))
	}
	bundle := sc.Output("export", "bundle")
	// The export stage writes a bundle without the nearest-normal term; one that has it was calibrated before
	// (vlmdiff train --from calibrate), with that time's recipe (bank, isolated fraction, counts), which
	// ensureKnn would keep. Removed here, the term is built from this run's config and the select stage's choices.
	if m, err := models.ReadManifest(bundle); err != nil {
		return nil, err
	} else if m.Map.Knn != nil {
		if err := eval.WriteKnn(bundle, "", nil, eval.KnnSpec{}, 0); err != nil {
			return nil, err
		}
		fmt.Fprintln(sc.Progress, "[calibrate] the bundle's nearest-normal term is from an earlier calibration: removed, built anew below")
	}
	factor, err := selectedPixelFactor(sc)
	if err != nil {
		return nil, err
	}
	if factor < 0 {
		factor = c.Calibrate.PixelFactor
	}
	sigma, err := t.termSigma(sc)
	if err != nil {
		return nil, err
	}
	knnFactor, err := selectedKnnFactor(sc)
	if err != nil {
		return nil, err
	}
	if knnFactor < 0 {
		knnFactor = c.Calibrate.KnnFactor
	}
	knnSigma, err := t.knnSigma(sc)
	if err != nil {
		return nil, err
	}
	terms := eval.Terms{Pixel: factor, PixelSigma: sigma, Knn: knnFactor, KnnSigma: knnSigma}
	// the select stage's pass of the same normals gave the reference of the recipe it chose: taken when this
	// bundle is that recipe, measured otherwise
	saved, err := t.selectReference(ctx, sc, items, bundle, terms, "[calibrate] ")
	if err != nil {
		return nil, err
	}
	if !saved {
		if err := t.measureReference(ctx, sc, items, bundle, c.Calibrate.ReferencePerClass, terms, "[calibrate] "); err != nil {
			return nil, err
		}
	}
	s, err := t.scorer(sc)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	cal, _, err := eval.Calibrate(ctx, s, normal, eval.CalibConfig{Method: c.Calibrate.Method, PixelQuantile: c.Calibrate.PixelQuantile},
		eval.Options{BatchSize: c.Evaluate.BatchSize, Progress: prefixed(sc.Progress, "[calibrate] "), Logger: sc.Logger})
	if err != nil {
		return nil, err
	}
	if err := eval.WriteCalibration(bundle, cal, s.Ensemble()); err != nil {
		return nil, err
	}
	fmt.Fprintf(sc.Progress, "[calibrate] %s on %d normal images: global threshold %.5g (normal min %.5g, mean %.5g), pixel threshold %.5g\n",
		cal.Method, len(normal), cal.Global.Threshold, cal.Global.Min, cal.Global.NormalMean, cal.Global.PixelThreshold)
	p := sc.Path("calibration.json")
	if err := writeJSONFile(p, cal); err != nil {
		return nil, err
	}
	return map[string]string{"calibration": p}, nil
}

// measureReference writes the bundle's map reference (calibrate.reference: train) from the training normals,
// scored without any earlier reference, with the terms (eval.Terms; the nearest-normal term's banks are built
// here from every training normal when the bundle has none), or removes them all (none). It runs before the
// thresholds, which are taken on the maps the daemon will score.
func (t *Training) measureReference(ctx context.Context, sc *StageContext, items []dataset.Item, bundle string, perClass int, terms eval.Terms, prefix string) error {
	c := t.Config
	if c.Calibrate.Reference == eval.ReferenceNone {
		return eval.WriteReference(bundle, nil) // and the mean-frame term with it
	}
	train := eval.ReferenceItems(eval.Select(items, dataset.SplitTrain, c.Data.Classes, true), perClass)
	if len(train) == 0 {
		fmt.Fprintln(sc.Progress, prefix+"WARNING: no training normals for the map reference: raw maps")
		return eval.WriteReference(bundle, nil)
	}
	if terms.Knn > 0 {
		if err := t.ensureKnn(ctx, sc, items, bundle, prefix); err != nil {
			return err
		}
	}
	opt := t.ORT
	opt.NoReference, opt.PixelMap, opt.KnnMap, opt.KnnLeaveOneOut = true, true, true, true
	open := func() (*pipeline.Scorer, error) {
		s, err := pipeline.Open(bundle, opt)
		if err != nil {
			return nil, fmt.Errorf("opening bundle %s: %w", bundle, err)
		}
		return s, nil
	}
	ref, err := eval.MeasureReference(ctx, bundle, open, train, "train split of "+sc.Output("index", "index"), terms,
		eval.Options{BatchSize: c.Evaluate.BatchSize, Progress: prefixed(sc.Progress, prefix+"reference "), Logger: sc.Logger})
	if err != nil {
		return err
	}
	fmt.Fprintf(sc.Progress, "%smap reference: mean maps of %d training normals over %d classes\n", prefix, len(train), len(ref.Classes)-1)
	if terms.Pixel > 0 {
		fmt.Fprintf(sc.Progress, "%smean-frame term: %s, smoothed at sigma %g\n", prefix, eval.DescribePixel(terms.Pixel, ref.PixelWeight), ref.PixelSigma)
	}
	if terms.Knn > 0 {
		fmt.Fprintf(sc.Progress, "%snearest-normal term: %s, smoothed at sigma %g\n", prefix, eval.DescribeKnn(terms.Knn, ref.KnnWeight), ref.KnnSigma)
	}
	return nil
}

// ensureKnn builds the nearest-normal term (calibrate.knn, with the isolated fraction the select stage chose)
// into the bundle from every training normal, unless the bundle has it already.
func (t *Training) ensureKnn(ctx context.Context, sc *StageContext, items []dataset.Item, bundle, prefix string) error {
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return err
	}
	if m.Map.Knn != nil {
		return nil
	}
	k := t.Config.Calibrate.Knn
	if k == nil {
		return fmt.Errorf("the nearest-normal term needs calibrate.knn (backbone_onnx, layers)")
	}
	spec := k.Spec()
	f, err := selectedKnnIsolated(sc)
	if err != nil {
		return err
	}
	if f >= 0 {
		spec.Isolated = f
	}
	ks, err := selectedKnnKs(sc)
	if err != nil {
		return err
	}
	if ks != nil {
		if spec, err = spec.WithKs(ks); err != nil {
			return fmt.Errorf("the select stage's counts of nearest vectors: %w", err)
		}
	}
	return t.buildKnn(ctx, sc, items, bundle, spec, prefix)
}

// buildKnn builds the nearest-normal term of spec into the bundle from every training normal, replacing any it
// has, at factor 0 (the reference measures its weight).
func (t *Training) buildKnn(ctx context.Context, sc *StageContext, items []dataset.Item, bundle string, spec eval.KnnSpec, prefix string) error {
	train := eval.Select(items, dataset.SplitTrain, t.Config.Data.Classes, true)
	start := time.Now()
	kb, err := t.knn.AddKnn(ctx, bundle, spec, t.Python.KnnGraph, train, 0, t.ORT, "train split of "+sc.Output("index", "index"))
	if err != nil {
		return err
	}
	if v := t.Config.Calibrate.KnnSigma; v != nil { // the term's own smoothing, as calibrate will give it
		if err := eval.SetKnnSigma(bundle, v); err != nil {
			return err
		}
	}
	iso := ""
	if spec.Isolated > 0 {
		iso = fmt.Sprintf(", the most isolated %g of the positions dropped", spec.Isolated)
	}
	took := "in " + time.Since(start).Round(time.Second).String()
	if kb.Reused {
		took = "as built earlier in this run (the same recipe, input and normals)"
	}
	fmt.Fprintf(sc.Progress, "%snearest-normal banks: %d classes x %d vectors of %d values (%s %v, %dx%d positions%s) from %d training normals %s; %s\n",
		prefix, len(kb.Classes), kb.Size, kb.Dims, filepath.Base(spec.Backbone), spec.Layers, kb.Height, kb.Width, iso, len(train), took, kb.Shared())
	return nil
}

func (t *Training) runEvaluate(ctx context.Context, sc *StageContext) (map[string]string, error) {
	c := t.Config
	if c.Evaluate.Skip {
		fmt.Fprintln(sc.Progress, "[evaluate] evaluate.skip is set: no evaluation")
		return nil, nil
	}
	items, err := dataset.ReadIndex(sc.Output("index", "index"))
	if err != nil {
		return nil, err
	}
	test := eval.Select(items, dataset.SplitTest, c.Data.Classes, false)
	if len(test) == 0 {
		fmt.Fprintln(sc.Progress, "[evaluate] the dataset has no test split: nothing to evaluate")
		return nil, nil
	}
	opt := t.ORT
	if c.Evaluate.Threads > 0 {
		opt.Threads = c.Evaluate.Threads
	}
	bundle := sc.Output("export", "bundle")
	s, err := pipeline.Open(bundle, opt)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	opts := eval.Options{BatchSize: c.Evaluate.BatchSize, Progress: prefixed(sc.Progress, "[evaluate] "), Logger: sc.Logger}
	info := eval.ReportInfo{Title: "vlmdiff evaluation: " + c.Name, Bundle: bundle, Dataset: c.Data.Root, CurvesDir: sc.Path()}
	// The validation table: evaluate.val_data, else the set the select stage painted.
	valData := c.Evaluate.ValData
	if valData == "" {
		valData = sc.Output("select", "val_data")
	}
	var vres []eval.ImageResult
	if valData != "" {
		vrep, res, err := evaluateValData(ctx, s, valData, c.Data.Classes, opts)
		if err != nil {
			return nil, err
		}
		kinds, err := eval.ByDefect(res, metrics.Options{})
		if err != nil {
			return nil, fmt.Errorf("evaluate.val_data: %w", err)
		}
		info.Validation, vres = &eval.ValidationReport{Dataset: valData, Report: vrep, ByDefect: &kinds}, res
	}
	rep, res, err := eval.Evaluate(ctx, s, test, opts)
	if err != nil {
		return nil, err
	}
	if info.Baseline, err = t.evaluateBaseline(ctx, s.Manifest(), items, test, rep, info.Validation, vres, opts); err != nil {
		return nil, err
	}
	dir := sc.Path("eval")
	if err := eval.WriteReports(dir, rep, res, s, info); err != nil {
		return nil, err
	}
	for _, b := range info.Baseline {
		fmt.Fprintf(sc.Progress, "[evaluate] baseline %s (%s): bundle vs baseline: %s\n", eval.BaselineMeanDiff, b.Set, b.Verdict())
	}
	if info.Validation != nil {
		fmt.Fprintln(sc.Progress, "[evaluate] synthetic validation ("+valData+"):")
		info.Validation.Report.WriteTable(sc.Progress)
		fmt.Fprintln(sc.Progress, "[evaluate] synthetic validation by defect kind:")
		info.Validation.ByDefect.WriteTable(sc.Progress)
		fmt.Fprintln(sc.Progress, "[evaluate] test:")
	}
	rep.WriteTable(sc.Progress)
	line, err := testWithoutCopies(ctx, items, res, rep.Mean, metrics.Options{PaperAUROCFlip: opts.PaperAUROCFlip})
	if err != nil {
		return nil, err
	}
	fmt.Fprint(sc.Progress, line)
	outs := map[string]string{"metrics": filepath.Join(dir, eval.JSONFile), "report": filepath.Join(dir, eval.HTMLFile)}
	if info.Validation != nil {
		outs["validation_metrics"] = filepath.Join(dir, eval.ValidationPrefix+eval.JSONFile)
	}
	return outs, nil
}

// testWithoutCopies returns a line with the test metrics over res without the test images that are copies of
// training or held-out images (dataset.FindDuplicates, reported by the index stage), beside all (the metrics
// with them), or "" when the test split has no such copy. The tables count every test image, as published
// figures do; this line says how much the copies, which score as seen, lift them.
func testWithoutCopies(ctx context.Context, items []dataset.Item, res []eval.ImageResult, all metrics.Metrics, mopts metrics.Options) (string, error) {
	dups, err := dataset.FindDuplicates(ctx, items)
	if err != nil {
		return "", err
	}
	copies := map[string]bool{}
	for _, d := range dups {
		if !d.CrossSplit() {
			continue // copies within one split leak nothing
		}
		for _, it := range d.Items {
			if it.Split == dataset.SplitTest {
				copies[it.Path] = true
			}
		}
	}
	var kept []eval.ImageResult
	for _, r := range res {
		if !copies[r.Item.Path] {
			kept = append(kept, r)
		}
	}
	if len(kept) == len(res) {
		return "", nil
	}
	rep, err := eval.MetricsWith(kept, mopts)
	if err != nil {
		return "", fmt.Errorf("test metrics without its copies of training images: %w", err)
	}
	m := rep.Mean
	return fmt.Sprintf("[evaluate] test without its %d copies of training or held-out images (see the index stage): I-AUROC %.2f P-AUROC %.2f AU-PRO %.2f P-AP %.2f (with them: %.2f / %.2f / %.2f / %.2f)\n",
		len(res)-len(kept), 100*m.ImageAUROC, 100*m.PixelAUROC, 100*m.AUPRO, 100*m.PixelAP,
		100*all.ImageAUROC, 100*all.PixelAUROC, 100*all.AUPRO, 100*all.PixelAP), nil
}

// evaluateBaseline scores the test split (and the validation set's images, vres, when val is set) with the
// baseline that evaluate.baseline names, built from the index's training normals, beside the bundle's metrics.
func (t *Training) evaluateBaseline(ctx context.Context, m *models.Manifest, items, test []dataset.Item, rep metrics.Report,
	val *eval.ValidationReport, vres []eval.ImageResult, opts eval.Options) ([]eval.BaselineResult, error) {
	c := t.Config
	if c.Evaluate.Baseline == "none" {
		return nil, nil
	}
	sets := []eval.BaselineSet{{Name: "test", Items: test, Model: rep.Mean}}
	if val != nil {
		vitems := make([]dataset.Item, len(vres))
		for i, r := range vres {
			vitems[i] = r.Item
		}
		sets = append(sets, eval.BaselineSet{Name: "validation", Items: vitems, Model: val.Report.Mean})
	}
	train := eval.Select(items, dataset.SplitTrain, c.Data.Classes, true)
	rs, err := eval.CompareMeanDiff(ctx, m, train, sets, opts)
	if err != nil {
		return nil, fmt.Errorf("evaluate.baseline: %w", err)
	}
	return rs, nil
}

// evaluateValData scores the test split of a synthetic-defect validation set (MVTec layout, masks checked) and
// returns its report and the scored images (the evaluate stage breaks them down by defect kind and scores the
// same images with the baseline; the select stage needs only the report).
func evaluateValData(ctx context.Context, s *pipeline.Scorer, root string, classes []string, opts eval.Options) (metrics.Report, []eval.ImageResult, error) {
	val, err := valItems(root, classes)
	if err != nil {
		return metrics.Report{}, nil, err
	}
	rep, res, err := eval.Evaluate(ctx, s, val, opts)
	if err != nil {
		return metrics.Report{}, nil, fmt.Errorf("evaluate.val_data: %w", err)
	}
	return rep, res, nil
}

// valItems reads a synthetic-defect validation set (MVTec layout): its test images of the classes, masks
// checked (a defect image without a masked pixel is refused: the painter never writes one).
func valItems(root string, classes []string) ([]dataset.Item, error) {
	items, err := dataset.OpenWith(root, dataset.Options{})
	if err != nil {
		return nil, fmt.Errorf("evaluate.val_data: %w", err)
	}
	items, issues, err := dataset.CheckMasks(items, dataset.LabelByFolder)
	if err != nil {
		return nil, fmt.Errorf("evaluate.val_data: %w", err)
	}
	if len(issues) > 0 {
		return nil, fmt.Errorf("evaluate.val_data %s: %s", root, dataset.FormatMaskIssues(issues, dataset.LabelByFolder))
	}
	val := eval.Select(items, dataset.SplitTest, classes, false)
	if len(val) == 0 {
		return nil, fmt.Errorf("evaluate.val_data %s: no test images of classes %v", root, classes)
	}
	return val, nil
}

func (t *Training) runRegister(ctx context.Context, sc *StageContext) (map[string]string, error) {
	dir := t.Config.Register.ModelsDir
	if dir == "" {
		fmt.Fprintf(sc.Progress, "[register] no register.models_dir: the bundle stays in %s\n", sc.Output("export", "bundle"))
		return nil, nil
	}
	dst, err := Register(sc.Output("export", "bundle"), dir)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(sc.Progress, "[register] bundle registered as %s\n", dst)
	return map[string]string{"registered": dst}, nil
}

// Register copies a verified bundle into the daemon's models directory as <name>-<version>. The copy is made
// in a hidden temporary directory inside modelsDir (which the daemon's watcher ignores), verified there, and
// renamed into place, so the daemon only ever sees a complete bundle. An existing bundle of the same name and
// version is replaced (the calibration may have changed).
func Register(bundle, modelsDir string) (string, error) {
	if err := models.Verify(bundle); err != nil {
		return "", fmt.Errorf("register: bundle %s does not verify: %w", bundle, err)
	}
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(modelsDir, 0o755); err != nil {
		return "", fmt.Errorf("register: %w", err)
	}
	name := m.Name + "-" + m.Version
	dst := filepath.Join(modelsDir, name)
	tmp, err := os.MkdirTemp(modelsDir, "."+name+".tmp-")
	if err != nil {
		return "", fmt.Errorf("register: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := copyTree(bundle, tmp); err != nil {
		return "", fmt.Errorf("register: copying %s: %w", bundle, err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := models.Verify(tmp); err != nil {
		return "", fmt.Errorf("register: the copy does not verify: %w", err)
	}
	if _, err := os.Stat(dst); err == nil {
		old := filepath.Join(modelsDir, "."+name+".old-"+newID())
		if err := os.Rename(dst, old); err != nil {
			return "", fmt.Errorf("register: moving the old %s aside: %w", dst, err)
		}
		defer os.RemoveAll(old)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return "", fmt.Errorf("register: %w", err)
	}
	return dst, nil
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file", p)
		}
		return fsutil.CopyFile(p, target)
	})
}

// fingerprint summarises a dataset directory (file count, total size, newest modification) so that adding,
// removing or replacing images redoes the index stage and everything after it.
func fingerprint(root string) (map[string]any, error) {
	var n, size int64
	var newest time.Time
	// The walk follows symbolic links to directories (the dataset reader reads linked class directories, so
	// adding images behind a link must redo the index) and visits each real directory once, so a link loop
	// cannot recurse forever.
	seen := map[string]bool{}
	var walk func(dir string) error
	walk = func(dir string) error {
		real, err := filepath.EvalSymlinks(dir)
		if err != nil {
			return err
		}
		if seen[real] {
			return nil
		}
		seen[real] = true
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			info, err := e.Info()
			if err != nil {
				return err
			}
			if e.Type()&fs.ModeSymlink != 0 {
				if st, err := os.Stat(p); err == nil {
					info = st // a dangling link counts as itself
				}
			}
			if info.IsDir() {
				if err := walk(p); err != nil {
					return err
				}
				continue
			}
			n++
			size += info.Size()
			if info.ModTime().After(newest) {
				newest = info.ModTime()
			}
		}
		return nil
	}
	if err := walk(root); err != nil {
		return nil, fmt.Errorf("data.root: %w", err)
	}
	return map[string]any{"files": n, "bytes": size, "newest": newest.UTC().Format(time.RFC3339Nano)}, nil
}

// prefixed writes each line with a prefix.
func prefixed(w io.Writer, prefix string) io.Writer {
	if w == nil {
		return nil
	}
	return &prefixWriter{w: w, p: prefix}
}

type prefixWriter struct {
	w io.Writer
	p string
}

func (pw *prefixWriter) Write(b []byte) (int, error) {
	s := strings.TrimRight(string(b), "\n")
	for _, l := range strings.Split(s, "\n") {
		if _, err := io.WriteString(pw.w, pw.p+l+"\n"); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'))
}
