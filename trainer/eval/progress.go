package eval

import (
	"fmt"
	"io"
	"time"
)

// progress prints "what done/total (pct) rate ETA" lines, throttled, so a long evaluation shows it is alive and
// how long is left without flooding a log.
type progress struct {
	w     io.Writer
	what  string
	total int
	every time.Duration
	t0    time.Time
	last  time.Time
	done  int
}

func newProgress(w io.Writer, what string, total int, every time.Duration) *progress {
	if every <= 0 {
		every = 2 * time.Second
	}
	now := time.Now()
	return &progress{w: w, what: what, total: total, every: every, t0: now, last: now}
}

func (p *progress) update(done int) {
	p.done = done
	if p.w == nil || done >= p.total || time.Since(p.last) < p.every { // the last line is finish's
		return
	}
	p.last = time.Now()
	p.print()
}

func (p *progress) finish() {
	if p.w == nil {
		return
	}
	p.print()
}

func (p *progress) print() {
	el := time.Since(p.t0)
	rate := float64(p.done) / max(el.Seconds(), 1e-9)
	eta := "?"
	if p.done > 0 {
		eta = FormatDuration(time.Duration(float64(p.total-p.done) / rate * float64(time.Second)))
	}
	pct := 100.0
	if p.total > 0 {
		pct = 100 * float64(p.done) / float64(p.total)
	}
	fmt.Fprintf(p.w, "%s %d/%d (%.0f%%) %.2f img/s elapsed %s ETA %s\n", p.what, p.done, p.total, pct, rate,
		FormatDuration(el), eta)
}

// FormatDuration prints a duration rounded for humans: 850ms, 12s, 3m05s, 1h02m.
func FormatDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Round(time.Second).Seconds()))
	case d < time.Hour:
		d = d.Round(time.Second)
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	d = d.Round(time.Minute)
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}
