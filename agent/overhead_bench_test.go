package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gocv.io/x/gocv"

	"github.com/vlmdiff/edge/agent"
	"github.com/vlmdiff/edge/agent/config"
	"github.com/vlmdiff/edge/capture"
	"github.com/vlmdiff/edge/models"
	"github.com/vlmdiff/edge/pipeline"
)

// The daemon's cost per frame outside the model (issue 14, item 4): the real daemon (agent.Run) with real
// video sources (a raw I420 file read by OpenCV and converted to RGB by the capture package, as a USB camera's
// YUV frames are), the real scheduler, bbolt store file, embedded MQTT broker and heatmap rendering, with the
// model replaced by noopScorer. Subscribers are mosquitto_sub processes, so their CPU is not the daemon's.
//
//	make bench-overhead     (OVERHEAD_SECONDS, OVERHEAD_CAMERAS, OVERHEAD_FPS, OVERHEAD_SIZE=WxH,
//	                         OVERHEAD_HEATMAP=png|jpeg|off, OVERHEAD_HEATMAP_MAX=px,
//	                         OVERHEAD_HEATMAP_INTERVAL=duration (mqtt.heatmap.min_interval; 0: every frame),
//	                         OVERHEAD_COMMIT_INTERVAL=duration (store.commit_interval),
//	                         OVERHEAD_OPENCV_THREADS=n (agent.opencv_threads; 0: OpenCV's own choice),
//	                         OVERHEAD_DIR for the store's filesystem)
//
// It prints one table: CPU per frame (user+system of the whole process over the measured window, divided by
// the results delivered to the subscriber in it), Go allocations per frame, and wall p50/p99 of the stages
// the daemon records in latency_ms plus capture -> delivered at the subscriber.

// noopScorer stands in for the model: it returns a plausible anomaly map at the bundle's input size at once
// (a calm map, and every ngEvery-th frame one with a defect blob), calibrated with the bundle's numbers like
// the real scorer, and renders heatmaps with the real pipeline code.
type noopScorer struct {
	mf          *models.Manifest
	w, h        int
	calm, blob  []float32
	calmMax     float64
	blobMax     float64
	ngEvery     uint64
	heatmapHigh float64
}

func newNoopScorer(dir string) (*noopScorer, error) {
	mf, err := models.ReadManifest(dir)
	if err != nil {
		return nil, fmt.Errorf("noop scorer: %w", err)
	}
	cal := mf.CalibrationFor("")
	s := &noopScorer{mf: mf, w: mf.Input.Width, h: mf.Input.Height, ngEvery: 20, heatmapHigh: 2 * cal.PixelThreshold}
	s.calm = make([]float32, s.w*s.h)
	s.blob = make([]float32, s.w*s.h)
	for y := 0; y < s.h; y++ {
		for x := 0; x < s.w; x++ {
			v := 0.25 + 0.1*math.Sin(float64(x)/9)*math.Cos(float64(y)/13)
			dx, dy := float64(x-s.w/3)/12, float64(y-s.h/2)/8
			b := v + 1.2*math.Exp(-(dx*dx+dy*dy)/2)
			s.calm[y*s.w+x], s.blob[y*s.w+x] = float32(v*cal.PixelThreshold), float32(b*cal.PixelThreshold)
			s.calmMax, s.blobMax = max(s.calmMax, v*cal.PixelThreshold), max(s.blobMax, b*cal.PixelThreshold)
		}
	}
	return s, nil
}

func (s *noopScorer) Score(_ context.Context, reqs []pipeline.Request) ([]pipeline.Result, error) {
	out := make([]pipeline.Result, len(reqs))
	for i, rq := range reqs {
		r := &out[i]
		r.Map, r.MapWidth, r.MapHeight, r.RawScore = s.calm, s.w, s.h, s.calmMax
		if rq.Seq%s.ngEvery == 0 {
			r.Map, r.RawScore = s.blob, s.blobMax
		}
		r.Class = rq.Class
		r.Model = pipeline.ModelRef{Name: s.mf.Name, Version: s.mf.Version}
		r.LatencyMS = map[string]float64{pipeline.StageTotal: 0}
		cal := s.mf.CalibrationFor(rq.Class)
		pipeline.Calibrate(r, cal, cal.Threshold)
	}
	return out, nil
}

func (s *noopScorer) Heatmap(img pipeline.Image, r *pipeline.Result, format string) ([]byte, error) {
	return pipeline.RenderHeatmap(img, r, s.heatmapHigh, format)
}

func (s *noopScorer) Manifest() *models.Manifest       { return s.mf }
func (s *noopScorer) Warmup(ctx context.Context) error { return nil }
func (s *noopScorer) Close() error                     { return nil }

// overheadParams are the benchmark's knobs (environment variables, for the make target).
type overheadParams struct {
	seconds, cameras int
	fps              float64
	width, height    int
	heatmap          string // png, jpeg or off
	heatmapMax       int    // mqtt.heatmap.max_size
	heatmapInterval  string // mqtt.heatmap.min_interval; empty: the config's default
	commitInterval   string // store.commit_interval; empty: the config's default
	cvThreads        string // agent.opencv_threads; empty: the config's default
	dir              string
}

func overheadParamsFromEnv(b *testing.B) overheadParams {
	p := overheadParams{seconds: 20, cameras: 4, fps: 30, width: 640, height: 480, heatmap: config.DefaultHeatmapFormat, dir: b.TempDir()}
	atoi := func(name string, dst *int, least int) {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < least {
				b.Fatalf("%s=%q: want an integer >= %d", name, v, least)
			}
			*dst = n
		}
	}
	atoi("OVERHEAD_SECONDS", &p.seconds, 1)
	atoi("OVERHEAD_CAMERAS", &p.cameras, 1)
	atoi("OVERHEAD_HEATMAP_MAX", &p.heatmapMax, 0)
	if v := os.Getenv("OVERHEAD_FPS"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 {
			b.Fatalf("OVERHEAD_FPS=%q: want a positive number", v)
		}
		p.fps = f
	}
	if v := os.Getenv("OVERHEAD_SIZE"); v != "" {
		if _, err := fmt.Sscanf(v, "%dx%d", &p.width, &p.height); err != nil || p.width <= 0 || p.height <= 0 {
			b.Fatalf("OVERHEAD_SIZE=%q: want WIDTHxHEIGHT", v)
		}
	}
	if v := os.Getenv("OVERHEAD_HEATMAP"); v != "" {
		if v != "png" && v != "jpeg" && v != "off" {
			b.Fatalf("OVERHEAD_HEATMAP=%q: want png, jpeg or off", v)
		}
		p.heatmap = v
	}
	if v := os.Getenv("OVERHEAD_HEATMAP_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			b.Fatalf("OVERHEAD_HEATMAP_INTERVAL=%q: want a duration >= 0 (0: every frame's heatmap)", v)
		}
		p.heatmapInterval = d.String() // "0s", not "0": YAML reads a bare 0 as an integer, not a duration
	}
	if v := os.Getenv("OVERHEAD_OPENCV_THREADS"); v != "" {
		if n, err := strconv.Atoi(v); err != nil || n < 0 {
			b.Fatalf("OVERHEAD_OPENCV_THREADS=%q: want an integer >= 0", v)
		}
		p.cvThreads = v
	}
	if v := os.Getenv("OVERHEAD_COMMIT_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > time.Second {
			b.Fatalf("OVERHEAD_COMMIT_INTERVAL=%q: want a duration 0..1s", v)
		}
		p.commitInterval = d.String()
	}
	if v := os.Getenv("OVERHEAD_DIR"); v != "" {
		d, err := os.MkdirTemp(v, "overhead-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(d) })
		p.dir = d
	}
	return p
}

// writeRawVideo writes a two-second uncompressed I420 clip of a moving gradient: reading it costs what a
// camera delivering YUV frames costs (a YUV->BGR conversion in OpenCV, then the capture package's copy to RGB),
// not a codec's decode.
func writeRawVideo(b *testing.B, path string, w, h int, fps float64) {
	vw, err := gocv.VideoWriterFile(path, "I420", fps, w, h, true)
	if err != nil || !vw.IsOpened() {
		b.Fatalf("raw video writer for %s: %v", path, err)
	}
	defer vw.Close()
	pix := make([]byte, w*h*3)
	for i := 0; i < 60; i++ {
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				o := (y*w + x) * 3
				pix[o], pix[o+1], pix[o+2] = byte(x+4*i), byte(y), byte(x^y)
			}
		}
		m, err := gocv.NewMatFromBytes(h, w, gocv.MatTypeCV8UC3, pix)
		if err != nil {
			b.Fatal(err)
		}
		if err := vw.Write(m); err != nil {
			m.Close()
			b.Fatalf("write frame %d: %v", i, err)
		}
		m.Close()
	}
}

func overheadConfig(b *testing.B, p overheadParams, video string, port int) *config.Config {
	var cams strings.Builder
	hm := ""
	if p.heatmap == "off" {
		hm = ", heatmap: off"
	}
	for i := 1; i <= p.cameras; i++ {
		fmt.Fprintf(&cams, "  - {name: cam%d, kind: file, path: %q, loop: true, fps: %g%s}\n", i, video, p.fps, hm)
	}
	format := p.heatmap
	if format == "off" {
		format = "png"
	}
	interval, commit, cvt := "", "", ""
	if p.cvThreads != "" {
		cvt = ", opencv_threads: " + p.cvThreads
	}
	if p.heatmapInterval != "" {
		interval = ", min_interval: " + p.heatmapInterval
	}
	if p.commitInterval != "" {
		commit = ", commit_interval: " + p.commitInterval
	}
	y := fmt.Sprintf(`
agent: {name: bench, data_dir: %q, log_level: warn%s}
models: {bundle: %q}
cameras:
%smqtt: {listen: "127.0.0.1:%d", prefix: bench, stats_interval: 10s, heatmap: {format: %s, max_size: %d%s}}
store: {retention: {max_size: 64MiB}%s}
`, p.dir, cvt, fixtureDir, cams.String(), port, format, p.heatmapMax, interval, commit)
	cfg, err := config.Parse(strings.NewReader(y), os.LookupEnv)
	if err != nil {
		b.Fatalf("config: %v\n%s", err, y)
	}
	return cfg
}

// rawDelivery is one result message as the subscriber printed it, parsed after the measured window.
type rawDelivery struct {
	at      time.Time
	payload string
}

// delivery is one result as a subscriber received it.
type delivery struct {
	at  time.Time
	res result
}

// subscribe runs mosquitto_sub on topic and calls fn with each message's receive time and payload (format
// %p) or payload length (%l) until the process ends.
func subscribe(b *testing.B, port int, topic, format string, fn func(at time.Time, field string)) *exec.Cmd {
	cmd := exec.Command("mosquitto_sub", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-q", "1", "-t", topic,
		"-F", "%U "+format)
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("mosquitto_sub: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			ts, rest, ok := strings.Cut(sc.Text(), " ")
			sec, frac, ok2 := strings.Cut(ts, ".")
			s, err1 := strconv.ParseInt(sec, 10, 64)
			ns, err2 := strconv.ParseInt((frac + "000000000")[:9], 10, 64)
			if !ok || !ok2 || err1 != nil || err2 != nil {
				continue
			}
			fn(time.Unix(s, ns), rest)
		}
	}()
	return cmd
}

func BenchmarkOverhead(b *testing.B) {
	if _, err := exec.LookPath("mosquitto_sub"); err != nil {
		b.Skip("mosquitto_sub not installed (apt-get install mosquitto-clients)")
	}
	p := overheadParamsFromEnv(b)
	video := filepath.Join(b.TempDir(), "raw.avi")
	writeRawVideo(b, video, p.width, p.height, p.fps)
	port := freePort(b)
	cfg := overheadConfig(b, p, video, port)
	a, err := agent.New(cfg, agent.Options{
		Open:   func(dir string) (agent.Scorer, error) { return newNoopScorer(dir) },
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		b.Fatal(err)
	}
	var (
		mu        sync.Mutex
		measuring bool
		raw       []rawDelivery
		heatmaps  int
		hmBytes   int
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("agent.Run: %v", err)
		}
	}()
	waitPort(b, port)
	subs := []*exec.Cmd{
		// The payloads are parsed after the window: decoding JSON is the subscriber's work, and this process's
		// CPU time is what the benchmark charges to the daemon.
		subscribe(b, port, "bench/+/result", "%p", func(at time.Time, payload string) {
			mu.Lock()
			if measuring {
				raw = append(raw, rawDelivery{at: at, payload: payload})
			}
			mu.Unlock()
		}),
		subscribe(b, port, "bench/+/heatmap", "%l", func(_ time.Time, n string) {
			v, _ := strconv.Atoi(n)
			mu.Lock()
			if measuring {
				heatmaps++
				hmBytes += v
			}
			mu.Unlock()
		}),
	}
	defer func() {
		for _, s := range subs {
			_ = s.Process.Kill()
			_ = s.Wait()
		}
	}()

	time.Sleep(3 * time.Second) // model loaded, sources open, store warm
	runtime.GC()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	c0 := a.Stats().Commits
	ru0 := rusage(b)
	t0 := time.Now()
	mu.Lock()
	measuring = true
	mu.Unlock()
	b.ResetTimer()
	time.Sleep(time.Duration(p.seconds) * time.Second)
	mu.Lock()
	measuring = false
	rws, hms, hmb := slices.Clone(raw), heatmaps, hmBytes
	mu.Unlock()
	ru1 := rusage(b)
	wall := time.Since(t0)
	c1 := a.Stats().Commits
	runtime.ReadMemStats(&ms1)
	b.StopTimer()
	rs := make([]delivery, 0, len(rws))
	for _, d := range rws {
		var r result
		if err := json.Unmarshal([]byte(d.payload), &r); err != nil {
			b.Fatalf("result payload: %v: %.200s", err, d.payload)
		}
		rs = append(rs, delivery{at: d.at, res: r})
	}
	if len(rs) == 0 {
		b.Fatal("no result reached the subscriber")
	}
	n := float64(len(rs))
	cpu := (ru1 - ru0).Seconds() * 1000 / n
	b.ReportMetric(cpu, "cpu-ms/frame")
	b.ReportMetric(n/wall.Seconds(), "frames/s")
	printOverhead(os.Stdout, p, wall, rs, hms, hmb, cpu, ru1-ru0, float64(ms1.Mallocs-ms0.Mallocs)/n,
		float64(ms1.TotalAlloc-ms0.TotalAlloc)/n)
	if c0 != nil && c1 != nil {
		tx, res := c1.Transactions-c0.Transactions, c1.Results-c0.Results
		fmt.Printf("  store transactions %d for %d results and the outbox acks (%.1f results per transaction; store.commit_interval %s)\n",
			tx, res, float64(res)/float64(max(tx, 1)), cfg.StoreCommitInterval())
	}
}

// rusage is the process's user+system CPU time so far.
func rusage(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func printOverhead(w io.Writer, p overheadParams, wall time.Duration, rs []delivery, heatmaps, hmBytes int,
	cpuPerFrame float64, cpu time.Duration, mallocs, allocBytes float64) {
	n := len(rs)
	offered := float64(p.cameras) * p.fps * wall.Seconds()
	interval := p.heatmapInterval
	if interval == "" {
		interval = config.DefaultHeatmapInterval.String() + " (default)"
	}
	fmt.Fprintf(w, "\noverhead outside the model: %d camera(s) x %g fps, %dx%d, heatmap %s (max_size %d, OK at most every %s), %d CPU(s), OpenCV threads %d, %s measured\n",
		p.cameras, p.fps, p.width, p.height, p.heatmap, p.heatmapMax, interval, runtime.NumCPU(), capture.OpenCVThreads(), wall.Round(time.Millisecond))
	fmt.Fprintf(w, "  results delivered %d (%.1f/s, %.0f%% of the %.0f frames offered), heatmaps %d (%.0f KiB avg)\n",
		n, float64(n)/wall.Seconds(), 100*float64(n)/offered, offered, heatmaps, float64(hmBytes)/1024/float64(max(heatmaps, 1)))
	fmt.Fprintf(w, "  CPU %.2f ms/frame (%.2f s user+system over the window; %.0f%% of one core)\n",
		cpuPerFrame, cpu.Seconds(), 100*cpu.Seconds()/wall.Seconds())
	fmt.Fprintf(w, "  Go allocations %.0f objects, %.1f KiB per frame\n", mallocs, allocBytes/1024)
	fmt.Fprintf(w, "\n  %-34s %9s %9s %9s\n", "stage (wall, ms)", "p50", "p99", "max")
	keys := []struct{ key, label string }{
		{agent.LatQueue, "queue (source -> worker)"},
		{agent.LatHeatmap, "heatmap render + encode"},
		{agent.LatOverhead, "worker -> outbox, minus model"},
		{agent.LatCaptureToPublish, "capture -> outbox"},
	}
	for _, k := range keys {
		var v []float64
		for _, r := range rs {
			if x, ok := r.res.LatencyMS[k.key]; ok {
				v = append(v, x)
			}
		}
		printRow(w, k.label, v)
	}
	// published_at is when the result's messages were built, just before the commit: from there the store
	// transaction (fsync), the outbox drain and the broker's delivery.
	var out, e2e []float64
	for _, r := range rs {
		out = append(out, float64(r.at.Sub(r.res.PublishedAt).Microseconds())/1000)
		e2e = append(e2e, float64(r.at.Sub(r.res.FrameTime).Microseconds())/1000)
	}
	printRow(w, "commit + drain + broker -> sub", out)
	printRow(w, "capture -> subscriber (per frame)", e2e)
}

func printRow(w io.Writer, label string, v []float64) {
	if len(v) == 0 {
		fmt.Fprintf(w, "  %-34s %9s %9s %9s\n", label, "-", "-", "-")
		return
	}
	slices.Sort(v)
	q := func(f float64) float64 { return v[min(len(v)-1, int(f*float64(len(v))))] }
	fmt.Fprintf(w, "  %-34s %9.2f %9.2f %9.2f\n", label, q(0.5), q(0.99), v[len(v)-1])
}

// freePort returns a loopback port that was free a moment ago.
func freePort(b testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitPort waits until the embedded broker accepts connections (a deadline against hangs).
func waitPort(b testing.TB, port int) {
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fatalf("embedded broker on port %d did not start", port)
}
