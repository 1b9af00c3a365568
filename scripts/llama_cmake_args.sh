#!/usr/bin/env bash
# Prints the CMAKE_ARGS for building llama-cpp-python on a CPU with the given /proc/cpuinfo
# flags (argument 1; default: this machine's). Every GGML instruction-set option follows the
# CPU's own flag; AMX stays off (it segfaults at the first token on the Intel hosts), and
# GGML_NATIVE is off so the compiler never adds what the flags do not list.
# Tested on recorded flag sets in tests/test_setup_flags.py.
set -euo pipefail
flags=" ${1:-$(grep -m1 -E '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2)} "
opt() {  # opt GGML_OPTION cpuinfo_flag
  case "$flags" in *" $2 "*) printf -- "-D%s=ON " "$1" ;; *) printf -- "-D%s=OFF " "$1" ;; esac
}
printf -- "-DGGML_NATIVE=OFF "
opt GGML_AVX avx; opt GGML_AVX2 avx2; opt GGML_FMA fma; opt GGML_F16C f16c
opt GGML_AVX512 avx512f; opt GGML_AVX512_VBMI avx512_vbmi; opt GGML_AVX512_VNNI avx512_vnni
opt GGML_AVX512_BF16 avx512_bf16; opt GGML_AVX_VNNI avx_vnni
printf -- "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF\n"
