package models

import "testing"

// TestDiffusionWithStart: the schedule's last step is the paper's (noised there, every DDIM step, the sampler
// flag off); any step below it runs only the DDIM steps at or below it; nothing else changes.
func TestDiffusionWithStart(t *testing.T) {
	base := Diffusion{TrainSteps: 1000, DDIMSteps: 10, StartStep: 999, GuidanceScale: 9, Ensemble: 2}
	for _, tc := range []struct {
		from     Diffusion
		t        int
		truncate bool
		describe string
	}{
		{base, 301, true, "301 (only the DDIM steps at or below it)"},
		{base, 998, true, "998 (only the DDIM steps at or below it)"},
		{base.WithStart(301), 999, false, "999"},
		{base, 999, false, "999"},
	} {
		d := tc.from.WithStart(tc.t)
		if d.StartStep != tc.t || d.SamplerFromStartStep != tc.truncate || d.DescribeStart() != tc.describe {
			t.Errorf("WithStart(%d): start %d, sampler_from_start_step %v, %q; want %v, %q", tc.t, d.StartStep, d.SamplerFromStartStep, d.DescribeStart(), tc.truncate, tc.describe)
		}
		d.StartStep, d.SamplerFromStartStep = base.StartStep, base.SamplerFromStartStep
		if d != base {
			t.Errorf("WithStart(%d) changed more than the start: %+v", tc.t, d)
		}
	}
}
