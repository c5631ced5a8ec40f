package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/vlmdiff/edge/internal/torchenv"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
	"github.com/vlmdiff/edge/trainer/dataset"
	"github.com/vlmdiff/edge/trainer/eval"
	"github.com/vlmdiff/edge/trainer/run"
)

// knnFlags are vlmdiff calibrate's nearest-normal term flags (docs/algorithm.md §1.9).
type knnFlags struct {
	factor, backbone, layers, sampling, python, trainerDir string
	sigma                                                  string // --knn-sigma, resolved by sigmaFlag
	ks                                                     string // --knn-ks, CLASS=K pairs
	dims, bank                                             int
	isolated                                               float64
	// recipe lists the bank recipe's flags given on the command line (--knn-layers, -dims, -bank, -sampling,
	// -isolated): they take effect only when the banks are built, so resolve refuses them where none is.
	recipe []string
}

func (k *knnFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&k.factor, "knn-factor", "", "with --reference train: the nearest-normal term's size relative to the feature map's (0 removes it; absent: keep the bundle's). "+
		"Adds each position's distance to the nearest normal feature vector of its class (docs/algorithm.md §1.9); a bundle without the term builds it from --knn-backbone")
	fs.StringVar(&k.sigma, "knn-sigma", "", "with --reference train: the Gaussian sigma, in map pixels, that smooths the nearest-normal term's map (0: none; absent: keep the "+
		"bundle's, the map's sigma for a new term). The term's vectors are 3 x 3 averages of cells a few pixels wide already; a smaller sigma keeps small "+
		"defects sharp (docs/algorithm.md §1.9, \"The nearest-normal term's own smoothing\")")
	fs.StringVar(&k.backbone, "knn-backbone", "", "ONNX feature backbone of the nearest-normal term (e.g. mobilenetv2_fp32_features.onnx): builds the term, anew when the bundle has one")
	fs.StringVar(&k.layers, "knn-layers", "", "its layers, finest first, comma-separated (e.g. block2,block5)")
	fs.IntVar(&k.dims, "knn-dims", 0, "values per vector (0: every channel of the layers)")
	fs.IntVar(&k.bank, "knn-bank", 0, fmt.Sprintf("vectors per class in the bank (0: %d, or the fewest positions a class has when that is less)", eval.DefaultKnnBank))
	fs.StringVar(&k.sampling, "knn-sampling", eval.KnnCoreset, "how the bank is drawn from the training positions: coreset (greedy k-center) or random")
	fs.StringVar(&k.ks, "knn-ks", "", "how many nearest bank vectors each class's distance averages, CLASS=K pairs, comma-separated (=K the global bank's; absent: 1, the nearest alone): "+
		"the mean of a few nearest keeps one rare normal patch from vouching for a defect that resembles it; the select stage chooses them per class with select.knn_ks (docs/algorithm.md §1.9, \"Mean of the k nearest\")")
	fs.Float64Var(&k.isolated, "knn-isolated", 0, "drop this fraction of the training positions first, those farthest from every other training image (a missed defect in one normal), before drawing the bank (0 to 0.5)")
	fs.StringVar(&k.python, "python", "/usr/bin/python3", "the Python that builds the knn graph (with torch and onnx)")
	fs.StringVar(&k.trainerDir, "trainer-dir", "", "the trainer's Python package directory (default: $"+torchenv.EnvTrainer+" or found from the binary)")
}

// parsed notes which of the bank recipe's flags fs was given; call it after parsing.
func (k *knnFlags) parsed(fs *flag.FlagSet) {
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "knn-layers", "knn-dims", "knn-bank", "knn-sampling", "knn-isolated", "knn-ks":
			k.recipe = append(k.recipe, "--"+f.Name)
		}
	})
}

// resolve returns the factor to measure the reference with: the flag's, else the bundle's own. The bank
// recipe flags take effect only where ensure builds the banks (--reference train, a factor above 0, and a bundle
// without the term or --knn-backbone), so elsewhere they are refused rather than ignored.
func (k *knnFlags) resolve(bundle, reference string) (float64, error) {
	a, err := k.factorOf(bundle, reference)
	if err != nil || len(k.recipe) == 0 {
		return a, err
	}
	given := strings.Join(k.recipe, ", ")
	if a == 0 || reference != eval.ReferenceTrain {
		return 0, fmt.Errorf("%s: the banks are built with the nearest-normal term: give --reference train and --knn-factor above 0 (and --knn-backbone to rebuild a bundle's banks)", given)
	}
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return 0, err
	}
	if m.Map.Knn != nil && k.backbone == "" {
		return 0, fmt.Errorf("%s: the bundle's banks are kept unless they are built anew: give --knn-backbone (and --knn-layers) to rebuild them", given)
	}
	return a, nil
}

func (k *knnFlags) factorOf(bundle, reference string) (float64, error) {
	if k.factor == "" {
		return eval.KnnFactor(bundle)
	}
	if reference != eval.ReferenceTrain {
		return 0, fmt.Errorf("--knn-factor: the nearest-normal term is sized on the training normals with the map reference; give --reference train")
	}
	a, err := strconv.ParseFloat(k.factor, 64)
	if err != nil {
		return 0, fmt.Errorf("--knn-factor %q: not a number", k.factor)
	}
	if err := eval.CheckKnnFactor(a); err != nil {
		return 0, fmt.Errorf("--knn-factor: %w", err)
	}
	return a, nil
}

// ensure builds the term from every training normal into a bundle that has none, or anew when --knn-backbone
// is given (another backbone, layers, bank size or sampling).
func (k *knnFlags) ensure(ctx context.Context, bundle string, items []dataset.Item, classes []string, source string, opt pipeline.Options, stderr io.Writer) error {
	m, err := models.ReadManifest(bundle)
	if err != nil {
		return err
	}
	if m.Map.Knn != nil && k.backbone == "" {
		return nil // the bundle's own term, resized (resolve refused bank recipe flags here)
	}
	if k.backbone == "" || k.layers == "" {
		return fmt.Errorf("--knn-factor: the bundle has no nearest-normal term yet: give --knn-backbone and --knn-layers to build it")
	}
	td, err := torchenv.FindTrainerDir(k.trainerDir)
	if err != nil {
		return err
	}
	py := run.Python{Exe: k.python, TrainerDir: td}
	spec := eval.KnnSpec{Backbone: k.backbone, Layers: strings.Split(k.layers, ","), Dims: k.dims, Bank: k.bank, Sampling: k.sampling, Isolated: k.isolated}
	train := eval.Select(items, dataset.SplitTrain, classes, true)
	if k.ks != "" {
		ks, err := eval.ParseKs(k.ks)
		if err != nil {
			return fmt.Errorf("--knn-ks: %w", err)
		}
		if spec, err = spec.WithKs(ks); err != nil {
			return fmt.Errorf("--knn-ks: %w", err)
		}
		if unknown := unknownClasses(ks, train); len(unknown) > 0 {
			return fmt.Errorf("--knn-ks: classes %q have no training normals in the data (the banks are built per class of them)", unknown)
		}
	}
	kb, err := eval.AddKnn(ctx, bundle, spec, py.KnnGraph, train, 0, opt, source)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "nearest-normal banks: %d classes x %d vectors of %d values from %d training normals; %s\n", len(kb.Classes), kb.Size, kb.Dims, len(train), kb.Shared())
	if spec.KMax > 1 {
		fmt.Fprintf(stderr, "nearest-normal term: the mean of the k nearest for %v (the others the nearest alone)\n", describeKs(spec.Ks))
	}
	return nil
}

// unknownClasses lists the classes of ks ("" aside) that no item of train has, sorted.
func unknownClasses(ks map[string]int, train []dataset.Item) []string {
	var out []string
	for c := range ks {
		if c != "" && !slices.ContainsFunc(train, func(it dataset.Item) bool { return it.Class == c }) {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

// describeKs is "class k" for each class of ks above 1, sorted by class.
func describeKs(ks map[string]int) []string {
	var out []string
	for c, k := range ks {
		if k > 1 {
			out = append(out, fmt.Sprintf("%q %d", c, k))
		}
	}
	slices.Sort(out)
	return out
}
