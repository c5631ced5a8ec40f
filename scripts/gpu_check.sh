#!/usr/bin/env bash
# The trainer's GPU checks, for a machine with a CUDA GPU and a CUDA PyTorch (python3 on the PATH, or PY), in
# under 10 minutes on one H200 (session 14's first run there, docs/training.md "GPU check"):
#   1. vlmdiff_train.gpu_check --tiny on CUDA: sd15-mini, train, export, reference scoring (about 1 minute);
#   2. vlmdiff_train.gpu_check on CUDA: the full-width sd15 networks (about 4 minutes, 32 GiB of GPU memory);
#   3. the trainer's pytest suite under that PyTorch (CPU tests; about 1 minute on 16 cores with pytest-xdist).
# Each step has its own time limit and log, and a failing step does not stop the next.
#
#   scripts/gpu_check.sh [OUT_DIR]          (default out/gpu-check; $OUT when set, as on the device tool)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-out/gpu-check}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PY:-python3}
export PYTHONUNBUFFERED=1
cd trainer/python
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  echo "cores $(nproc)"
  "$py" - <<'PY' 2>&1
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "numpy", "onnx", "onnxruntime", "scipy"):
    try:
        m = importlib.import_module(name)
        print(name, m.__version__, *(("cuda", m.version.cuda, "gpu", m.cuda.is_available()) if name == "torch" else ()))
    except ImportError as e:
        print(name, "missing:", e)
PY
} > "$out/env.txt"
step() { # name, limit in seconds, command...
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  echo "$name: rc=$rc in $(( $(date +%s) - t0 )) s (log $out/$name.log)" | tee -a "$out/env.txt"
}
tmp=$(mktemp -d)
step tiny 120 "$py" -m vlmdiff_train.gpu_check --out "$tmp/tiny" --device cuda --tiny --frames 32
cp "$tmp/tiny/gpu_check.json" "$out/tiny.json" 2>/dev/null
step sd15 420 "$py" -m vlmdiff_train.gpu_check --out "$tmp/sd15" --device cuda --frames 64
cp "$tmp/sd15/gpu_check.json" "$out/sd15.json" 2>/dev/null
xdist=()
"$py" -c "import xdist" 2>/dev/null && xdist=(-n "$(nproc)")
step pytest 300 "$py" -m pytest -q -p no:cacheprovider "${xdist[@]}" --maxfail=20
rm -rf "$tmp"
tail -n 2 "$out/tiny.log" "$out/sd15.log" "$out/pytest.log"
