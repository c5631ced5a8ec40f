#!/usr/bin/env bash
# Soak test: the daemon with two cameras on the demo bundle for a fixed time, sampling its RSS, goroutines,
# open files and store size every INTERVAL seconds into a CSV, then an SVG plot and a summary line.
#
#   scripts/soak.sh [OUT_DIR]            (default out/soak-<UTC time>)
#   DURATION=3600 INTERVAL=15 FPS=1 BIN=bin/vlmdiff scripts/soak.sh /work/soak/run1
#   BUNDLE=runs/small/bundle DURATION=600 FPS=2 scripts/soak.sh out/mem    (the memory check, docs/operations.md)
#
# Cameras: "syn" (synthetic, FPS frames/s) and "drop" (a watched folder that a feeder writes one PNG into
# every 1/FPS s, cycling through 10 file names, so name reuse is exercised all hour). Both are scored by
# BUNDLE (default models/demo; THREADS ONNX Runtime threads, default 1; MEMORY models.memory, default shared)
# through the embedded broker. Outputs in OUT_DIR: soak.csv, soak.svg, summary.txt, daemon.log.
# The plot can be redrawn from a partial CSV at any time: python3 scripts/soak_plot.py OUT_DIR/soak.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${1:-out/soak-$(date -u +%Y%m%dT%H%M%SZ)}
DURATION=${DURATION:-3600}
INTERVAL=${INTERVAL:-15}
FPS=${FPS:-1}
BIN=${BIN:-bin/vlmdiff}
BUNDLE=${BUNDLE:-models/demo}
THREADS=${THREADS:-1}
MEMORY=${MEMORY:-shared}
WARMUP=${WARMUP:-300}
# The history is bounded by size so that the hour reaches the steady state a long-running daemon converges to:
# with the 1GiB default an hour only fills the store, and its memory map (file-backed RSS) grows with it.
STORE_MAX=${STORE_MAX:-1MiB}
PY=${PY:-/usr/bin/python3}
export ONNXRUNTIME_LIB=${ONNXRUNTIME_LIB:-$ROOT/.deps/lib/libonnxruntime.so}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[ -x "$BIN" ] || go build -o "$BIN" ./agent/cmd/vlmdiff
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

# Feeder images: the project's own synthetic generator (no downloads).
if [ ! -d "$OUT/images" ]; then
  "$BIN" synth --out "$OUT/synth" --train 10 --test 0 --width 256 --height 256 --seed 11 >/dev/null
  mkdir -p "$OUT/images"
  find "$OUT/synth" -name '*.png' | sort | head -10 | while read -r f; do cp "$f" "$OUT/images/"; done
fi
mkdir -p "$OUT/drop" "$OUT/data"
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HTTP=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$OUT/agent.yaml" <<YAML
agent: {name: soak, data_dir: $OUT/data, log_level: info}
models: {bundle: $(cd "$BUNDLE" && pwd), threads: $THREADS, memory: $MEMORY}
cameras:
  - {name: syn, kind: synthetic, fps: $FPS, synthetic: {seed: 7, defect_rate: 0.15}}
  - {name: drop, kind: folder, path: $OUT/drop, folder: {after: delete}}
mqtt: {listen: 127.0.0.1:$PORT, prefix: soak, stats_interval: 10s}
http: {listen: 127.0.0.1:$HTTP}
store: {retention: {max_size: $STORE_MAX}}
YAML
"$BIN" run --config "$OUT/agent.yaml" --check-config

"$BIN" run --config "$OUT/agent.yaml" >"$OUT/daemon.log" 2>&1 &
PID=$!
echo "$PID" >"$OUT/daemon.pid"
FEEDER=""
cleanup() {
  [ -n "$FEEDER" ] && kill "$FEEDER" 2>/dev/null || true
  kill -TERM "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
}
trap cleanup EXIT

# Feeder: one file per 1/FPS s into the folder camera, names part-0.png .. part-9.png over and over.
PERIOD=$($PY -c "print(1/$FPS)")
(
  i=0
  mapfile -t imgs < <(ls "$OUT/images"/*.png)
  while kill -0 "$PID" 2>/dev/null; do
    n=$((i % 10))
    cp "${imgs[$((i % ${#imgs[@]}))]}" "$OUT/drop/.part-$n.png"
    mv "$OUT/drop/.part-$n.png" "$OUT/drop/part-$n.png"
    i=$((i + 1))
    sleep "$PERIOD"
  done
) &
FEEDER=$!

# rss_kb is the whole resident set; it includes the store's memory-mapped file pages (bbolt), which grow
# with the history by design. rss_anon_kb (heap, stacks, C allocations) is what a leak would grow.
echo "t_s,rss_kb,rss_anon_kb,rss_file_kb,goroutines,open_files,store_bytes,scored" >"$OUT/soak.csv"
start=$(date +%s)
while :; do
  now=$(date +%s)
  t=$((now - start))
  kill -0 "$PID" 2>/dev/null || { echo "soak: daemon exited early (see $OUT/daemon.log)" >&2; exit 1; }
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
  anon=$(awk '/^RssAnon:/ {print $2}' "/proc/$PID/status")
  file=$(awk '/^RssFile:/ {print $2}' "/proc/$PID/status")
  fds=$(ls "/proc/$PID/fd" | wc -l)
  store=$(stat -c %s "$OUT/data/vlmdiff.db" 2>/dev/null || echo 0)
  stats=$(curl -sf --max-time 5 "http://127.0.0.1:$HTTP/api/stats" || echo "{}")
  read -r gor scored < <(printf '%s' "$stats" | $PY -c 'import json,sys
try: d=json.load(sys.stdin)
except Exception: d={}
print(d.get("goroutines",""), sum(c.get("scored",0) for c in d.get("cameras",[])))' 2>/dev/null || echo "- -")
  echo "$t,$rss,$anon,$file,$gor,$fds,$store,$scored" >>"$OUT/soak.csv"
  [ "$t" -ge "$DURATION" ] && break
  sleep "$INTERVAL"
done
cleanup
trap - EXIT
$PY "$ROOT/scripts/soak_plot.py" "$OUT/soak.csv" --warmup "$WARMUP" | tee "$OUT/summary.txt"
