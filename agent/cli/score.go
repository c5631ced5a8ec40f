package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/imagelimit"
	"github.com/vlmdiff/edge/internal/npy"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/pipeline/roi"
)

func init() {
	Register(Command{Name: "score", Summary: "score image files with a bundle; one JSON line per image", Run: runScore})
	Register(Command{Name: "bundle", Summary: "inspect or change a model bundle: verify DIR | show DIR | parity DIR PROBES | set-features SRC DST", Run: runBundle})
}

// scoreLine is the JSON printed per image by `vlmdiff score`.
type scoreLine struct {
	Image          string             `json:"image"`
	Score          float64            `json:"score"`
	RawScore       float64            `json:"raw_score"`
	Threshold      float64            `json:"threshold"`
	Verdict        string             `json:"verdict"`
	AnomalyAreaPct float64            `json:"anomaly_area_pct"`
	Class          string             `json:"class,omitempty"`
	LatencyMS      map[string]float64 `json:"latency_ms"`
	Model          pipeline.ModelRef  `json:"model"`
	Heatmap        string             `json:"heatmap,omitempty"`
	Map            string             `json:"map,omitempty"`
}

func runScore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("score", "--bundle DIR [--out DIR] [--class C] [--roi FILE | --agent-config FILE --camera NAME] IMAGE...", stderr)
	var sf scoreFlags
	sf.Register(fs)
	var rf roi.Flags
	rf.Register(fs)
	out := fs.String("out", "", "write <name>.heatmap.png and <name>.map.npy (float32 anomaly map: the model's size, the frame's with a region) per image here, "+
		"under the image's path relative to the images' common folder (a/000.png and b/000.png give DIR/a/000.* and DIR/b/000.*)")
	class := fs.String("class", "", "class of the images (selects per-class calibration)")
	var lim imagelimit.Limits
	fs.Int64Var(&lim.MaxPixels, "max-pixels", imagelimit.DefaultMaxPixels, "refuse images whose header claims more pixels")
	fs.Int64Var(&lim.MaxBytes, "max-bytes", imagelimit.DefaultMaxBytes, "refuse image files larger than this")
	if err := Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "vlmdiff score: no images given")
		fs.Usage()
		return ErrUsage
	}
	region, err := rf.Load(config.CameraROI)
	if err != nil {
		return err
	}
	s, err := sf.Open()
	if err != nil {
		return err
	}
	defer s.Close()
	if *out != "" {
		if err := os.MkdirAll(*out, 0o755); err != nil {
			return err
		}
	}
	if err := lim.Validate(); err != nil {
		return fmt.Errorf("--max-pixels/--max-bytes: %w", err)
	}
	stems := outputStems(fs.Args())
	enc := json.NewEncoder(stdout)
	failed := 0
	for i, path := range fs.Args() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		stem := ""
		if *out != "" {
			stem = filepath.Join(*out, stems[i])
		}
		line, err := scoreOne(ctx, s, path, *class, stem, lim, region)
		if err != nil {
			failed++
			fmt.Fprintf(stderr, "vlmdiff score: %v\n", err)
			continue
		}
		if err := enc.Encode(line); err != nil {
			return err
		}
	}
	if failed > 0 {
		return &ExitError{Code: 1, Err: fmt.Errorf("%d of %d images could not be scored", failed, fs.NArg())}
	}
	return nil
}

// scoreOne scores one image, within region when it is set (as the daemon scores a camera with that roi); with
// a non-empty stem it writes <stem>.heatmap.png and <stem>.map.npy.
func scoreOne(ctx context.Context, s *pipeline.Scorer, path, class, stem string, lim imagelimit.Limits, region *roi.Config) (*scoreLine, error) {
	img, err := pipeline.ReadImageLimited(path, lim)
	if err != nil {
		return nil, err // names the path
	}
	res, err := roi.Score(ctx, s, []pipeline.Request{{Image: img, Class: class}}, []*roi.Config{region})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r := res[0]
	if r.Err != nil {
		return nil, fmt.Errorf("%s: %w", path, r.Err)
	}
	line := &scoreLine{Image: path, Score: r.Score, RawScore: r.RawScore, Threshold: r.Threshold, Verdict: r.Verdict,
		AnomalyAreaPct: r.AnomalyAreaPct, Class: r.Class, LatencyMS: r.LatencyMS, Model: r.Model}
	if stem != "" {
		png, err := s.Heatmap(img, &r, "png")
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(stem), 0o755); err != nil {
			return nil, err
		}
		line.Heatmap = stem + ".heatmap.png"
		if err := os.WriteFile(line.Heatmap, png, 0o644); err != nil {
			return nil, err
		}
		line.Map = stem + ".map.npy"
		if err := npy.Write(line.Map, r.Map, r.MapHeight, r.MapWidth); err != nil {
			return nil, err
		}
	}
	return line, nil
}

func runBundle(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) >= 1 && args[0] == "set-features" {
		return runSetFeatures(args[1:], stdout, stderr)
	}
	if len(args) >= 1 && args[0] == "parity" {
		return runParity(args[1:], stdout, stderr)
	}
	if len(args) < 2 || (args[0] != "verify" && args[0] != "show") {
		fmt.Fprintln(stderr, "Usage: vlmdiff bundle verify DIR   (checks schema, checksums, graphs; exit 1 naming the failed check)")
		fmt.Fprintln(stderr, "       vlmdiff bundle show DIR     (prints the manifest)")
		fmt.Fprintln(stderr, "       vlmdiff bundle set-features --graph F.onnx --input NAME --layers a[:w],b[:w] SRC DST")
		fmt.Fprintln(stderr, "                                   (copy SRC scoring with another feature backbone)")
		fmt.Fprintln(stderr, "       vlmdiff bundle parity [--tol 1e-4] DIR PROBES")
		fmt.Fprintln(stderr, "                                   (ONNX Runtime vs the exporter's PyTorch outputs)")
		return ErrUsage
	}
	dir := args[1]
	switch args[0] {
	case "verify":
		b, err := models.Load(dir)
		if err != nil {
			return err
		}
		m := b.Manifest
		fmt.Fprintf(stdout, "ok: %s %s (%d files verified; input %dx%d; %d DDIM steps x %d start noise(s); features %d layers)\n",
			m.Name, m.Version, len(m.Files), m.Input.Width, m.Input.Height, m.Diffusion.DDIMSteps, m.Diffusion.Noises(), len(m.Features.Layers))
	case "show":
		m, err := models.ReadManifest(dir)
		if err != nil {
			return err
		}
		e := json.NewEncoder(stdout)
		e.SetIndent("", "  ")
		return e.Encode(m)
	}
	return nil
}

func runSetFeatures(args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("bundle set-features", "--graph F.onnx --input NAME --layers a[:w],b[:w] SRC DST", stderr)
	graph := fs.String("graph", "", "ONNX feature graph (e.g. a ResNet50 or DINO export)")
	input := fs.String("input", "input", "the graph's input tensor name")
	layers := fs.String("layers", "", "comma-separated outputs to compare, each optionally :weight (default 1)")
	tokens := fs.Bool("tokens", false, "outputs are ViT tokens [B,1+N,D] with CLS first")
	if err := Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 || *graph == "" || *layers == "" {
		fs.Usage()
		return ErrUsage
	}
	var ls []models.FeatureLayer
	for _, part := range strings.Split(*layers, ",") {
		name, w, hasW := strings.Cut(strings.TrimSpace(part), ":")
		weight := 1.0
		if hasW {
			if _, err := fmt.Sscanf(w, "%g", &weight); err != nil || !(weight > 0) {
				return fmt.Errorf("--layers: %q: weight must be a positive number", part)
			}
		}
		ls = append(ls, models.FeatureLayer{Name: name, Weight: float32(weight)})
	}
	m, err := models.ReplaceFeatures(fs.Arg(0), fs.Arg(1), models.FeatureSwap{Graph: *graph, Input: *input, Layers: ls, Tokens: *tokens})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "ok: %s %s written to %s (features: %d layers of %s); recalibrate it with `vlmdiff calibrate`\n",
		m.Name, m.Version, fs.Arg(1), len(ls), *graph)
	return nil
}

func runParity(args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet("bundle parity", "[--tol 1e-4] DIR PROBES", stderr)
	tol := fs.Float64("tol", pipeline.DefaultParityTolerance, "largest relative L2 error allowed per output")
	threads := fs.Int("threads", 0, "ONNX Runtime threads")
	if err := Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return ErrUsage
	}
	res, err := pipeline.CheckProbes(fs.Arg(0), fs.Arg(1), *tol, pipeline.Options{Threads: *threads})
	for _, r := range res {
		fmt.Fprintf(stdout, "%-12s %-10s rel L2 %.2e\n", r.Role, r.Output, r.RelL2)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "ok: %d outputs within %.0e of PyTorch\n", len(res), *tol)
	return nil
}
