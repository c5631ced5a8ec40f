package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"gocv.io/x/gocv"

	"github.com/vlmdiff/edge/capture"
)

func init() {
	Register(Command{Name: "synth", Summary: "write frames of the synthetic camera as an MVTec-layout dataset (demo training data)", Run: runSynth})
}

// generator is what the synthetic source offers beyond Source: frame n on demand.
type generator interface {
	Generate(seq uint64) (capture.Frame, error)
}

// runSynth writes the synthetic camera's frames into <out>/<class>/{train/good, test/good, test/<defect>,
// ground_truth/<defect>} so the training pipeline can learn the demo's normal look and be evaluated on its
// defects. Masks are exact: a defect frame is compared with the same frame rendered without its defect.
func runSynth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("synth", "--out DIR [--train N] [--test N] [--seed S] [--size WxH]", stderr)
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
