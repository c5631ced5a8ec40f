package models

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vlmdiff/edge/internal/fsutil"
)

// Bundle is a verified bundle on disk.
type Bundle struct {
	Dir      string
	Manifest *Manifest
	// Conditioning is the decoded conditioning file, [len(Entries)][Tokens*Dim].
	Conditioning [][]float32
	// Reference is the decoded map reference file by class (nil without map.reference).
	Reference map[string][]float32
	// MeanFrames is the decoded mean-frame file of map.pixel by class, [3*H*W] each (nil without the term).
	MeanFrames map[string][]float32
	// Knn is the decoded banks of map.knn (nil without the term).
	Knn *KnnBanks
}

// CheckError says which verification check failed, so `vlmdiff bundle verify` and the daemon's model status
// can name it ("checksum", "graph", ...), and which file it concerns.
type CheckError struct {
	Check string // manifest, schema, files, checksum, graph, conditioning, reference, pixel, knn
	File  string // the file concerned, "" if none
	Err   error
}

func (e *CheckError) Error() string {
	if e.File != "" {
		return fmt.Sprintf("bundle check %q failed for %s: %v", e.Check, e.File, e.Err)
	}
	return fmt.Sprintf("bundle check %q failed: %v", e.Check, e.Err)
}

func (e *CheckError) Unwrap() error { return e.Err }

func checkErr(check, file string, format string, args ...any) error {
	return &CheckError{Check: check, File: file, Err: fmt.Errorf(format, args...)}
}

// ReadManifest reads and strictly decodes dir/bundle.json. Unknown fields are refused: a typo in a hand-edited
// manifest must not silently fall back to a default.
func ReadManifest(dir string) (*Manifest, error) {
	p := filepath.Join(dir, ManifestFile)
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, &CheckError{Check: "manifest", File: ManifestFile, Err: err}
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, &CheckError{Check: "manifest", File: ManifestFile, Err: fmt.Errorf("invalid JSON: %w", err)}
	}
	return &m, nil
}

// Load reads and fully verifies a bundle: manifest schema, every file's size and sha256, every graph's inputs
// and outputs against the manifest, and the conditioning file. A bundle that fails any check is refused.
func Load(dir string) (*Bundle, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if err := verifyFiles(dir, m); err != nil {
		return nil, err
	}
	if err := verifyGraphs(dir, m); err != nil {
		return nil, err
	}
	if err := verifyKnn(dir, m); err != nil {
		return nil, err
	}
	cond, err := loadConditioning(dir, m)
	if err != nil {
		return nil, err
	}
	b := &Bundle{Dir: dir, Manifest: m, Conditioning: cond}
	if r := m.Map.Reference; r != nil {
		if b.Reference, err = loadRows(dir, "reference", r.File, r.Classes, r.Width*r.Height); err != nil {
			return nil, err
		}
	}
	if t := m.Map.Pixel; t != nil {
		if b.MeanFrames, err = loadRows(dir, "pixel", t.File, t.Classes, 3*t.Width*t.Height); err != nil {
			return nil, err
		}
	}
	if b.Knn, err = loadKnn(dir, m); err != nil {
		return nil, err
	}
	return b, nil
}

// Verify checks a bundle without keeping it.
func Verify(dir string) error {
	_, err := Load(dir)
	return err
}

// Validate checks the manifest's schema: required sections present and values in range. It does not touch
// the files. Every problem is reported, not just the first, sorted by field.
func (m *Manifest) Validate() error {
	var p problems
	for _, check := range []func(*problems){m.validateHeader, m.validateInput, m.validateLatent, m.validateDiffusion,
		m.validateConditioning, m.validateMapAndScore, m.validateKnn, m.validateCalibration, m.validateGraphs} {
		check(&p)
	}
	if len(p) > 0 {
		sort.Strings(p)
		return &CheckError{Check: "schema", File: ManifestFile, Err: errors.New(strings.Join(p, "; "))}
	}
	return nil
}

// problems collects what is wrong with a manifest, one "field: why" each.
type problems []string

func (p *problems) bad(field, format string, args ...any) {
	*p = append(*p, field+": "+fmt.Sprintf(format, args...))
}

func (m *Manifest) validateHeader(p *problems) {
	if m.Format != FormatVersion {
		p.bad("format", "is %d, this agent reads format %d", m.Format, FormatVersion)
	}
	if m.Name == "" {
		p.bad("name", "is empty")
	}
	if m.Version == "" {
		p.bad("version", "is empty")
	}
}

func (m *Manifest) validateInput(p *problems) {
	in := m.Input
	if in.Height <= 0 || in.Width <= 0 {
		p.bad("input.height/width", "must be positive, got %dx%d", in.Height, in.Width)
	}
	if in.ChannelOrder != "RGB" {
		p.bad("input.channel_order", "must be RGB, got %q", in.ChannelOrder)
	}
	if in.Resize != "pil_bilinear" && in.Resize != "bilinear" {
		p.bad("input.resize", "must be pil_bilinear or bilinear, got %q", in.Resize)
	}
	for i, s := range in.Std {
		if !(s > 0) {
			p.bad(fmt.Sprintf("input.std[%d]", i), "must be > 0, got %v", s)
		}
	}
}

func (m *Manifest) validateLatent(p *problems) {
	l, in := m.Latent, m.Input
	if l.Channels <= 0 {
		p.bad("latent.channels", "must be positive")
	}
	if l.Downsample <= 0 || in.Height%max(l.Downsample, 1) != 0 || in.Width%max(l.Downsample, 1) != 0 {
		p.bad("latent.downsample", "must divide the input size, got %d for %dx%d", l.Downsample, in.Height, in.Width)
	}
	if !(l.ScaleFactor > 0) {
		p.bad("latent.scale_factor", "must be > 0")
	}
	if l.Posterior != "mean" && l.Posterior != "sample" {
		p.bad("latent.posterior", "must be mean or sample, got %q", l.Posterior)
	}
}

func (m *Manifest) validateDiffusion(p *problems) {
	d := m.Diffusion
	if d.BetaSchedule != "linear" {
		p.bad("diffusion.beta_schedule", "only linear is supported, got %q", d.BetaSchedule)
	}
	if !(d.LinearStart > 0 && d.LinearEnd > d.LinearStart && d.LinearEnd < 1) {
		p.bad("diffusion.linear_start/end", "need 0 < start < end < 1, got %v, %v", d.LinearStart, d.LinearEnd)
	}
	if d.TrainSteps <= 1 {
		p.bad("diffusion.train_steps", "must be > 1")
	}
	if d.DDIMSteps <= 0 || d.DDIMSteps > d.TrainSteps {
		p.bad("diffusion.ddim_steps", "must be in 1..train_steps, got %d", d.DDIMSteps)
	} else if c := d.TrainSteps / d.DDIMSteps; (d.TrainSteps-1)/c*c+1 >= d.TrainSteps {
		// The uniform schedule is range(0, T, T/steps)+1; when its last entry reaches T (e.g. 3 of 1000 gives 1000)
		// there is no alpha for it (docs/algorithm.md §1.5).
		p.bad("diffusion.ddim_steps", "%d: the uniform schedule reaches timestep %d, past the last of %d steps; "+
			"use a ddim_steps that divides train_steps (e.g. 4, 5, 10)", d.DDIMSteps, (d.TrainSteps-1)/c*c+1, d.TrainSteps)
	}
	if d.StartStep < 0 || d.StartStep >= d.TrainSteps {
		p.bad("diffusion.start_step", "must be in 0..train_steps-1, got %d", d.StartStep)
	} else if d.SamplerFromStartStep && d.StartStep < 1 {
		p.bad("diffusion.sampler_from_start_step", "start_step %d is below the first DDIM step (1): no step would run", d.StartStep)
	}
	if d.Eta != 0 {
		p.bad("diffusion.eta", "only 0 (deterministic DDIM) is supported, got %v", d.Eta)
	}
	if d.SeedPolicy != "fixed" && d.SeedPolicy != "per_frame" {
		p.bad("diffusion.seed_policy", "must be fixed or per_frame, got %q", d.SeedPolicy)
	}
	if d.Ensemble < 0 || d.Ensemble > MaxEnsemble {
		p.bad("diffusion.ensemble", "must be in 0..%d start noises per frame, got %d", MaxEnsemble, d.Ensemble)
	}
}

func (m *Manifest) validateConditioning(p *problems) {
	c := m.Conditioning
	if c.File == "" || c.Tokens <= 0 || c.Dim <= 0 || len(c.Entries) == 0 {
		p.bad("conditioning", "needs file, tokens, dim and at least one entry")
	}
	keys := map[string]bool{}
	for _, e := range c.Entries {
		if keys[e.Key] {
			p.bad("conditioning.entries", "duplicate key %q", e.Key)
		}
		keys[e.Key] = true
	}
	if !keys[c.Unconditional] {
		p.bad("conditioning.unconditional", "no entry with key %q", c.Unconditional)
	}
	if !keys[c.Default] {
		p.bad("conditioning.default", "no entry with key %q", c.Default)
	}
}

// PrecisionInt8 is Features.Precision of a feature graph quantised to int8 (`vlmdiff quantize`).
const PrecisionInt8 = "int8"

// validateMapAndScore checks the features, the map and the score recipe.
func (m *Manifest) validateMapAndScore(p *problems) {
	f, in := m.Features, m.Input
	if f.Input == "" {
		p.bad("features.input", "is empty")
	}
	if len(f.Layers) == 0 {
		p.bad("features.layers", "at least one layer is needed")
	}
	for i, ly := range f.Layers {
		if ly.Name == "" || !(ly.Weight > 0) {
			p.bad(fmt.Sprintf("features.layers[%d]", i), "needs a name and a positive weight")
		}
		if ly.Match < 0 || ly.Match > MaxMatch {
			p.bad(fmt.Sprintf("features.layers[%d].match", i), "must be 0..%d cells, got %d", MaxMatch, ly.Match)
		} else if ly.Match > 0 && f.Tokens {
			p.bad(fmt.Sprintf("features.layers[%d].match", i), "is for map features; token features (features.tokens) take 0")
		}
	}
	if (len(f.Mean) != 0 || len(f.Std) != 0) && (len(f.Mean) != 3 || len(f.Std) != 3) {
		p.bad("features.mean/std", "must both have 3 values or be absent")
	}
	if f.Precision != "" && f.Precision != PrecisionInt8 {
		p.bad("features.precision", "must be absent (float32) or %q, got %q", PrecisionInt8, f.Precision)
	}
	switch {
	case f.WeightBits != 0 && f.Precision != PrecisionInt8:
		p.bad("features.weight_bits", "is for an int8 feature graph (features.precision %q), got %d with precision %q", PrecisionInt8, f.WeightBits, f.Precision)
	case f.WeightBits != 0 && f.WeightBits != 7 && f.WeightBits != 8:
		p.bad("features.weight_bits", "must be 7 or 8 (or absent), got %d", f.WeightBits)
	}
	if m.Map.Upsample != "bilinear_align_corners" {
		p.bad("map.upsample", "only bilinear_align_corners is supported, got %q", m.Map.Upsample)
	}
	if m.Map.Sigma < 0 || (m.Map.Sigma > 0 && !(m.Map.Truncate > 0)) {
		p.bad("map.sigma/truncate", "sigma must be >= 0 and truncate > 0, got %v, %v", m.Map.Sigma, m.Map.Truncate)
	}
	if g := m.Map.Guided; g != nil {
		if top := min(MaxGuidedRadius, min(in.Height, in.Width)/4); g.Radius < 1 || g.Radius > top {
			p.bad("map.guided.radius", "must be from 1 to %d (at most %d and a quarter of the %dx%d map's shorter side), got %d", top, MaxGuidedRadius, in.Width, in.Height, g.Radius)
		}
		if !(g.Eps > 0) || math.IsInf(g.Eps, 0) {
			p.bad("map.guided.eps", "must be a finite number above 0, got %v", g.Eps)
		}
	}
	if r := m.Map.Reference; r != nil {
		m.validateRows(p, "map.reference", r.MapRows)
		// A reference measured with another number of start noises is not the mean of the maps this bundle
		// produces, and the calibration fitted on top of it no longer holds.
		if n, want := r.NoiseCount(), m.Diffusion.Noises(); n != want {
			p.bad("map.reference.noises", "the reference was measured with %d start noise(s), the bundle scores with "+
				"diffusion.ensemble %d: measure it again (vlmdiff calibrate --bundle DIR --data DIR --reference train)", n, want)
		}
		var w float64
		if m.Map.Pixel != nil {
			w = m.Map.Pixel.Weight
		}
		if r.PixelWeight != w {
			p.bad("map.reference.pixel_weight", "the reference was measured with the mean-frame term at weight %g, the bundle adds it at "+
				"%g: measure it again (vlmdiff calibrate --bundle DIR --data DIR --reference train)", r.PixelWeight, w)
		}
		if t := m.Map.Pixel; t != nil && r.PixelWeight != 0 {
			m.checkReferenceSigma(p, "pixel_sigma", "mean-frame", r.PixelSigma, t.SmoothingSigma(m.Map.Sigma))
		}
		var kw float64
		if m.Map.Knn != nil {
			kw = m.Map.Knn.Weight
		}
		if r.KnnWeight != kw {
			p.bad("map.reference.knn_weight", "the reference was measured with the nearest-normal term at weight %g, the bundle adds it at "+
				"%g: measure it again (vlmdiff calibrate --bundle DIR --data DIR --reference train)", r.KnnWeight, kw)
		}
		if t := m.Map.Knn; t != nil && r.KnnWeight != 0 {
			m.checkReferenceSigma(p, "knn_sigma", "nearest-normal", r.KnnSigma, t.SmoothingSigma(m.Map.Sigma))
		}
	}
	if t := m.Map.Pixel; t != nil {
		m.validateRows(p, "map.pixel", t.MapRows)
		if !(t.Factor >= 0) || math.IsInf(t.Factor, 0) {
			p.bad("map.pixel.factor", "must be a finite number >= 0, got %v", t.Factor)
		}
		if !(t.Weight >= 0) || math.IsInf(t.Weight, 0) {
			p.bad("map.pixel.weight", "must be a finite number >= 0, got %v", t.Weight)
		}
		if t.Sigma != nil && (!(*t.Sigma >= 0) || *t.Sigma > MaxPixelSigma || (*t.Sigma > 0 && !(m.Map.Truncate > 0))) {
			p.bad("map.pixel.sigma", "must be a number from 0 to %g (with map.truncate > 0 when above 0), got %v", float64(MaxPixelSigma), *t.Sigma)
		}
	}
	s := m.Score
	if s.PoolKernel < 1 || s.PoolRepeat < 0 || s.Reduce != "max" {
		p.bad("score", "needs pool_kernel >= 1, pool_repeat >= 0, reduce max")
	}
	if side := min(in.Height, in.Width); s.PoolKernel >= 1 && side-s.PoolRepeat*(s.PoolKernel-1) < 1 {
		p.bad("score", "%d pools of kernel %d leave nothing of a %dx%d map", s.PoolRepeat, s.PoolKernel, in.Width, in.Height)
	}
}

// validateRows checks a per-class file section of the map (map.reference, map.pixel): its file is listed, it
// is at the input size, its classes are distinct and include the global row "", and its counts match them.
func (m *Manifest) validateRows(p *problems, field string, r MapRows) {
	in := m.Input
	if r.File == "" {
		p.bad(field+".file", "is empty")
	} else if _, ok := m.Files[r.File]; !ok {
		p.bad(field+".file", "%s is not listed in files", r.File)
	}
	if r.Width != in.Width || r.Height != in.Height {
		p.bad(field, "is %dx%d, the maps are %dx%d (the input size)", r.Width, r.Height, in.Width, in.Height)
	}
	seen := map[string]bool{}
	for _, c := range r.Classes {
		if seen[c] {
			p.bad(field+".classes", "%q appears twice", c)
		}
		seen[c] = true
	}
	if !seen[""] {
		p.bad(field+".classes", "needs the global row \"\" for frames without a class")
	}
	if len(r.Images) != 0 && len(r.Images) != len(r.Classes) {
		p.bad(field+".images", "has %d counts for %d classes", len(r.Images), len(r.Classes))
	}
}

func (m *Manifest) validateCalibration(p *problems) {
	validCalib := func(field string, cc ClassCalib) {
		if math.IsNaN(cc.Threshold) || math.IsInf(cc.Threshold, 0) || !(cc.Max > cc.Min) {
			p.bad(field, "needs a finite threshold and max > min, got threshold %v min %v max %v", cc.Threshold, cc.Min, cc.Max)
		}
	}
	validCalib("calibration.global", m.Calibration.Global)
	for k, cc := range m.Calibration.PerClass {
		validCalib("calibration.per_class."+k, cc)
	}
}

// validateGraphs checks the graph roles and that every graph and the conditioning file are listed in files.
func (m *Manifest) validateGraphs(p *problems) {
	for _, role := range []string{RoleVAEEncoder, RoleDenoiser, RoleVAEDecoder, RoleFeatures} {
		if _, ok := m.Graphs[role]; !ok {
			p.bad("graphs", "required graph %q is missing", role)
		}
	}
	for role, g := range m.Graphs {
		switch role {
		case RoleVAEEncoder, RoleDenoiser, RoleVAEDecoder, RoleFeatures, RoleHint:
		default:
			p.bad("graphs."+role, "unknown role")
		}
		if g.File == "" {
			p.bad("graphs."+role+".file", "is empty")
		} else if _, ok := m.Files[g.File]; !ok {
			p.bad("graphs."+role+".file", "%s is not listed in files", g.File)
		}
		m.validateStatic(p, role, g)
	}
	if c := m.Conditioning; c.File != "" {
		if _, ok := m.Files[c.File]; !ok {
			p.bad("conditioning.file", "%s is not listed in files", c.File)
		}
	}
	for name := range m.Files {
		if !localPath(name) {
			p.bad("files", "%q is not a plain relative path inside the bundle", name)
		}
	}
}

// validateStatic checks a role's static specialisations and time graph: denoiser only, listed files, distinct
// batch sizes, a context the bundle has, time inputs only with a time graph whose tensors are named once.
func (m *Manifest) validateStatic(p *problems, role string, g GraphSpec) {
	static := g.Static
	if (len(static) > 0 || g.Time != nil) && role != RoleDenoiser {
		p.bad("graphs."+role+".static", "only the denoiser has static and time graphs")
		return
	}
	if tg := g.Time; tg != nil {
		field := "graphs." + role + ".time"
		if _, ok := m.Files[tg.File]; !ok || tg.File == "" {
			p.bad(field+".file", "%q is not listed in files", tg.File)
		}
		if len(tg.Outputs) == 0 {
			p.bad(field+".outputs", "is empty")
		}
		names := map[string]bool{TensorX: true, TensorHint: true, TensorT: true}
		for i, o := range tg.Outputs {
			if names[o.Name] || o.Name == "" {
				p.bad(fmt.Sprintf("%s.outputs[%d].name", field, i), "%q is empty, repeated or a denoiser input", o.Name)
			}
			names[o.Name] = true
		}
	}
	seen := map[int]bool{}
	for i, sg := range static {
		field := fmt.Sprintf("graphs.%s.static[%d]", role, i)
		if _, ok := m.Files[sg.File]; !ok || sg.File == "" {
			p.bad(field+".file", "%q is not listed in files", sg.File)
		}
		if sg.Batch < 1 || seen[sg.Batch] {
			p.bad(field+".batch", "%d is not a new batch size >= 1", sg.Batch)
		}
		seen[sg.Batch] = true
		if !m.hasConditioning(sg.Context) {
			p.bad(field+".context", "%q is not a conditioning entry", sg.Context)
		}
		if sg.TimeInputs && g.Time == nil {
			p.bad(field+".time_inputs", "needs graphs.%s.time", role)
		}
	}
}

func (m *Manifest) hasConditioning(key string) bool {
	for _, e := range m.Conditioning.Entries {
		if e.Key == key {
			return true
		}
	}
	return false
}

func localPath(name string) bool {
	return name != "" && filepath.IsLocal(name) && name != ManifestFile
}

func verifyFiles(dir string, m *Manifest) error {
	names := make([]string, 0, len(m.Files))
	for n := range m.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		want := m.Files[n]
		p := filepath.Join(dir, n)
		st, err := os.Stat(p)
		if err != nil {
			return &CheckError{Check: "files", File: n, Err: err}
		}
		if st.Size() != want.Size {
			return checkErr("checksum", n, "size is %d bytes, manifest says %d", st.Size(), want.Size)
		}
		sum, err := FileSHA256(p)
		if err != nil {
			return &CheckError{Check: "checksum", File: n, Err: err}
		}
		if !strings.EqualFold(sum, want.SHA256) {
			return checkErr("checksum", n, "sha256 is %s, manifest says %s", sum, want.SHA256)
		}
	}
	return nil
}

// FileSHA256 returns the hex sha256 of a file.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func verifyGraphs(dir string, m *Manifest) error {
	roles := make([]string, 0, len(m.Graphs))
	for r := range m.Graphs {
		roles = append(roles, r)
	}
	sort.Strings(roles)
	for _, role := range roles {
		g := m.Graphs[role]
		gio, err := ReadGraphIO(filepath.Join(dir, g.File))
		if err != nil {
			return &CheckError{Check: "graph", File: g.File, Err: err}
		}
		if err := matchTensors("input", g.Inputs, gio.Inputs, true); err != nil {
			return &CheckError{Check: "graph", File: g.File, Err: fmt.Errorf("%s graph: %w", role, err)}
		}
		// A graph may have outputs the manifest does not declare (a supplied backbone's unused stages): the
		// sessions ask only for the declared ones.
		if err := matchTensors("output", g.Outputs, gio.Outputs, false); err != nil {
			return &CheckError{Check: "graph", File: g.File, Err: fmt.Errorf("%s graph: %w", role, err)}
		}
		if err := checkRoleNames(m, role, g); err != nil {
			return &CheckError{Check: "graph", File: g.File, Err: fmt.Errorf("%s graph: %w", role, err)}
		}
		if err := verifyStatic(dir, role, g); err != nil {
			return err
		}
	}
	return nil
}

// verifyStatic checks each static specialisation of a graph against the graph's declared tensors: the same
// inputs without the context (and, with time inputs, the time graph's outputs in place of t), the same
// outputs, every batch dimension the specialisation's batch size; and the time graph: input t [1], the
// declared outputs.
func verifyStatic(dir, role string, g GraphSpec) error {
	if tg := g.Time; tg != nil {
		gio, err := ReadGraphIO(filepath.Join(dir, tg.File))
		if err != nil {
			return &CheckError{Check: "graph", File: tg.File, Err: err}
		}
		err = errors.Join(matchTensors("input", []TensorSpec{{Name: TensorT, Type: "int64", Shape: []int64{1}}}, gio.Inputs, true),
			matchTensors("output", tg.Outputs, gio.Outputs, true))
		if err != nil {
			return &CheckError{Check: "graph", File: tg.File, Err: fmt.Errorf("%s time graph: %w", role, err)}
		}
	}
	fix := func(ts []TensorSpec, batch int, timeInputs bool) []TensorSpec {
		var out []TensorSpec
		for _, t := range ts {
			if t.Name == TensorContext || (timeInputs && t.Name == TensorT) {
				continue
			}
			t.Shape = append([]int64(nil), t.Shape...)
			if len(t.Shape) > 0 {
				t.Shape[0] = int64(batch)
			}
			out = append(out, t)
		}
		if timeInputs {
			out = append(out, g.Time.Outputs...)
		}
		return out
	}
	for _, sg := range g.Static {
		gio, err := ReadGraphIO(filepath.Join(dir, sg.File))
		if err != nil {
			return &CheckError{Check: "graph", File: sg.File, Err: err}
		}
		timeInputs := sg.TimeInputs && g.Time != nil
		err = errors.Join(matchTensors("input", fix(g.Inputs, sg.Batch, timeInputs), gio.Inputs, true),
			matchTensors("output", fix(g.Outputs, sg.Batch, false), gio.Outputs, false))
		if err != nil {
			return &CheckError{Check: "graph", File: sg.File, Err: fmt.Errorf("%s static graph (batch %d): %w", role, sg.Batch, err)}
		}
	}
	return nil
}

// matchTensors compares the manifest's declared tensors with the graph's: every declared one present with
// the same element type, rank, and equal dimensions where both sides fix them; with exact, no others.
func matchTensors(kind string, want, have []TensorSpec, exact bool) error {
	byName := map[string]TensorSpec{}
	for _, h := range have {
		byName[h.Name] = h
	}
	if exact && len(want) != len(have) {
		var names []string
		for _, h := range have {
			names = append(names, h.Name)
		}
		return fmt.Errorf("manifest declares %d %ss, graph has %d (%s)", len(want), kind, len(have), strings.Join(names, ", "))
	}
	for _, w := range want {
		h, ok := byName[w.Name]
		if !ok {
			return fmt.Errorf("%s %q declared in the manifest is not in the graph", kind, w.Name)
		}
		if w.Type != h.Type {
			return fmt.Errorf("%s %q: type is %s, manifest says %s", kind, w.Name, h.Type, w.Type)
		}
		if len(w.Shape) != len(h.Shape) {
			return fmt.Errorf("%s %q: rank is %d %v, manifest says %d %v", kind, w.Name, len(h.Shape), h.Shape, len(w.Shape), w.Shape)
		}
		for i := range w.Shape {
			if w.Shape[i] > 0 && h.Shape[i] > 0 && w.Shape[i] != h.Shape[i] {
				return fmt.Errorf("%s %q: dim %d is %d, manifest says %d", kind, w.Name, i, h.Shape[i], w.Shape[i])
			}
		}
	}
	return nil
}

// checkRoleNames checks that each graph has the tensors its role needs, with the shapes the manifest implies.
func checkRoleNames(m *Manifest, role string, g GraphSpec) error {
	find := func(list []TensorSpec, name string) *TensorSpec {
		for i := range list {
			if list[i].Name == name {
				return &list[i]
			}
		}
		return nil
	}
	need := func(list []TensorSpec, kind, name, typ string, rank int) error {
		t := find(list, name)
		if t == nil {
			return fmt.Errorf("needs %s %q", kind, name)
		}
		if t.Type != typ || len(t.Shape) != rank {
			return fmt.Errorf("%s %q must be %s of rank %d, is %s %v", kind, name, typ, rank, t.Type, t.Shape)
		}
		return nil
	}
	var errs []error
	switch role {
	case RoleVAEEncoder:
		errs = append(errs, need(g.Inputs, "input", TensorImage, "float32", 4), need(g.Outputs, "output", TensorMoments, "float32", 4))
	case RoleHint:
		errs = append(errs, need(g.Inputs, "input", TensorImage, "float32", 4), need(g.Outputs, "output", TensorHint, "float32", 4))
	case RoleDenoiser:
		errs = append(errs,
			need(g.Inputs, "input", TensorX, "float32", 4),
			need(g.Inputs, "input", TensorT, "int64", 1),
			need(g.Inputs, "input", TensorContext, "float32", 3),
			need(g.Inputs, "input", TensorHint, "float32", 4),
			need(g.Outputs, "output", TensorEps, "float32", 4))
	case RoleVAEDecoder:
		errs = append(errs, need(g.Inputs, "input", TensorLatent, "float32", 4), need(g.Outputs, "output", TensorImage, "float32", 4))
	case RoleFeatures:
		errs = append(errs, need(g.Inputs, "input", m.Features.Input, "float32", 4))
		rank := 4
		if m.Features.Tokens {
			rank = 3
		}
		for _, ly := range m.Features.Layers {
			errs = append(errs, need(g.Outputs, "output", ly.Name, "float32", rank))
		}
	}
	return errors.Join(errs...)
}

func loadConditioning(dir string, m *Manifest) ([][]float32, error) {
	c := m.Conditioning
	data, err := os.ReadFile(filepath.Join(dir, c.File))
	if err != nil {
		return nil, &CheckError{Check: "conditioning", File: c.File, Err: err}
	}
	per := c.Tokens * c.Dim
	if len(data) != len(c.Entries)*per*4 {
		return nil, checkErr("conditioning", c.File, "has %d bytes, want %d entries x %d tokens x %d dims x 4 = %d",
			len(data), len(c.Entries), c.Tokens, c.Dim, len(c.Entries)*per*4)
	}
	out := make([][]float32, len(c.Entries))
	for i := range out {
		row, ok := finiteRow(data, i, per)
		if !ok {
			return nil, checkErr("conditioning", c.File, "entry %q holds a non-finite value", c.Entries[i].Key)
		}
		out[i] = row
	}
	return out, nil
}

// finiteRow decodes row i of a raw little-endian float32 file of rows of per values, or reports false when the
// row holds NaN or Inf (a bundle file that would poison every score is refused at load).
func finiteRow(data []byte, i, per int) ([]float32, bool) {
	row := make([]float32, per)
	for j := range row {
		v := math.Float32frombits(binary.LittleEndian.Uint32(data[(i*per+j)*4:]))
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, false
		}
		row[j] = v
	}
	return row, true
}

// loadRows decodes a per-class file of the map (map.reference, map.pixel): one finite row of per values for
// each class, in order. check names the section in errors.
func loadRows(dir, check, file string, classes []string, per int) (map[string][]float32, error) {
	data, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		return nil, &CheckError{Check: check, File: file, Err: err}
	}
	if len(data) != len(classes)*per*4 {
		return nil, checkErr(check, file, "has %d bytes, want %d classes x %d values x 4 = %d",
			len(data), len(classes), per, len(classes)*per*4)
	}
	out := make(map[string][]float32, len(classes))
	for i, c := range classes {
		row, ok := finiteRow(data, i, per)
		if !ok {
			return nil, checkErr(check, file, "class %q holds a non-finite value", c)
		}
		out[c] = row
	}
	return out, nil
}

// ReferenceFor returns the map reference of a class, falling back to the global row; nil when the bundle has
// no map reference.
func (b *Bundle) ReferenceFor(class string) []float32 {
	if b == nil || b.Reference == nil {
		return nil
	}
	if r, ok := b.Reference[class]; ok {
		return r
	}
	return b.Reference[""]
}

// MeanFrameFor returns the mean normal frame of a class ([3*H*W], the bundle's normalised input space),
// falling back to the global row; nil when the bundle has no mean-frame term.
func (b *Bundle) MeanFrameFor(class string) []float32 {
	if b == nil || b.MeanFrames == nil {
		return nil
	}
	if r, ok := b.MeanFrames[class]; ok {
		return r
	}
	return b.MeanFrames[""]
}

// ConditioningFor returns the conditioning row for key.
func (b *Bundle) ConditioningFor(key string) ([]float32, bool) {
	for i, e := range b.Manifest.Conditioning.Entries {
		if e.Key == key {
			return b.Conditioning[i], true
		}
	}
	return nil, false
}

// Calibration returns the calibration for a class, falling back to the global one.
func (m *Manifest) CalibrationFor(class string) ClassCalib {
	if cc, ok := m.Calibration.PerClass[class]; ok && class != "" {
		return cc
	}
	return m.Calibration.Global
}

// Rehash recomputes Files for every file the manifest lists and writes bundle.json. The trainer's calibrate
// stage and tests that tamper with bundles use it.
func Rehash(dir string, m *Manifest) error {
	for name := range m.Files {
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		sum, err := FileSHA256(p)
		if err != nil {
			return err
		}
		m.Files[name] = FileEntry{SHA256: sum, Size: st.Size()}
	}
	return WriteManifest(dir, m)
}

// WriteManifest writes bundle.json atomically (temp file + rename), so a reader never sees half a manifest.
func WriteManifest(dir string, m *Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(dir, ManifestFile), append(data, '\n'), 0o644)
}

// checkReferenceSigma reports a reference measured with a term smoothed at another sigma than the bundle's
// (bundle: the term's smoothing now; ref nil: the reference was measured at the map's sigma).
func (m *Manifest) checkReferenceSigma(p *problems, field, term string, ref *float64, bundle float64) {
	rs := m.Map.Sigma
	if ref != nil {
		rs = *ref
	}
	if rs != bundle {
		p.bad("map.reference."+field, "the reference was measured with the %s term smoothed at sigma %g, the bundle smooths it at "+
			"%g: measure it again (vlmdiff calibrate --bundle DIR --data DIR --reference train)", term, rs, bundle)
	}
}
