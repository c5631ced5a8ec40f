package agent

import (
	"fmt"
	"io"
	"math"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vlmdiff/edge/agent/httpapi"
	"github.com/vlmdiff/edge/agent/store"
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
	Agent      string        `json:"agent"`
	UptimeS    float64       `json:"uptime_s"`
	Cameras    []CameraStats `json:"cameras"`
	Model      ModelStatus   `json:"model"`
	Store      store.Stats   `json:"store"`
	MemoryMB   float64       `json:"memory_mb"`
	Goroutines int           `json:"goroutines"`
	MQTT       any           `json:"mqtt,omitempty"`
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
	ss := c.src.Stats()
	th := a.thresholdState(c)
	cs := CameraStats{Name: c.name, Kind: c.cfg.Kind, State: state, Reason: reason, FPS: round2(c.fps.value(now)),
		Frames: c.frames.Load(), Scored: c.scored.Load(), NG: c.ng.Load(), QueueDepth: a.sched.depth(c),
		QueueDrops: c.drops.Load(), SourceDrops: ss.Dropped, RateLimited: c.rateLimited.Load(),
		DecodeErrors: c.decodeErrs.Load(), ScoreErrors: c.scoreErrs.Load(), Skipped: c.skipped.Load(),
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

// WriteMetrics writes the Prometheus text exposition (format 0.0.4), written by hand to keep the binary
// free of a metrics library.
func (a *Agent) WriteMetrics(w io.Writer) {
	now := time.Now()
	counter := func(name, help string, get func(CameraStats) float64, stats []CameraStats) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n", name, help, name)
		for _, s := range stats {
			fmt.Fprintf(w, "%s{camera=%q} %g\n", name, s.Name, get(s))
		}
	}
	gauge := func(name, help string, get func(CameraStats) float64, stats []CameraStats) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
		for _, s := range stats {
			fmt.Fprintf(w, "%s{camera=%q} %g\n", name, s.Name, get(s))
		}
	}
	var cs []CameraStats
	for _, c := range a.cams {
		cs = append(cs, a.cameraStats(c, now))
	}
	counter("vlmdiff_frames_total", "Frames received from the camera's source.", func(s CameraStats) float64 { return float64(s.Frames) }, cs)
	counter("vlmdiff_scored_total", "Frames scored and committed.", func(s CameraStats) float64 { return float64(s.Scored) }, cs)
	counter("vlmdiff_ng_total", "Frames judged NG.", func(s CameraStats) float64 { return float64(s.NG) }, cs)
	counter("vlmdiff_queue_drops_total", "Frames dropped from a full queue (live cameras).", func(s CameraStats) float64 { return float64(s.QueueDrops) }, cs)
	counter("vlmdiff_source_drops_total", "Frames a live source dropped because the daemon was busy.", func(s CameraStats) float64 { return float64(s.SourceDrops) }, cs)
	counter("vlmdiff_decode_errors_total", "Frames or files that could not be read.", func(s CameraStats) float64 { return float64(s.DecodeErrors) }, cs)
	counter("vlmdiff_score_errors_total", "Frames that could not be scored or stored.", func(s CameraStats) float64 { return float64(s.ScoreErrors) }, cs)
	counter("vlmdiff_samples_total", "Normal samples collected this run.", func(s CameraStats) float64 { return float64(s.Samples) }, cs)
	gauge("vlmdiff_fps", "Scored frames per second (smoothed).", func(s CameraStats) float64 { return s.FPS }, cs)
	gauge("vlmdiff_queue_depth", "Frames waiting in the camera's queue.", func(s CameraStats) float64 { return float64(s.QueueDepth) }, cs)
	gauge("vlmdiff_camera_up", "1 when the camera's source is online.", func(s CameraStats) float64 {
		if s.State == "online" {
			return 1
		}
		return 0
	}, cs)

	a.metrics.mu.Lock()
	keys := make([][2]string, 0, len(a.metrics.hists))
	for k := range a.metrics.hists {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+"\x00"+keys[i][1] < keys[j][0]+"\x00"+keys[j][1] })
	fmt.Fprintf(w, "# HELP vlmdiff_latency_ms Per-frame latency by stage in milliseconds.\n# TYPE vlmdiff_latency_ms histogram\n")
	for _, k := range keys {
		h := a.metrics.hists[k]
		var cum uint64
		for i, b := range latencyBuckets {
			cum += h.counts[i]
			fmt.Fprintf(w, "vlmdiff_latency_ms_bucket{camera=%q,stage=%q,le=\"%g\"} %d\n", k[0], k[1], b, cum)
		}
		cum += h.counts[len(latencyBuckets)]
		fmt.Fprintf(w, "vlmdiff_latency_ms_bucket{camera=%q,stage=%q,le=\"+Inf\"} %d\n", k[0], k[1], cum)
		fmt.Fprintf(w, "vlmdiff_latency_ms_sum{camera=%q,stage=%q} %g\n", k[0], k[1], h.sum)
		fmt.Fprintf(w, "vlmdiff_latency_ms_count{camera=%q,stage=%q} %d\n", k[0], k[1], h.n)
	}
	a.metrics.mu.Unlock()

	if a.storeOpen.Load() {
		if st, err := a.store.OutboxStats(); err == nil {
			fmt.Fprintf(w, "# HELP vlmdiff_outbox_messages Messages waiting in the outbox.\n# TYPE vlmdiff_outbox_messages gauge\nvlmdiff_outbox_messages %d\n", st.Messages)
			fmt.Fprintf(w, "# HELP vlmdiff_outbox_bytes Bytes waiting in the outbox.\n# TYPE vlmdiff_outbox_bytes gauge\nvlmdiff_outbox_bytes %d\n", st.Bytes)
			fmt.Fprintf(w, "# HELP vlmdiff_outbox_dropped_total Outbox messages dropped by the bound.\n# TYPE vlmdiff_outbox_dropped_total counter\n")
			fmt.Fprintf(w, "vlmdiff_outbox_dropped_total{kind=\"ok_result\"} %d\nvlmdiff_outbox_dropped_total{kind=\"ng_result\"} %d\n", st.DroppedOKResults, st.DroppedNGResults)
			fmt.Fprintf(w, "vlmdiff_outbox_dropped_total{kind=\"heatmap\"} %d\nvlmdiff_outbox_dropped_total{kind=\"other\"} %d\n", st.DroppedHeatmaps, st.DroppedOther)
		}
	}
	if a.models != nil {
		ms := a.models.Status()
		fmt.Fprintf(w, "# HELP vlmdiff_model_info The model state (1 for the current state).\n# TYPE vlmdiff_model_info gauge\n")
		fmt.Fprintf(w, "vlmdiff_model_info{state=%q,name=%q,version=%q} 1\n", ms.State, ms.Name, ms.Version)
		fmt.Fprintf(w, "# HELP vlmdiff_model_swaps_total Model hot-swaps.\n# TYPE vlmdiff_model_swaps_total counter\nvlmdiff_model_swaps_total %d\n", ms.Swaps)
	}
	if a.pub != nil {
		up := 0
		if a.pub.Connected() {
			up = 1
		}
		fmt.Fprintf(w, "# HELP vlmdiff_mqtt_connected 1 while connected to the broker.\n# TYPE vlmdiff_mqtt_connected gauge\nvlmdiff_mqtt_connected %d\n", up)
	}
}

var _ = strings.TrimSpace
var _ httpapi.Backend = (*Agent)(nil)
