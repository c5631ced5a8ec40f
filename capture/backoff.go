package capture

import (
	"math/rand/v2"
	"time"
)

// backoff yields capped exponential delays with ±25% jitter, so that many cameras lost at once (a switch
// reboot) do not all reconnect in the same instant.
type backoff struct {
	min, max time.Duration
	next     time.Duration
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max, next: min}
}

// delay returns the next wait and doubles the one after, up to max.
func (b *backoff) delay() time.Duration {
	d := b.next
	b.next *= 2
	if b.next > b.max || b.next <= 0 {
		b.next = b.max
	}
	j := time.Duration((rand.Float64() - 0.5) * 0.5 * float64(d))
	if d+j <= 0 {
		return d
	}
	return d + j
}

// reset starts over from min after a success.
func (b *backoff) reset() { b.next = b.min }
