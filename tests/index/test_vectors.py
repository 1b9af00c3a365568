"""FaissIndex: add/remove/search with the ACL id filter inside the search, for every kind."""
from __future__ import annotations

import numpy as np
import pytest

from kb_chatbot.core.settings import IndexConfig
from kb_chatbot.index.vectors import FaissIndex

DIM = 32


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _exact(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None):
    mask = np.ones(len(ids), bool) if allowed is None else np.isin(ids, allowed)
    scores = x[mask] @ q
    order = np.argsort(-scores)[:k]
    return ids[mask][order]


def _index(kind: str, **kw) -> FaissIndex:
    cfg = IndexConfig(kind=kind, hnsw_m=16, hnsw_ef_search=128, ivf_nlist=64, ivf_nprobe=64)
    return FaissIndex(DIM, cfg, **kw)


KINDS = ["flat", "hnsw", "ivf"]


@pytest.mark.parametrize("kind", KINDS)
def test_search_respects_allowed_ids_for_each_kind(kind, monkeypatch):
    import kb_chatbot.index.vectors as vectors_mod

    n = 3000
    x, ids = _vecs(n), np.arange(10_000, 10_000 + n, dtype=np.int64)
    idx = _index(kind, ivf_min_vectors=1000)
    idx.add(ids, x)
    idx.settle()  # ivf: trained now that there are enough vectors
    assert idx.structure == kind
    # never the exact-subset shortcut: the IDSelector inside the FAISS search does the filtering
    monkeypatch.setattr(vectors_mod, "EXACT_SUBSET_MAX", 0)
    exact_calls = []
    monkeypatch.setattr(idx, "_exact_subset", lambda *a: exact_calls.append(a) or (_ for _ in ()).throw(AssertionError))
    allowed = ids[::3]
    for qi in (0, 7, 99):
        q = x[qi]
        scores, got = idx.search(q, 10, allowed_ids=allowed)
        assert len(got) == 10
        assert set(got) <= set(allowed)
        assert np.all(np.diff(scores) <= 1e-6)  # best first
        # the filter is applied inside the search: results match exact filtered search
        want = _exact(x, ids, q, 10, allowed)
        overlap = len(set(got) & set(want))
        assert overlap >= (10 if kind == "flat" else 8), (kind, got, want)
    assert not exact_calls
    # no filter
    scores, got = idx.search(x[5], 5)
    assert got[0] == ids[5] and scores[0] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_selective_filter_still_returns_every_allowed_id(kind):
    n = 3000
    x, ids = _vecs(n, 1), np.arange(n, dtype=np.int64)
    idx = _index(kind, ivf_min_vectors=1000)
    idx.add(ids, x)
    idx.settle()
    allowed = np.array([3, 1500, 2999], dtype=np.int64)  # HNSW/IVF alone would miss some
    scores, got = idx.search(x[0], 10, allowed_ids=allowed)
    assert sorted(got) == sorted(allowed)
    assert list(got) == list(_exact(x, ids, x[0], 10, allowed))
    # nothing allowed: nothing returned
    s, g = idx.search(x[0], 10, allowed_ids=np.array([], dtype=np.int64))
    assert len(g) == 0 and len(s) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_remove_then_search_and_reconstruct(kind):
    n = 1200
    x, ids = _vecs(n, 2), np.arange(1, n + 1, dtype=np.int64)
    idx = _index(kind, ivf_min_vectors=1000)
    idx.add(ids, x)
    idx.settle()
    gone = ids[:100]
    assert idx.remove(gone) == 100
    assert idx.ntotal == n - 100
    assert not set(gone) & set(idx.ids())
    assert idx.structure == kind  # hnsw/ivf were rebuilt, not downgraded
    _, got = idx.search(x[0], 5)  # x[0] itself was removed
    assert ids[0] not in got
    _, got = idx.search(x[0], 50, allowed_ids=gone)  # only removed ids allowed -> nothing
    assert len(got) == 0
    rid, rv = idx.vectors(ids[500:503])
    np.testing.assert_allclose(rv, x[500:503], atol=1e-6)
    assert idx.remove([999_999]) == 0  # unknown ids are ignored
    with pytest.raises(KeyError):
        idx.vectors([ids[0]])


def test_ivf_stays_flat_when_small_and_upgrades_when_big(caplog):
    idx = _index("ivf", ivf_min_vectors=500)
    x = _vecs(800, 3)
    idx.add(np.arange(300), x[:300])
    with caplog.at_level("INFO", logger="kb_chatbot.index.vectors"):
        assert not idx.settle()
    assert idx.structure == "flat"
    idx.add(np.arange(300, 800), x[300:])
    with caplog.at_level("INFO", logger="kb_chatbot.index.vectors"):
        assert idx.settle()
    assert idx.structure == "ivf"
    assert "ivf index trained" in caplog.text
    assert idx.ntotal == 800
    _, got = idx.search(x[42], 1)
    assert got[0] == 42


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_round_trip(tmp_path, kind):
    x, ids = _vecs(1100, 4), np.arange(5, 1105, dtype=np.int64)
    idx = _index(kind, ivf_min_vectors=1000)
    idx.add(ids, x)
    idx.settle()
    path = tmp_path / "v.faiss"
    idx.save(path)
    back = FaissIndex.load(path, idx.cfg)
    assert back.structure == kind and back.ntotal == 1100 and back.dim == DIM
    np.testing.assert_array_equal(np.sort(back.ids()), ids)
    s1, g1 = idx.search(x[9], 5, allowed_ids=ids[::2])
    s2, g2 = back.search(x[9], 5, allowed_ids=ids[::2])
    np.testing.assert_array_equal(g1, g2)
    _, v = back.vectors([ids[3]])  # ivf: direct map restored for reconstruct
    np.testing.assert_allclose(v[0], x[3], atol=1e-6)


def test_kind_change_is_applied_by_settle():
    x, ids = _vecs(300, 5), np.arange(300, dtype=np.int64)
    flat = _index("flat")
    flat.add(ids, x)
    as_hnsw = FaissIndex(DIM, IndexConfig(kind="hnsw"), _index=flat._index)
    assert as_hnsw.structure == "flat"
    assert as_hnsw.settle() and as_hnsw.structure == "hnsw" and as_hnsw.ntotal == 300


def test_bad_input_is_rejected(tmp_path):
    idx = _index("flat")
    with pytest.raises(ValueError, match="dimension"):
        idx.add([1], np.zeros((1, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="ids but"):
        idx.add([1, 2], np.zeros((1, DIM), np.float32))
    assert idx.search(np.ones(DIM, np.float32), 5)[1].size == 0  # empty index
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"not an index")
    from kb_chatbot.core.errors import IndexError_

    with pytest.raises(IndexError_, match="kb reindex"):
        FaissIndex.load(bad)
