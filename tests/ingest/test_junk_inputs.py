"""Real junk that used to abort a whole source: a Slack ts of 1e400, a file name that is not
UTF-8, a document whose re-chunking removes more chunks than SQLite takes variables."""
from __future__ import annotations

import os
import sys
from datetime import datetime, timezone

import pytest

from core.settings import Settings, SourceConfig
from core.types import Document
from index.embedder import HashEmbedder
from ingest.connectors.drive import DriveConnector
from ingest.connectors.memory import MemoryConnector
from ingest.connectors.slack import _ts_float, _utc
from ingest.sync import sync_sources


@pytest.mark.parametrize("ts", ["1e400", "-1e400", "nan", "inf", "9e18", "garbage", None])
def test_an_impossible_slack_ts_is_time_zero_not_a_crash(ts):
    assert _ts_float(ts) == 0.0
    assert _utc(ts).year == 1970


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that takes any bytes")
def test_a_non_utf8_file_name_is_reported_and_the_rest_is_read(tmp_path):
    root = tmp_path / "drive"
    root.mkdir()
    (root / "a-good.txt").write_text("Good text.")
    with open(os.path.join(os.fsencode(root), b"caf\xe9-latin1.txt"), "wb") as f:
        f.write(b"Latin-1 named file.")
    (root / "z-good.txt").write_text("Also good.")
    conn = DriveConnector(root, source="d", default_acl="public")
    ids = [d.id for d in conn.documents()]
    assert ids == ["d:a-good.txt", "d:z-good.txt"]
    [f] = conn.failures
    assert "not valid UTF-8" in f.reason and "caf" in f.path and f.report_only


def _doc(n_sentences: int) -> Document:
    text = " ".join(f"Sentence number {i} says token{i}." for i in range(n_sentences))
    return Document(id="m:big", source="m", source_type="wiki", title="Big", uri="https://x/big",
                    updated_at=datetime(2024, 1, 1, tzinfo=timezone.utc), text=text, acl=frozenset({"public"}))


def test_removing_more_chunks_than_one_statement_takes(tmp_path, monkeypatch):
    import index.store as store

    monkeypatch.setattr(store, "_MAX_VARS", 3)  # the same code path as 32,767+ chunks
    s = Settings(data_dir=tmp_path / "data", embedding={"model": "hash"},
                 chunking={"chunk_tokens": 32, "overlap_tokens": 0})
    src = SourceConfig(name="m", type="wiki", path=tmp_path)
    sync_sources(s, [src], embedder=HashEmbedder(), connector_factory=lambda _s: MemoryConnector([_doc(80)]))
    rep = sync_sources(s, [src], embedder=HashEmbedder(), connector_factory=lambda _s: MemoryConnector([_doc(2)]))
    assert rep.ok and rep.chunks_total < 5
