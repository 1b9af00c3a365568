"""What the bench scripts share: one thread, the repo on sys.path, results files, timing helpers."""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

# One steady thread (STACK.md: 2 threads collapse when anything else uses a core). Set before
# numpy/torch/faiss are imported by the scripts.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RESULTS = REPO / "bench" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """``with timer() as t: ...`` then ``t["s"]`` holds the wall seconds."""
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - t0


def rss_mib() -> float:
    """Current resident memory of this process in MiB (Linux /proc; peak as a fallback)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_kind() -> str:
    """Which of the CPU kinds a speed figure comes from: AMX, AVX-512 (VNNI/BF16) or AVX2 only."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    if "amx_tile" in flags:
        simd = "AMX + AVX-512"
    elif "avx512f" in flags:
        simd = "AVX-512" + "".join(f" {f}" for f in ("avx512_vnni", "avx512_bf16") if f in flags)
    elif "avx2" in flags:
        simd = "AVX2 only"
    else:
        simd = "no AVX2"
    return f"{model}, {simd}"


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {
        "cpu": cpu_kind(),
        "cpu_count": os.cpu_count(),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "1")),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1m_at_start": load[0],
    }


def write_results(name: str, data: dict[str, Any], out_dir: Path | None = None) -> Path:
    """``bench/results/<name>.json`` with the machine facts and a UTC timestamp added."""
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"bench": name, "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), **data}
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, results_json: Path) -> Path:
    """Lay out ``fig`` and write it beside its results file (same name, .png); says where."""
    fig.tight_layout()
    png = results_json.with_suffix(".png")
    fig.savefig(png, dpi=100)
    print(f"wrote {results_json} and {png}", file=sys.stderr)
    return png


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"
