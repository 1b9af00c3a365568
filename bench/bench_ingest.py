"""Ingest throughput of the whole pipeline vs the embedder alone, on the same chunk texts.

    .venv/bin/python bench/bench_ingest.py           # the 18F handbook (250 wiki pages)
    .venv/bin/python bench/bench_ingest.py --quick   # the sample wiki (21 pages)
    .venv/bin/python bench/bench_ingest.py --corpus DIR --type drive

The pipeline run is a real ``sync_sources`` into a fresh data folder (empty embedding cache):
read and parse, chunk with the embedder's tokenizer, embed (MiniLM, bf16, 1 thread), write
SQLite + FTS5 + FAISS, publish the generation. The embedder is loaded (and warmed up) before
the clock starts, for both runs. Then the chunk texts that were indexed are encoded again
with the embedder alone, in the pipeline's batch size: the ratio of the two times is what
the pipeline costs on top of the model.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import common
from common import RESULTS, pyplot, timer, write_results


def bench_settings(data_dir: Path, corpus: Path, source_type: str, name: str = "bench"):
    """Settings with one source and a throw-away data folder (the repo's kb.yaml is not read)."""
    from kb_chatbot.core.settings import Settings, SourceConfig

    s = Settings(data_dir=data_dir, sources=[SourceConfig(name=name, type=source_type, path=corpus.resolve())])
    s.config_dir = common.REPO
    return s


def load_warm_embedder(settings):
    from kb_chatbot.index.embedder import load_embedder

    emb = load_embedder(settings.embedding)
    emb.embed_documents(["warm up the model and its tokenizer"])
    return emb


def ingest(settings, embedder) -> tuple[object, float]:
    from kb_chatbot.ingest.sync import sync_sources

    with timer() as t:
        report = sync_sources(settings, settings.sources, embedder=embedder)
    return report, t["s"]


def chunk_texts(settings) -> list[str]:
    from kb_chatbot.index.generation import open_index

    store = open_index(settings).store
    return [text for rows in store.chunk_texts() for _, text, _ in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 21-page sample wiki instead of the handbook")
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--type", dest="source_type", default="wiki", choices=["wiki", "drive", "slack"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    corpus = args.corpus or (common.REPO / "data/sample/wiki" if args.quick else common.SHARED / "corpus/wiki-18f-handbook")
    if not corpus.is_dir():
        ap.error(f"corpus folder not found: {corpus}")

    with tempfile.TemporaryDirectory(prefix="kb-bench-ingest-") as tmp:
        settings = bench_settings(Path(tmp) / "data", corpus, args.source_type)
        with timer() as tl:
            embedder = load_warm_embedder(settings)
        print(f"embedder {embedder.model_id} loaded in {tl['s']:.1f} s; ingesting {corpus} …", flush=True)
        report, pipeline_s = ingest(settings, embedder)
        src = report.sources[0]
        texts = chunk_texts(settings)
        docs, chunks = report.documents_total, report.chunks_total
        print(f"pipeline: {docs} documents, {chunks} chunks ({report.chunks_embedded} embedded) in {pipeline_s:.1f} s "
              f"(status {src.status}, {src.failed} files failed)", flush=True)
        batch = settings.embedding.batch_size
        with timer() as te:
            for i in range(0, len(texts), 64):  # the pipeline's embedding call size (kb_chatbot.ingest.sync.EMBED_BATCH)
                embedder.embed_documents(texts[i:i + 64])
        raw_s = te["s"]
    tokens = sum(len(t.split()) for t in texts)
    res = {
        "corpus": str(corpus),
        "source_type": args.source_type,
        "embedder": embedder.model_id,
        "embedding": settings.embedding.model_dump(mode="json"),
        "documents": docs,
        "chunks": chunks,
        "words": tokens,
        "pipeline_s": pipeline_s,
        "raw_encode_s": raw_s,
        "pipeline_docs_per_s": docs / pipeline_s,
        "pipeline_chunks_per_s": chunks / pipeline_s,
        "raw_chunks_per_s": len(texts) / raw_s if raw_s else None,
        "overhead_ratio": pipeline_s / raw_s if raw_s else None,
        "non_embedding_s": pipeline_s - raw_s,
        "embedder_batch_size": batch,
        "failed_files": src.failed,
    }
    print("\nfigures:")
    print(f"  pipeline  {res['pipeline_docs_per_s']:.2f} docs/s, {res['pipeline_chunks_per_s']:.2f} chunks/s")
    print(f"  embedder  {res['raw_chunks_per_s']:.2f} chunks/s on the same {len(texts)} chunk texts")
    print(f"ratio: the pipeline takes {res['overhead_ratio']:.2f}x the raw encode time "
          f"({res['non_embedding_s']:.1f} s of {pipeline_s:.1f} s is reading, chunking, writing and publishing)")

    args.out.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh(["embedder alone", "full pipeline"], [raw_s, pipeline_s], color=["tab:blue", "tab:orange"])
    ax.barh(["full pipeline"], [raw_s], color="tab:blue", alpha=0.4, label="of which: encode time alone")
    for y, v, rate in ((0, raw_s, res["raw_chunks_per_s"]), (1, pipeline_s, res["pipeline_chunks_per_s"])):
        ax.text(v, y, f" {v:.1f} s ({rate:.1f} chunks/s)", va="center", fontsize=9)
    ax.set(xlabel="seconds", title=f"Ingest of {docs} docs / {chunks} chunks, 1 thread: ratio {res['overhead_ratio']:.2f}x")
    ax.set_xlim(0, pipeline_s * 1.45)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    png = args.out / "bench_ingest.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    path = write_results("bench_ingest", res, args.out)
    print(f"\nwrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
