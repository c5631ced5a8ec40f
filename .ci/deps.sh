#!/usr/bin/env bash
# Installs what building, running and testing vlmdiff edge needs on Debian 12, skipping whatever is present, so
# a warm machine pays seconds. Called by `make deps` (and so by `make demo` and `make test`).
#   - apt: OpenCV 4.6 (gocv), PyTorch 1.13 + ONNX + SciPy + OpenBLAS (trainer, parity tests), mosquitto (MQTT tests),
#     ffmpeg (test videos), chromium (dashboard browser test)
#   - ONNX Runtime 1.30.0 (CPU) from the npm registry's onnxruntime-node package into .deps/lib (fetched again when
#     .deps/lib/onnxruntime.version names another version)
#   - ONNX Runtime's Python package with its quantiser (onnx, sympy) from PyPI into the venv .deps/py
#     (`vlmdiff quantize` and its tests; Debian packages none of them)
#   - playwright-core from npm into .deps/node (drives chromium in the dashboard test)
#   - opt-in, VLMDIFF_TORCH=pypi (`make deps-torch`): PyTorch 2.15 from PyPI into the venv .deps/torch (below)
# Set VLMDIFF_DEPS=minimal to skip the training/test-only packages (a line machine that only runs the daemon).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ORT_VERSION=${ORT_VERSION:-1.30.0}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

apt_pkgs=(pkg-config libopencv-dev)
if [ "${VLMDIFF_DEPS:-full}" != minimal ]; then
  # python3-regex: the CLIP tokenizer uses its exact pattern (the re fallback approximates \p{L}/\p{N}).
  apt_pkgs+=(python3-torch python3-onnx python3-numpy python3-scipy python3-pil python3-pytest python3-regex python3-venv libopenblas0-pthread
             mosquitto mosquitto-clients ffmpeg chromium npm)
fi
command -v npm >/dev/null 2>&1 || apt_pkgs+=(npm)
missing=()
for p in "${apt_pkgs[@]}"; do
  if [ "$p" = npm ] && command -v npm >/dev/null 2>&1; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing apt packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

lib="$ROOT/.deps/lib/libonnxruntime.so"
stamp="$ROOT/.deps/lib/onnxruntime.version"
if [ ! -s "$lib" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$ORT_VERSION" ]; then
  echo "deps: fetching ONNX Runtime $ORT_VERSION (CPU) from the npm registry"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "onnxruntime-node@$ORT_VERSION" >/dev/null)
  tar -xzf "$tmp"/onnxruntime-node-*.tgz -C "$tmp" package/bin/napi-v6/linux/x64/
  mkdir -p "$ROOT/.deps/lib"
  cp "$tmp"/package/bin/napi-v6/linux/x64/libonnxruntime.so.1 "$lib.tmp"
  mv "$lib.tmp" "$lib"
  echo "$ORT_VERSION" > "$stamp"
  rm -rf "$tmp"
fi

# The quantiser's Python packages, pinned; the venv is rebuilt when the pins change (its .requirements file).
py_reqs="onnxruntime==$ORT_VERSION onnx==1.23.2 sympy==1.14.0 numpy==2.4.6"
if [ "${VLMDIFF_DEPS:-full}" != minimal ] && [ "$(cat "$ROOT/.deps/py/.requirements" 2>/dev/null)" != "$py_reqs" ]; then
  echo "deps: installing $py_reqs into .deps/py (PyPI)"
  rm -rf "$ROOT/.deps/py"
  /usr/bin/python3 -m venv "$ROOT/.deps/py"
  # shellcheck disable=SC2086
  "$ROOT/.deps/py/bin/pip" install -q --disable-pip-version-check $py_reqs
  echo "$py_reqs" > "$ROOT/.deps/py/.requirements"
fi

# Opt-in (VLMDIFF_TORCH=pypi, `make deps-torch`): PyTorch from PyPI with the trainer's other modules, pinned, in
# the venv .deps/torch, for `vlmdiff train --python .deps/torch/bin/python` and VLMDIFF_TEST_PYTHON. PyPI's Linux
# wheel is the CUDA build, so the venv holds CUDA's libraries too (about 5.6 GB): it trains on a GPU (`device:
# cuda`) and on the CPU, where its denoiser stage ran 1.6-1.9x faster than Debian's 1.13 (docs/training.md, "Which
# PyTorch"). Rebuilt when the pins change.
torch_reqs="torch==2.15.0 numpy==2.4.6 scipy==1.17.1 pillow==13.0.0 onnx==1.23.2 regex==2026.11.19 pytest==9.2.0"
if [ "${VLMDIFF_TORCH:-}" = pypi ] && [ "$(cat "$ROOT/.deps/torch/.requirements" 2>/dev/null)" != "$torch_reqs" ]; then
  echo "deps: installing $torch_reqs into .deps/torch (PyPI, about 5.6 GB with CUDA's libraries)"
  rm -rf "$ROOT/.deps/torch"
  /usr/bin/python3 -m venv "$ROOT/.deps/torch"
  # shellcheck disable=SC2086
  "$ROOT/.deps/torch/bin/pip" install -q --disable-pip-version-check $torch_reqs
  "$ROOT/.deps/torch/bin/python" -c "import torch, onnx, scipy, PIL, regex; print('deps: torch', torch.__version__, 'in .deps/torch')"
  echo "$torch_reqs" > "$ROOT/.deps/torch/.requirements"
fi

if [ "${VLMDIFF_DEPS:-full}" != minimal ] && [ ! -d "$ROOT/.deps/node/node_modules/playwright-core" ]; then
  echo "deps: installing playwright-core (drives Debian's chromium in the dashboard test)"
  mkdir -p "$ROOT/.deps/node"
  (cd "$ROOT/.deps/node" && npm install --silent --no-audit --no-fund playwright-core@1 >/dev/null)
fi
echo "deps: ok (ONNX Runtime $ORT_VERSION: $lib)"
