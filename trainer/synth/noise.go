package synth

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
)

// splitmix is SplitMix64's finaliser: a cheap, well-mixed hash of a 64-bit value.
func splitmix(x uint64) uint64 {
	x += 0x9E3779B97F4A7C15
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
	x = (x ^ (x >> 27)) * 0x94D049BB133111EB
	return x ^ (x >> 31)
}

// rngFor returns the generator of one image: a PCG seeded by the run's seed and a hash of the image's identity
// (class, split, index...), so an image does not depend on how many others are made or in what order.
func rngFor(seed uint64, parts ...any) *rand.Rand {
	h := fnv.New64a()
	for _, p := range parts {
		fmt.Fprint(h, p)
		h.Write([]byte{0})
	}
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

// valueNoise is lattice value noise: a hashed random value at every integer point, smoothly interpolated.
// Hashing (rather than a stored lattice) makes it unbounded and free to sample at any scale.
type valueNoise struct{ seed uint64 }

func (n valueNoise) at(ix, iy int64, oct int) float64 {
	h := splitmix(uint64(ix)*0x9E3779B97F4A7C15 ^ splitmix(uint64(iy)+n.seed) ^ uint64(oct)*0xD6E8FEB86659FD93)
	return float64(h>>11) / (1 << 53)
}

func smooth(t float64) float64 { return t * t * (3 - 2*t) }

// value is the noise at (x, y) in lattice units, in [0, 1).
func (n valueNoise) value(x, y float64, oct int) float64 {
	fx, fy := math.Floor(x), math.Floor(y)
	ix, iy := int64(fx), int64(fy)
	tx, ty := smooth(x-fx), smooth(y-fy)
	a, b := n.at(ix, iy, oct), n.at(ix+1, iy, oct)
	c, d := n.at(ix, iy+1, oct), n.at(ix+1, iy+1, oct)
	top := a + (b-a)*tx
	bot := c + (d-c)*tx
	return top + (bot-top)*ty
}

// fbm is fractal Brownian motion: octaves of value noise at doubling frequency and gain-scaled amplitude,
// normalised to [0, 1). scale is the size in pixels of the coarsest octave's lattice cell.
func (n valueNoise) fbm(x, y, scale float64, octaves int, gain float64) float64 {
	sum, amp, norm := 0.0, 1.0, 0.0
	f := 1 / scale
	for o := 0; o < octaves; o++ {
		sum += amp * n.value(x*f, y*f, o)
		norm += amp
		amp *= gain
		f *= 2
	}
	return sum / norm
}

func clamp01(v float64) float64 { return math.Max(0, math.Min(1, v)) }

func to8(v float64) uint8 { return uint8(math.Round(255 * clamp01(v))) }
