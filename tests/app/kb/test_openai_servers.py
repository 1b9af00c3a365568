"""`kb reindex` and `kb ask` with every model behind a real OpenAI-compatible server
(llama-cpp-python's own, tests/llamacpp_server.py): vectors from ``/v1/embeddings``, answers
streamed from ``/v1/chat/completions``, the escalation model a second name on the server.
Nothing is faked: the test only checks what crosses the wire and what a user gets back."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kb_chatbot.app.kb.cli import main
from kb_chatbot.core.settings import load_settings
from kb_chatbot.index.generation import Generations

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, url: str, embed_url: str | None = None) -> Path:
    wiki = tmp_path / "wiki"
    wiki.mkdir(exist_ok=True)
    (wiki / "pto.md").write_text("---\ntitle: Vacation policy\n---\n# Vacation\n\n"
                                 "Full-time employees get 25 vacation days per year. Up to 5 unused days carry over.\n")
    (wiki / "robots.md").write_text("# Robots\n\nThe robots charge in bay 4 overnight.\n")
    cfg = tmp_path / "kb.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path / 'runtime'}\n"
        f"sources: [{{name: wiki, type: wiki, path: {wiki}, default_acl: public}}]\n"
        f"embedding: {{backend: openai, openai: {{base_url: '{embed_url or url}', model: embed, timeout_s: 120}}}}\n"
        "chunking: {chunk_tokens: 128, overlap_tokens: 16}\n"
        f"generator: {{backend: openai, max_tokens: 48, openai: {{base_url: '{url}', model: answer, timeout_s: 120}}}}\n"
        f"answer: {{escalation: {{base_url: '{url}', model: escalate, timeout_s: 120}}}}\n"
        "server: {auth: {mode: none}}\n", encoding="utf-8")
    return cfg


def test_reindex_and_ask_through_a_real_openai_compatible_server(tmp_path, llamacpp_server):
    cfg = _config(tmp_path, llamacpp_server.url)
    embeds, chats = llamacpp_server.requests("/v1/embeddings"), llamacpp_server.requests("/v1/chat/completions")
    r = CliRunner().invoke(main, ["-c", str(cfg), "reindex"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert llamacpp_server.requests("/v1/embeddings") > embeds  # the vectors came from the server
    settings = load_settings(cfg)
    gens = Generations(settings.index_dir)
    manifest = gens.manifest(gens.current())
    assert manifest["embedder"] == "openai:embed" and manifest["dim"] == 576 and manifest["chunks"] >= 2

    r = CliRunner().invoke(main, ["-c", str(cfg), "ask", "How many vacation days do employees get?", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert llamacpp_server.requests("/v1/chat/completions") > chats  # the answer model is the server's
    assert d["route"] in ("answered", "corrected", "escalated", "abstained")
    # the question's vector came from the same server: the vacation page is the first source
    sources = d.get("sources") or d["citations"]
    assert sources and sources[0]["title"] == "Vacation policy", d
    assert d["model"] in ("answer", "escalate")


def test_an_unreachable_embedding_server_is_one_clear_error_and_keeps_the_index(tmp_path, llamacpp_server):
    cfg = _config(tmp_path, llamacpp_server.url)
    assert CliRunner().invoke(main, ["-c", str(cfg), "reindex"], catch_exceptions=False).exit_code == 0
    settings = load_settings(cfg)
    before = Generations(settings.index_dir).current()
    (tmp_path / "wiki" / "new.md").write_text("# Parking\n\nParking is on level minus two.\n")
    cfg = _config(tmp_path, llamacpp_server.url, embed_url="http://127.0.0.1:9/v1")  # nothing listens there
    r = CliRunner().invoke(main, ["-c", str(cfg), "reindex"])
    assert r.exit_code != 0
    assert "cannot reach the embedding server at http://127.0.0.1:9/v1" in r.output
    assert "Traceback" not in r.output
    assert Generations(settings.index_dir).current() == before  # the published index is untouched
