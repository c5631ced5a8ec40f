package pipeline

import "math"

// latentSpec is how the VAE's moments become the latent the diffusion model works in (docs/algorithm.md §1.3).
type latentSpec struct {
	Scale            float32 // the latent scale factor (0.18215 for Stable Diffusion's VAE)
	Sample           bool    // sample the posterior (the paper's code) rather than take its mean
	ClampLo, ClampHi float32 // the log-variance clamp applied before sampling
}

// posteriorLatent writes one frame's scaled latent into dst ([C,h,w]): scale * mean, or with sampling
// scale * (mean + exp(logvar/2) * noise), logvar clamped first. moments is [2C,h,w], the mean channels first;
// noise is only read when sampling. Python twin: reference.posterior_latent.
func posteriorLatent(dst, moments, noise []float32, p latentSpec) {
	n := len(dst)
	mean, logvar := moments[:n], moments[n:2*n]
	for j := range dst {
		v := mean[j]
		if p.Sample {
			lv := min(max(logvar[j], p.ClampLo), p.ClampHi)
			v += float32(math.Exp(0.5*float64(lv))) * noise[j]
		}
		dst[j] = p.Scale * v
	}
}

// unscaleLatent divides latents by the scale factor in place, back into the VAE decoder's space.
func unscaleLatent(z []float32, scale float32) {
	for j := range z {
		z[j] /= scale
	}
}
