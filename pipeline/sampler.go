package pipeline

import (
	"context"
	"fmt"
	"math"

	"github.com/vlmdiff/edge/models"
)

// ddimStep is one step of the deterministic DDIM sampler: the timestep the denoiser is asked about, and the
// cumulative alphas of that timestep and of the one the step lands on (docs/algorithm.md §1.5).
type ddimStep struct {
	T        int
	Abar     float64
	AbarPrev float64
}

// ddimSchedule returns the sampler's steps in the order they run: the timesteps descending, each landing on the
// next lower one, the last (timestep 1) on abar[0]. Python twin: the loop of reference.Scorer.reconstruct.
func ddimSchedule(abar []float64, timesteps []int) []ddimStep {
	steps := make([]ddimStep, 0, len(timesteps))
	for k := len(timesteps) - 1; k >= 0; k-- {
		prev := abar[0]
		if k > 0 {
			prev = abar[timesteps[k-1]]
		}
		steps = append(steps, ddimStep{T: timesteps[k], Abar: abar[timesteps[k]], AbarPrev: prev})
	}
	return steps
}

// samplerPlan returns the DDIM timesteps the sampler visits and the step the latent is noised to. By default
// (the paper's code) every DDIM step runs and the latent is noised to start_step; with sampler_from_start_step
// only the steps at or below start_step run and the latent is noised to the first of them, so the sampler
// starts from the noise level it assumes. Python twin: reference.sampler_plan.
func samplerPlan(d models.Diffusion) (timesteps []int, noiseStep int) {
	ts := DDIMTimesteps(d.TrainSteps, d.DDIMSteps)
	if !d.SamplerFromStartStep {
		return ts, d.StartStep
	}
	var kept []int
	for _, t := range ts {
		if t <= d.StartStep {
			kept = append(kept, t)
		}
	}
	if len(kept) == 0 { // refused by manifest validation; keep the scorer total anyway
		return ts[:1], ts[0]
	}
	return kept, kept[len(kept)-1]
}

// SamplerSteps is how many DDIM steps, each one denoiser run per start noise, the sampler runs for a frame with
// d: all of them, or only those at or below the start step with sampler_from_start_step (samplerPlan). The
// select stage weighs a recipe's cost by it.
func SamplerSteps(d models.Diffusion) int {
	ts, _ := samplerPlan(d)
	return len(ts)
}

// qSample noises clean latents forward to the step whose cumulative alpha is abar:
// sqrt(abar) z + sqrt(1-abar) noise (docs/algorithm.md §1.4).
func qSample(z, noise []float32, abar float64) []float32 {
	a, b := float32(math.Sqrt(abar)), float32(math.Sqrt(1-abar))
	x := make([]float32, len(z))
	for j := range x {
		x[j] = a*z[j] + b*noise[j]
	}
	return x
}

// epsFunc predicts the noise in latents x at timestep t; its result has len(x) values.
type epsFunc func(x []float32, t int) ([]float32, error)

// sampleDDIM runs the deterministic (eta 0) DDIM sampler on x in place: at each step it estimates the clean
// latent x0 = (x - sqrt(1-a) eps) / sqrt(a) and moves to sqrt(a_prev) x0 + sqrt(1-a_prev) eps. The result is the
// final x, not the last x0 estimate, and nothing is clipped.
func sampleDDIM(ctx context.Context, x []float32, steps []ddimStep, eps epsFunc) error {
	for _, st := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		e, err := eps(x, st.T)
		if err != nil {
			return err
		}
		ddimUpdate(x, e, st)
	}
	return nil
}

// ddimUpdate applies one DDIM step to x in place, given the noise prediction e.
func ddimUpdate(x, e []float32, st ddimStep) {
	sqa, sq1a := float32(math.Sqrt(st.Abar)), float32(math.Sqrt(1-st.Abar))
	sqap, sq1ap := float32(math.Sqrt(st.AbarPrev)), float32(math.Sqrt(1-st.AbarPrev))
	for j := range x {
		x0 := (x[j] - sq1a*e[j]) / sqa
		x[j] = sqap*x0 + sq1ap*e[j]
	}
}

// guidedEps turns a batched denoiser into the sampler's noise prediction (docs/algorithm.md §1.6). Without
// guidance the denoiser's batch is the frames' latents. With it the batch is the latents twice, the first half
// against the unconditional context and the second against the conditional one, and the prediction is
// e_u + scale (e_c - e_u).
func guidedEps(denoise func(x []float32, t int) ([]float32, error), cfg bool, scale float32) epsFunc {
	var in []float32
	return func(x []float32, t int) ([]float32, error) {
		if !cfg {
			return denoise(x, t)
		}
		if in == nil {
			in = make([]float32, 2*len(x))
		}
		copy(in, x)
		copy(in[len(x):], x)
		e, err := denoise(in, t)
		if err != nil {
			return nil, err
		}
		if len(e) != len(in) {
			return nil, fmt.Errorf("denoiser returned %d values for a guided batch of %d", len(e), len(in))
		}
		n := len(x)
		for j := 0; j < n; j++ {
			eu, ec := e[j], e[n+j]
			e[j] = eu + scale*(ec-eu)
		}
		return e[:n], nil
	}
}

// repeatEach repeats each of the n items of a batch times times in place: [a, b] -> [a, a, b, b].
func repeatEach(data []float32, n, times int) []float32 {
	if times == 1 {
		return data
	}
	per := len(data) / n
	out := make([]float32, 0, times*len(data))
	for i := range n {
		for range times {
			out = append(out, data[i*per:(i+1)*per]...)
		}
	}
	return out
}

// repeatBatch returns data (one batch) repeated times times along the batch axis.
func repeatBatch(data []float32, times int) []float32 {
	out := make([]float32, 0, times*len(data))
	for i := 0; i < times; i++ {
		out = append(out, data...)
	}
	return out
}
