"""Ingest throughput on the Postgres store with 0, 1 and 2 embedding workers besides the ingest
(``embedding.workers``): the whole ingest of the 18F handbook (or the sample wiki with --quick),
MiniLM, a cold embedding cache and a fresh database each time.

    .venv/bin/python bench/bench_embed_workers.py [--quick] [--workers 0,1,2]

The ingest's own MiniLM is loaded before the first run (a running `kb schedule` has it);
each worker is a process that loads its own MiniLM (one thread each, like the ingest; its load
time counts): on a machine
with C free cores the gain stops at C processes. Reported: chunks, wall seconds, chunks/s, and
the ratio to 0 workers in the same run. Postgres is ``pgserver`` on this machine.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common  # noqa: F401  (threads, sys.path)

from common import REPO, SHARED, pyplot, save_figure, timer, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 21-page sample wiki instead of the handbook")
    ap.add_argument("--workers", default="0,1,2")
    args = ap.parse_args()
    import pgserver

    from kb_chatbot.core.settings import Settings, SourceConfig
    from kb_chatbot.ingest.sync import sync_sources

    wiki = REPO / "data" / "sample" / "wiki" if args.quick else SHARED / "corpus" / "wiki-18f-handbook"
    counts = [int(w) for w in args.workers.split(",")]
    from kb_chatbot.index.embedder import load_embedder

    load_embedder(Settings().embedding).embed_documents(["warm up"])  # every run finds the ingest's model loaded
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        srv = pgserver.get_server(str(Path(tmp) / "pg"), cleanup_mode="stop")
        try:
            for n in counts:
                db = f"w{n}"
                srv.psql(f"CREATE DATABASE {db};")
                url = srv.get_uri().replace("/postgres?", f"/{db}?")
                settings = Settings(data_dir=Path(tmp) / db, store={"backend": "postgres", "url": url},
                                    index={"kind": "hnsw"}, embedding={"workers": n})
                with timer() as t:
                    report = sync_sources(settings, [SourceConfig(name="wiki", type="wiki", path=wiki)])
                chunks = report.chunks_embedded
                rows.append({"workers": n, "chunks": chunks, "seconds": round(t["s"], 1),
                             "chunks_per_s": round(chunks / t["s"], 2)})
                print(rows[-1])
        finally:
            srv.cleanup()
    base = rows[0]["chunks_per_s"]
    for r in rows:
        r["ratio_to_first"] = round(r["chunks_per_s"] / base, 2)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([str(r["workers"]) for r in rows], [r["chunks_per_s"] for r in rows])
    ax.set_xlabel("embedding workers besides the ingest")
    ax.set_ylabel("chunks per second (whole ingest)")
    ax.set_title(f"{'sample wiki' if args.quick else '18F handbook'}: {rows[0]['chunks']} chunks, MiniLM, Postgres")
    save_figure(fig, write_results("bench_embed_workers", {"corpus": str(wiki.name), "runs": rows}))


if __name__ == "__main__":
    main()
