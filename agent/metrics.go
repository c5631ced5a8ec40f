package agent

import (
	"math"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/agent/store"
	"github.com/vlmdiff/edge/capture"
)

// latencyBuckets are the histogram bounds in milliseconds: from sub-millisecond overheads to multi-second
// CPU diffusion runs.
var latencyBuckets = []float64{0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000}

type histogram struct {
	counts []uint64 // per bucket, plus +Inf
	sum    float64
	n      uint64
}

func (h *histogram) observe(v float64) {
	if h.counts == nil {
		h.counts = make([]uint64, len(latencyBuckets)+1)
	}
	i := sort.SearchFloat64s(latencyBuckets, v)
	h.counts[i]++
	h.sum += v
	h.n++
}

// quantile estimates a quantile from the buckets (linear within a bucket).
func (h *histogram) quantile(q float64) float64 {
	if h.n == 0 {
		return 0
	}
	rank := q * float64(h.n)
	var cum float64
	lo := 0.0
	for i, c := range h.counts {
		hi := math.Inf(1)
		if i < len(latencyBuckets) {
			hi = latencyBuckets[i]
		}
		if cum+float64(c) >= rank && c > 0 {
			if math.IsInf(hi, 1) {
				return lo
			}
			return lo + (hi-lo)*(rank-cum)/float64(c)
		}
		cum += float64(c)
		lo = hi
	}
	return lo
}

// metrics holds latency histograms per camera and stage.
type metrics struct {
	mu    sync.Mutex
	hists map[[2]string]*histogram // {camera, stage}
}

func newMetrics() *metrics { return &metrics{hists: map[[2]string]*histogram{}} }

func (m *metrics) observe(camera string, lat map[string]float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for stage, v := range lat {
		k := [2]string{camera, stage}
		h := m.hists[k]
		if h == nil {
			h = &histogram{}
			m.hists[k] = h
		}
		h.observe(v)
	}
}

func (m *metrics) quantiles(camera, stage string) (p50, p95 float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.hists[[2]string{camera, stage}]
	if h == nil {
		return 0, 0
	}
	return h.quantile(0.5), h.quantile(0.95)
}

// CameraStats is one camera's part of /api/stats and <prefix>/stats.
type CameraStats struct {
	Name         string  `json:"name"`
	Kind         string  `json:"kind"`
	State        string  `json:"state"`
	Reason       string  `json:"reason,omitempty"`
	FPS          float64 `json:"fps"`
	Frames       uint64  `json:"frames"`
	Scored       uint64  `json:"scored"`
	NG           uint64  `json:"ng"`
	QueueDepth   int     `json:"queue_depth"`
	QueueDrops   uint64  `json:"queue_drops"`
	SourceDrops  uint64  `json:"source_drops"`
	RateLimited  uint64  `json:"rate_limited"`
	DecodeErrors uint64  `json:"decode_errors"`
	// Refused counts files refused before decoding (image limits; part of decode_errors); Ignored counts
	// non-regular entries with an image name in a watched folder (each reported once).
	Refused      uint64  `json:"refused"`
	Ignored      uint64  `json:"ignored_entries"`
	ScoreErrors  uint64  `json:"score_errors"`
	Skipped      uint64  `json:"skipped_already_processed"`
	Samples      uint64  `json:"samples"`
	LastSeq      uint64  `json:"last_seq"`
	LastScore    float64 `json:"last_score"`
	Threshold    float64 `json:"threshold"`
	ThresholdSrc string  `json:"threshold_source"`
	LatencyP50   float64 `json:"latency_p50_ms"`
	LatencyP95   float64 `json:"latency_p95_ms"`
	ModelP50     float64 `json:"model_p50_ms"`
	OverheadP50  float64 `json:"overhead_p50_ms"`
	// Triggers is present for trigger-mode cameras.
	Triggers *TriggerStats `json:"triggers,omitempty"`
}

// TriggerStats count a trigger-mode camera's triggers since start.
type TriggerStats struct {
	Accepted   uint64 `json:"accepted"`
	Timeouts   uint64 `json:"timeouts"`
	IdleFrames uint64 `json:"idle_frames"` // live frames discarded because no trigger waited
}

// Stats is the daemon's health snapshot.
type Stats struct {
	Agent   string        `json:"agent"`
	UptimeS float64       `json:"uptime_s"`
	Cameras []CameraStats `json:"cameras"`
	Model   ModelStatus   `json:"model"`
	Store   store.Stats   `json:"store"`
	// Commits counts the group commit's store transactions (results and outbox acknowledgements,
	// store.commit_interval) and the results they held: results / transactions is about how many results
	// shared each fsync.
	Commits    *store.CommitterStats `json:"commits,omitempty"`
	MemoryMB   float64               `json:"memory_mb"`
	Goroutines int                   `json:"goroutines"`
	MQTT       any                   `json:"mqtt,omitempty"`
}

// Stats returns the current snapshot.
func (a *Agent) Stats() Stats {
	now := time.Now()
	s := Stats{Agent: a.cfg.Agent.Name, UptimeS: math.Round(time.Since(a.started).Seconds()), Goroutines: runtime.NumGoroutine()}
	for _, c := range a.cams {
		s.Cameras = append(s.Cameras, a.cameraStats(c, now))
	}
	if a.models != nil {
		s.Model = a.models.Status()
	}
	if a.storeOpen.Load() {
		if st, err := a.store.Stats(); err == nil {
			s.Store = st
		}
		cs := a.committer.Stats()
		s.Commits = &cs
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.MemoryMB = math.Round(float64(ms.Sys)/(1<<20)*10) / 10
	if a.pub != nil {
		s.MQTT = a.pub.Stats()
	}
	return s
}

func (a *Agent) cameraStats(c *camera, now time.Time) CameraStats {
	c.mu.Lock()
	state, reason := c.state, c.reason
	c.mu.Unlock()
	var ss capture.Stats
	if c.src != nil { // the POST /api/score pseudo camera has no source
		ss = c.src.Stats()
	}
	th := a.thresholdState(c)
	cs := CameraStats{Name: c.name, Kind: c.cfg.Kind, State: state, Reason: reason, FPS: round2(c.fps.value(now)),
		Frames: c.frames.Load(), Scored: c.scored.Load(), NG: c.ng.Load(), QueueDepth: a.sched.depth(c),
		QueueDrops: c.drops.Load(), SourceDrops: ss.Dropped, RateLimited: c.rateLimited.Load(),
		DecodeErrors: c.decodeErrs.Load(), Refused: ss.Refused, Ignored: ss.Ignored, ScoreErrors: c.scoreErrs.Load(), Skipped: c.skipped.Load(),
		Samples: c.samples.Load(), LastSeq: c.seq.Load(), LastScore: math.Float64frombits(c.lastScore.Load()),
		Threshold: th.Threshold, ThresholdSrc: th.Source}
	if c.cfg.Trigger {
		cs.Triggers = &TriggerStats{Accepted: c.trig.accepted.Load(), Timeouts: c.trig.timeouts.Load(), IdleFrames: c.trig.idle.Load()}
	}
	cs.LatencyP50, cs.LatencyP95 = a.metrics.quantiles(c.name, LatCaptureToPublish)
	cs.ModelP50, _ = a.metrics.quantiles(c.name, LatModel)
	cs.OverheadP50, _ = a.metrics.quantiles(c.name, LatOverhead)
	cs.LatencyP50, cs.LatencyP95, cs.ModelP50, cs.OverheadP50 = round2(cs.LatencyP50), round2(cs.LatencyP95), round2(cs.ModelP50), round2(cs.OverheadP50)
	return cs
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }

var _ httpapi.Backend = (*Agent)(nil)
