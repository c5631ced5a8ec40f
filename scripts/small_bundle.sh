#!/usr/bin/env bash
# An untrained small-preset bundle for memory and speed checks (neither depends on the weights): the project's
# synthetic frames, configs/train/small.yaml with one optimiser step per training stage, one thread, MobileNetV2
# features from VLMDIFF_BACKBONES (default ../shared/backbones). Prints the bundle directory on stdout; the
# trainer's log goes to RUN_DIR/train.log. A bundle already built in RUN_DIR is reused.
#
#   scripts/small_bundle.sh [RUN_DIR]            (default out/small-run)
#   scripts/small_bundle.sh --config RUN_DIR     only writes RUN_DIR/train.yaml, the config it trains with (the test
#                                                 trainer/run TestSmallBundleConfig loads it, so that a change to
#                                                 configs/train/small.yaml that this script's edits no longer fit
#                                                 fails `make test`, not `make memory` on the day it is needed)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG_ONLY=0
if [ "${1:-}" = --config ]; then
  CONFIG_ONLY=1
  shift
  [ -n "${1:-}" ] || { echo "small_bundle: --config needs RUN_DIR" >&2; exit 2; }
fi
RUN=${1:-out/small-run}
BIN=${BIN:-bin/vlmdiff}
export VLMDIFF_BACKBONES=${VLMDIFF_BACKBONES:-$(cd .. && pwd)/shared/backbones}
export ONNXRUNTIME_LIB=${ONNXRUNTIME_LIB:-$PWD/.deps/lib/libonnxruntime.so}
if [ "$CONFIG_ONLY" = 0 ] && [ -f "$RUN/bundle/bundle.json" ]; then
  echo "$(cd "$RUN/bundle" && pwd)"
  exit 0
fi
[ "$CONFIG_ONLY" = 1 ] || [ -f "$VLMDIFF_BACKBONES/mobilenetv2_fp32_features.onnx" ] ||
  { echo "small_bundle: no $VLMDIFF_BACKBONES/mobilenetv2_fp32_features.onnx (set VLMDIFF_BACKBONES)" >&2; exit 1; }
mkdir -p "$RUN"
# One step per stage, one thread, batches of 2, no choice of the start-noise count, the layer weights, the
# mean-frame term (its factors and its smoothings), the nearest-normal term (its factors, smoothings and counts)
# or the start step (an untrained model would choose at random: the bundle takes export.extra.ensemble,
# export.feature_layers, no mean-frame term, the nearest-normal term at calibrate.knn_factor 4 with the preset's
# bank, and the paper's start step, whose ten DDIM steps are what speed and memory checks must measure);
# everything else is the small preset as committed.
sed -e 's/^threads: .*/threads: 1/' -e 's/max_steps: [0-9]*/max_steps: 1/' -e 's/epochs: [0-9]*/max_steps: 1/' \
  -e 's/batch_size: [0-9]*/batch_size: 2/' -e 's/^  save_every: [0-9]*/  save_every: 1/' -e '/^  ensembles:/d' \
  -e '/^  layer_weights:/d' -e '/^  pixel_factors:/d' -e '/^  pixel_sigmas:/d' -e '/^  start_steps:/d' \
  -e '/^  knn_factors:/d' -e '/^  knn_sigmas:/d' -e '/^  knn_ks:/d' \
  -e 's/^\(  pixel_quantile: .*\)$/\1\n  knn_factor: 4/' \
  configs/train/small.yaml >"$RUN/train.yaml"
[ "$(grep -cE 'max_steps: 1( |$)' "$RUN/train.yaml")" -ge 2 ] ||
  { echo "small_bundle: configs/train/small.yaml changed shape; update the sed in $0" >&2; exit 1; }
if [ "$CONFIG_ONLY" = 1 ]; then
  echo "$RUN/train.yaml"
  exit 0
fi
[ -x "$BIN" ] || go build -o "$BIN" ./agent/cmd/vlmdiff
"$BIN" synth --out "$RUN/data" --train 8 --test 4 --width 256 --height 256 --seed 3 >&2
VLMDIFF_DATA=$PWD/$RUN/data "$BIN" train --config "$RUN/train.yaml" --run-dir "$RUN" --until calibrate >"$RUN/train.log" 2>&1 ||
  { echo "small_bundle: training failed, see $RUN/train.log" >&2; exit 1; }
echo "$(cd "$RUN/bundle" && pwd)"
