package agent

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vlmdiff/edge/internal/buildinfo"
)

// /metrics through the Prometheus Go client, following its conventions: base units (seconds, bytes),
// counters as running totals (rates are PromQL's job: rate(vlmdiff_scored_total[5m]), never a precomputed
// fps), the standard process_* and go_* collectors, and a vlmdiff_build_info gauge. The counters live in
// the daemon's own atomics (they also feed /api/stats and <prefix>/stats), so a collector reads them at
// scrape time instead of keeping a second copy. docs/operations.md lists every name.

// latencyBucketsSeconds span sub-millisecond overheads to multi-second CPU diffusion runs.
var latencyBucketsSeconds = []float64{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30}

// promMetrics is the daemon's registry.
type promMetrics struct {
	reg     *prometheus.Registry
	latency *prometheus.HistogramVec
}

func newPromMetrics(a *Agent) *promMetrics {
	p := &promMetrics{reg: prometheus.NewRegistry()}
	p.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "vlmdiff_latency_seconds",
		Help:    "Per-frame latency by stage (the result's latency_ms keys) in seconds.",
		Buckets: latencyBucketsSeconds,
	}, []string{"camera", "stage"})
	bi := buildinfo.Get()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "vlmdiff_build_info",
		Help: "The running build: always 1, the labels carry version, revision and Go version.",
	}, []string{"version", "revision", "goversion"})
	build.WithLabelValues(bi.Version, bi.Revision, bi.GoVersion).Set(1)
	p.reg.MustRegister(
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
		build,
		p.latency,
		agentCollector{a},
	)
	return p
}

// Metrics is /metrics.
func (a *Agent) Metrics() http.Handler {
	return promhttp.HandlerFor(a.prom.reg, promhttp.HandlerOpts{ErrorLog: nil, Registry: a.prom.reg})
}

// agentCollector turns the daemon's counters into metrics at scrape time. It is unchecked (Describe sends
// nothing): the camera and model label values are only known at run time.
type agentCollector struct{ a *Agent }

func (agentCollector) Describe(chan<- *prometheus.Desc) {}

var (
	camLabels      = []string{"camera"}
	cameraCounters = []struct {
		desc *prometheus.Desc
		get  func(*camera, CameraStats) float64
	}{
		{prometheus.NewDesc("vlmdiff_frames_total", "Frames received from the camera's source (pushed images for the score camera).", camLabels, nil), func(_ *camera, s CameraStats) float64 { return float64(s.Frames) }},
		{prometheus.NewDesc("vlmdiff_scored_total", "Frames scored and committed.", camLabels, nil), func(_ *camera, s CameraStats) float64 { return float64(s.Scored) }},
		{prometheus.NewDesc("vlmdiff_ng_total", "Frames judged NG.", camLabels, nil), func(_ *camera, s CameraStats) float64 { return float64(s.NG) }},
		{prometheus.NewDesc("vlmdiff_queue_drops_total", "Frames dropped from a full queue (live cameras), or pushed images refused with 429.", camLabels, nil), func(_ *camera, s CameraStats) float64 { return float64(s.QueueDrops) }},
		{prometheus.NewDesc("vlmdiff_source_drops_total", "Frames a live source dropped because the daemon was busy.", camLabels, nil), func(_ *camera, s CameraStats) float64 { return float64(s.SourceDrops) }},
		{prometheus.NewDesc("vlmdiff_rate_limited_total", "Frames skipped by the camera's rate_limit.", camLabels, nil), func(_ *camera, s CameraStats) float64 { return float64(s.RateLimited) }},
		{prometheus.NewDesc("vlmdiff_decode_errors_total", "Frames or files that could not be read.", camLabels, nil), func(_ *camera, s CameraStats) float64 { return float64(s.DecodeErrors) }},
		{prometheus.NewDesc("vlmdiff_score_errors_total", "Frames that could not be scored or stored.", camLabels, nil), func(_ *camera, s CameraStats) float64 { return float64(s.ScoreErrors) }},
		{prometheus.NewDesc("vlmdiff_skipped_already_processed_total", "Folder files skipped because an earlier run committed them.", camLabels, nil), func(_ *camera, s CameraStats) float64 { return float64(s.Skipped) }},
		{prometheus.NewDesc("vlmdiff_samples_total", "Normal samples collected.", camLabels, nil), func(_ *camera, s CameraStats) float64 { return float64(s.Samples) }},
		{prometheus.NewDesc("vlmdiff_evidence_kept_total", "Results kept as evidence files.", camLabels, nil), func(c *camera, _ CameraStats) float64 { return float64(c.evidenceKept.Load()) }},
		{prometheus.NewDesc("vlmdiff_evidence_errors_total", "Evidence files that could not be written.", camLabels, nil), func(c *camera, _ CameraStats) float64 { return float64(c.evidenceErrs.Load()) }},
		{prometheus.NewDesc("vlmdiff_triggers_total", "Triggers accepted (trigger-mode cameras).", camLabels, nil), func(c *camera, _ CameraStats) float64 { return float64(c.trig.accepted.Load()) }},
		{prometheus.NewDesc("vlmdiff_trigger_timeouts_total", "Triggers refused because no frame came within trigger_timeout.", camLabels, nil), func(c *camera, _ CameraStats) float64 { return float64(c.trig.timeouts.Load()) }},
		{prometheus.NewDesc("vlmdiff_trigger_idle_frames_total", "Live frames discarded because no trigger waited.", camLabels, nil), func(c *camera, _ CameraStats) float64 { return float64(c.trig.idle.Load()) }},
	}
	descQueueDepth   = prometheus.NewDesc("vlmdiff_queue_depth", "Frames waiting in the camera's queue.", camLabels, nil)
	descCameraUp     = prometheus.NewDesc("vlmdiff_camera_up", "1 when the camera's source is online.", camLabels, nil)
	descThreshold    = prometheus.NewDesc("vlmdiff_threshold", "The camera's threshold in effect, in raw score units.", camLabels, nil)
	descLastSeq      = prometheus.NewDesc("vlmdiff_last_seq", "The camera's last seq given out.", camLabels, nil)
	descOutboxMsgs   = prometheus.NewDesc("vlmdiff_outbox_messages", "Messages waiting in the outbox.", nil, nil)
	descOutboxBytes  = prometheus.NewDesc("vlmdiff_outbox_bytes", "Bytes waiting in the outbox.", nil, nil)
	descOutboxDrops  = prometheus.NewDesc("vlmdiff_outbox_dropped_total", "Outbox messages dropped by its bound, since the store was created.", []string{"kind"}, nil)
	descModelInfo    = prometheus.NewDesc("vlmdiff_model_info", "The model in service: always 1, labels carry state, name and version.", []string{"state", "name", "version"}, nil)
	descModelSwaps   = prometheus.NewDesc("vlmdiff_model_swaps_total", "Model hot-swaps.", nil, nil)
	descMQTTUp       = prometheus.NewDesc("vlmdiff_mqtt_connected", "1 while connected to the broker.", nil, nil)
	descMQTTSent     = prometheus.NewDesc("vlmdiff_mqtt_published_total", "MQTT messages acknowledged by the broker.", nil, nil)
	descMQTTFailures = prometheus.NewDesc("vlmdiff_mqtt_failures_total", "MQTT publishes that failed or timed out.", nil, nil)
	descMQTTReconn   = prometheus.NewDesc("vlmdiff_mqtt_reconnects_total", "MQTT reconnect attempts.", nil, nil)
	descScorePending = prometheus.NewDesc("vlmdiff_score_pending", "Pushed images (POST /api/score) queued or being scored.", nil, nil)
	descStalled      = prometheus.NewDesc("vlmdiff_stalled", "1 when frames wait and scoring has made no progress (the /healthz and watchdog check).", nil, nil)
)

func (ac agentCollector) Collect(ch chan<- prometheus.Metric) {
	a := ac.a
	if a.sched == nil {
		return // not started yet
	}
	now := time.Now()
	for _, c := range a.sched.cams {
		s := a.cameraStats(c, now)
		for _, m := range cameraCounters {
			ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, m.get(c, s), c.name)
		}
		ch <- prometheus.MustNewConstMetric(descQueueDepth, prometheus.GaugeValue, float64(s.QueueDepth), c.name)
		ch <- prometheus.MustNewConstMetric(descLastSeq, prometheus.GaugeValue, float64(s.LastSeq), c.name)
		ch <- prometheus.MustNewConstMetric(descThreshold, prometheus.GaugeValue, s.Threshold, c.name)
		if c.src != nil {
			ch <- prometheus.MustNewConstMetric(descCameraUp, prometheus.GaugeValue, b2f(s.State == "online"), c.name)
		}
	}
	ch <- prometheus.MustNewConstMetric(descScorePending, prometheus.GaugeValue, float64(a.scorePending.Load()))
	if a.models != nil {
		ch <- prometheus.MustNewConstMetric(descStalled, prometheus.GaugeValue, b2f(a.progress() != nil))
		ms := a.models.Status()
		ch <- prometheus.MustNewConstMetric(descModelInfo, prometheus.GaugeValue, 1, ms.State, ms.Name, ms.Version)
		ch <- prometheus.MustNewConstMetric(descModelSwaps, prometheus.CounterValue, float64(ms.Swaps))
	}
	if a.storeOpen.Load() {
		if st, err := a.store.OutboxStats(); err == nil {
			ch <- prometheus.MustNewConstMetric(descOutboxMsgs, prometheus.GaugeValue, float64(st.Messages))
			ch <- prometheus.MustNewConstMetric(descOutboxBytes, prometheus.GaugeValue, float64(st.Bytes))
			for kind, v := range map[string]uint64{"ok_result": st.DroppedOKResults, "ng_result": st.DroppedNGResults,
				"heatmap": st.DroppedHeatmaps, "other": st.DroppedOther} {
				ch <- prometheus.MustNewConstMetric(descOutboxDrops, prometheus.CounterValue, float64(v), kind)
			}
		}
	}
	if a.pub != nil {
		ps := a.pub.Stats()
		ch <- prometheus.MustNewConstMetric(descMQTTUp, prometheus.GaugeValue, b2f(ps.Connected))
		ch <- prometheus.MustNewConstMetric(descMQTTSent, prometheus.CounterValue, float64(ps.Published))
		ch <- prometheus.MustNewConstMetric(descMQTTFailures, prometheus.CounterValue, float64(ps.Failures))
		ch <- prometheus.MustNewConstMetric(descMQTTReconn, prometheus.CounterValue, float64(ps.Reconnects))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// observe records a result's latency_ms (milliseconds) in seconds.
func (p *promMetrics) observe(camera string, latMS map[string]float64) {
	for stage, v := range latMS {
		p.latency.WithLabelValues(camera, stage).Observe(v / 1000)
	}
}
