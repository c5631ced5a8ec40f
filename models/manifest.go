// Package models defines the model bundle: the contract between the trainer, which writes bundles, and the
// agent and scoring pipeline, which read them. A bundle is a directory holding bundle.json (the Manifest) and
// the ONNX graphs and data files it names. Nothing outside the directory is needed to score a frame.
//
// The manifest carries every number of the scoring recipe (docs/bundle.md lists them with their reasons), so
// that a bundle trained with other settings scores correctly without a code change, and so that the trainer's
// evaluation and the daemon can never disagree about how a frame is scored.
package models

import (
	"fmt"
	"strconv"
	"time"
)

// FormatVersion is the manifest format this code reads and writes. A bundle with another major format is
// refused: an old agent must not silently mis-score a bundle that a newer trainer wrote.
const FormatVersion = 1

// ManifestFile is the name of the manifest inside a bundle directory.
const ManifestFile = "bundle.json"

// Graph roles: the keys of Manifest.Graphs. Each role has fixed tensor names (see the Tensor* constants) except
// the feature graph, whose input and output names come from its GraphSpec and Features.Layers, so that any
// backbone exported by anyone can be plugged in.
const (
	RoleVAEEncoder = "vae_encoder" // image [B,3,H,W] -> moments [B,2C,h,w] (mean then logvar along channels)
	RoleDenoiser   = "denoiser"    // x [B,C,h,w], t [B] int64, context [B,L,D], hint -> eps [B,C,h,w]
	RoleHint       = "hint"        // optional: image [B,3,H,W] -> hint features, computed once per frame
	RoleVAEDecoder = "vae_decoder" // latent [B,C,h,w] -> image [B,3,H,W] (in the input's normalised space)
	RoleFeatures   = "features"    // image [B,3,H,W] -> one output per feature layer
)

// Fixed tensor names of the graphs the trainer exports.
const (
	TensorImage   = "image"
	TensorMoments = "moments"
	TensorX       = "x"
	TensorT       = "t"
	TensorContext = "context"
	TensorHint    = "hint"
	TensorEps     = "eps"
	TensorLatent  = "latent"
)

// Manifest is bundle.json.
type Manifest struct {
	Format       int          `json:"format"`
	Name         string       `json:"name"`
	Version      string       `json:"version"`
	Created      time.Time    `json:"created"`
	Description  string       `json:"description,omitempty"`
	Provenance   Provenance   `json:"provenance"`
	Input        Input        `json:"input"`
	Latent       Latent       `json:"latent"`
	Diffusion    Diffusion    `json:"diffusion"`
	Conditioning Conditioning `json:"conditioning"`
	Features     Features     `json:"features"`
	Map          MapSpec      `json:"map"`
	Score        ScoreSpec    `json:"score"`
	Calibration  Calibration  `json:"calibration"`
	// Graphs maps a role (Role* constants) to its graph. vae_encoder, denoiser, vae_decoder and features are
	// required; hint is optional (without it the denoiser takes the preprocessed image as its hint input).
	Graphs map[string]GraphSpec `json:"graphs"`
	// Files lists every file of the bundle except bundle.json itself, with its checksum and size.
	Files map[string]FileEntry `json:"files"`
}

// Provenance records where a bundle came from, so a result can be traced back to its training run.
type Provenance struct {
	Dataset   string   `json:"dataset,omitempty"`
	Classes   []string `json:"classes,omitempty"`
	Preset    string   `json:"preset,omitempty"`
	Config    string   `json:"config,omitempty"` // sha256 of the training config
	GitCommit string   `json:"git_commit,omitempty"`
	Trainer   string   `json:"trainer,omitempty"` // e.g. "vlmdiff-trainer 0.1 (torch 1.13.1)"
	Notes     string   `json:"notes,omitempty"`
}

// Input describes the preprocessing of docs/algorithm.md §1.1.
type Input struct {
	Height       int        `json:"height"`
	Width        int        `json:"width"`
	ChannelOrder string     `json:"channel_order"` // "RGB" (the only supported order)
	Resize       string     `json:"resize"`        // "pil_bilinear" (antialiased, PIL semantics), "bilinear" (OpenCV)
	Mean         [3]float32 `json:"mean"`
	Std          [3]float32 `json:"std"`
}

// Latent describes the VAE's latent space (docs/algorithm.md §1.3).
type Latent struct {
	Channels    int     `json:"channels"`
	Downsample  int     `json:"downsample"`
	ScaleFactor float32 `json:"scale_factor"`
	// Posterior is "mean" (deterministic) or "sample" (mean + exp(logvar/2)*N(0,1), seeded).
	Posterior     string  `json:"posterior"`
	LogvarClampLo float32 `json:"logvar_clamp_lo"`
	LogvarClampHi float32 `json:"logvar_clamp_hi"`
}

// Diffusion describes the noise schedule and the DDIM sampler (docs/algorithm.md §1.4-1.6).
type Diffusion struct {
	BetaSchedule string  `json:"beta_schedule"` // "linear" (SD: linspace of sqrt betas, squared)
	LinearStart  float64 `json:"linear_start"`
	LinearEnd    float64 `json:"linear_end"`
	TrainSteps   int     `json:"train_steps"`
	DDIMSteps    int     `json:"ddim_steps"`
	// StartStep is the forward-noising step t of q_sample (999 in the reference).
	StartStep int `json:"start_step"`
	// SamplerFromStartStep runs only the DDIM steps at or below StartStep, on a latent noised to the first of them
	// (an SDEdit-style partial reconstruction). Off, the sampler runs every DDIM step from 901 whatever StartStep
	// is, as the paper's code does: a lower StartStep then only noises less (docs/algorithm.md §1.5).
	SamplerFromStartStep bool    `json:"sampler_from_start_step,omitempty"`
	Eta                  float64 `json:"eta"` // only 0 is supported: the sampler is deterministic given its start noise
	// GuidanceScale applies only when the conditional and unconditional contexts differ.
	GuidanceScale float64 `json:"guidance_scale"`
	// Seed and SeedPolicy fix the start noise: "fixed" draws the same noise for every frame (repeatable scores,
	// the default), "per_frame" draws fresh noise from Seed+frame sequence.
	Seed       int64  `json:"seed"`
	SeedPolicy string `json:"seed_policy"`
	// Ensemble is how many start noises each frame is reconstructed from (0 or 1: one). Noise k is the stream of
	// Seed+k; the anomaly map is the mean of the K maps. A single fixed noise errs the same way on every frame at
	// the places its reconstruction happens to miss, and the score depends on that draw; the mean of a few draws
	// cancels most of it (docs/algorithm.md §1.3: PIPED test image AUROC 96.9 with one noise, 99.6 with four).
	// Each extra noise costs one more denoise, decode and reconstruction-feature pass per frame.
	Ensemble int `json:"ensemble,omitempty"`
}

// WithStart returns d reconstructing from start step t: the paper's way for the last step of the schedule
// (train_steps - 1: noised there, then every DDIM step), SDEdit-style below it (sampler_from_start_step: only
// the DDIM steps at or below t run, on a latent noised to the first of them). Why both: below the last step the
// paper's sampler would still run every step from the top of its grid on a latent that was only noised less,
// which costs the same and keeps less of the frame than it seems to; the truncated sampler keeps a stochastic
// texture the reconstruction would otherwise redraw, and runs fewer steps (docs/algorithm.md §1.5).
func (d Diffusion) WithStart(t int) Diffusion {
	d.StartStep = t
	d.SamplerFromStartStep = t < d.TrainSteps-1
	return d
}

// DescribeStart is the start step for messages: "999", or "301 (only the DDIM steps at or below it)".
func (d Diffusion) DescribeStart() string {
	if d.SamplerFromStartStep {
		return fmt.Sprintf("%d (only the DDIM steps at or below it)", d.StartStep)
	}
	return strconv.Itoa(d.StartStep)
}

// MaxEnsemble bounds diffusion.ensemble: past a handful of noises the map stops changing while the cost keeps
// growing linearly.
const MaxEnsemble = 16

// Noises is the number of start noises per frame: Ensemble, at least 1.
func (d Diffusion) Noises() int {
	return max(d.Ensemble, 1)
}

// Conditioning holds precomputed text-encoder outputs, so the agent needs no text encoder at run time.
type Conditioning struct {
	// File is a raw little-endian float32 array of shape [len(Entries), Tokens, Dim].
	File    string              `json:"file"`
	Tokens  int                 `json:"tokens"`
	Dim     int                 `json:"dim"`
	Entries []ConditioningEntry `json:"entries"`
	// Unconditional is the key of the entry used as the unconditional context ("" = the empty prompt).
	Unconditional string `json:"unconditional"`
	// Default is the key used as the conditional context when a camera names none ("" for the paper's
	// MVTec/VisA/Real-IAD setting, which makes CFG the identity and halves the cost).
	Default string `json:"default"`
}

// ConditioningEntry names one row of the conditioning file.
type ConditioningEntry struct {
	Key    string `json:"key"`    // "" for the empty prompt, else usually a class name
	Prompt string `json:"prompt"` // the text that was encoded
}

// Features describes the feature graph whose input/reconstruction distance is the anomaly map (docs/algorithm.md §1.9).
type Features struct {
	Input  string         `json:"input"` // the feature graph's input tensor name
	Layers []FeatureLayer `json:"layers"`
	// Mean and Std, when set, renormalise the bundle's input space into the backbone's: the backbone gets
	// ((x*std_in+mean_in) - mean)/std. Empty means the backbone takes the bundle's normalised input as it is.
	Mean []float32 `json:"mean,omitempty"`
	Std  []float32 `json:"std,omitempty"`
	// Tokens, when true, says the outputs are ViT tokens [B,1+N,D] (CLS first) rather than maps [B,D,h,w].
	Tokens bool `json:"tokens,omitempty"`
	// Precision says what the feature graph computes in: "" is float32, as exported; "int8" is a copy that
	// `vlmdiff quantize` made (ONNX QDQ: int8 weights per channel, uint8 activations calibrated on the
	// bundle's own frames and reconstructions). The scorer runs either the same way; it is recorded so that
	// nobody mistakes a quantised bundle's accuracy for the float one's (docs/operations.md, "Reduced precision").
	Precision string `json:"precision,omitempty"`
	// WeightBits is the range of an int8 graph's weights as `vlmdiff quantize` wrote them: 7 ([-64, 64]) or 8
	// (full int8); 0 where it was not recorded (float32, or a copy made before the field). It is recorded
	// because 8-bit weights are only exact on CPUs with VNNI or AMX: elsewhere ONNX Runtime's u8 x s8 kernels
	// add pairs of products into a saturating int16, and the scorer warns when it opens such a bundle there.
	WeightBits int `json:"weight_bits,omitempty"`
}

// FeatureLayer is one output of the feature graph and its weight in the summed map.
type FeatureLayer struct {
	Name   string  `json:"name"`
	Weight float32 `json:"weight"`
	// Match, when above 0, compares the frame's feature at each position with the reconstruction's best match
	// within Match cells of it (a (2*Match+1)^2 window) instead of the one at the same position. A
	// reconstruction redraws a stochastic texture with another phase, so same-position features differ on every
	// normal frame of a textured material; a defect has no match nearby (docs/algorithm.md §1.9). 0 (absent) is
	// the paper's same-position distance. Map features only (not ViT tokens), at most MaxMatch.
	Match int `json:"match,omitempty"`
}

// MaxMatch bounds FeatureLayer.Match: the window costs (2r+1)^2 channel sweeps per reconstruction, and a wide
// one would match a defect to a distant normal patch.
const MaxMatch = 3

// MapSpec describes how per-layer distances become the anomaly map.
type MapSpec struct {
	Upsample string  `json:"upsample"` // "bilinear_align_corners"
	Sigma    float64 `json:"sigma"`    // Gaussian smoothing sigma in map pixels (5 in the reference); 0 = none
	Truncate float64 `json:"truncate"` // in sigmas (4 in the reference, so 41 taps at sigma 5)
	// Reference, when set, is subtracted from every smoothed map before the image score is pooled: the mean
	// map of the class's training normals. A reconstruction model errs the same way on every normal image
	// of a class at the same place (edges it blurs, a background texture it cannot reproduce); subtracting
	// that systematic error leaves what is new in this frame (docs/algorithm.md, "normal reference map").
	Reference *MapReference `json:"reference,omitempty"`
	// Pixel, when set, adds the frame's pixel distance to its class's mean normal frame to the feature map,
	// before the reference is subtracted (docs/algorithm.md §1.9, "the mean-frame term"). Where parts sit
	// still in the frame on a plain background, a dark speck or a stain differs from the mean frame even when
	// the features of its reconstruction barely move; where parts move or the background is a stochastic
	// texture the term is noise, so the select stage weighs it on the painted validation set (factor 0: off).
	Pixel *PixelTerm `json:"pixel,omitempty"`
	// Knn, when set, adds each position's distance to the nearest normal feature vector of the frame's class
	// (a memory bank of the training normals', PatchCore-style) to the map, before the reference is subtracted
	// (docs/algorithm.md §1.9, "the nearest-normal term"). The select stage weighs it on the painted set.
	Knn *KnnTerm `json:"knn,omitempty"`
	// Guided, when set, filters every smoothed map (the sum of the layers and terms, each after its Gaussian)
	// with a guided filter whose guide is the frame's own grey image, before the reference is subtracted
	// (docs/algorithm.md §1.9, "Smoothing along the frame's edges"). Where the frame is flat it averages the map
	// like a box; where the frame has edges the map follows them, so a response on a thin dark hair takes the
	// hair's shape instead of a Gaussian blob 40 px wide. Opt-in: the select stage weighs the filters a config
	// lists (select.guided) against the Gaussian, or `vlmdiff calibrate --map-guided R,EPS --map-sigma 0` sets
	// one on a finished bundle. On the painted validation sets it raised P-AP everywhere and left the mean of
	// I-AUROC, P-AUROC and AU-PRO level or lower, so no default lists it.
	Guided *GuidedFilter `json:"guided,omitempty"`
}

// GuidedFilter is He, Sun and Tang's guided filter (2010) on the map, the frame's luminance in [0, 1] as guide:
// in each (2 Radius + 1)^2 window the map is fitted as a x guide + b, a = cov(guide, map) / (var(guide) + Eps),
// and each pixel takes the window-averaged a and b (box means with reflected borders, scipy's uniform_filter).
// It is linear in the map, so the layers' and terms' maps filtered apart sum to the filtered map.
type GuidedFilter struct {
	Radius int     `json:"radius"` // window half-width in map pixels, 1..MaxGuidedRadius and at most a quarter of the map's shorter side
	Eps    float64 `json:"eps"`    // regularisation in squared luminance units: larger smooths across weaker edges (1e-3: edges of about 8 grey levels out of 255)
}

// SameGuided says whether two map.guided settings filter alike: both absent, or the same radius and eps.
func SameGuided(a, b *GuidedFilter) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// String is the filter for messages; a nil filter is "no guided filter".
func (g *GuidedFilter) String() string {
	if g == nil {
		return "no guided filter"
	}
	return fmt.Sprintf("guided filter r %d eps %g", g.Radius, g.Eps)
}

// MaxGuidedRadius bounds GuidedFilter.Radius: past it the filter is a wide box that averages a small defect away.
const MaxGuidedRadius = 64

// MapRows names a per-class file of the map (map.reference, map.pixel): raw little-endian float32 rows, one
// per class, at the map's size (the input size).
type MapRows struct {
	File   string `json:"file"`
	Width  int    `json:"width"`
	Height int    `json:"height"`
	// Classes names the rows; "" is the mean over every class, used for a frame whose class has no row.
	Classes []string `json:"classes"`
	// Images is how many normal images each row averages, for the record.
	Images []int `json:"images,omitempty"`
	// Source says which images they were (e.g. "train split of runs/line3/index.jsonl").
	Source string `json:"source,omitempty"`
}

// PixelTerm names the file of per-class mean normal frames and the weight of the distance to them in the map.
// The term's map is sqrt(sum over the 3 channels of (x - mean)^2) on the preprocessed frame x (the bundle's
// normalised input), smoothed with its own Gaussian (Sigma) and multiplied by Weight.
type PixelTerm struct {
	// MapRows' file is [len(Classes)][3][Height][Width]: each class's mean preprocessed normal frame, in the
	// bundle's normalised input space.
	MapRows
	// Factor is the term's size relative to the feature map's: the spread of Factor x the term over the
	// reference normals equals Factor x the feature map's spread on them. The select stage chooses it; the
	// calibrate stage turns it into Weight on the bundle's own maps, so that it means the same for every
	// backbone and input size.
	Factor float64 `json:"factor"`
	// Weight multiplies the smoothed distance map before it is added: Factor x (feature map spread) / (term
	// spread), both measured on the reference normals (each minus its class mean). 0 until calibrated.
	Weight float64 `json:"weight"`
	// Sigma is the Gaussian sigma, in map pixels, that smooths the term's distance map (0: not smoothed; absent:
	// map.sigma, as bundles before it had). The map's sigma is sized for feature maps a few pixels per cell (the
	// paper's 5 at 256 px for /8 patches); the term is one value per pixel, and that Gaussian spreads a speck
	// of a few pixels over some 40 and sinks it below the normal frames' variation (docs/algorithm.md §1.9, "The
	// term's own smoothing").
	Sigma *float64 `json:"sigma,omitempty"`
}

// MaxPixelSigma bounds PixelTerm.Sigma and KnnTerm.Sigma: a wider Gaussian than the map's own at any size the product runs is a
// mistake, and its kernel grows with it.
const MaxPixelSigma = 64

// SmoothingSigma is the sigma the term's map is smoothed with: Sigma, else the map's (mapSigma).
func (t *PixelTerm) SmoothingSigma(mapSigma float64) float64 {
	if t.Sigma != nil {
		return *t.Sigma
	}
	return mapSigma
}

// MapReference names the file of per-class mean normal maps (written by the calibrate stage).
type MapReference struct {
	// MapRows' file is [len(Classes)][Height][Width].
	MapRows
	// Noises is the diffusion.ensemble the maps were measured with (0: one noise, before the field existed). The
	// scores it gives are only comparable with the calibration's when the bundle scores with the same count.
	Noises int `json:"noises,omitempty"`
	// PixelWeight is map.pixel.weight when the reference was measured (0 without the term): the reference
	// holds the term's mean, so it only matches a bundle that adds the term with the same weight.
	PixelWeight float64 `json:"pixel_weight,omitempty"`
	// PixelSigma is the term's smoothing sigma when the reference was measured with it (absent: map.sigma, as
	// before the term had its own), for the same reason.
	PixelSigma *float64 `json:"pixel_sigma,omitempty"`
	// KnnWeight is map.knn.weight when the reference was measured (0 without the term), for the same reason.
	KnnWeight float64 `json:"knn_weight,omitempty"`
	// KnnSigma is the nearest-normal term's smoothing sigma when the reference was measured with one of its own
	// (absent: map.sigma), for the same reason.
	KnnSigma *float64 `json:"knn_sigma,omitempty"`
}

// NoiseCount is the start-noise count the reference was measured with: Noises, at least 1.
func (r *MapReference) NoiseCount() int {
	return max(r.Noises, 1)
}

// ScoreSpec is the image score recipe: Repeat passes of a Kernel x Kernel average pool with stride 1 and no
// padding, then the maximum (docs/algorithm.md §1.10).
type ScoreSpec struct {
	PoolKernel int    `json:"pool_kernel"`
	PoolRepeat int    `json:"pool_repeat"`
	Reduce     string `json:"reduce"` // "max"
}

// Calibration turns raw scores into a 0..1 score and a verdict. Thresholds come from normal validation scores
// only, never from test labels.
type Calibration struct {
	Method string     `json:"method,omitempty"` // how thresholds were fixed, e.g. "quantile:0.995" or "meanstd:3"
	Global ClassCalib `json:"global"`
	// PerClass overrides Global for a camera configured with that class.
	PerClass map[string]ClassCalib `json:"per_class,omitempty"`
}

// ClassCalib is the calibration of one class (or of all classes together).
type ClassCalib struct {
	// Threshold on the raw image score: raw >= Threshold is NG.
	Threshold float64 `json:"threshold"`
	// Min and Max of raw scores seen in calibration: the normalised score is
	// clamp((raw-Threshold)/(Max-Min) + 0.5, 0, 1), so the threshold maps to 0.5.
	Min float64 `json:"min"`
	Max float64 `json:"max"`
	// PixelThreshold on anomaly-map values: the share of pixels above it is the anomaly area.
	PixelThreshold float64 `json:"pixel_threshold"`
	// Normal-score statistics, for the record and for re-thresholding at run time.
	NormalMean float64 `json:"normal_mean,omitempty"`
	NormalStd  float64 `json:"normal_std,omitempty"`
	NormalN    int     `json:"normal_n,omitempty"`
}

// GraphSpec names one ONNX file and the inputs and outputs it must have.
type GraphSpec struct {
	File    string       `json:"file"`
	Inputs  []TensorSpec `json:"inputs"`
	Outputs []TensorSpec `json:"outputs"`
	// Static lists specialisations of the graph for one batch size (denoiser only; optional, bundles before
	// issue 14 have none). The scorer runs one instead of the dynamic graph when a batch has its size and
	// uses its context: with every shape fixed and the context a constant, the exporter has folded away the
	// shape computations and the cross-attention keys and values that the dynamic graph redoes at every step.
	Static []StaticGraph `json:"static,omitempty"`
	// Time is the timestep graph of the static graphs that take time inputs (denoiser only; optional, bundles
	// before it have none). Everything in the denoiser that depends on t alone (the sinusoidal embedding, the
	// time MLPs, each ResBlock's embedding projection) is the same at every step with the same t, and a
	// frame's sampler visits the same few timesteps for the bundle's whole life: the scorer runs this graph
	// once per distinct timestep and keeps its outputs, so a step no longer recomputes about 150 operators.
	Time *TimeGraph `json:"time,omitempty"`
}

// StaticGraph is a denoiser graph with a fixed batch size and a constant text context: inputs x [Batch,C,h,w],
// t [Batch] and hint, output eps, all shapes fixed; the context of conditioning entry Context is built in.
// With TimeInputs, the graph takes the outputs of the role's Time graph in place of t: inputs x, hint and
// Time.Outputs, each of those with one row that the graph broadcasts over its batch, so every row of a run
// is at the same timestep (as the sampler's rows always are).
type StaticGraph struct {
	File       string `json:"file"`
	Batch      int    `json:"batch"`
	Context    string `json:"context"`
	TimeInputs bool   `json:"time_inputs,omitempty"`
}

// TimeGraph is the denoiser's timestep graph: input t [1] (int64), outputs the time tensors (their names,
// types and fixed shapes), which are inputs of the static graphs with TimeInputs under the same names.
type TimeGraph struct {
	File    string       `json:"file"`
	Outputs []TensorSpec `json:"outputs"`
}

// TensorSpec is one graph input or output. Shape uses -1 for a dynamic dimension (always the batch).
type TensorSpec struct {
	Name  string  `json:"name"`
	Type  string  `json:"type"` // "float32", "int64", ...
	Shape []int64 `json:"shape"`
}

// FileEntry is one file's checksum and size.
type FileEntry struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}
