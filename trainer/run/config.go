package run

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vlmdiff/edge/internal/yamlconf"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
	"github.com/vlmdiff/edge/trainer/synth"
)

// Config is a training run's YAML file (configs/train/*.yaml; docs/training.md is the reference). Decoding is
// strict: an unknown key is an error naming its path, so a typo cannot silently fall back to a default. Relative
// paths are relative to the config file; ${VAR} is replaced by the environment variable VAR.
type Config struct {
	Name    string `yaml:"name"`    // bundle name (default "vlmdiff-<preset>")
	Version string `yaml:"version"` // bundle version (default: the export time, 20060102-150405)
	Preset  string `yaml:"preset"`  // tiny | small | sd15
	Seed    int    `yaml:"seed"`
	Device  string `yaml:"device"`  // cpu | cuda
	Threads int    `yaml:"threads"` // torch CPU threads (default 2)

	Data       DataConfig       `yaml:"data"`
	Caption    CaptionConfig    `yaml:"caption"`
	FinetuneAE FinetuneAEConfig `yaml:"finetune_ae"`
	Build      BuildConfig      `yaml:"build"`
	Train      TrainConfig      `yaml:"train"`
	Select     SelectConfig     `yaml:"select"`
	Export     ExportConfig     `yaml:"export"`
	Calibrate  CalibrateConfig  `yaml:"calibrate"`
	Evaluate   EvaluateConfig   `yaml:"evaluate"`
	Register   RegisterConfig   `yaml:"register"`
	Python     PythonConfig     `yaml:"python"`

	path string // the file it was read from
	sum  string // sha256 of the file, for provenance
}

// DataConfig selects the dataset.
type DataConfig struct {
	Root        string   `yaml:"root"`         // required
	Layout      string   `yaml:"layout"`       // auto | mvtec | visa | realiad | cocoad | collected
	ValFraction *float64 `yaml:"val_fraction"` // share of train normals held out for calibration (default 0.1)
	Classes     []string `yaml:"classes"`      // restrict to these classes (default all)
	COCOPart    int      `yaml:"coco_part"`
	Size        int      `yaml:"size"` // training input size (default: the preset's)
	Augment     bool     `yaml:"augment"`
	// LabelBy is the policy for anomalous test images whose mask is missing or empty, applied at the index
	// stage (dataset.CheckMasks): "folder" (default) keeps them anomalous with a warning listing them, "mask"
	// relabels them as normal. Empty means folder and is left empty (omitted from the index stage's input
	// hash), so runs made before this key existed are not redone.
	LabelBy string `yaml:"label_by" json:",omitempty"`
}

// CaptionConfig configures the VLM caption stage; without an endpoint captions are the offline template.
type CaptionConfig struct {
	Endpoint    string `yaml:"endpoint"`
	Model       string `yaml:"model"`
	APIKeyEnv   string `yaml:"api_key_env"` // name of the environment variable holding the API key
	Prompt      string `yaml:"prompt"`
	Template    string `yaml:"template"` // offline caption, "{class}" replaced (default "a photo of a {class}")
	Concurrency int    `yaml:"concurrency"`
	// Fallback gives images the VLM failed on the template caption instead of failing the stage.
	Fallback bool `yaml:"fallback"`
}

// FinetuneAEConfig is the autoencoder finetune (docs/algorithm.md §2.3).
type FinetuneAEConfig struct {
	Init             string         `yaml:"init"` // kl-f8 checkpoint; empty = from scratch
	PerceptualONNX   string         `yaml:"perceptual_onnx"`
	PerceptualLayers []string       `yaml:"perceptual_layers"`
	MaxSteps         int            `yaml:"max_steps"`
	BatchSize        int            `yaml:"batch_size"`
	Accumulate       int            `yaml:"accumulate"`
	LR               float64        `yaml:"lr"`
	SaveEvery        int            `yaml:"save_every"`
	Extra            map[string]any `yaml:"extra"` // passed to the Python stage as is
}

// BuildConfig assembles the model (docs/algorithm.md §2.4).
type BuildConfig struct {
	SDCheckpoint string         `yaml:"sd_checkpoint"` // v1-5-pruned.ckpt for sd15
	Tokenizer    string         `yaml:"tokenizer"`     // CLIP vocabulary directory for sd15
	Extra        map[string]any `yaml:"extra"`
}

// TrainConfig trains the denoiser (docs/algorithm.md §2.1-2.2).
type TrainConfig struct {
	MaxSteps    int            `yaml:"max_steps"`
	Epochs      int            `yaml:"epochs"`
	BatchSize   int            `yaml:"batch_size"`
	Accumulate  int            `yaml:"accumulate"`
	LR          float64        `yaml:"lr"`
	SaveEvery   int            `yaml:"save_every"`
	AMP         string         `yaml:"amp"` // none | bf16 | fp16 (GPU)
	GradClip    float64        `yaml:"grad_clip"`
	Posterior   string         `yaml:"posterior"` // sample | mean
	Launcher    []string       `yaml:"launcher"`  // e.g. [torchrun, --nproc_per_node=8]; replaces "python3 -m"
	Extra       map[string]any `yaml:"extra"`
	UseCaptions *bool          `yaml:"use_captions"` // condition on the caption stage's captions (default true)
	// SnapshotEvery writes the denoiser's weights every N epochs (RUN/train/snapshots), the candidates the select
	// stage scores. 0 (default): none, and the train stage's own choice (train.extra.select) is exported.
	// Omitted from the hash when 0, so runs made before this key existed are not redone.
	SnapshotEvery int `yaml:"snapshot_every" json:",omitempty"`
}

// SelectConfig is the select stage: it scores every snapshot of the train stage (train.snapshot_every), and the
// train stage's final weights, on a synthetic-defect validation set painted on the held-out normals, and
// exports the best. The noise-prediction loss on normals keeps falling while the denoiser also learns to rebuild
// defects, so neither the last weights nor the lowest validation loss is reliably the best detector; defects
// painted on held-out normals measure what the product is for without touching the test split.
type SelectConfig struct {
	// Metric ranks the candidates on the validation set: "mean" (default: the mean of I-AUROC, P-AUROC and
	// AU-PRO), or one of i_auroc, p_auroc, au_pro, p_ap. Whichever ranks, a set counts as informative by the
	// best candidate's image and pixel AUROC (detection), whose chance level does not depend on the metric.
	Metric string `yaml:"metric"`
	// ValData is a synthetic-defect validation set (`vlmdiff synth defects` output, MVTec layout). Empty
	// (default): the stage paints one (RUN/select/valdata) on the index's held-out normals.
	ValData string `yaml:"val_data"`
	// PerImage is the number of defect images painted per held-out normal (default 2).
	PerImage int `yaml:"per_image"`
	// MinVisibility is the painter's visibility floor (synth.Params.MinVisibility, default 1): a painted
	// defect must change its pixels at least this many times as much as the held-out normals of its class
	// differ among themselves there, or it is redrawn. 0 paints as before session 15 (faint defects kept).
	MinVisibility *float64 `yaml:"min_visibility"`
	// ReferencePerClass bounds the training normals per class in each candidate's map reference (default:
	// calibrate.reference_per_class, so a candidate is scored with the reference it would ship with and the
	// chosen one's row is what the evaluate stage reports). Fewer is cheaper: on the surfaces set 16 per class
	// instead of all 35 moved the candidates' scores by up to 1 point and chose the same one.
	ReferencePerClass int `yaml:"reference_per_class"`
	// MinGain is the lead (in metric units, 0.01 = one point) a candidate needs over the final weights to be
	// chosen instead of them (default 0.01); smaller leads are within the noise of the set.
	MinGain float64 `yaml:"min_gain"`
	// Ensembles, when set, are the start-noise counts (diffusion.ensemble) the stage scores the chosen weights
	// with, e.g. [1, 2, 4]; the export stage then writes the chosen count over export.extra.ensemble. A larger
	// count costs K times the denoiser on every frame, so it is taken only when it leads the best smaller one by
	// MinGain. Empty (default): export.extra.ensemble as configured. Needs no snapshots.
	Ensembles []int `yaml:"ensembles"`
	// LayerWeights, when set, are the values each feature layer's weight may take, e.g. [0, 0.5, 1]. After the
	// denoiser weights and before the start noises, the stage scores the chosen model once, keeping every
	// layer's own map (pipeline.Options.LayerMaps), and ranks every combination of these values on the
	// validation set (one layer at least at the largest value: a map scaled as a whole ranks the same). The
	// export stage then writes the chosen layers over export.feature_layers. The bundle's own weights stay
	// unless a combination leads them by MinGain. Why: which depth of the backbone tells a defect from its
	// material depends on the material: fine layers see a noisy texture's grain, deep ones blur small specks
	// (docs/algorithm.md §1.9). Empty (default): export.feature_layers as configured.
	LayerWeights []float64 `yaml:"layer_weights"`
	// PixelFactors, when set with LayerWeights, are the sizes of the mean-frame term (models.PixelTerm) the
	// stage weighs together with the layer weights, e.g. [0, 0.25, 0.5, 1], from the same scoring pass. The
	// term adds each frame's pixel distance to its class's mean normal frame to the map: strong where parts
	// sit still on a plain background (a dark speck barely moves a reconstruction's features), noise where
	// parts move or the background is a stochastic texture. So it is taken only when the best weighting with
	// it leads the best without it by MinGain; the calibrate stage then sizes it on the bundle's own maps.
	// Empty (default): calibrate.pixel_factor.
	PixelFactors []float64 `yaml:"pixel_factors" json:",omitempty"` // omitempty: the stage hash of runs before the field stays
	// KnnFactors, when set, are the sizes of the nearest-normal term (models.KnnTerm, built as calibrate.knn
	// says) the stage weighs last, on the chosen model, layers, mean-frame term and start noises, e.g. [0, 0.5, 1,
	// 2]: the bank is built from the training normals, the reference normals scored once against banks without
	// their own vectors and the painted set once. A factor is taken only when it leads factor 0 by MinGain; the
	// calibrate stage then builds the term into the bundle. Empty (default): calibrate.knn_factor.
	KnnFactors []float64 `yaml:"knn_factors" json:",omitempty"`
	// PixelSigmas, when set with PixelFactors, are smoothings of the mean-frame term's map (Gaussian sigmas in map
	// pixels, models.PixelTerm.Sigma) weighed besides the term's own (calibrate.pixel_sigma, else the map's) with
	// every layer weighting and factor of the term, from the same scoring pass, e.g. [1]. The map's sigma is
	// sized for feature maps a few pixels per cell; the term is one value per pixel, and a speck or a hair a few
	// pixels wide sinks below the normals' variation under that Gaussian. The best recipe with the term, at any
	// of its sigmas, must still lead the best without it by MinGain. Empty (default): the term's own alone.
	PixelSigmas []float64 `yaml:"pixel_sigmas" json:",omitempty"`
	// KnnIsolated, when set with KnnFactors, are the isolated fractions (calibrate.knn.isolated) weighed
	// together with the factors, e.g. [0, 0.1]: each builds its banks anew and takes one more scoring pass of the
	// reference normals and the painted set. Empty (default): calibrate.knn.isolated alone.
	KnnIsolated []float64 `yaml:"knn_isolated" json:",omitempty"`
	// KnnSigmas, when set with KnnFactors, are smoothings of the nearest-normal term's map (Gaussian sigmas in
	// map pixels, models.KnnTerm.Sigma) weighed besides the term's own (calibrate.knn_sigma, else the map's)
	// with every factor, from the same scoring pass, e.g. [2, 3]. The term's vectors are 3 x 3 averages of
	// cells a few pixels wide already, and the map's Gaussian widens them again. The best factor at any of
	// these sigmas must still lead factor 0 by MinGain (a sigma costs nothing when scoring, so the best row
	// wins, as with select.pixel_sigmas). Empty (default): the term's own alone.
	KnnSigmas []float64 `yaml:"knn_sigmas" json:",omitempty"`
	// KnnKs, when set with KnnFactors, are the counts of nearest bank vectors whose mean distance the
	// nearest-normal term may take per class (models.KnnTerm.Ks), e.g. [1, 2, 4, 8]. Once the factor is chosen,
	// and only when it is above 0, the term's map alone is scored on the painted set at every count from one pass
	// (the knn graph gives the largest count of nearest distances), and each class takes the count whose
	// metrics lead the nearest alone (k = 1) by MinGain on its own painted images; the calibrate stage builds the
	// term with those counts. Why per class: a coreset keeps the rarest normal patches, and a mean of a few
	// nearest makes one isolated bank vector vouch for a defect only in part; that helps on some materials (a
	// moving part, a fractal texture) and hurts on others (a woven texture), and the test splits agreed with the
	// painted sets class by class (docs/algorithm.md §1.9, "Mean of the k nearest"). Empty (default): the
	// nearest alone for every class.
	KnnKs []int `yaml:"knn_ks" json:",omitempty"`
	// Smoothing, when set, are multiples of the export's map sigma (docs/algorithm.md §1.9: 5 px at 256 px,
	// scaled with the input size) the stage weighs last, on everything chosen before, e.g. [0.5, 0.75, 1]: each
	// takes one scoring pass of the reference normals (its reference and terms' weights) and of the painted set.
	// A narrower Gaussian keeps thin or small defects sharp, a wider one merges scattered responses and
	// suppresses the grain of a texture. The export's sigma stays unless another leads it by MinGain; the
	// export stage then writes the chosen one over export.sigma. Empty (default): export.sigma.
	Smoothing []float64 `yaml:"smoothing" json:",omitempty"`
	// Guided, when set, are guided filters (models.GuidedFilter: the frame's own grey image as guide) the
	// smoothing step weighs beside the Gaussian sigmas, each in place of the map's Gaussian (map sigma 0), e.g.
	// [{radius: 4, eps: 1e-3}, {radius: 8, eps: 1e-4}]. Radius is in map pixels at a 256 px map, scaled with the
	// map's shorter side like export.sigma (at least 1). Where the frame is flat the filter averages the map like
	// a box; along the frame's edges the map keeps the edge's shape, so a thin hair or a speck stays as sharp as
	// it is while the flat surroundings are smoothed. It raised P-AP on every painted and test set measured and
	// left the mean of I-AUROC, P-AUROC and AU-PRO level or lower on the painted sets (docs/algorithm.md §1.9,
	// "Smoothing along the frame's edges"), so like the sigmas each must lead the export's sigma by MinGain; the
	// export stage then writes it into map.guided. Empty (default): no guided filter.
	Guided []GuidedCandidate `yaml:"guided" json:",omitempty"`
	// StartSteps, when set, are the diffusion steps each frame's reconstruction may start from, weighed after
	// the nearest-normal term and before the smoothing, e.g. [999, 501, 301]: each takes one scoring pass of the
	// reference normals (its reference and terms' weights) and of the painted set. The schedule's last step (999)
	// is the paper's; below it only the DDIM steps at or below the step run (models.Diffusion.WithStart), which
	// keeps more of the frame, a stochastic texture and a defect alike, and costs fewer steps. The export's own
	// step stays unless another leads it by MinGain; then the cheapest step scoring no less than that pick is
	// taken (cheaperNoWorse). Empty (default): the export's start step.
	StartSteps []int `yaml:"start_steps" json:",omitempty"`
	// PoolRepeats, when set, are the numbers of passes of the bundle's k x k box average (score.pool_repeat; the
	// paper's 8 passes of 8 at 256 px, a window about 57 px wide) before the image score's maximum, weighed
	// last, on everything chosen before, e.g. [2, 4, 8]; 0 takes the smoothed map's largest pixel. The window
	// averages a texture's scattered responses away and a small defect with them, so the width that ranks images
	// best depends on the material and its defects. Only the image score changes, so one scoring pass of the
	// reference normals and of the painted set serves every count. The export's count stays unless another leads
	// it by MinGain; the export stage then writes the chosen one. Empty (default): the export's pooling.
	PoolRepeats []int `yaml:"pool_repeats" json:",omitempty"`
}

// SelectMetrics are the names select.metric accepts.
var SelectMetrics = []string{"mean", "i_auroc", "p_auroc", "au_pro", "p_ap"}

// ExportConfig writes the bundle.
type ExportConfig struct {
	FeaturesONNX  string   `yaml:"features_onnx"`
	FeatureLayers [][2]any `yaml:"feature_layers"` // [[name, weight], ...]
	// FeatureMatch gives feature layers a match radius in cells (models.FeatureLayer.Match), e.g.
	// {stage1: 1}: the frame's feature is compared with the reconstruction's best match within that many
	// cells, so a texture the reconstruction redraws with another phase does not read as anomaly. It applies to
	// the layers the bundle ends up with (export.feature_layers, or the select stage's choice of weights).
	FeatureMatch   map[string]int `yaml:"feature_match"`
	Description    string         `yaml:"description"`
	PromptTemplate string         `yaml:"prompt_template"`
	Posterior      string         `yaml:"posterior"`
	Sigma          *float64       `yaml:"sigma"`
	DDIMSteps      int            `yaml:"ddim_steps"`
	// ParityTolerance is the largest relative L2 error allowed between ONNX Runtime and PyTorch on the
	// exporter's probes (default 1e-4).
	ParityTolerance float64        `yaml:"parity_tolerance"`
	Extra           map[string]any `yaml:"extra"`
}

// CalibrateConfig fixes thresholds from the validation normals.
type CalibrateConfig struct {
	Method        string  `yaml:"method"`         // quantile:Q | meanstd:K (default quantile:0.99)
	PixelQuantile float64 `yaml:"pixel_quantile"` // default 0.999
	// Reference: "train" (default) subtracts from every map the mean map of the class's training normals
	// (models.MapReference), measured here before the thresholds; "none" scores raw maps as the paper does.
	Reference string `yaml:"reference"`
	// ReferencePerClass bounds the training normals per class averaged into the reference (default 64).
	ReferencePerClass int `yaml:"reference_per_class"`
	// PixelFactor is the mean-frame term's size relative to the feature map's (models.PixelTerm.Factor; 0,
	// the default: no term), unless the select stage chose one (select.pixel_factors). Needs reference train.
	PixelFactor float64 `yaml:"pixel_factor" json:",omitempty"` // omitempty: the stage hash of runs before the field stays
	// PixelSigma is the Gaussian sigma, in map pixels, that smooths the mean-frame term's map
	// (models.PixelTerm.Sigma), unless the select stage chose another (select.pixel_sigmas). Absent (default):
	// the map's sigma, as before the field.
	PixelSigma *float64 `yaml:"pixel_sigma" json:",omitempty"`
	// KnnFactor is the nearest-normal term's size (models.KnnTerm.Factor; 0, the default: no term), unless the
	// select stage chose one (select.knn_factors). Needs reference train and Knn.
	KnnFactor float64 `yaml:"knn_factor" json:",omitempty"`
	// KnnSigma is the Gaussian sigma, in map pixels, that smooths the nearest-normal term's map
	// (models.KnnTerm.Sigma), unless the select stage chose another (select.knn_sigmas). Absent (default): the
	// map's sigma, as before the field.
	KnnSigma *float64 `yaml:"knn_sigma" json:",omitempty"`
	// Knn says how the nearest-normal term is built (docs/training.md, "The nearest-normal term").
	Knn *KnnConfig `yaml:"knn" json:",omitempty"`
}

// KnnConfig builds the nearest-normal term (eval.KnnSpec): the feature backbone (an ONNX file with named
// outputs, like export.features_onnx) and its layers, finest first; each position's vector is their
// 3 x 3-pooled features at the first layer's resolution, averaged down to Dims values (0: all); the bank holds
// Bank vectors per class (0: eval.DefaultKnnBank, or the fewest positions a class has when that is less), a
// greedy coreset of the training normals' positions.
type KnnConfig struct {
	BackboneONNX string    `yaml:"backbone_onnx"`
	Layers       []string  `yaml:"layers"`
	Dims         int       `yaml:"dims"`
	Bank         int       `yaml:"bank"`
	Mean         []float32 `yaml:"mean"` // the backbone's input normalisation (default ImageNet's)
	Std          []float32 `yaml:"std"`
	// Sampling draws the bank: coreset (default; greedy k-center) or random (a seeded uniform draw).
	Sampling string `yaml:"sampling" json:",omitempty"`
	// Isolated drops this fraction of the candidate positions first, those farthest from every other training
	// image (eval.KnnSpec.Isolated; 0: none).
	Isolated float64 `yaml:"isolated" json:",omitempty"`
}

// Spec is the build recipe as the eval package takes it.
func (k *KnnConfig) Spec() eval.KnnSpec {
	return eval.KnnSpec{Backbone: k.BackboneONNX, Layers: k.Layers, Dims: k.Dims, Bank: k.Bank, Mean: k.Mean, Std: k.Std, Sampling: k.Sampling, Isolated: k.Isolated}
}

// EvaluateConfig scores the test split.
type EvaluateConfig struct {
	BatchSize int  `yaml:"batch_size"`
	Threads   int  `yaml:"threads"` // ONNX Runtime threads (0 = all cores)
	Skip      bool `yaml:"skip"`    // a dataset without a labelled test split
	// ValData is a synthetic-defect validation set (`vlmdiff synth defects` output): evaluated with the same
	// bundle and reported as its own table beside the test metrics. Empty: test only (omitted from the hash).
	ValData string `yaml:"val_data" json:",omitempty"`
	// Baseline is the trivial detector the report compares the bundle with: "mean-diff" (the default when
	// empty: each class's mean training frame, eval.BaselineMeanDiff) or "none". Empty is omitted from the hash.
	Baseline string `yaml:"baseline" json:",omitempty"`
}

// RegisterConfig names the daemon's models directory.
type RegisterConfig struct {
	ModelsDir string `yaml:"models_dir"` // empty: the register stage does nothing
}

// PythonConfig says how to run the Python stages.
type PythonConfig struct {
	Exe        string `yaml:"exe"`         // default /usr/bin/python3; a path relative to the config file, a bare name on PATH
	TrainerDir string `yaml:"trainer_dir"` // directory holding vlmdiff_train (default: found from the binary)
}

// Path is the file the config was read from.
func (c *Config) Path() string { return c.path }

// LoadConfig reads, strictly decodes, defaults and validates a config file.
func LoadConfig(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := ParseConfig(raw, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	c.path = path
	return c, nil
}

// ParseConfig decodes a config; relative paths are resolved against baseDir.
func ParseConfig(raw []byte, baseDir string) (*Config, error) {
	var c Config
	if err := yamlconf.Decode(raw, &c, os.LookupEnv); err != nil {
		return nil, err
	}
	c.sum = sha256Hex(raw)
	c.defaults()
	c.resolve(baseDir)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) defaults() {
	if c.Preset == "" {
		c.Preset = "tiny"
	}
	if c.Name == "" {
		c.Name = "vlmdiff-" + c.Preset
	}
	if c.Device == "" {
		c.Device = "cpu"
	}
	if c.Threads == 0 {
		c.Threads = 2
	}
	if c.Data.Layout == "" {
		c.Data.Layout = dataset.LayoutAuto
	}
	if c.Data.ValFraction == nil {
		v := 0.1
		c.Data.ValFraction = &v
	}
	if c.Data.Size == 0 {
		c.Data.Size = presets[c.Preset].InputSize
	}
	if c.Calibrate.Method == "" {
		c.Calibrate.Method = eval.DefaultMethod
	}
	if c.Calibrate.PixelQuantile == 0 {
		c.Calibrate.PixelQuantile = eval.DefaultPixelQuantile
	}
	if c.Calibrate.Reference == "" {
		c.Calibrate.Reference = eval.ReferenceTrain
	}
	if c.Calibrate.ReferencePerClass == 0 {
		c.Calibrate.ReferencePerClass = eval.DefaultReferencePerClass
	}
	if c.Evaluate.BatchSize == 0 {
		c.Evaluate.BatchSize = 4
	}
	if c.Select.Metric == "" {
		c.Select.Metric = "mean"
	}
	if c.Select.PerImage == 0 {
		c.Select.PerImage = 2
	}
	if c.Select.MinVisibility == nil {
		v := synth.DefaultParams.MinVisibility
		c.Select.MinVisibility = &v
	}
	if c.Select.ReferencePerClass == 0 {
		c.Select.ReferencePerClass = c.Calibrate.ReferencePerClass
	}
	if c.Select.MinGain == 0 {
		c.Select.MinGain = 0.01
	}
	if c.Python.Exe == "" {
		c.Python.Exe = "/usr/bin/python3"
	}
	if c.Train.UseCaptions == nil {
		t := true
		c.Train.UseCaptions = &t
	}
}

func (c *Config) resolve(base string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	abs(&c.Data.Root)
	if strings.ContainsRune(c.Python.Exe, filepath.Separator) { // a bare name (python3) is looked up on PATH
		abs(&c.Python.Exe)
	}
	abs(&c.FinetuneAE.Init)
	abs(&c.FinetuneAE.PerceptualONNX)
	abs(&c.Build.SDCheckpoint)
	abs(&c.Build.Tokenizer)
	abs(&c.Export.FeaturesONNX)
	if c.Calibrate.Knn != nil {
		abs(&c.Calibrate.Knn.BackboneONNX)
	}
	abs(&c.Register.ModelsDir)
	abs(&c.Evaluate.ValData)
	abs(&c.Select.ValData)
	abs(&c.Python.TrainerDir)
}

// Validate checks values; each error names the field.
func (c *Config) Validate() error {
	var errs []string
	bad := func(field, format string, args ...any) {
		errs = append(errs, field+": "+fmt.Sprintf(format, args...))
	}
	p, ok := presets[c.Preset]
	if !ok {
		bad("preset", "%q is not a preset (want one of %s)", c.Preset, strings.Join(presetNames(), ", "))
		p.Downsample = 8
	}
	if c.Device != "cpu" && c.Device != "cuda" && !strings.HasPrefix(c.Device, "cuda:") {
		bad("device", "%q: want cpu or cuda", c.Device)
	}
	if c.Threads < 0 {
		bad("threads", "must be >= 0")
	}
	if c.Data.Root == "" {
		bad("data.root", "required: the dataset directory")
	}
	if f := *c.Data.ValFraction; f < 0 || f >= 1 {
		bad("data.val_fraction", "%v: want 0 <= f < 1", f)
	}
	if c.Data.LabelBy != "" && !slices.Contains(dataset.LabelPolicies, c.Data.LabelBy) {
		bad("data.label_by", "%q: want %s", c.Data.LabelBy, strings.Join(dataset.LabelPolicies, " or "))
	}
	if c.Data.Size <= 0 || c.Data.Size%p.Downsample != 0 {
		bad("data.size", "%d: want a positive multiple of %d (the VAE's downsample)", c.Data.Size, p.Downsample)
	}
	if c.Caption.Endpoint != "" && c.Caption.Model == "" {
		bad("caption.model", "required with caption.endpoint")
	}
	if c.Caption.Concurrency < 0 {
		bad("caption.concurrency", "must be >= 0")
	}
	// 0 steps keeps a pretrained autoencoder (finetune_ae.init) as it is; from scratch it must train.
	if c.FinetuneAE.MaxSteps < 0 || (c.FinetuneAE.MaxSteps == 0 && c.FinetuneAE.Init == "") {
		bad("finetune_ae.max_steps", "required, > 0 (0 only with finetune_ae.init: use the pretrained autoencoder as is)")
	}
	if c.Train.MaxSteps <= 0 && c.Train.Epochs <= 0 {
		bad("train.max_steps", "give train.max_steps or train.epochs (> 0)")
	}
	if c.Train.AMP != "" && c.Train.AMP != "none" && c.Train.AMP != "bf16" && c.Train.AMP != "fp16" {
		bad("train.amp", "%q: want none, bf16 or fp16", c.Train.AMP)
	}
	for _, p := range []struct{ field, v string }{{"train.posterior", c.Train.Posterior}, {"export.posterior", c.Export.Posterior}} {
		if p.v != "" && p.v != "sample" && p.v != "mean" {
			bad(p.field, "%q: want sample or mean", p.v)
		}
	}
	c.Export.check(bad)
	if _, err := eval.ParseMethod(c.Calibrate.Method); err != nil {
		bad("calibrate.method", "%v", err)
	}
	if q := c.Calibrate.PixelQuantile; !(q > 0 && q <= 1) {
		bad("calibrate.pixel_quantile", "%v: want 0 < q <= 1", q)
	}
	if r := c.Calibrate.Reference; r != eval.ReferenceTrain && r != eval.ReferenceNone {
		bad("calibrate.reference", "%q: want %s or %s", r, eval.ReferenceTrain, eval.ReferenceNone)
	}
	if c.Calibrate.ReferencePerClass < 0 {
		bad("calibrate.reference_per_class", "must be > 0")
	}
	if err := eval.CheckPixelFactor(c.Calibrate.PixelFactor); err != nil {
		bad("calibrate.pixel_factor", "%v", err)
	}
	if v := c.Calibrate.PixelSigma; v != nil {
		if err := eval.CheckPixelSigma(*v); err != nil {
			bad("calibrate.pixel_sigma", "%v", err)
		}
	}
	if (c.Calibrate.PixelFactor > 0 || len(c.Select.PixelFactors) > 0) && c.Calibrate.Reference == eval.ReferenceNone {
		bad("calibrate.pixel_factor", "the mean-frame term is sized on the training normals with the map reference: it needs calibrate.reference train")
	}
	c.validateKnn(bad)
	if c.Train.SnapshotEvery < 0 {
		bad("train.snapshot_every", "must be >= 0 (epochs between snapshots; 0: none)")
	}
	c.validateSelect(bad)
	if b := c.Evaluate.Baseline; b != "" && b != eval.BaselineMeanDiff && b != "none" {
		bad("evaluate.baseline", "%q: want %s or none", b, eval.BaselineMeanDiff)
	}
	if c.Evaluate.BatchSize < 0 {
		bad("evaluate.batch_size", "must be > 0")
	}
	if strings.ContainsAny(c.Name, "/\\") || strings.HasPrefix(c.Name, ".") {
		bad("name", "%q must be a plain directory name", c.Name)
	}
	if strings.ContainsAny(c.Version, "/\\") {
		bad("version", "%q must not contain path separators", c.Version)
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// validateKnn checks the nearest-normal term's keys, reporting each problem through bad.
func (c *Config) validateKnn(bad func(field, format string, args ...any)) {
	if err := eval.CheckKnnFactor(c.Calibrate.KnnFactor); err != nil {
		bad("calibrate.knn_factor", "%v", err)
	}
	kf := c.Select.KnnFactors
	for i, a := range kf {
		if eval.CheckKnnFactor(a) != nil || (i > 0 && a <= kf[i-1]) {
			bad("select.knn_factors", "%v: want increasing factors in 0..%d", kf, eval.MaxKnnFactor)
			break
		}
	}
	kk := c.Select.KnnKs
	for i, k := range kk {
		if k < 1 || k > models.MaxKnnK || (i > 0 && k <= kk[i-1]) {
			bad("select.knn_ks", "%v: want increasing counts of nearest vectors in 1..%d", kk, models.MaxKnnK)
			break
		}
	}
	if len(kk) > 0 && len(c.Select.KnnFactors) == 0 {
		bad("select.knn_ks", "is chosen once the nearest-normal term's factor is: it needs select.knn_factors")
	}
	if k := c.Calibrate.Knn; len(kk) > 0 && k != nil && k.Bank > 0 && k.Bank < slices.Max(kk) {
		bad("select.knn_ks", "%v: a count above calibrate.knn.bank (%d vectors a class)", kk, k.Bank)
	}
	ki := c.Select.KnnIsolated
	for i, f := range ki {
		if eval.CheckKnnIsolated(f) != nil || (i > 0 && f <= ki[i-1]) {
			bad("select.knn_isolated", "%v: want increasing fractions in 0..%v", ki, eval.MaxKnnIsolated)
			break
		}
	}
	if len(ki) > 0 && len(kf) == 0 {
		bad("select.knn_isolated", "is weighed with the nearest-normal term's factors: it needs select.knn_factors")
	}
	if v := c.Calibrate.KnnSigma; v != nil {
		if err := eval.CheckKnnSigma(*v); err != nil {
			bad("calibrate.knn_sigma", "%v", err)
		}
	}
	if ks := c.Select.KnnSigmas; len(ks) > 0 {
		if len(kf) == 0 || slices.Max(kf) == 0 {
			bad("select.knn_sigmas", "are the nearest-normal term's smoothings, weighed with its factors: set select.knn_factors with a factor above 0")
		}
		for i, v := range ks {
			if eval.CheckKnnSigma(v) != nil || (i > 0 && v <= ks[i-1]) {
				bad("select.knn_sigmas", "%v: want increasing sigmas in 0..%d map pixels", ks, models.MaxPixelSigma)
				break
			}
		}
	}
	if c.Calibrate.KnnFactor == 0 && len(kf) == 0 {
		return
	}
	if c.Calibrate.Reference == eval.ReferenceNone {
		bad("calibrate.knn_factor", "the nearest-normal term is sized on the training normals with the map reference: it needs calibrate.reference train")
	}
	k := c.Calibrate.Knn
	switch {
	case k == nil || k.BackboneONNX == "":
		bad("calibrate.knn.backbone_onnx", "is required with the nearest-normal term (e.g. mobilenetv2_fp32_features.onnx)")
	case len(k.Layers) == 0:
		bad("calibrate.knn.layers", "is required with the nearest-normal term (e.g. [block2, block5])")
	case k.Dims < 0 || k.Bank < 0 || k.Bank > models.MaxKnnBank:
		bad("calibrate.knn", "dims %d and bank %d: want dims >= 0 (0: all) and bank 0 (default %d) to %d", k.Dims, k.Bank, eval.DefaultKnnBank, models.MaxKnnBank)
	case (len(k.Mean) != 0 || len(k.Std) != 0) && (len(k.Mean) != 3 || len(k.Std) != 3):
		bad("calibrate.knn.mean/std", "want 3 values each, or neither (ImageNet's)")
	case eval.CheckKnnSampling(k.Sampling) != nil:
		bad("calibrate.knn.sampling", "%v", eval.CheckKnnSampling(k.Sampling))
	case eval.CheckKnnIsolated(k.Isolated) != nil:
		bad("calibrate.knn.isolated", "%v", eval.CheckKnnIsolated(k.Isolated))
	}
}

// validateSelect checks the select section, reporting each problem through bad.
func (c *Config) validateSelect(bad func(field, format string, args ...any)) {
	if !slices.Contains(SelectMetrics, c.Select.Metric) {
		bad("select.metric", "%q: want one of %s", c.Select.Metric, strings.Join(SelectMetrics, ", "))
	}
	if c.Select.PerImage < 0 {
		bad("select.per_image", "must be > 0")
	}
	if v := *c.Select.MinVisibility; !(v >= 0 && v <= 100) {
		bad("select.min_visibility", "%v: want 0 (off) to 100", v)
	}
	if c.Select.ReferencePerClass < 0 {
		bad("select.reference_per_class", "must be > 0")
	}
	if g := c.Select.MinGain; !(g > 0 && g < 1) {
		bad("select.min_gain", "%v: want 0 < gain < 1", g)
	}
	if lw := c.Select.LayerWeights; len(lw) > 0 {
		if err := eval.CheckLayerValues(lw); err != nil {
			bad("select.layer_weights", "%v", err)
		}
	}
	if pf := c.Select.PixelFactors; len(pf) > 0 {
		if len(c.Select.LayerWeights) == 0 {
			bad("select.pixel_factors", "are weighed with the feature layers: set select.layer_weights too")
		}
		for i, a := range pf {
			if eval.CheckPixelFactor(a) != nil || (i > 0 && a <= pf[i-1]) {
				bad("select.pixel_factors", "%v: want increasing factors in 0..%d", pf, eval.MaxPixelFactor)
				break
			}
		}
	}
	if ps := c.Select.PixelSigmas; len(ps) > 0 {
		if len(c.Select.PixelFactors) == 0 || slices.Max(c.Select.PixelFactors) == 0 {
			bad("select.pixel_sigmas", "are the mean-frame term's smoothings, weighed with its factors: set select.pixel_factors with a factor above 0")
		}
		for i, v := range ps {
			if eval.CheckPixelSigma(v) != nil || (i > 0 && v <= ps[i-1]) {
				bad("select.pixel_sigmas", "%v: want increasing sigmas in 0..%d map pixels", ps, models.MaxPixelSigma)
				break
			}
		}
	}
	if err := checkSmoothing(c.Select.Smoothing); err != nil {
		bad("select.smoothing", "%v", err)
	}
	if err := checkGuided(c.Select.Guided); err != nil {
		bad("select.guided", "%v", err)
	}
	if err := checkStartSteps(c.Select.StartSteps); err != nil {
		bad("select.start_steps", "%v", err)
	}
	if err := checkPoolRepeats(c.Select.PoolRepeats); err != nil {
		bad("select.pool_repeats", "%v", err)
	}
	for i, k := range c.Select.Ensembles {
		if k < 1 || k > models.MaxEnsemble || (i > 0 && k <= c.Select.Ensembles[i-1]) {
			bad("select.ensembles", "%v: want increasing start-noise counts in 1..%d", c.Select.Ensembles, models.MaxEnsemble)
			break
		}
	}
}

func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case int:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

// check validates the feature layers and their match radii, reporting through bad.
func (e *ExportConfig) check(bad func(field, format string, args ...any)) {
	for i, l := range e.FeatureLayers {
		if _, ok := l[0].(string); !ok {
			bad(fmt.Sprintf("export.feature_layers[%d]", i), "want [name, weight]")
		}
		if _, ok := toFloat(l[1]); !ok {
			bad(fmt.Sprintf("export.feature_layers[%d]", i), "weight %v is not a number", l[1])
		}
	}
	for _, name := range slices.Sorted(maps.Keys(e.FeatureMatch)) {
		if r := e.FeatureMatch[name]; r < 0 || r > models.MaxMatch {
			bad("export.feature_match."+name, "%d: want a radius of 0..%d cells", r, models.MaxMatch)
		}
		known := len(e.FeatureLayers) == 0 // no list to check against: the preset's layers
		for _, l := range e.FeatureLayers {
			known = known || l[0] == name
		}
		if !known {
			bad("export.feature_match."+name, "is not one of export.feature_layers")
		}
	}
}
