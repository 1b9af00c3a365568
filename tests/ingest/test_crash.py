"""kill -9 a real ``kb ingest`` process at several moments; the index must stay usable.

Each killed run starts from generation 1 (corpus v1) and tries to publish corpus v2. After
every kill: CURRENT still names generation 1, ``open_index`` opens it and answers with v1's
content. A final clean run publishes v2, removes the debris, and embeds nothing: the killed
runs had already cached every new chunk's vector.

The process is ``crash_driver.py``, which runs the real ``kb`` command with an ``on_stage``
hook injected into ``sync_sources``: ``CRASH_PAUSE_AT=<stage>`` prints ``CRASH_STAGE <stage>``
and sleeps so the kill lands exactly there; ``CRASH_SLOW_EMBED_MS`` sleeps after each embedded
batch to widen the embedding window.
"""
from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kb_chatbot.core.settings import load_settings
from kb_chatbot.core.types import Principal
from kb_chatbot.index.embedder import HashEmbedder
from kb_chatbot.index.generation import CURRENT_NAME, MANIFEST_NAME, Generations, open_index
from kb_chatbot.index.retriever import HybridRetriever

REPO = Path(__file__).resolve().parents[2]
BOB = Principal("bob")
PAGES = 240


def _page(i: int, version: int) -> str:
    sections = []
    for j in range(3):
        words = " ".join(f"token{i}x{j}x{k}" for k in range(30))
        sections.append(f"## Part {j}\n\nPage {i} part {j} version {version} says {words}.\n")
    return f"# Page {i}\n\n" + "\n".join(sections)


def _write_corpus(root: Path, version: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(PAGES):
        p = root / f"page{i:03d}.md"
        if version == 2 and i % 10 == 0:
            p.unlink(missing_ok=True)  # v2 deletes every tenth page
            continue
        if version == 1 or i % 3 == 0:
            p.write_text(_page(i, version), encoding="utf-8")  # v2 changes every third page
    if version == 2:
        (root / "zeppelin.md").write_text("# Zeppelin\n\nThe zeppelin hangar opens in v2 only.\n", encoding="utf-8")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _cmd(cfg: Path, wiki: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).with_name("crash_driver.py")), "-c", str(cfg), "ingest", "wiki", str(wiki), "--source-name", "wiki",
            "--no-progress"]


class Proc:
    """A running ``kb ingest`` whose stderr lines are collected by a thread."""

    def __init__(self, cfg: Path, wiki: Path, cwd: Path, **env: str):
        self.p = subprocess.Popen(_cmd(cfg, wiki), cwd=cwd, env=_env(**env), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stderr:
            self.lines.put(line)

    def wait_for(self, marker: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.p.poll() is not None:
                    break
                continue
            self.log.append(line)
            if marker in line:
                return
        self.kill()
        raise AssertionError(f"never saw {marker!r}; rc={self.p.poll()} stderr:\n{''.join(self.log[-30:])}")

    def kill(self) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(timeout=30)


@pytest.fixture
def setup(tmp_path):
    wiki = tmp_path / "wiki"
    _write_corpus(wiki, 1)
    cfg = tmp_path / "kb.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nembedding: {{model: hash}}\n"
                   "chunking: {chunk_tokens: 48, overlap_tokens: 0}\n", encoding="utf-8")
    first = subprocess.run(_cmd(cfg, wiki), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    s = load_settings(cfg)
    gen1 = Generations(s.index_dir).current()
    assert gen1
    _write_corpus(wiki, 2)
    return s, cfg, wiki, gen1


def _assert_still_generation_1(s, gen1: str) -> None:
    assert (s.index_dir / CURRENT_NAME).read_text().strip() == gen1
    reader = open_index(s)
    assert reader.generation == gen1
    r = HybridRetriever(reader, HashEmbedder(), s.retrieval)
    hit = r.retrieve("token10x1x5", user=BOB, top_k=1)[0]  # page 10 is deleted in v2
    assert hit.chunk.doc_id == "wiki:page010.md" and "version 1" in hit.chunk.text
    hit = r.retrieve("token3x0x2", user=BOB, top_k=1)[0]  # page 3 is changed in v2
    assert "version 1" in hit.chunk.text
    assert r.retrieve("zeppelin hangar", user=BOB, top_k=3, mode="bm25") == []  # added in v2
    assert reader.vectors.ntotal == reader.manifest["chunks"]


def _cache_rows(s) -> int:
    path = s.data_dir / "embeddings.sqlite3"
    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=10)
    try:
        return conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def test_kill_9_at_every_stage_then_a_clean_run_finishes(setup):
    s, cfg, wiki, gen1 = setup
    cwd = cfg.parent
    cache_before = _cache_rows(s)

    # 1. in the middle of embedding (timed kill while batches are being cached)
    proc = Proc(cfg, wiki, cwd, CRASH_SLOW_EMBED_MS="300")
    deadline = time.monotonic() + 120
    while _cache_rows(s) < cache_before + 64 and time.monotonic() < deadline and proc.p.poll() is None:
        time.sleep(0.05)
    assert proc.p.poll() is None, "the ingest finished before it could be killed"
    proc.kill()
    _assert_still_generation_1(s, gen1)
    cached_after_kill = _cache_rows(s)
    assert cached_after_kill >= cache_before + 64  # the killed run's embeddings were kept

    # 2.-4. exactly at a stage: after a batch was cached, after the FAISS write, after the manifest
    for stage in ("embedding", "faiss_written", "manifest_written"):
        proc = Proc(cfg, wiki, cwd, CRASH_PAUSE_AT=stage)
        proc.wait_for(f"CRASH_STAGE {stage}")
        proc.kill()
        _assert_still_generation_1(s, gen1)
        leftovers = [g for g in Generations(s.index_dir).listing() if g != gen1]
        assert leftovers, stage  # the unpublished generation is there, but nobody reads it
        if stage == "faiss_written":
            assert any(not (s.index_dir / "generations" / g / MANIFEST_NAME).exists() for g in leftovers)

    # 5. a clean run publishes v2 and cleans up
    done = subprocess.run(_cmd(cfg, wiki) + ["--json"], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    import json

    report = json.loads(done.stdout)
    sr = report["sources"][0]
    assert (sr["added"], sr["deleted"]) == (1, PAGES // 10)
    assert sr["updated"] == len([i for i in range(PAGES) if i % 3 == 0 and i % 10 != 0])
    # the runs killed after embedding had cached every new chunk: nothing left to embed
    assert report["chunks_embedded"] == 0
    gens = Generations(s.index_dir)
    assert gens.current() == report["generation"] != gen1
    assert sorted(gens.listing()) == sorted([gen1, report["generation"]])  # debris removed, parent kept
    reader = open_index(s)
    r = HybridRetriever(reader, HashEmbedder(), s.retrieval)
    assert r.retrieve("zeppelin hangar", user=BOB, top_k=1)[0].chunk.doc_id == "wiki:zeppelin.md"
    hit = r.retrieve("token3x0x2", user=BOB, top_k=1)[0]
    assert "version 2" in hit.chunk.text
    assert "wiki:page010.md" not in {h.chunk.doc_id for h in r.retrieve("token10x1x5", user=BOB, top_k=5)}
    assert reader.vectors.ntotal == reader.manifest["chunks"] == len(reader.store.chunk_ids())


def test_two_ingests_never_overlap(setup):
    s, cfg, wiki, gen1 = setup
    holder = Proc(cfg, wiki, cfg.parent, CRASH_PAUSE_AT="embedding")
    try:
        holder.wait_for("CRASH_STAGE embedding")
        t0 = time.monotonic()
        second = subprocess.run(_cmd(cfg, wiki), cwd=cfg.parent, env=_env(), capture_output=True, text=True,
                                timeout=120)
        waited = time.monotonic() - t0
    finally:
        holder.kill()
    assert second.returncode == 3, second.stderr
    assert f"another ingest is running (pid {holder.p.pid})" in second.stderr
    assert waited >= 4  # it waited for the lock (LOCK_WAIT_S) before giving up
    assert Generations(s.index_dir).current() == gen1
    # the killed holder's lock died with it: the next run gets it at once
    again = subprocess.run(_cmd(cfg, wiki), cwd=cfg.parent, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
