"""The real path: real MiniLM index over a few sample wiki pages, real SmolLM2-135M answering.

The 135M model invents facts (STACK.md), so this asserts the structure the pipeline
guarantees, not the answer's truth: a non-empty answer, citations that point only at the
sources the model was given, timings, a confidence in [0, 1], a logged row.
"""
from __future__ import annotations

import importlib.util
import shutil

import pytest
from answer_fixtures import build_index, make_settings

from core.types import Principal

PAGES = ["hr/pto.md", "finance/expenses-and-travel.md", "it/vpn.md"]


@pytest.mark.slow
def test_real_pipeline_answers_with_structure(tmp_path, sample_dir):
    wiki = tmp_path / "wiki"
    for rel in PAGES:
        (wiki / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_dir / "wiki" / rel, wiki / rel)
    backend = "llamacpp" if importlib.util.find_spec("llama_cpp") else "transformers"
    settings = make_settings(
        tmp_path,
        embedding={"model": "packaged"},
        sources=[{"name": "acme-wiki", "type": "wiki", "path": str(wiki), "base_url": "https://wiki.acme.example/"}],
        generator={"backend": backend, "model": "smollm2-135m", "threads": 1, "max_tokens": 48},
    )
    index, retriever, embedder = build_index(settings)
    from kb.services import build_services

    services = build_services(settings, index=index, retriever=retriever, embedder=embedder)
    events = list(services.answer_service.stream(
        "How many days of unused PTO can be carried over into the next year?", user=Principal("alice")))
    ans = events[-1].answer
    assert ans is not None and ans.text.strip()
    assert any(e.kind == "token" for e in events)
    assert ans.sources and len(ans.sources) <= settings.retrieval.top_k
    source_chunks = {h.chunk.id for h in ans.sources}
    for c in ans.citations:
        assert 1 <= c.n <= len(ans.sources) and c.chunk_id in source_chunks
        assert c.uri.startswith("https://wiki.acme.example/") and c.title
    assert {"retrieve", "filter", "first_token", "generate", "total"} <= set(ans.timings)
    assert 0.0 <= ans.confidence <= 1.0
    assert ans.route in ("answered", "corrected", "abstained")
    assert ans.model_id.startswith("smollm2")
    row = services.answer_log.get_answer(ans.answer_id)
    assert row["route"] == ans.route and row["source_chunk_ids"] == [h.chunk.id for h in ans.sources]
