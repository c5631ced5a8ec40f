package pipeline

import (
	"slices"
	"testing"

	"github.com/vlmdiff/edge/models"
)

// TestSamplerPlan: by default every DDIM step runs whatever the start step (the paper's code); with
// sampler_from_start_step only the steps at or below it run, on a latent noised to the first of them.
func TestSamplerPlan(t *testing.T) {
	for _, c := range []struct {
		name      string
		start     int
		truncate  bool
		wantSteps []int
		wantNoise int
	}{
		{"paper: all steps, noised to 999", 999, false, []int{1, 101, 201, 301, 401, 501, 601, 701, 801, 901}, 999},
		{"paper: start 500 still runs from 901", 500, false, []int{1, 101, 201, 301, 401, 501, 601, 701, 801, 901}, 500},
		{"from start 999", 999, true, []int{1, 101, 201, 301, 401, 501, 601, 701, 801, 901}, 901},
		{"from start 501", 501, true, []int{1, 101, 201, 301, 401, 501}, 501},
		{"from start 350", 350, true, []int{1, 101, 201, 301}, 301},
		{"from start 1", 1, true, []int{1}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts, noise := samplerPlan(models.Diffusion{TrainSteps: 1000, DDIMSteps: 10, StartStep: c.start,
				SamplerFromStartStep: c.truncate})
			if !slices.Equal(ts, c.wantSteps) || noise != c.wantNoise {
				t.Errorf("steps %v noised to %d, want %v and %d", ts, noise, c.wantSteps, c.wantNoise)
			}
		})
	}
}
