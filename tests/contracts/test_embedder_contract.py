"""The Embedder seam: the hash fake and the real MiniLM pass the same suite."""
from __future__ import annotations

import numpy as np
import pytest

from kb_chatbot.core.protocols import Embedder
from kb_chatbot.core.settings import EmbeddingConfig
from kb_chatbot.index.embedder import load_embedder

TEXTS = ["Employees get 22 days of paid time off.", "The VPN client is GlobalProtect.", ""]


@pytest.fixture(params=["hash", pytest.param("packaged", marks=pytest.mark.slow)])
def embedder(request) -> Embedder:
    return load_embedder(EmbeddingConfig(model=request.param))


def test_implements_the_protocol(embedder):
    assert isinstance(embedder, Embedder) and embedder.dim > 0 and embedder.model_id


def test_documents_are_float32_unit_rows(embedder):
    v = embedder.embed_documents(TEXTS[:2])
    assert v.shape == (2, embedder.dim) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3)
    assert embedder.embed_documents([]).shape[0] == 0


def test_query_is_one_unit_vector_and_deterministic(embedder):
    q = embedder.embed_query("How much time off do I get?")
    assert q.shape == (embedder.dim,) and q.dtype == np.float32
    assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-3)
    assert np.allclose(q, embedder.embed_query("How much time off do I get?"))


def test_related_text_scores_higher(embedder):
    docs = embedder.embed_documents(TEXTS[:2])
    q = embedder.embed_query("How many days of paid time off do employees get?")
    assert docs[0] @ q > docs[1] @ q
