# vlmdiff edge. The two commands a newcomer needs:
#   make demo   installs what is missing, builds, and runs the daemon on the embedded demo
#   make test   installs what is missing and runs every test (what CI runs)
SHELL := /bin/bash
GO ?= go
BIN := bin/vlmdiff
PY := /usr/bin/python3
export ONNXRUNTIME_LIB ?= $(CURDIR)/.deps/lib/libonnxruntime.so

.PHONY: all deps deps-torch test-torch build demo demo-bundle test test-go test-py vet fmt bench bench-ab bench-overhead fuzz soak memory clean

all: build

deps:
	@./.ci/deps.sh

# Opt-in: `make deps` plus PyTorch 2.15 from PyPI in .deps/torch (CUDA build, about 5.6 GB), for
# `vlmdiff train --python .deps/torch/bin/python` and `make test-torch` (docs/training.md, "Which PyTorch").
deps-torch:
	@VLMDIFF_TORCH=pypi ./.ci/deps.sh

# The tests that run PyTorch, under .deps/torch's interpreter instead of Debian's: the trainer's pytest suite, the
# parity tests, the Go-to-Python contract test and the sd15-mini training (every end-to-end training with
# TORCH_TESTS=all).
TORCH_PY := $(CURDIR)/.deps/torch/bin/python
test-torch: deps-torch build
	cd trainer/python && $(TORCH_PY) -m pytest -q -p no:cacheprovider
	VLMDIFF_TEST_PYTHON=$(TORCH_PY) $(GO) test -count=1 ./pipeline ./trainer/ortcheck ./trainer/eval
	VLMDIFF_TEST_PYTHON=$(TORCH_PY) $(GO) test -count=1 -run 'BenchReference' ./agent/cli
	VLMDIFF_TEST_PYTHON=$(TORCH_PY) $(GO) test -count=1 -timeout 60m \
		$(if $(filter all,$(TORCH_TESTS)),,-run 'Contract|SD15Mini|Schema|Constants') ./trainer/run

# The version `vlmdiff version` and the vlmdiff_build_info metric report.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

build: deps
	$(GO) build -ldflags "-X github.com/vlmdiff/edge/internal/buildinfo.version=$(VERSION)" -o $(BIN) ./agent/cmd/vlmdiff

demo: build
	./$(BIN) run --config configs/demo.yaml

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

test: deps vet build test-py test-go

# -timeout is each package's watchdog: trainer/run's end-to-end trainings take about 22 minutes on 2 idle cores,
# and with another training beside them they ran past 40 (session 28), so 60.
test-go:
	$(GO) test -count=1 -timeout 60m ./...

test-py:
	cd trainer/python && $(PY) -m pytest -q -p no:cacheprovider

# Benchmark tables (not part of the tests), issue 14: the small preset, untrained (speed does not depend on the
# weights), built once into BENCH_DIR by the trainer (MobileNetV2 features from ../shared/backbones when present,
# else a random conv net); per-stage latency at batch 1 and 4 over 5 interleaved rounds (each batch line ends
# with the rounds' p50s and their median, the figure to compare) with the daemon's default memory settings
# (models.memory: shared, so the peak RSS printed is the daemon's kind), the side-by-side with the PyTorch
# reference on the same bundle and weights, the A/B of the static-shape denoisers against the dynamic one, the
# floor table, and the throughput of 2 scoring workers of 1 thread each (models.workers: 2, models.threads: 1:
# what a 2-core line PC with several cameras scores; wall ms per frame, median of the rounds).
# BENCH_FLAGS adds flags, e.g. --dynamic-only for the figures without the static-shape denoisers, or
# --denoiser-spin / --denoiser-threads 1 (docs/operations.md, "Tuning scoring speed"). An int8-feature copy made
# by `vlmdiff quantize --bundle $(BENCH_DIR)/bundle --data DATASET --out DIR` is timed with
# `bin/vlmdiff bench --bundle DIR --threads 2 --batches 1,4 --floor` (docs/operations.md, "Reduced precision").
# BENCH_RES_BLOCKS=1 benches the small preset with one ResBlock a level (build.extra.res_blocks; its own
# BENCH_DIR, out/bench-small-rb1), the lean denoiser of docs/training.md "Fewer blocks per level";
# BENCH_AE_FULL_RES=N with N autoencoder blocks at full resolution (finetune_ae.extra.full_res_blocks; BENCH_DIR
# out/bench-small-frN); unset, what a new training builds (small: 0 since session 60), and -1 LDM's layout, the
# small preset's before (out/bench-small-fr-1); docs/training.md "Fewer blocks at full resolution".
BENCH_RES_BLOCKS ?=
BENCH_AE_FULL_RES ?=
BENCH_DIR ?= out/bench-small$(if $(BENCH_RES_BLOCKS),-rb$(BENCH_RES_BLOCKS))$(if $(BENCH_AE_FULL_RES),-fr$(BENCH_AE_FULL_RES))
# The bench bundle is what the trainer's code exports, so it is built again when that code is newer than it (a
# bundle kept from before an export change measured the old graphs: session 48's feature-graph cut).
BENCH_SOURCES := $(wildcard trainer/python/vlmdiff_train/*.py trainer/python/vlmdiff_train/nets/*.py)
$(BENCH_DIR)/bundle/bundle.json: $(BENCH_SOURCES)
	PYTHONPATH=trainer/python $(PY) -m vlmdiff_train.bench_bundle --out $(BENCH_DIR) \
		$(if $(BENCH_RES_BLOCKS),--res-blocks $(BENCH_RES_BLOCKS)) \
		$(if $(BENCH_AE_FULL_RES),--ae-full-res-blocks $(BENCH_AE_FULL_RES))
bench: build $(BENCH_DIR)/bundle/bundle.json
	./$(BIN) bench --bundle $(BENCH_DIR)/bundle --threads 2 --batches 1,4 --frames 20 --floor \
		--mem-pattern=false --shared-arena --reference $(BENCH_DIR)/model.pt --rounds 5 --ab-dynamic \
		--workers 2 --worker-threads 1 $(BENCH_FLAGS)

# Two settings of the bench bundle (or the bench bundle against another: AB="--bundle DIR") timed in pairs of
# batches back to back, for a machine whose speed drifts: AB holds the scorer flags B adds, e.g.
# `make bench-ab AB="--spin"`. Prints the median paired ratio per batch size with its 95% interval
# (docs/operations.md, "Comparing two settings: --ab").
AB ?= --spin
bench-ab: build $(BENCH_DIR)/bundle/bundle.json
	./$(BIN) bench --bundle $(BENCH_DIR)/bundle --threads 2 --batches 1,4 --frames 20 \
		--mem-pattern=false --shared-arena --rounds 5 --ab "$(AB)" $(BENCH_FLAGS)

# The daemon's cost per frame outside the model (capture conversion, queue, store commit, MQTT publish,
# heatmaps) with the model replaced by a no-op scorer: 4 cameras x 30 fps for OVERHEAD_SECONDS (default 20).
# Prints CPU ms per frame and wall p50/p99 per stage; writes a CPU profile to out/overhead.cpu.pprof (its top
# functions are printed). Knobs: OVERHEAD_CAMERAS, OVERHEAD_FPS, OVERHEAD_SIZE=WxH, OVERHEAD_HEATMAP=png|jpeg|off,
# OVERHEAD_HEATMAP_MAX=px, OVERHEAD_HEATMAP_INTERVAL (mqtt.heatmap.min_interval, default 1s; 0 = every frame),
# OVERHEAD_COMMIT_INTERVAL (store.commit_interval, default 20ms), OVERHEAD_DIR (the store's filesystem).
# See docs/operations.md, "Overhead per frame".
bench-overhead: deps
	@mkdir -p out
	$(GO) test -run '^$$' -bench '^BenchmarkOverhead$$' -benchtime 1x -cpuprofile out/overhead.cpu.pprof -o out/agent.test ./agent/
	$(GO) tool pprof -top -nodecount 25 out/agent.test out/overhead.cpu.pprof 2>/dev/null | sed -n '1,35p'

# Fuzz every target for FUZZTIME each (a duration, or a count such as 100000x), one worker each. `make test`
# already runs their seed corpora (testdata/fuzz); findings are written there as new seeds.
FUZZTIME ?= 60s
FUZZ_TARGETS := imagelimit:FuzzCheck pipeline:FuzzDecodePreprocess models:FuzzManifest agent/config:FuzzParse \
	agent/mqttout:FuzzParseThresholdCommand agent/broker:FuzzCommandOf
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; echo "== $$pkg $$fn ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) -parallel 1 ./$$pkg; done

# One-hour soak (two cameras on models/demo; CSV, SVG plot and summary in SOAK_DIR). See docs/operations.md.
SOAK_DIR ?= out/soak
soak: build
	DURATION=$${DURATION:-3600} scripts/soak.sh $(SOAK_DIR)

# Daemon RSS with the small preset at batch 1 over 10 minutes (issue 14, item 3): scripts/soak.sh on BUNDLE, by
# default an untrained small bundle built once by scripts/small_bundle.sh (memory does not depend on the
# weights; needs ../shared/backbones). MEMORY=shared|lean|ort picks models.memory. Summary (RSS and anonymous
# RSS after the warm-up) in MEM_DIR/summary.txt.
MEM_DIR ?= out/memory
memory: build
	b=$${BUNDLE:-$$(scripts/small_bundle.sh)} && [ -n "$$b" ] && BUNDLE=$$b DURATION=$${DURATION:-600} FPS=$${FPS:-2} \
		WARMUP=$${WARMUP:-120} THREADS=$${THREADS:-2} scripts/soak.sh $(MEM_DIR)

# Retrain the demo bundle with the project's own trainer (about 10 minutes on 2 cores).
demo-bundle: build
	rm -rf .deps/demo-data .deps/demo-run
	./$(BIN) synth --out .deps/demo-data --seed 7
	./$(BIN) train --config configs/train/demo.yaml --run-dir .deps/demo-run
	find models/demo -maxdepth 1 -type f ! -name README.md -delete
	cp .deps/demo-run/bundle/* models/demo/
	./$(BIN) bundle verify models/demo

clean:
	rm -rf bin
