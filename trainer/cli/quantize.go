package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/vlmdiff/edge/internal/npy"
	"github.com/vlmdiff/edge/internal/torchenv"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
	"github.com/vlmdiff/edge/trainer/run"
)

func init() {
	Register(Command{Name: "quantize", Summary: "copy a bundle with an int8 feature graph (faster on CPUs with VNNI; opt-in, measure its accuracy with eval)", Run: runQuantize})
}

// EnvQuantPython names the Python interpreter with ONNX Runtime's quantiser (default: .deps/py/bin/python of
// the checkout that holds the trainer package, which `make deps` creates).
const EnvQuantPython = "VLMDIFF_QUANT_PYTHON"

// quantReport is the JSON line vlmdiff_train.quantize_features prints.
type quantReport struct {
	Event   string `json:"event"`
	Inputs  int    `json:"calibration_inputs"`
	Method  string `json:"method"`
	Outputs map[string]struct {
		RelL2   float64 `json:"rel_l2"`
		CosMean float64 `json:"cos_mean"`
		CosMax  float64 `json:"cos_max"`
	} `json:"outputs"`
}

func runQuantize(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("quantize", "--bundle SRC --data DIR --out DST [--frames 32] [--method percentile|minmax] [--weight-bits 7|8]", stderr)
	var sf scoreFlags
	sf.Register(fs)
	var df dataFlags
	df.register(fs)
	out := fs.String("out", "", "directory of the new bundle (required; may be --bundle itself to replace it)")
	frames := fs.Int("frames", 32, "training normals (spread over the classes) whose frames and reconstructions calibrate the int8 ranges")
	method := fs.String("method", "percentile", "activation ranges: percentile (the 99.999th percentile of each activation's values) or minmax (their whole range)")
	weightBits := fs.Int("weight-bits", 7, "weight range: 7 ([-64, 64]: no saturation on any x86 CPU) or 8 (full int8: saturates on CPUs without VNNI; for lines whose CPUs all have it)")
	python := fs.String("python", "", "Python with onnxruntime's quantiser (default: $"+EnvQuantPython+", then .deps/py/bin/python of the checkout)")
	trainerDir := fs.String("trainer-dir", "", "directory holding the vlmdiff_train package (default $"+torchenv.EnvTrainer+", then found from the binary)")
	if err := Parse(fs, args); err != nil {
		return err
	}
	if sf.Bundle == "" || df.data == "" || *out == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "vlmdiff quantize: --bundle, --data and --out are required")
		fs.Usage()
		return ErrUsage
	}
	if *frames < 1 {
		return fmt.Errorf("--frames must be >= 1, not %d", *frames)
	}
	switch *method {
	case "minmax", "percentile":
	default:
		return fmt.Errorf("--method %q: want percentile or minmax", *method)
	}
	if *weightBits != 7 && *weightBits != 8 {
		return fmt.Errorf("--weight-bits %d: want 7 or 8", *weightBits)
	}
	m, err := models.ReadManifest(sf.Bundle)
	if err != nil {
		return err
	}
	if m.Features.Precision == models.PrecisionInt8 {
		return fmt.Errorf("%s: its feature graph is already int8 (quantize the float bundle it was made from)", sf.Bundle)
	}
	td, err := torchenv.FindTrainerDir(*trainerDir)
	if err != nil {
		return err
	}
	py, err := quantPython(*python, td)
	if err != nil {
		return err
	}
	items, classes, err := df.items()
	if err != nil {
		return err
	}
	train := eval.Select(items, dataset.SplitTrain, classes, true)
	if len(train) == 0 {
		return fmt.Errorf("no normal training images in %s", df.data)
	}
	perClass := max(1, int(math.Ceil(float64(*frames)/float64(len(dataset.Classes(train))))))
	calib := calibrationItems(eval.ReferenceItems(train, perClass), *frames)

	tmp, err := os.MkdirTemp("", "vlmdiff-quantize-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	calibPath := filepath.Join(tmp, "calib.npy")
	n, err := writeFeatureInputs(ctx, sf, calib, df.batch, calibPath, stderr)
	if err != nil {
		return err
	}
	graph := filepath.Join(sf.Bundle, m.Graphs[models.RoleFeatures].File)
	int8Graph := filepath.Join(tmp, "features.int8.onnx")
	fmt.Fprintf(stderr, "quantizing %s on %d inputs (%d frames and their reconstructions; %s ranges, %d-bit weights)\n", graph, n, len(calib), *method, *weightBits)
	rep, err := runQuantizer(ctx, py, td, graph, calibPath, m.Features.Input, int8Graph, *method, df.batch, *weightBits)
	if err != nil {
		return err
	}
	fsw := models.FeatureSwap{Graph: int8Graph, Input: m.Features.Input, Layers: m.Features.Layers, Tokens: m.Features.Tokens,
		Mean: m.Features.Mean, Std: m.Features.Std, Precision: models.PrecisionInt8, WeightBits: *weightBits}
	nm, err := models.ReplaceFeatures(sf.Bundle, *out, fsw)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "ok: %s %s written to %s (features int8, %d-bit weights, calibrated on %d inputs, %s ranges)\n", nm.Name, nm.Version, *out, *weightBits, n, *method)
	// how far the int8 features are from the float ones on the calibration inputs, for the layers the map uses
	fmt.Fprintf(stdout, "%-16s %10s %12s %12s\n", "layer", "rel L2", "mean 1-cos", "max 1-cos")
	for _, l := range m.Features.Layers {
		o, ok := rep.Outputs[l.Name]
		if !ok {
			return fmt.Errorf("quantize: the quantiser's report lacks layer %s", l.Name)
		}
		fmt.Fprintf(stdout, "%-16s %10.4f %12.5f %12.5f\n", l.Name, o.RelL2, o.CosMean, o.CosMax)
	}
	switch exact := pipeline.Int8WeightsExact(); {
	case *weightBits == 7 && exact:
		fmt.Fprintln(stdout, "note: this CPU has VNNI or AMX; where every CPU that scores this bundle has it too, --weight-bits 8 "+
			"keeps the weights' full range and stays closer to the float features (docs/operations.md, \"Reduced precision\")")
	case *weightBits == 8 && !exact:
		fmt.Fprintln(stdout, "note: this CPU has no VNNI or AMX: ONNX Runtime's int8 kernels saturate with 8-bit weights here, "+
			"so the table above is that drift, and a scorer on such a CPU warns; use --weight-bits 7 for these line PCs")
	}
	fmt.Fprintf(stdout, "the thresholds and map reference were measured with the float features: recalibrate it "+
		"(`vlmdiff calibrate --bundle %s --data %s --reference train`) and compare it with the float bundle "+
		"(`vlmdiff eval`) before using it\n", *out, df.data)
	return nil
}

// calibrationItems takes at most n of items (grouped by class, as eval.ReferenceItems returns them) round-robin
// over the classes, so that cutting to n drops from every class rather than all of the last classes.
func calibrationItems(items []dataset.Item, n int) []dataset.Item {
	if len(items) <= n {
		return items
	}
	var classes []string
	by := map[string][]dataset.Item{}
	for _, it := range items {
		if _, ok := by[it.Class]; !ok {
			classes = append(classes, it.Class)
		}
		by[it.Class] = append(by[it.Class], it)
	}
	out := make([]dataset.Item, 0, n)
	for k := 0; len(out) < n; k++ {
		for _, c := range classes {
			if k < len(by[c]) && len(out) < n {
				out = append(out, by[c][k])
			}
		}
	}
	return out
}

// quantPython returns the interpreter to run the quantiser with.
func quantPython(explicit, trainerDir string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	if p := os.Getenv(EnvQuantPython); p != "" {
		return p, nil
	}
	p := filepath.Join(filepath.Dir(filepath.Dir(trainerDir)), ".deps", "py", "bin", "python")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no Python with ONNX Runtime's quantiser: %s is missing (run `make deps`, or pass --python / set $%s)", p, EnvQuantPython)
	}
	return p, nil
}

// writeFeatureInputs scores items up to the decoder and writes what the feature graph receives (each batch's
// frames, then their reconstructions) into one [N,3,H,W] .npy; N is returned.
func writeFeatureInputs(ctx context.Context, sf scoreFlags, items []dataset.Item, batch int, path string, stderr io.Writer) (int, error) {
	o := sf
	o.NoReference = true
	s, err := o.Open()
	if err != nil {
		return 0, err
	}
	defer s.Close()
	var all []float32
	var shape []int64
	for start := 0; start < len(items); start += max(batch, 1) {
		end := min(start+max(batch, 1), len(items))
		reqs := make([]pipeline.Request, 0, end-start)
		for _, it := range items[start:end] {
			img, err := pipeline.ReadImage(it.Path)
			if err != nil {
				return 0, fmt.Errorf("quantize: reading image %s: %w", it.Path, err)
			}
			reqs = append(reqs, pipeline.Request{Image: img, Class: it.Class})
		}
		data, sh, err := s.FeatureInputs(ctx, reqs)
		if err != nil {
			return 0, fmt.Errorf("quantize: reconstructing items %d-%d: %w", start, end-1, err)
		}
		all = append(all, data...)
		if shape == nil {
			shape = sh
		} else {
			shape[0] += sh[0]
		}
		fmt.Fprintf(stderr, "calibration inputs: %d/%d frames reconstructed\n", end, len(items))
	}
	if err := npy.Write(path, all, int(shape[0]), int(shape[1]), int(shape[2]), int(shape[3])); err != nil {
		return 0, err
	}
	return int(shape[0]), nil
}

// runQuantizer runs vlmdiff_train.quantize_features and returns its report. Its stderr is passed through so a
// failure names its cause.
func runQuantizer(ctx context.Context, py, trainerDir, graph, calib, input, out, method string, batch, weightBits int) (*quantReport, error) {
	cmd := run.Python{Exe: py, TrainerDir: trainerDir}.Module(ctx, "vlmdiff_train.quantize_features", "--graph", graph,
		"--calib", calib, "--input", input, "--out", out, "--method", method, "--batch", fmt.Sprint(max(batch, 1)),
		"--weight-bits", fmt.Sprint(weightBits))
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(se.String())
		if i := strings.LastIndex(msg, "\n"); i >= 0 {
			msg = msg[i+1:]
		}
		return nil, fmt.Errorf("quantize: %s -m vlmdiff_train.quantize_features: %v: %s", py, err, msg)
	}
	var rep quantReport
	lines := strings.Split(strings.TrimSpace(so.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &rep); err != nil || rep.Event != "done" {
		return nil, errors.Join(fmt.Errorf("quantize: the quantiser's last line is not its report: %q", lines[len(lines)-1]), err)
	}
	return &rep, nil
}
