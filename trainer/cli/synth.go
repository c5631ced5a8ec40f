package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"gocv.io/x/gocv"

	"github.com/vlmdiff/edge/capture"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/run"
	"github.com/vlmdiff/edge/trainer/synth"
)

func init() {
	Register(Command{Name: "synth", Summary: "write synthetic MVTec-layout data: the demo camera's frames; `synth defects` (a labelled validation set from held-out normals); `synth surfaces` (hard textured surfaces)", Run: runSynth})
}

// generator is what the synthetic source offers beyond Source: frame n on demand.
type generator interface {
	Generate(seq uint64) (capture.Frame, error)
}

// runSynth writes the synthetic camera's frames into <out>/<class>/{train/good, test/good, test/<defect>,
// ground_truth/<defect>} so the training pipeline can learn the demo's normal look and be evaluated on its
// defects. Masks are exact: a defect frame is compared with the same frame rendered without its defect.
func runSynth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "defects":
			return runSynthDefects(ctx, args[1:], stdout, stderr)
		case "surfaces":
			return runSynthSurfaces(ctx, args[1:], stdout, stderr)
		}
	}
	fs := NewFlagSet("synth", "[defects|surfaces] --out DIR [--train N] [--test N] [--seed S] [--width W --height H]", stderr)
	out := fs.String("out", "", "dataset root to write (required)")
	class := fs.String("class", "synthetic", "class name")
	nTrain := fs.Int("train", 120, "defect-free training frames")
	nTest := fs.Int("test", 60, "test frames (about half with a defect)")
	seed := fs.Uint64("seed", 7, "the camera's seed (configs/demo.yaml uses 7)")
	w := fs.Int("width", 256, "frame width")
	h := fs.Int("height", 256, "frame height")
	if err := Parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		fs.Usage()
		return ErrUsage
	}
	mk := func(rate float64) (generator, error) {
		src, err := capture.New(capture.Config{Name: "synthetic", Kind: "synthetic", Width: *w, Height: *h,
			Synthetic: capture.SyntheticConfig{Seed: *seed, DefectRate: rate}})
		if err != nil {
			return nil, err
		}
		g, ok := src.(generator)
		if !ok {
			return nil, errors.New("synthetic source cannot generate frames on demand")
		}
		return g, nil
	}
	clean, err := mk(0)
	if err != nil {
		return err
	}
	defective, err := mk(0.5)
	if err != nil {
		return err
	}
	root := filepath.Join(*out, *class)
	write := func(dir, name string, f capture.Frame) error {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		return writeRGB(filepath.Join(dir, name), f.Width, f.Height, f.Pix, 3)
	}
	// Training frames come from sequence numbers far from the test ones, like frames of another shift.
	for i := 0; i < *nTrain; i++ {
		f, err := clean.Generate(uint64(1_000_000 + i))
		if err != nil {
			return err
		}
		if err := write(filepath.Join(root, "train", "good"), fmt.Sprintf("%04d.png", i), f); err != nil {
			return err
		}
	}
	counts := map[string]int{}
	for i := 0; i < *nTest; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		seq := uint64(1 + i)
		f, err := defective.Generate(seq)
		if err != nil {
			return err
		}
		name := fmt.Sprintf("%04d.png", i)
		if err := write(filepath.Join(root, "test", f.Truth), name, f); err != nil {
			return err
		}
		counts[f.Truth]++
		if f.Truth == capture.TruthGood {
			continue
		}
		c, err := clean.Generate(seq)
		if err != nil {
			return err
		}
		mask := make([]byte, f.Width*f.Height)
		for p := range mask {
			if f.Pix[3*p] != c.Pix[3*p] || f.Pix[3*p+1] != c.Pix[3*p+1] || f.Pix[3*p+2] != c.Pix[3*p+2] {
				mask[p] = 255
			}
		}
		gt := filepath.Join(root, "ground_truth", f.Truth)
		if err := os.MkdirAll(gt, 0o755); err != nil {
			return err
		}
		if err := writeRGB(filepath.Join(gt, fmt.Sprintf("%04d_mask.png", i)), f.Width, f.Height, mask, 1); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "wrote %s: %d train/good, test %v\n", root, *nTrain, counts)
	return nil
}

// writeRGB writes packed RGB (channels 3) or grey (1) pixels as a PNG.
func writeRGB(path string, w, h int, pix []byte, channels int) error {
	typ := gocv.MatTypeCV8UC3
	data := pix
	if channels == 1 {
		typ = gocv.MatTypeCV8UC1
	} else {
		data = make([]byte, len(pix))
		for i := 0; i < len(pix); i += 3 {
			data[i], data[i+1], data[i+2] = pix[i+2], pix[i+1], pix[i]
		}
	}
	m, err := gocv.NewMatFromBytes(h, w, typ, data)
	if err != nil {
		return err
	}
	defer m.Close()
	if !gocv.IMWrite(path, m) {
		return fmt.Errorf("write %s failed", path)
	}
	return nil
}

// defectFlags are the defect options shared by `synth defects` and `synth surfaces`.
type defectFlags struct {
	kinds  string
	params synth.Params
}

func (d *defectFlags) register(fs interface {
	StringVar(*string, string, string, string)
	Float64Var(*float64, string, float64, string)
	IntVar(*int, string, int, string)
}) {
	fs.StringVar(&d.kinds, "kinds", strings.Join(synth.Defects, ","), "defect kinds, cycled: "+strings.Join(synth.Defects, ", "))
	p := synth.DefaultParams
	fs.Float64Var(&d.params.MinSize, "min-size", p.MinSize, "smallest defect, fraction of the shorter image side (scratch length x3, fibre x8)")
	fs.Float64Var(&d.params.MaxSize, "max-size", p.MaxSize, "largest defect, fraction of the shorter image side")
	fs.Float64Var(&d.params.MinContrast, "min-contrast", p.MinContrast, "faintest intensity change, fraction of full scale (stains: a third)")
	fs.Float64Var(&d.params.MaxContrast, "max-contrast", p.MaxContrast, "strongest intensity change, fraction of full scale")
	fs.Float64Var(&d.params.MinVisibility, "min-visibility", p.MinVisibility, "redraw a defect that changes its pixels less than this many times the normals' own variation there (0 = off)")
	// the small preset's input (256, as sd15's and taef2's); a set for a model of another size (tiny's 64, a
	// config's data.size) names that size
	fs.IntVar(&d.params.InputSize, "input-size", run.PresetInputSize("small"), "the model's input side: a frame larger than it is judged visible resized to it, as the model sees it (0 = at the frame's own size)")
}

// runSynthDefects paints synthetic defects with exact masks onto held-out normals of the user's own data.
func runSynthDefects(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("synth defects", "--from DATASET_OR_FOLDER --out DIR [--val-fraction F] [--per-image N] [--seed S] [--kinds k,...]", stderr)
	from := fs.String("from", "", "a dataset the trainer reads (only its held-out val normals are used), or a plain folder of normal images (required)")
	out := fs.String("out", "", "validation set root to write, MVTec layout (required)")
	layout := fs.String("layout", dataset.LayoutAuto, "layout of --from: auto, "+strings.Join(dataset.Layouts, ", "))
	val := fs.Float64("val-fraction", 0.1, "the training config's data.val_fraction: the same hash split picks the held-out normals")
	classes := fs.String("classes", "", "comma-separated classes of --from (default all)")
	per := fs.Int("per-image", 2, "defect images per normal")
	seed := fs.Uint64("seed", 1, "seed: same seed, same files")
	var df defectFlags
	df.register(fs)
	if err := Parse(fs, args); err != nil {
		return err
	}
	if *from == "" || *out == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "vlmdiff synth defects: --from and --out are required")
		fs.Usage()
		return ErrUsage
	}
	kinds, err := synth.ParseKinds(df.kinds)
	if err != nil {
		return err
	}
	var cl []string
	for _, c := range strings.Split(*classes, ",") {
		if c = strings.TrimSpace(c); c != "" {
			cl = append(cl, c)
		}
	}
	normals, err := synth.HeldOutNormals(*from, *layout, *val, cl)
	if err != nil {
		return err
	}
	sum, err := synth.WriteDefects(ctx, normals, synth.DefectsOptions{Out: *out, PerImage: *per, Seed: *seed, Kinds: kinds, Params: df.params})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s from %d held-out normals:\n", *out, len(normals))
	sum.Write(stdout)
	return nil
}

// runSynthSurfaces renders a dataset of hard normal surfaces with synthetic defects.
func runSynthSurfaces(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("synth surfaces", "--out DIR [--classes family[:gray][:WxH[-WxH]][=name],...] [--size WxH] [--train N] [--test-good N] [--per-kind N] [--seed S]", stderr)
	out := fs.String("out", "", "dataset root to write, MVTec layout (required)")
	classes := fs.String("classes", "fractal:800x600,woven,brushed:gray,grain:gray:320x480,part:800x600",
		"classes: surface family ("+strings.Join(synth.Surfaces, ", ")+"), optionally :gray, :WxH (or :WxH-WxH, every frame a size in that range), =name")
	size := fs.String("size", "256x256", "frame size of classes without their own")
	train := fs.Int("train", 40, "train/good images per class")
	testGood := fs.Int("test-good", 10, "test/good images per class")
	perKind := fs.Int("per-kind", 5, "test images per defect kind per class")
	seed := fs.Uint64("seed", 1, "seed: same seed, same files")
	var df defectFlags
	df.register(fs)
	if err := Parse(fs, args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "vlmdiff synth surfaces: --out is required")
		fs.Usage()
		return ErrUsage
	}
	w, h, err := synth.ParseSize(*size)
	if err != nil {
		return fmt.Errorf("--size: %w", err)
	}
	kinds, err := synth.ParseKinds(df.kinds)
	if err != nil {
		return err
	}
	var specs []synth.ClassSpec
	for _, c := range strings.Split(*classes, ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		spec, err := synth.ParseClassSpec(c, w, h)
		if err != nil {
			return err
		}
		specs = append(specs, spec)
	}
	sum, err := synth.WriteSurfaces(ctx, synth.SurfacesOptions{Out: *out, Classes: specs, Train: *train, TestGood: *testGood,
		PerKind: *perKind, Seed: *seed, Kinds: kinds, Params: df.params})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s:\n", *out)
	sum.Write(stdout)
	return nil
}
