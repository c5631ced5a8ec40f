package run

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/vlmdiff/edge/internal/testpython"
	"github.com/vlmdiff/edge/models"
)

// TinyTestConfig is the tiny-preset run config of the end-to-end tests: trained on a generated dataset in data
// (aeSteps finetune-ae steps, trainSteps train steps), scored with the feature graph features and its layers
// ("[[name, weight], ...]"), registered into modelsDir. The schema test checks the stage configs it produces too.
func TinyTestConfig(data, features, layers, modelsDir string, aeSteps, trainSteps int) string {
	return fmt.Sprintf(`name: e2e
version: "1.0.0"
preset: tiny
seed: 0
threads: 2
data:
  root: %s
  val_fraction: 0.25
finetune_ae:
  max_steps: %d
  batch_size: 4
  lr: 0.002
train:
  max_steps: %d
  batch_size: 8
  lr: 0.001
export:
  features_onnx: %s
  feature_layers: %s
calibrate:
  method: quantile:0.99
evaluate:
  batch_size: 8
register:
  models_dir: %s
`, data, aeSteps, trainSteps, features, layers, modelsDir)
}

// schemaField is one key of a Python stage's config (vlmdiff_train/stage_config.py, via `schema`).
type schemaField struct {
	Type     string   `json:"type"`
	Nullable bool     `json:"nullable"`
	Required bool     `json:"required"`
	Minimum  *float64 `json:"minimum"` // inclusive, of a number or of each number of a list; nil: none
	Maximum  *float64 `json:"maximum"`
	Choices  []string `json:"choices"` // a string's allowed values; nil: any
}

// outOfRange says why v (a JSON value of the field's type, numbers as json.Number) is outside the field's
// accepted values, or "".
func (f schemaField) outOfRange(v any) string {
	if s, ok := v.(string); ok && f.Choices != nil && !slices.Contains(f.Choices, s) {
		return fmt.Sprintf("%q is not one of %v", s, f.Choices)
	}
	vs, ok := v.([]any)
	if !ok {
		vs = []any{v}
	}
	for _, x := range vs {
		n, ok := x.(json.Number)
		if !ok {
			continue
		}
		g, err := n.Float64()
		switch {
		case err != nil:
			return fmt.Sprintf("%v: %v", n, err)
		case f.Minimum != nil && g < *f.Minimum:
			return fmt.Sprintf("%v is below its minimum %v", n, *f.Minimum)
		case f.Maximum != nil && g > *f.Maximum:
			return fmt.Sprintf("%v is above its maximum %v", n, *f.Maximum)
		}
	}
	return ""
}

type pythonSchema struct {
	Stages    map[string]map[string]schemaField `json:"stages"`
	Constants struct {
		LatentScale  float64   `json:"latent_scale"`
		ImageNetMean []float64 `json:"imagenet_mean"`
		ImageNetStd  []float64 `json:"imagenet_std"`
		Presets      map[string]struct {
			InputSize      int `json:"input_size"`
			LatentChannels int `json:"latent_channels"`
			LatentSize     int `json:"latent_size"`
			Downsample     int `json:"downsample"`
		} `json:"presets"`
	} `json:"constants"`
}

// loadPythonSchema runs `python3 -m vlmdiff_train schema`, or skips the test when python3 cannot import torch.
func loadPythonSchema(t *testing.T) pythonSchema {
	t.Helper()
	py := testpython.Need(t, "torch")
	trainer, _ := filepath.Abs("../python")
	cmd := exec.Command(py, "-m", "vlmdiff_train", "schema")
	cmd.Env = append(os.Environ(), "PYTHONPATH="+trainer)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3 -m vlmdiff_train schema: %v: %s", err, stderr.String())
	}
	var s pythonSchema
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("schema output is not the expected JSON: %v", err)
	}
	if len(s.Stages) == 0 || len(s.Constants.Presets) == 0 {
		t.Fatalf("schema output has no stages or no presets: %s", out)
	}
	return s
}

// checkValue reports whether a JSON-decoded value (decoded with UseNumber) has the schema type.
func checkValue(v any, typ string) bool {
	switch typ {
	case "str":
		_, ok := v.(string)
		return ok
	case "bool":
		_, ok := v.(bool)
		return ok
	case "int":
		n, ok := v.(json.Number)
		if !ok {
			return false
		}
		_, err := n.Int64()
		return err == nil
	case "float":
		n, ok := v.(json.Number)
		if !ok {
			return false
		}
		_, err := n.Float64()
		return err == nil
	case "dict":
		_, ok := v.(map[string]any)
		return ok
	}
	if elem, ok := strings.CutPrefix(typ, "list"); ok {
		xs, ok := v.([]any)
		if !ok {
			return false
		}
		if elem == "" {
			return true
		}
		elem = strings.TrimSuffix(strings.TrimPrefix(elem, "["), "]")
		for _, x := range xs {
			if !checkValue(x, elem) {
				return false
			}
		}
		return true
	}
	return false
}

// checkStageConfig returns one problem per key of cfg (as the runner writes it: marshalled to JSON) that the
// stage's schema refuses: unknown keys, wrong types, values out of range, missing required keys.
func checkStageConfig(cfg map[string]any, fields map[string]schemaField) []string {
	b, err := json.Marshal(cfg)
	if err != nil {
		return []string{fmt.Sprintf("not JSON: %v", err)}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var got map[string]any
	if err := dec.Decode(&got); err != nil {
		return []string{fmt.Sprintf("decoding: %v", err)}
	}
	var problems []string
	for k, v := range got {
		f, ok := fields[k]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%s: unknown key", k))
		case v == nil:
			if !f.Nullable {
				problems = append(problems, fmt.Sprintf("%s: null, but the key is not nullable", k))
			}
		case !checkValue(v, f.Type):
			problems = append(problems, fmt.Sprintf("%s: %v (%T) is not a %s", k, v, v, f.Type))
		default:
			if why := f.outOfRange(v); why != "" {
				problems = append(problems, fmt.Sprintf("%s: %s", k, why))
			}
		}
	}
	for k, f := range fields {
		if v, ok := got[k]; f.Required && (!ok || v == nil || v == "") {
			problems = append(problems, fmt.Sprintf("%s: required, missing", k))
		}
	}
	sort.Strings(problems)
	return problems
}

// TestStageConfigsMatchPythonSchema builds the configs the runner writes for the Python stages, for every
// committed config and the end-to-end tests' tiny config, and checks every key against the stage's definition
// on the Python side: a key Python does not know or a value of another type fails here, not after hours of
// training.
func TestStageConfigsMatchPythonSchema(t *testing.T) {
	s := loadPythonSchema(t)
	t.Setenv("VLMDIFF_DATA", "/data")
	t.Setenv("VLMDIFF_BACKBONES", "/backbones")
	t.Setenv("VLMDIFF_WEIGHTS", "/weights")
	t.Setenv("VLMDIFF_TAEF", "/weights/taef2")
	files, _ := filepath.Glob("../../configs/train/*.yaml")
	if len(files) < 3 {
		t.Fatalf("want the committed configs, found %v", files)
	}
	type source struct {
		name string
		load func() (*Config, error)
	}
	var srcs []source
	for _, f := range files {
		srcs = append(srcs, source{filepath.Base(f), func() (*Config, error) { return LoadConfig(f) }})
	}
	srcs = append(srcs, source{"e2e tiny", func() (*Config, error) {
		return ParseConfig([]byte(TinyTestConfig("/data", "/backbones/f.onnx", "[[stage1, 1.0], [stage2, 0.5]]", "/models", 40, 60)), "/base")
	}})
	for _, src := range srcs {
		t.Run(src.name, func(t *testing.T) {
			c, err := src.load()
			if err != nil {
				t.Fatal(err)
			}
			tr := &Training{Config: c}
			for stage, cfg := range tr.pythonStageConfigs(placeholderRun(t.TempDir())) {
				fields, ok := s.Stages[stage]
				if !ok {
					t.Fatalf("the Python schema has no stage %q (has %v)", stage, keys(s.Stages))
				}
				if p := checkStageConfig(cfg, fields); len(p) > 0 {
					t.Errorf("%s: the %s config the runner writes is refused by the Python definition:\n  %s", src.name, stage, strings.Join(p, "\n  "))
				}
			}
		})
	}
}

// TestCheckStageConfig: the checker itself finds what it must (else the schema test could not fail).
func TestCheckStageConfig(t *testing.T) {
	fields := map[string]schemaField{
		"run_dir": {Type: "str", Required: true}, "seed": {Type: "int"}, "lr": {Type: "float"},
		"classes": {Type: "list[str]", Nullable: true}, "feature_layers": {Type: "list[list]", Nullable: true},
		"augment": {Type: "bool"}, "features_random": {Type: "dict", Nullable: true},
		"batch_size": {Type: "int", Minimum: ptr(1.0)}, "linear_end": {Type: "float", Minimum: ptr(0.0), Maximum: ptr(1.0)},
		"amp": {Type: "str", Choices: []string{"none", "bf16"}}, "batches": {Type: "list[int]", Minimum: ptr(1.0)},
	}
	for _, c := range []struct {
		name string
		cfg  map[string]any
		want []string
	}{
		{"ok", map[string]any{"run_dir": "/r", "seed": 1, "lr": 0.5, "classes": []string{"a"}, "augment": true,
			"feature_layers": [][2]any{{"l", 1.0}}, "features_random": map[string]any{"seed": 3}}, nil},
		{"int is a float", map[string]any{"run_dir": "/r", "lr": 2}, nil},
		{"null where nullable", map[string]any{"run_dir": "/r", "classes": nil}, nil},
		{"unknown key", map[string]any{"run_dir": "/r", "max_stepz": 3}, []string{"max_stepz: unknown key"}},
		{"float is not an int", map[string]any{"run_dir": "/r", "seed": 1.5}, []string{"seed: 1.5 (json.Number) is not a int"}},
		{"string is not a float", map[string]any{"run_dir": "/r", "lr": "0.1"}, []string{"lr: 0.1 (string) is not a float"}},
		{"list element type", map[string]any{"run_dir": "/r", "classes": []any{"a", 1}}, []string{"classes: [a 1] ([]interface {}) is not a list[str]"}},
		{"null where not nullable", map[string]any{"run_dir": "/r", "seed": nil}, []string{"seed: null, but the key is not nullable"}},
		{"missing required", map[string]any{"seed": 1}, []string{"run_dir: required, missing"}},
		{"empty required", map[string]any{"run_dir": ""}, []string{"run_dir: required, missing"}},
		{"in range", map[string]any{"run_dir": "/r", "batch_size": 1, "linear_end": 1, "amp": "bf16", "batches": []int{1, 4}}, nil},
		{"below the minimum", map[string]any{"run_dir": "/r", "batch_size": 0}, []string{"batch_size: 0 is below its minimum 1"}},
		{"above the maximum", map[string]any{"run_dir": "/r", "linear_end": 1.5}, []string{"linear_end: 1.5 is above its maximum 1"}},
		{"not a choice", map[string]any{"run_dir": "/r", "amp": "fp32"}, []string{`amp: "fp32" is not one of [none bf16]`}},
		{"a list item below the minimum", map[string]any{"run_dir": "/r", "batches": []int{1, 0}}, []string{"batches: 0 is below its minimum 1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := checkStageConfig(c.cfg, fields); !slices.Equal(got, c.want) {
				t.Fatalf("problems %q, want %q", got, c.want)
			}
		})
	}
}

// TestConstantsMatchPython: the numbers both languages define agree. Preset sizes are defined in Go by the
// presets table (config defaults and validation) and in Python by presets.py; the latent scale and the ImageNet
// normalisation are defined in Python by constants.py and reach Go only through bundle manifests, so they are
// compared with the committed fixture bundle's manifest that the Go scoring tests read.
func TestConstantsMatchPython(t *testing.T) {
	s := loadPythonSchema(t)
	c := s.Constants
	if got, want := keys(c.Presets), keys(presets); !slices.Equal(got, want) {
		t.Errorf("presets: Python defines %v, Go %v", got, want)
	}
	for name, p := range c.Presets {
		g, ok := presets[name]
		if !ok {
			continue
		}
		if g.InputSize != p.InputSize || g.LatentChannels != p.LatentChannels || g.Downsample != p.Downsample || g.LatentSize() != p.LatentSize {
			t.Errorf("preset %s: Go %+v (latent %d), Python %+v", name, g, g.LatentSize(), p)
		}
	}
	m, err := models.ReadManifest("../../models/testdata/fixture")
	if err != nil {
		t.Fatal(err)
	}
	near := func(a, b float64) bool { return math.Abs(a-b) <= 1e-6*math.Max(1, math.Abs(b)) }
	if !near(float64(m.Latent.ScaleFactor), c.LatentScale) {
		t.Errorf("latent scale: Python %v, fixture manifest %v", c.LatentScale, m.Latent.ScaleFactor)
	}
	for i := range 3 {
		if len(c.ImageNetMean) != 3 || len(c.ImageNetStd) != 3 {
			t.Fatalf("ImageNet mean/std: want 3 values each, got %v %v", c.ImageNetMean, c.ImageNetStd)
		}
		if !near(float64(m.Input.Mean[i]), c.ImageNetMean[i]) || !near(float64(m.Input.Std[i]), c.ImageNetStd[i]) {
			t.Errorf("ImageNet normalisation: Python mean %v std %v, fixture manifest mean %v std %v", c.ImageNetMean, c.ImageNetStd, m.Input.Mean, m.Input.Std)
			break
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestCheckStageSettings: the check line hands each Python stage the config it will get, so a key the stage does
// not know, a value of the wrong type or out of its range, under a section's extra (which the Go config passes on
// as it is) is refused by name before any stage runs, not when its stage starts after the autoencoder's minutes.
func TestCheckStageSettings(t *testing.T) {
	python := testpython.Need(t, "json") // the stages' keys are checked without torch (control_levels: with it)
	trainerDir, err := filepath.Abs("../python")
	if err != nil {
		t.Fatal(err)
	}
	base := TinyTestConfig("/data", "/backbones/f.onnx", "[[stage1, 1.0]]", "/models", 40, 60)
	for _, c := range []struct{ name, config, want string }{
		{"as committed", base, ""},
		{"a known build key", base + "build:\n  extra:\n    res_blocks: 1\n", ""},
		{"an unknown build key", base + "build:\n  extra:\n    res_block: 1\n", "build config: unknown keys ['res_block']"},
		{"a wrong type in train.extra", strings.Replace(base, "train:\n", "train:\n  extra:\n    val_images: many\n", 1),
			"train config: val_images: want int, got 'many'"},
		{"an unknown finetune_ae key", strings.Replace(base, "finetune_ae:\n", "finetune_ae:\n  extra:\n    lr_decay: 0.5\n", 1),
			"finetune-ae config: unknown keys ['lr_decay']"},
		// values out of range: refused here too, not when the build stage starts after the autoencoder's
		{"a build value below its minimum", base + "build:\n  extra:\n    res_blocks: 0\n",
			"build config: res_blocks: 0 is below its minimum 1"},
		{"a train value not among its choices", strings.Replace(base, "train:\n", "train:\n  extra:\n    amp: fp32\n", 1),
			"train config: amp: 'fp32' is not one of none, bf16, fp16"},
		{"control beyond the preset's levels", base + "build:\n  extra:\n    control_levels: 4\n",
			"build config: control_levels: 4 is above the 3 UNet levels of preset tiny"},
		{"control at every level", base + "build:\n  extra:\n    control_levels: 3\n", ""},
		{"two train keys that do not go together", strings.Replace(base, "train:\n", "train:\n  extra:\n    amp: fp16\n", 1),
			"train config: amp fp16 needs device cuda"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if strings.Contains(c.config, "control_levels") {
				testpython.Need(t, "torch") // its range is the preset's, read from presets.py
			}
			cfg, err := ParseConfig([]byte(c.config), "/base")
			if err != nil {
				t.Fatal(err)
			}
			tr := &Training{Config: cfg, Dir: t.TempDir(), Python: Python{Exe: python, TrainerDir: trainerDir}}
			err = tr.checkStageSettings(context.Background())
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
