"""Re-index cost: a full ingest vs a no-op re-index vs a re-index after one page changed.

    .venv/bin/python bench/bench_reindex.py           # the 18F handbook (250 wiki pages)
    .venv/bin/python bench/bench_reindex.py --quick   # the sample wiki (21 pages)

The corpus is copied to a temporary folder (so one page can be edited) and ingested into a
fresh data folder: that is the full ingest. ``sync_sources`` on the unchanged folder is the
no-op re-index the nightly job usually does (every document is read and hashed, nothing is
chunked, embedded or published). Then one page gets a new paragraph and the re-index runs
again: one document re-chunked, only its new chunk texts embedded, a new generation published.
The embedder is loaded before the clock starts.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import common
from bench_ingest import bench_settings, ingest, load_warm_embedder
from common import RESULTS, pyplot, write_results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 21-page sample wiki instead of the handbook")
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--type", dest="source_type", default="wiki", choices=["wiki", "drive", "slack"])
    ap.add_argument("--repeat", type=int, default=3, help="no-op re-index runs (the median is reported)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    corpus = args.corpus or (common.REPO / "data/sample/wiki" if args.quick else common.SHARED / "corpus/wiki-18f-handbook")
    if not corpus.is_dir():
        ap.error(f"corpus folder not found: {corpus}")

    with tempfile.TemporaryDirectory(prefix="kb-bench-reindex-") as tmp:
        copy = Path(tmp) / "corpus"
        shutil.copytree(corpus, copy)
        settings = bench_settings(Path(tmp) / "data", copy, args.source_type)
        embedder = load_warm_embedder(settings)
        print(f"full ingest of {corpus} …", flush=True)
        full, full_s = ingest(settings, embedder)
        docs, chunks = full.documents_total, full.chunks_total
        print(f"  full ingest: {docs} documents, {chunks} chunks in {full_s:.1f} s", flush=True)
        noop = []
        for _ in range(max(1, args.repeat)):
            rep, s = ingest(settings, embedder)
            noop.append(s)
            assert rep.generation is None and rep.chunks_embedded == 0, "a no-op re-index published or embedded"
        noop_s = sorted(noop)[len(noop) // 2]
        print(f"  no-op re-index: {', '.join(f'{x:.2f}' for x in noop)} s (median {noop_s:.2f} s)", flush=True)
        pages = sorted(p for p in copy.rglob("*.md") if p.is_file())
        if not pages:
            pages = sorted(p for p in copy.rglob("*") if p.is_file() and p.suffix in {".txt", ".html"})
        target = pages[len(pages) // 2]
        with target.open("a", encoding="utf-8") as fh:
            fh.write("\n\nBenchmark note: this paragraph was added to measure an incremental re-index.\n")
        one, one_s = ingest(settings, embedder)
        src = one.sources[0]
        print(f"  one page changed ({target.relative_to(copy)}): {one_s:.2f} s, updated {src.updated}, "
              f"{one.chunks_embedded} chunks embedded, generation published: {one.generation is not None}", flush=True)

    res = {
        "corpus": str(corpus),
        "documents": docs,
        "chunks": chunks,
        "full_ingest_s": full_s,
        "noop_reindex_s": noop_s,
        "noop_runs_s": noop,
        "one_changed_s": one_s,
        "one_changed_chunks_embedded": one.chunks_embedded,
        "full_over_noop": full_s / noop_s if noop_s else None,
        "noop_share_of_full": noop_s / full_s if full_s else None,
        "full_over_one_changed": full_s / one_s if one_s else None,
    }
    print("\nratios measured in this run:")
    print(f"  a no-op re-index takes {100 * res['noop_share_of_full']:.1f}% of a full ingest "
          f"({res['full_over_noop']:.0f}x faster); one changed page: {res['full_over_one_changed']:.0f}x faster than full")

    args.out.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    labels = ["full ingest", "one page changed", "no-op re-index"]
    vals = [full_s, one_s, noop_s]
    ax.barh(labels, vals, color=["tab:orange", "tab:green", "tab:blue"])
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.2f} s", va="center", fontsize=9)
    ax.set_xscale("log")
    ax.set(xlabel="seconds (log)", title=f"Re-index of {docs} docs / {chunks} chunks: no-op = "
                                         f"{100 * res['noop_share_of_full']:.1f}% of full")
    fig.tight_layout()
    png = args.out / "bench_reindex.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    path = write_results("bench_reindex", res, args.out)
    print(f"\nwrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
