"""scripts/llama_cmake_args.sh on recorded /proc/cpuinfo flag sets: the llama.cpp build uses
exactly what the CPU has (AVX-VNNI on AMD EPYC killed the test run with "Illegal instruction"),
and never AMX (it segfaults at the first token on the Intel hosts)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "llama_cmake_args.sh"

#: Flag sets recorded from real machines (trimmed to the instruction-set flags that matter).
INTEL_AMX = ("fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vbmi "
             "avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8")
AMD_ZEN4 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vbmi avx512_vnni avx512_bf16"
AVX2_ONLY = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c"


def args(flags: str) -> dict[str, str]:
    out = subprocess.run(["bash", str(SCRIPT), flags], capture_output=True, text=True, check=True).stdout.split()
    return dict(a[2:].split("=", 1) for a in out)


@pytest.mark.parametrize("flags,on,off", [
    (INTEL_AMX, {"GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX_VNNI", "GGML_AVX2"}, set()),
    (AMD_ZEN4, {"GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX512_BF16"}, {"GGML_AVX_VNNI"}),
    (AVX2_ONLY, {"GGML_AVX2", "GGML_FMA", "GGML_F16C"}, {"GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX_VNNI"}),
])
def test_flags_follow_the_cpu_and_amx_stays_off(flags, on, off):
    a = args(flags)
    assert a["GGML_NATIVE"] == "OFF"
    assert all(a[k] == "ON" for k in on), a
    assert all(a[k] == "OFF" for k in off), a
    assert a["GGML_AMX_TILE"] == a["GGML_AMX_INT8"] == a["GGML_AMX_BF16"] == "OFF"


def test_different_cpus_get_different_wheel_keys():
    assert args(AMD_ZEN4) != args(INTEL_AMX) != args(AVX2_ONLY)
