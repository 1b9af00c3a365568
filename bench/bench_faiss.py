"""FAISS at 100k and 1M 384-dim vectors: flat vs HNSW vs IVF, through the project's FaissIndex.

    .venv/bin/python bench/bench_faiss.py            # 100k and 1M (HNSW at 100k only)
    .venv/bin/python bench/bench_faiss.py --hnsw-max 1000000   # + HNSW at 1M (3 min quiet, 15 busy)
    .venv/bin/python bench/bench_faiss.py --quick    # 100k only
    .venv/bin/python bench/bench_faiss.py --real     # + recall on real MiniLM embeddings of the
                                                     #   18F handbook (chunked and embedded first)

Vectors are clustered, not uniform: uniform random 384-dim vectors have no near neighbours
(every point is about equally far from every other), which makes any approximate index look
broken. Here each vector is one of 1,024 cluster centres plus a point of that cluster's own
16-dimensional subspace plus a little isotropic noise, L2-normalised: low intrinsic dimension,
like real sentence embeddings. Queries are fresh draws from the same mixture.

Per size and kind: build time (what ingest pays: ``add`` then ``settle``, which trains IVF),
p50/p99 latency of single-query ``search`` (the path a question takes, k=5, no ACL filter),
recall@5 against exact search, and bytes per vector (the saved index file / n: vectors, ids,
graph or lists; the in-memory size is within a few percent of it). The index settings are the project's
defaults (``IndexConfig``: HNSW M=32, efSearch=64; IVF nlist=1024, nprobe=16).
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (threads, sys.path)
import numpy as np

from common import RESULTS, fmt_s, pyplot, timer, write_results

DIM = 384
CLUSTERS = 1024
SUBSPACE = 16
K = 5


def mixture(n: int, seed: int, *, rng_model: int = 7) -> np.ndarray:
    """``n`` L2-normalised vectors from a fixed gaussian mixture of low-rank clusters."""
    model = np.random.default_rng(rng_model)
    centres = model.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    bases = (model.standard_normal((CLUSTERS, SUBSPACE, DIM)) * 0.35).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLUSTERS, n)
    out = 0.05 * rng.standard_normal((n, DIM), dtype=np.float32)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(CLUSTERS + 1))
    for c in range(CLUSTERS):
        rows = order[bounds[c]:bounds[c + 1]]
        if len(rows):
            z = rng.standard_normal((len(rows), SUBSPACE), dtype=np.float32)
            out[rows] += centres[c] + z @ bases[c]
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Exact inner-product top-k ids by blocked matrix products (ground truth for recall)."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for lo in range(0, len(base), 200_000):
        s = queries @ base[lo:lo + 200_000].T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, axis=1)
        cs = np.concatenate([best_s, ps], axis=1)
        ci = np.concatenate([best_i, part + lo], axis=1)
        top = np.argsort(-cs, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cs, top, axis=1), np.take_along_axis(ci, top, axis=1)
    return best_i


def bench_kind(kind: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    from kb_chatbot.core.settings import IndexConfig
    from kb_chatbot.index.vectors import FaissIndex

    cfg = IndexConfig(kind=kind)
    ids = np.arange(len(base), dtype=np.int64)
    gc.collect()
    with timer() as t:
        fi = FaissIndex(DIM, cfg)
        fi.add(ids, base)
        fi.settle()  # IVF: train and rebuild, as ingest's publish does
    lat = []
    found = []
    for q in queries:
        t0 = time.perf_counter()
        _, got = fi.search(q, K)
        lat.append(time.perf_counter() - t0)
        found.append(got)
    recall = float(np.mean([len(set(g.tolist()) & set(tr.tolist())) / K for g, tr in zip(found, truth)]))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "vectors.faiss"
        fi.save(path)
        file_bytes = path.stat().st_size
    res = {
        "kind": kind,
        "structure": fi.structure,
        "n": len(base),
        "build_s": t["s"],
        "search_p50_s": float(np.percentile(lat, 50)),
        "search_p99_s": float(np.percentile(lat, 99)),
        "recall_at_5": recall,
        "bytes_per_vector_file": file_bytes / len(base),
        "raw_vector_bytes": DIM * 4,
    }
    del fi
    gc.collect()
    return res


def real_embeddings() -> tuple[np.ndarray, np.ndarray]:
    """MiniLM vectors of the 18F handbook's chunks, as ingest stores them (base), and of the
    pages' titles (queries: short questions-like texts that are not in the index)."""
    from bench_ingest import bench_settings, ingest, load_warm_embedder
    from kb_chatbot.index.generation import open_index
    from kb_chatbot.ingest.connectors import make_connector

    with tempfile.TemporaryDirectory(prefix="kb-bench-faiss-") as tmp:
        settings = bench_settings(Path(tmp) / "data", common.SHARED / "corpus" / "wiki-18f-handbook", "wiki")
        embedder = load_warm_embedder(settings)
        print("real: ingesting the 18F handbook (MiniLM) …", flush=True)
        ingest(settings, embedder)
        _, base = open_index(settings).vectors.vectors()
        titles = sorted({d.title for d in make_connector(settings.sources[0]).documents() if d.title.strip()})
        return base, embedder.embed_documents(titles)


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    sizes = sorted({r["n"] for r in rows})
    kinds = ["flat", "hnsw", "ivf"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    width = 0.8 / len(kinds)
    for j, kind in enumerate(kinds):
        sel = [next((r for r in rows if r["n"] == n and r["kind"] == kind), None) for n in sizes]
        xs = [i + (j - 1) * width for i in range(len(sizes))]
        axes[0].bar(xs, [r["build_s"] if r else 0 for r in sel], width, label=kind)
        axes[1].bar(xs, [r["search_p50_s"] * 1e3 if r else 0 for r in sel], width, label=f"{kind} p50")
        axes[1].scatter(xs, [r["search_p99_s"] * 1e3 if r else 0 for r in sel], marker="_", s=200, color="black")
        axes[2].bar(xs, [r["recall_at_5"] if r else 0 for r in sel], width, label=kind)
    labels = [f"{n // 1000}k" if n < 1_000_000 else f"{n / 1e6:g}M" for n in sizes]
    for ax, title, ylabel in zip(axes, ["build", "single-query search (bar p50, tick p99)", "recall@5 vs exact"],
                                 ["seconds", "milliseconds", "recall@5"]):
        ax.set_xticks(range(len(sizes)), labels)
        ax.set(title=title, ylabel=ylabel, xlabel="vectors (384-dim)")
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    axes[2].set_ylim(0, 1.05)
    fig.suptitle("FAISS through index/vectors.py, 1 thread")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k vectors only")
    ap.add_argument("--sizes", type=int, nargs="*", help="vector counts (default 100000 1000000)")
    ap.add_argument("--kinds", nargs="*", default=["flat", "hnsw", "ivf"], choices=["flat", "hnsw", "ivf"])
    ap.add_argument("--queries", type=int, default=200, help="single queries timed per index")
    ap.add_argument("--hnsw-max", type=int, default=200_000,
                    help="skip HNSW above this many vectors (1M: 3 min to build on a quiet thread, "
                         "15+ on a busy one); "
                         "pass 1000000 to include it")
    ap.add_argument("--real", action="store_true", help="also measure recall on real handbook embeddings")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    sizes = args.sizes or ([100_000] if args.quick else [100_000, 1_000_000])

    rows: list[dict] = []
    queries = mixture(args.queries, seed=999)
    for n in sizes:
        with timer() as t:
            base = mixture(n, seed=n)
        with timer() as te:
            truth = exact_top_k(base, queries)
        print(f"\n{n:,} vectors generated in {t['s']:.1f} s (exact top-{K} in {te['s']:.1f} s)", flush=True)
        for kind in args.kinds:
            if kind == "hnsw" and n > args.hnsw_max:
                print(f"  hnsw  skipped: {n:,} > --hnsw-max {args.hnsw_max:,} (build time grows ~n log n: "
                      f"14-114 s at 100k here)", flush=True)
                continue
            r = bench_kind(kind, base, queries, truth)
            rows.append(r)
            print(f"  {kind:5s} build {r['build_s']:7.1f} s  search p50 {fmt_s(r['search_p50_s']):>9s} "
                  f"p99 {fmt_s(r['search_p99_s']):>9s}  recall@5 {r['recall_at_5']:.3f}  "
                  f"{r['bytes_per_vector_file']:.0f} B/vector", flush=True)
        del base
        gc.collect()

    real = None
    if args.real:
        base, queries_real = real_embeddings()
        truth = exact_top_k(base, queries_real)
        real = []
        for kind in ("hnsw", "ivf"):
            from kb_chatbot.core.settings import IndexConfig
            from kb_chatbot.index.vectors import FaissIndex

            # a few thousand chunks: IVF is built anyway (ingest keeps it flat below 4,096 vectors)
            fi = FaissIndex(DIM, IndexConfig(kind=kind), ivf_min_vectors=min(4096, len(base)))
            fi.add(np.arange(len(base)), base)
            fi.settle()
            got = [fi.search(q, K)[1] for q in queries_real]
            rec = float(np.mean([len(set(g.tolist()) & set(tr.tolist())) / K for g, tr in zip(got, truth)]))
            real.append({"kind": kind, "structure": fi.structure, "n": len(base), "queries": len(queries_real),
                         "recall_at_5": rec})
            print(f"  real handbook embeddings: {kind} ({fi.structure}) recall@5 {rec:.3f} "
                  f"over {len(base)} chunks, {len(queries_real)} title queries", flush=True)

    print("\nratios measured in this run:")
    for n in sizes:
        by = {r["kind"]: r for r in rows if r["n"] == n}
        if "flat" in by:
            for kind in ("hnsw", "ivf"):
                if kind in by:
                    print(f"  {n:,}: {kind} search p50 is {by['flat']['search_p50_s'] / by[kind]['search_p50_s']:.1f}x "
                          f"faster than flat, build {by[kind]['build_s'] / max(by['flat']['build_s'], 1e-9):.0f}x slower, "
                          f"recall@5 {by[kind]['recall_at_5']:.3f}")
    if len(sizes) > 1 and all(any(r["n"] == n and r["kind"] == "flat" for r in rows) for n in sizes[:2]):
        a, b = (next(r for r in rows if r["n"] == n and r["kind"] == "flat") for n in sizes[:2])
        print(f"  flat search grows {b['search_p50_s'] / a['search_p50_s']:.1f}x from {sizes[0]:,} to {sizes[1]:,} vectors")

    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "bench_faiss.png"
    plot(rows, png)
    path = write_results("bench_faiss", {"dim": DIM, "clusters": CLUSTERS, "subspace": SUBSPACE, "k": K,
                                          "queries": args.queries, "rows": rows, "real": real}, args.out)
    print(f"\nwrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
