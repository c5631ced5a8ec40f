package pipeline

import (
	"path/filepath"

	"github.com/vlmdiff/edge/models"
)

// GraphRun is one graph that scoring a batch runs, as `vlmdiff bench --floor` needs it to count the graph's
// work: the stage it belongs to, its file, the concrete shapes of its inputs at the batch's size, the outputs
// the scorer asks for, and how many times one batch runs it.
type GraphRun struct {
	Stage   string
	Path    string
	Inputs  []GraphInput
	Outputs []string
	Runs    int
	// NoLayout: the scorer's session optimises this graph without ONNX Runtime's layout pass (a static
	// denoiser; Scorer.staticNoLayout), so its operators are counted at that level.
	NoLayout bool
}

// GraphInput is one input of a GraphRun; Int64 marks the timestep, every other input is float32.
type GraphInput struct {
	Name  string
	Int64 bool
	Shape []int64
}

// GraphRuns lists the graphs a batch of frames runs, in the order they run, for a batch scored with the
// bundle's default context and no guidance (what `vlmdiff bench` scores): the static-shape denoiser of that
// batch's rows (frames times start noises) when the scorer has one, else the dynamic denoiser.
func (s *Scorer) GraphRuns(frames int) []GraphRun {
	m := s.m
	B := int64(frames)
	H, W := int64(m.Input.Height), int64(m.Input.Width)
	image := []int64{B, 3, H, W}
	path := func(file string) string { return filepath.Join(s.bundle.Dir, file) }
	runs := []GraphRun{{Stage: StageEncode, Path: path(m.Graphs[models.RoleVAEEncoder].File),
		Inputs: []GraphInput{{Name: models.TensorImage, Shape: image}}, Outputs: s.enc.out, Runs: 1}}
	hint := image
	if g, ok := m.Graphs[models.RoleHint]; ok && s.hint != nil {
		runs = append(runs, GraphRun{Stage: StageHint, Path: path(g.File),
			Inputs: []GraphInput{{Name: models.TensorImage, Shape: image}}, Outputs: s.hint.out, Runs: 1})
		for _, o := range g.Outputs {
			if o.Name == models.TensorHint && len(o.Shape) > 0 {
				hint = append([]int64{B}, o.Shape[1:]...)
			}
		}
	}
	// from the denoiser on, a frame is one row per start noise (diffusion.ensemble)
	rows := frames * s.ens
	R := int64(rows)
	hint = append([]int64{R}, hint[1:]...)
	latent := []int64{R, int64(s.lc), int64(s.lh), int64(s.lw)}
	den := GraphRun{Stage: StageDenoise, Path: path(m.Graphs[models.RoleDenoiser].File), Outputs: []string{models.TensorEps},
		Runs: len(s.steps), Inputs: []GraphInput{{Name: models.TensorX, Shape: latent},
			{Name: models.TensorT, Int64: true, Shape: []int64{R}},
			{Name: models.TensorContext, Shape: []int64{R, int64(m.Conditioning.Tokens), int64(m.Conditioning.Dim)}},
			{Name: models.TensorHint, Shape: hint}}}
	if g := s.staticDenoiser(&denoiserInputs{rows: rows}); g != nil {
		for _, sg := range m.Graphs[models.RoleDenoiser].Static {
			if sg.Batch == rows {
				den.Path = path(sg.File)
			}
		}
		den.Inputs = []GraphInput{den.Inputs[0], den.Inputs[1], den.Inputs[3]}
		den.NoLayout = s.staticNoLayout()
		if s.denStatic.timeIn[rows] {
			// the time graph's outputs in place of t; the time graph itself runs once per timestep for the
			// scorer's lifetime, not per batch, so it is not among the runs
			den.Inputs = []GraphInput{den.Inputs[0], den.Inputs[2]}
			for _, o := range m.Graphs[models.RoleDenoiser].Time.Outputs {
				den.Inputs = append(den.Inputs, GraphInput{Name: o.Name, Shape: o.Shape})
			}
		}
	}
	runs = append(runs, den,
		GraphRun{Stage: StageDecode, Path: path(m.Graphs[models.RoleVAEDecoder].File),
			Inputs: []GraphInput{{Name: models.TensorLatent, Shape: latent}}, Outputs: s.dec.out, Runs: 1})
	feat := func(n int64) GraphRun {
		return GraphRun{Stage: StageFeatures, Path: path(m.Graphs[models.RoleFeatures].File),
			Inputs: []GraphInput{{Name: m.Features.Input, Shape: []int64{n, 3, H, W}}}, Outputs: s.feat.out, Runs: 1}
	}
	if s.overlapFeatures() {
		// the frames' features run beside the reconstruction, the reconstructions' after it
		return append(runs, feat(B), feat(R))
	}
	return append(runs, feat(B+R))
}
