package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vlmdiff/edge/pipeline/roi"
)

const minimal = `
agent: {name: line1, data_dir: /tmp/x}
models: {dir: /tmp/models}
cameras:
  - {name: cam1, kind: synthetic}
`

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestParseDefaults(t *testing.T) {
	cfg, err := Parse(strings.NewReader(minimal), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"store.path", cfg.Store.Path, "/tmp/x/vlmdiff.db"},
		{"mqtt.prefix", cfg.MQTT.Prefix, "vlmdiff/line1"},
		{"mqtt.client_id", cfg.MQTT.ClientID, "vlmdiff-line1"},
		{"mqtt.listen", cfg.MQTT.Listen, DefaultEmbeddedListen},
		{"mqtt.qos.ng", *cfg.MQTT.QoS.NG, 1},
		{"mqtt.qos.heatmap", *cfg.MQTT.QoS.Heatmap, 0},
		{"mqtt.heatmap.format", cfg.MQTT.Heatmap.Format, "jpeg"},
		{"mqtt.heatmap.max_size", cfg.MQTT.Heatmap.MaxSize, 0},
		{"mqtt.heatmap.min_interval", *cfg.MQTT.Heatmap.MinInterval, time.Second},
		{"cameras[0] heatmap interval", cfg.HeatmapInterval(&cfg.Cameras[0]), time.Second},
		{"store.commit_interval", cfg.StoreCommitInterval(), 20 * time.Millisecond},
		{"models.providers", strings.Join(cfg.Models.Providers, ","), "cpu"},
		{"models.batch", cfg.Models.Batch, 1},
		{"models.memory", cfg.Models.Memory, MemoryShared},
		{"models.denoiser_spin", cfg.Models.DenoiserSpinOn(), true},
		{"models.spin_us", cfg.Models.SpinUS(), DefaultSpinMicros},
		{"cameras[0].queue", cfg.Cameras[0].Queue, DefaultQueue},
		{"cameras[0].heatmap", cfg.Cameras[0].HeatmapOn(), true},
		{"cameras[0].roi (none: the whole frame)", cfg.Cameras[0].ROI.Active(), false},
		{"agent.shutdown_timeout", cfg.Agent.ShutdownTimeout, 10 * time.Second},
		{"agent.opencv_threads", cfg.Agent.CVThreads(), DefaultOpenCVThreads},
		{"store.retention.max_size", cfg.Store.Retention.MaxSize, ByteSize(1 << 30)},
		{"embedded", cfg.Embedded(), true},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestParseOverridesAndEnv(t *testing.T) {
	src := `
agent: {name: line1, data_dir: /tmp/x, opencv_threads: 0}
models: {bundle: /tmp/b, batch: 4, workers: 2, providers: [cuda, cpu], denoiser_spin: false, spin_us: 0}
cameras:
  - name: cam1
    kind: synthetic
    class: bottle
    threshold: ${CAM1_THR:-0.75}
    queue: 8
    heatmap: off
    heatmap_interval: 2s
    sample_every: 10
    roi:
      crop:
        x: 100
        y: ${ROI_Y:-20}
        width: 640
        height: 400
      mask: [[120, 40], [700, 40], [700, 400], [120.5, 400]]
      fit: letterbox
mqtt:
  broker: ssl://broker:8883
  username: ${MQTT_USER}
  password: "${MQTT_PASS}"
  heatmap: {format: jpeg, base64: true, min_interval: 500ms, max_size: 320}
store:
  retention: {max_age: 48h, max_size: 2GiB}
  samples: {every: 100, min_free_disk: 500MB}
  commit_interval: 0s
`
	cfg, err := Parse(strings.NewReader(src), env(map[string]string{"MQTT_USER": "u", "MQTT_PASS": "p#: 1"}))
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Cameras[0]
	checks := []struct {
		name      string
		got, want any
	}{
		{"threshold", *c.Threshold, 0.75},
		{"denoiser_spin explicit false", cfg.Models.DenoiserSpinOn(), false},
		{"spin_us explicit 0 (ONNX Runtime's own count)", cfg.Models.SpinUS(), 0},
		{"opencv_threads explicit 0 (OpenCV's own choice)", cfg.Agent.CVThreads(), 0},
		{"queue", c.Queue, 8},
		{"heatmap", c.HeatmapOn(), false},
		{"heatmap_interval", cfg.HeatmapInterval(&c), 2 * time.Second},
		{"sample_every", cfg.SampleEvery(&c), 10},
		{"username", cfg.MQTT.Username, "u"},
		{"password (YAML syntax inside a secret stays data)", cfg.MQTT.Password, "p#: 1"},
		{"format", cfg.MQTT.Heatmap.Format, "jpeg"},
		{"heatmap max_size", cfg.MQTT.Heatmap.MaxSize, 320},
		{"heatmap min_interval", *cfg.MQTT.Heatmap.MinInterval, 500 * time.Millisecond},
		{"store.commit_interval explicit 0", cfg.StoreCommitInterval(), time.Duration(0)},
		{"max_size", cfg.Store.Retention.MaxSize, ByteSize(2 << 30)},
		{"min_free_disk", cfg.Store.Samples.MinFreeDisk, ByteSize(500e6)},
		{"embedded", cfg.Embedded(), false},
		{"roi.crop", *c.ROI.Crop, roi.Rect{X: 100, Y: 20, Width: 640, Height: 400}},
		{"roi.mask[3][0]", c.ROI.Mask[3][0], 120.5},
		{"roi.fit", c.ROI.Fit, roi.FitLetterbox},
		{"roi active", c.ROI.Active(), true},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

// TestHeatmapInterval: OK heatmaps are rate-limited to one a second per camera unless the config says
// otherwise; an explicit 0 (every frame) is kept, not taken for "unset", and a camera's override wins.
func TestHeatmapInterval(t *testing.T) {
	cases := []struct {
		name, mqtt, camera string
		want               time.Duration
	}{
		{"default", "", "", DefaultHeatmapInterval},
		{"explicit 0: every frame", "mqtt: {heatmap: {min_interval: 0s}}\n", "", 0},
		{"global", "mqtt: {heatmap: {min_interval: 250ms}}\n", "", 250 * time.Millisecond},
		{"camera override of the default", "", ", heatmap_interval: 0s", 0},
		{"camera override of the global", "mqtt: {heatmap: {min_interval: 0s}}\n", ", heatmap_interval: 3s", 3 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := "agent: {name: line1, data_dir: /tmp/x}\nmodels: {dir: /tmp/models}\n" +
				"cameras:\n  - {name: cam1, kind: synthetic" + tc.camera + "}\n" + tc.mqtt
			cfg, err := Parse(strings.NewReader(src), env(nil))
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.HeatmapInterval(&cfg.Cameras[0]); got != tc.want {
				t.Errorf("heatmap interval %v, want %v", got, tc.want)
			}
		})
	}
}

// TestBadConfigs: every bad config is refused with an error naming the field path and the reason.
func TestBadConfigs(t *testing.T) {
	base := func(extra string) string { return minimal + extra }
	cases := []struct {
		name string
		src  string
		env  map[string]string
		want []string // substrings the error must contain
	}{
		{"unknown top-level key", base("bogus: 1\n"), nil, []string{"bogus: unknown field"}},
		{"typo with suggestion", `
agent: {name: a, data_dir: /tmp}
models: {dir: /m, batchh: 2}
cameras: [{name: c, kind: synthetic}]`, nil, []string{"models.batchh: unknown field", `did you mean "batch"`}},
		{"unknown camera key", `
agent: {name: a}
models: {dir: /m}
cameras:
  - {name: c0, kind: synthetic}
  - {name: c1, kind: synthetic, treshold: 0.5}`, nil, []string{"cameras[1].treshold: unknown field"}},
		{"no models", `
cameras: [{name: c, kind: synthetic}]`, nil, []string{"models: set dir"}},
		{"no cameras", "models: {dir: /m}\n", nil, []string{"cameras: at least one camera"}},
		{"duplicate camera", `
models: {dir: /m}
cameras: [{name: c, kind: synthetic}, {name: c, kind: synthetic}]`, nil, []string{"cameras[1].name: \"c\" is already used by cameras[0]"}},
		{"camera name with slash", `
models: {dir: /m}
cameras: [{name: "a/b", kind: synthetic}]`, nil, []string{"cameras[0].name:"}},
		{"reserved camera name", `
models: {dir: /m}
cameras: [{name: stats, kind: synthetic}]`, nil, []string{"cameras[0].name: \"stats\" is reserved"}},
		{"bad url", `
models: {dir: /m}
cameras:
  - {name: a, kind: synthetic}
  - {name: b, kind: url, url: "ftp://user:pw@cam/x"}`, nil, []string{"cameras[1].url: must be rtsp://", "user:***@cam"}},
		{"missing url", `
models: {dir: /m}
cameras: [{name: a, kind: url}]`, nil, []string{"cameras[0].url: required"}},
		{"bad kind", `
models: {dir: /m}
cameras: [{name: a, kind: webcam}]`, nil, []string{"cameras[0].kind:"}},
		{"bad folder option", `
models: {dir: /m}
cameras: [{name: a, kind: folder, path: /x, folder: {after: shred}}]`, nil, []string{"cameras[0].folder.after:"}},
		{"bad provider", `
models: {dir: /m, providers: [tpu]}
cameras: [{name: c, kind: synthetic}]`, nil, []string{"models.providers[0]: must be cuda or cpu"}},
		{"negative denoiser threads", `
models: {dir: /m, denoiser_threads: -1}
cameras: [{name: c, kind: synthetic}]`, nil, []string{"models.denoiser_threads: must be >= 0"}},
		{"negative OpenCV threads", `
agent: {opencv_threads: -1}
models: {dir: /m}
cameras: [{name: c, kind: synthetic}]`, nil, []string{"agent.opencv_threads: must be 0..1024"}},
		{"negative spin wait", `
models: {dir: /m, spin_us: -5}
cameras: [{name: c, kind: synthetic}]`, nil, []string{"models.spin_us: must be 0..1000000 microseconds"}},
		{"batch too big", `
models: {dir: /m, batch: 100}
cameras: [{name: c, kind: synthetic}]`, nil, []string{"models.batch: must be 1..64"}},
		{"negative threshold", `
models: {dir: /m}
cameras: [{name: c, kind: synthetic, threshold: -1}]`, nil, []string{"cameras[0].threshold: must be a raw score"}},
		{"negative heatmap min_interval", base("mqtt: {heatmap: {min_interval: -1s}}\n"), nil,
			[]string{"mqtt.heatmap.min_interval: must not be negative"}},
		{"store.commit_interval too long", base("store: {commit_interval: 2s}\n"), nil,
			[]string{"store.commit_interval: must be 0..1s"}},
		{"store.commit_interval negative", base("store: {commit_interval: -1ms}\n"), nil,
			[]string{"store.commit_interval: must be 0..1s"}},
		{"bad queue", `
models: {dir: /m}
cameras: [{name: c, kind: synthetic, queue: -3}]`, nil, []string{"cameras[0].queue: must be 1..10000"}},
		{"roi: bad fit", `
models: {dir: /m}
cameras: [{name: c, kind: synthetic}, {name: gate, kind: synthetic, roi: {fit: stretch}}]`, nil, []string{`cameras[1].roi.fit: must be squash or letterbox, not "stretch" (camera "gate")`}},
		{"roi: bad crop", `
models: {dir: /m}
cameras: [{name: gate, kind: synthetic, roi: {crop: {x: -5, y: 0, width: 0, height: 10}}}]`, nil, []string{"cameras[0].roi.crop: x and y must be 0..", "cameras[0].roi.crop: width and height must be 1..", `(camera "gate")`}},
		{"roi: crop key typo", `
models: {dir: /m}
cameras: [{name: gate, kind: synthetic, roi: {crop: {x: 0, y: 0, w: 10, height: 10}}}]`, nil, []string{"cameras[0].roi.crop.w: unknown field"}},
		{"roi: polygon of two points", `
models: {dir: /m}
cameras: [{name: gate, kind: synthetic, roi: {mask: [[0, 0], [10, 10]]}}]`, nil, []string{`cameras[0].roi.mask: a polygon needs at least 3 points [x, y], has 2 (camera "gate")`}},
		{"roi: non-finite point", `
models: {dir: /m}
cameras: [{name: gate, kind: synthetic, roi: {mask: [[0, 0], [10, .inf], [0, 10]]}}]`, nil, []string{`cameras[0].roi.mask[1]: coordinates must be finite`}},
		{"roi: NaN point", `
models: {dir: /m}
cameras: [{name: gate, kind: synthetic, roi: {mask: [[0, 0], [.nan, 3], [0, 10]]}}]`, nil, []string{`cameras[0].roi.mask[1]: coordinates must be finite`}},
		{"roi: point of three numbers", `
models: {dir: /m}
cameras: [{name: gate, kind: synthetic, roi: {mask: [[0, 0, 0], [10, 0], [0, 10]]}}]`, nil, []string{`cameras[0].roi.mask[0]: a point is [x, y], not 3 numbers`}},
		{"roi: mask outside crop", `
models: {dir: /m}
cameras: [{name: gate, kind: synthetic, roi: {crop: {x: 0, y: 0, width: 10, height: 10}, mask: [[20, 20], [30, 20], [30, 30]]}}]`, nil, []string{`cameras[0].roi.mask: the polygon lies entirely outside crop`}},
		{"bad broker scheme", base("mqtt: {broker: 'http://x:1883'}\n"), nil, []string{"mqtt.broker: must be tcp://"}},
		{"broker without host", base("mqtt: {broker: 'tcp://'}\n"), nil, []string{"mqtt.broker: has no host:port"}},
		{"bad listen", base("mqtt: {listen: nope}\n"), nil, []string{"mqtt.listen: must be host:port"}},
		{"qos out of range", base("mqtt: {qos: {result: 3}}\n"), nil, []string{"mqtt.qos.result: must be 0, 1 or 2"}},
		{"ng qos 0", base("mqtt: {qos: {ng: 0}}\n"), nil, []string{"mqtt.qos.ng: must be at least 1"}},
		{"unknown memory mode", `
agent: {name: a}
models: {dir: /m, memory: tiny}
cameras: [{name: c, kind: synthetic}]`, nil, []string{"models.memory: must be shared, lean or ort, not \"tiny\""}},
		{"heatmap max_size too small", base("mqtt: {heatmap: {max_size: 8}}\n"), nil, []string{"mqtt.heatmap.max_size: must be 0 (the frame's size) or 16..16384 pixels, not 8"}},
		{"heatmap format", base("mqtt: {heatmap: {format: gif}}\n"), nil, []string{"mqtt.heatmap.format: must be png or jpeg"}},
		{"tls cert without key", base("mqtt: {broker: 'ssl://b:8883', tls: {cert: /etc/hostname}}\n"), nil, []string{"mqtt.tls: cert and key"}},
		{"tls ca missing", base("mqtt: {broker: 'ssl://b:8883', tls: {ca: /nonexistent/ca.pem}}\n"), nil, []string{"mqtt.tls.ca: cannot read /nonexistent/ca.pem"}},
		{"password without user", base("mqtt: {password: x}\n"), nil, []string{"mqtt.password: is set but mqtt.username is empty"}},
		{"unset env", base("mqtt: {broker: 'tcp://b:1883', username: u, password: '${NOPE}'}\n"), nil, []string{"mqtt.password: environment variable NOPE is not set"}},
		{"bad size", base("store: {retention: {max_size: lots}}\n"), nil, []string{"is not a size"}},
		{"bad duration", "agent: {shutdown_timeout: soon}\nmodels: {dir: /m}\ncameras: [{name: c, kind: synthetic}]\n", nil, []string{"shutdown_timeout"}},
		{"http listen", base("http: {listen: '8080'}\n"), nil, []string{"http.listen: must be host:port"}},
		{"log level", "agent: {log_level: loud}\nmodels: {dir: /m}\ncameras: [{name: c, kind: synthetic}]\n", nil, []string{"agent.log_level: must be debug"}},
		{"mapping where value", base("http: {listen: {a: 1}}\n"), nil, []string{"http.listen: must be a single value"}},
		{"list where mapping", base("store: [1, 2]\n"), nil, []string{"store: must be a mapping"}},
		{"duplicate key", base("http: {listen: 'a:1'}\nhttp: {listen: 'b:2'}\n"), nil, []string{"http"}},
		{"several problems at once", `
models: {dir: /m, workers: -1, batch: 65}
cameras: [{name: c, kind: synthetic, queue: 0}]
mqtt: {qos: {stats: 9}}`, nil, []string{"models.batch", "models.workers", "mqtt.qos.stats"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tc.src), env(tc.env))
			if err == nil {
				t.Fatalf("accepted; want an error containing %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

// TestConfigsDir: every shipped config passes validation (with the secrets they reference set).
func TestConfigsDir(t *testing.T) {
	files, err := filepath.Glob("../../configs/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Skip("no configs/*.yaml yet")
	}
	dir := t.TempDir()
	for _, n := range []string{"ca.pem", "client.pem", "client.key"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("VLMDIFF_MQTT_USERNAME", "line1")
	t.Setenv("VLMDIFF_MQTT_PASSWORD", "secret")
	t.Setenv("VLMDIFF_TLS_CA", filepath.Join(dir, "ca.pem"))
	t.Setenv("VLMDIFF_TLS_CERT", filepath.Join(dir, "client.pem"))
	t.Setenv("VLMDIFF_TLS_KEY", filepath.Join(dir, "client.key"))
	t.Setenv("CAM_PASSWORD", "campw")
	for _, f := range files {
		if strings.Contains(filepath.Base(f), "train") {
			continue // training presets belong to vlmdiff train
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			if _, err := Load(f); err != nil {
				t.Errorf("%v", err)
			}
		})
	}
}

// TestCameraROI: the calibrate/eval reading of one camera's roi block from a daemon config: the block as the
// daemon decodes it, nil for a camera without one, and errors naming the file, camera and key.
func TestCameraROI(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.yaml")
	src := `
agent: {name: line1}
models: {dir: /m}
mqtt: {broker: 'ssl://b:8883', username: u, password: '${NOT_SET_ON_THIS_MACHINE}', tls: {ca: /nonexistent/ca.pem}}
cameras:
  - name: gate
    kind: synthetic
    roi:
      crop: {x: 10, y: 20, width: 300, height: 200}
      mask: [[10, 20], [310, 20], [160, 220]]
      fit: letterbox
  - {name: plain, kind: synthetic}
  - {name: typo, kind: synthetic, roi: {crop: {x: 0, y: 0, w: 1, height: 1}}}
  - {name: bad, kind: synthetic, roi: {mask: [[0, 0], [1, 1]]}}
`
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := CameraROI(path, "gate")
	if err != nil || *c.Crop != (roi.Rect{X: 10, Y: 20, Width: 300, Height: 200}) || len(c.Mask) != 3 || c.Fit != roi.FitLetterbox {
		t.Fatalf("gate: %+v %v", c, err)
	}
	if c, err := CameraROI(path, "plain"); c != nil || err != nil {
		t.Errorf("plain: %+v %v, want no region", c, err)
	}
	for _, tc := range []struct{ camera, want string }{
		{"typo", "cameras[2].roi.crop.w: unknown field"},
		{"bad", `cameras[3].roi.mask: a polygon needs at least 3 points [x, y], has 2 (camera "bad")`},
		{"nope", `no camera "nope" (cameras: gate, plain, typo, bad)`},
	} {
		if _, err := CameraROI(path, tc.camera); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v, want %q and the file", tc.camera, err, tc.want)
		}
	}
}
