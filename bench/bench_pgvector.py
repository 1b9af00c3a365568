"""pgvector HNSW (the Postgres store) vs FAISS IVF (the SQLite store) at 100k real MiniLM vectors,
with and without a narrow ACL filter, through the project's own search code.

    .venv/bin/python bench/bench_pgvector.py              # 100k vectors, 200 questions
    .venv/bin/python bench/bench_pgvector.py --n 20000    # a quicker run

Vectors: the MiniLM vectors of real chunks (the 18F handbook, ARAGOG's papers and the sample
company, read from the embedding caches of earlier `kb eval` runs under data/runtime, or
embedded now from ../shared when no cache is there), **replicated with noise** to n: each
copy is a real vector plus isotropic gaussian noise (sigma 0.02 per dimension, ~0.39 in norm),
L2-normalised again. Queries: real questions (the trust dev set and ARAGOG) embedded with
MiniLM. Every chunk is one document; "everyone" may read all of them, "narrow" 1 %.

Per store: build time (FAISS: add + IVF training; Postgres: COPY of the rows + the HNSW
build inside ``publish``), p50/p95 of one question's dense search (k=5; FAISS through
``IndexSnapshot.dense``, Postgres through ``PgSnapshot.dense``: the ACL semi-join, the
short-scan fallback), recall@5 against an exact search of the vectors the asker may read.
``hnsw.ef_search`` is swept (40, 100 = the store's default, 200, 400) for the unfiltered search:
on replicated vectors the true top 5 are often near-copies of one real vector, which is harder
for a graph search than real data. Postgres is ``pgserver`` (PostgreSQL 16.2, pgvector 0.6.2) on this machine over a Unix
socket, with ``maintenance_work_mem`` 1 GB for the build (4 GB above 200k vectors). ``--n
1000000`` takes ~15 min on two cores (COPY ~5 min, HNSW build ~8.5 min) and ~6 GB of memory.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import common  # noqa: F401  (threads, sys.path)
import numpy as np

from common import REPO, SHARED, pyplot, save_figure, timer, write_results

K = 5
SIGMA = 0.02
NARROW_EVERY = 100  # 1 % of the chunks


def real_vectors() -> np.ndarray:
    """MiniLM vectors of real chunks from the embedding caches under data/runtime."""
    rows = []
    for db in sorted((REPO / "data" / "runtime").rglob("embeddings.sqlite3")):
        con = sqlite3.connect(db)
        try:
            rows += [np.frombuffer(v, dtype=np.float32) for (v,) in con.execute(
                "SELECT vector FROM vectors WHERE model_id='all-MiniLM-L6-v2' AND dim=384")]
        except sqlite3.Error:
            pass
        finally:
            con.close()
    if not rows:
        raise SystemExit("no MiniLM vectors cached under data/runtime: run `kb reindex` (the sample) or "
                         "`kb eval suite eval/suites/third-party.yaml` first")
    base = np.unique(np.stack(rows), axis=0)
    return base / np.linalg.norm(base, axis=1, keepdims=True)


def questions() -> list[str]:
    out = [json.loads(line)["question"] for line in (REPO / "eval" / "devsets" / "handbook.jsonl").open()
           if line.strip() and not line.startswith("#")]
    aragog = SHARED / "eval" / "aragog" / "datasets" / "ARAGOG" / "eval_questions_relevant_doc.json"
    if aragog.is_file():
        out += list(json.loads(aragog.read_text())["questions"])
    return out


def replicate(base: np.ndarray, n: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = np.arange(n) % len(base)
    out = base[idx] + SIGMA * rng.standard_normal((n, base.shape[1]), dtype=np.float32)
    out[: len(base)] = base[: min(n, len(base))]  # the real vectors themselves are in
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def exact(vecs: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> set[int]:
    scores = vecs @ q
    top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
    return {int(ids[i]) for i in top}


def measure(search, queries: np.ndarray, truth: list[set[int]]) -> dict:
    lat, rec = [], []
    for q, t in zip(queries, truth):
        t0 = time.perf_counter()
        got = search(q)
        lat.append(time.perf_counter() - t0)
        rec.append(len({i for i, _ in got} & t) / max(1, min(K, len(t))))
    return {"p50_ms": round(1000 * float(np.percentile(lat, 50)), 2),
            "p95_ms": round(1000 * float(np.percentile(lat, 95)), 2),
            "recall_at_5": round(float(np.mean(rec)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()

    import pgserver

    from kb_chatbot.core.settings import Settings
    from kb_chatbot.index.embedder import load_embedder
    from kb_chatbot.index.generation import IndexSnapshot
    from kb_chatbot.index.pg import PgGenerationWriter, PgIndexReader
    from kb_chatbot.index.store import Store
    from kb_chatbot.index.vectors import FaissIndex

    base = real_vectors()
    vecs = replicate(base, args.n)
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    narrow_mask = (ids % NARROW_EVERY) == 0
    qs = questions()[: args.queries]
    emb = load_embedder(Settings().embedding)
    queries = np.asarray(emb.embed_documents(qs), dtype=np.float32)
    truth_all = [exact(vecs, ids, q, K) for q in queries]
    truth_narrow = [exact(vecs[narrow_mask], ids[narrow_mask], q, K) for q in queries]
    everyone, narrow = frozenset({"group:everyone", "group:narrow"}), frozenset({"group:narrow"})
    print(f"{len(base)} real MiniLM vectors -> {args.n} with noise; {len(qs)} real questions")
    results: dict = {"n": args.n, "real_vectors": int(len(base)), "sigma": SIGMA, "queries": len(qs), "k": K,
                     "narrow_share": 1 / NARROW_EVERY}

    with tempfile.TemporaryDirectory() as tmp:
        # --- FAISS IVF (the SQLite store's vectors) --------------------------------------------
        cfg = Settings(data_dir=Path(tmp) / "d", index={"kind": "ivf"}).index
        with timer() as t:
            fi = FaissIndex(384, cfg)
            fi.add(ids, vecs)
            fi.settle()
        store = Store.create(Path(tmp) / "kb.sqlite3")  # the ACL rows the snapshot filters with
        with store.transaction():
            store.conn.executemany("INSERT INTO doc_acl(principal, doc_id) VALUES (?, ?)",
                                   [("group:narrow" if m else "group:everyone", f"d{i}") for i, m in zip(ids, narrow_mask)])
            store.conn.executemany("INSERT INTO documents(doc_id, source, source_type, title, uri, updated_at, "
                                   "content_hash) VALUES (?, 'b', 'wiki', 't', 'u', '2024', 'h')",
                                   [(f"d{i}",) for i in ids])
            store.conn.executemany("INSERT INTO chunks(id, chunk_id, doc_id, ordinal, text, title, start, \"end\", "
                                   "text_sha) VALUES (?, ?, ?, 0, 'x', 't', 0, 1, 's')",
                                   [(int(i), f"c{i}", f"d{i}") for i in ids])
        snap = IndexSnapshot("bench", store, fi, {})
        faiss = {"structure": fi.structure, "build_s": round(t["s"], 1),
                 "all": measure(lambda q: snap.dense(q, everyone, K), queries, truth_all),
                 "narrow": measure(lambda q: snap.dense(q, narrow, K), queries, truth_narrow)}
        print("faiss", faiss)

        # --- pgvector HNSW (the Postgres store) --------------------------------------------------
        srv = pgserver.get_server(str(Path(tmp) / "pg"), cleanup_mode="stop")
        try:
            srv.psql("CREATE DATABASE bench;")
            url = srv.get_uri().replace("/postgres?", "/bench?")
            srv.psql(f"ALTER DATABASE bench SET maintenance_work_mem = '{'4GB' if args.n > 200_000 else '1GB'}';")
            settings = Settings(data_dir=Path(tmp) / "p", index={"kind": "hnsw"},
                                store={"backend": "postgres", "url": url})
            with timer() as load:
                w = PgGenerationWriter(settings, model_id="all-MiniLM-L6-v2", dim=384)
                st = w.store
                s = st.schema
                now = datetime.now(timezone.utc).isoformat()
                with st.conn.cursor() as cur:
                    with cur.copy(f"COPY {s}.documents (doc_id, source, source_type, title, uri, updated_at, "
                                  "content_hash) FROM STDIN") as cp:
                        for i in ids:
                            cp.write_row((f"d{i}", "b", "wiki", "t", "u", now, "h"))
                    with cur.copy(f"COPY {s}.doc_acl (principal, doc_id) FROM STDIN") as cp:
                        for i, m in zip(ids, narrow_mask):
                            cp.write_row(("group:narrow" if m else "group:everyone", f"d{i}"))
                    with cur.copy(f"COPY {s}.chunks (id, chunk_id, doc_id, ordinal, text, title, start, \"end\", "
                                  "text_sha, embedding) FROM STDIN") as cp:
                        for i, v in zip(ids, vecs):
                            cp.write_row((int(i), f"c{i}", f"d{i}", 0, "x", "t", 0, 1, "s",
                                          "[" + ",".join(f"{x:.6f}" for x in v) + "]"))
            with timer() as build:
                w.publish()
            reader = PgIndexReader(settings)
            psnap = reader.snapshot()
            import kb_chatbot.index.pg as pg

            pgv = {"structure": psnap.vectors.structure, "load_s": round(load["s"], 1), "build_s": round(build["s"], 1),
                   "ef_search": pg.EF_SEARCH_MIN,
                   "all": measure(lambda q: psnap.dense(q, everyone, K), queries, truth_all),
                   "narrow": measure(lambda q: psnap.dense(q, narrow, K), queries, truth_narrow)}
            default_ef = pg.EF_SEARCH_MIN
            pgv["ef_sweep"] = {}
            for ef in (40, 100, 200, 400):  # hnsw.ef_search: candidates the scan hands to the filter
                pg.EF_SEARCH_MIN = ef
                pgv["ef_sweep"][ef] = measure(lambda q: psnap.dense(q, everyone, K), queries, truth_all)
            pg.EF_SEARCH_MIN = default_ef
            print("pgvector", pgv)
        finally:
            srv.cleanup()
    results["faiss_ivf"], results["pgvector_hnsw"] = faiss, pgv
    results["ratios"] = {
        "p50_all_pg_over_faiss": round(pgv["all"]["p50_ms"] / faiss["all"]["p50_ms"], 2),
        "p50_narrow_pg_over_faiss": round(pgv["narrow"]["p50_ms"] / faiss["narrow"]["p50_ms"], 2),
        "build_pg_over_faiss": round(pgv["build_s"] / max(faiss["build_s"], 0.1), 1),
    }
    print("ratios", results["ratios"])
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels = ["all readable", "1 % readable"]
    x = np.arange(2)
    for ax, metric, title in ((axes[0], "p50_ms", "p50 search latency (ms, k=5)"),
                              (axes[1], "recall_at_5", "recall@5 vs exact (readable set)")):
        for j, (name, r) in enumerate((("FAISS IVF", faiss), ("pgvector HNSW", pgv))):
            ax.bar(x + 0.38 * j, [r["all"][metric], r["narrow"][metric]], 0.38, label=name)
        ax.set_xticks(x + 0.19, labels)
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle(f"{args.n:,} MiniLM vectors ({len(base):,} real, replicated with noise), {len(qs)} real questions")
    save_figure(fig, write_results("bench_pgvector", results))


if __name__ == "__main__":
    main()
