"""Generator backends: shared helpers, the factory, and the real SmolLM2-135M on llama.cpp and
transformers (slow), including a LoRA adapter round-trip."""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import pytest

from kb_chatbot.app.generators import make_generator
from kb_chatbot.app.generators.base import (
    StopFilter,
    merge_finish,
    single_token_ids,
    yes_no_from_text,
    yes_share_from_logprobs,
    yes_share_from_top,
)
from kb_chatbot.app.generators.model_files import SMOLLM2_ID, ModelRef, hf_folder_for, smollm2_gguf_path
from kb_chatbot.core.errors import ConfigError, GeneratorError
from kb_chatbot.core.protocols import Generator
from kb_chatbot.core.settings import GeneratorConfig, OpenAIEndpoint
from kb_chatbot.core.types import GenParams, Message, Token

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(
    not HAS_LLAMA, reason="llama-cpp-python is not installed (scripts/setup.sh builds it, ~12 min)"
)

QUESTION = [
    Message("system", "You are a helpful assistant. Answer briefly."),
    Message("user", "What is the capital of France?"),
]
GREEDY = GenParams(max_tokens=12, temperature=0.0)


# --- shared helpers ---------------------------------------------------------------------


def test_merge_finish_moves_the_reason_onto_the_last_piece():
    toks = [Token("a", -1.0), Token("b", -2.0), Token("", finish_reason="stop")]
    assert list(merge_finish(toks)) == [Token("a", -1.0), Token("b", -2.0, "stop")]
    assert list(merge_finish([Token("", finish_reason="length")])) == [Token("", finish_reason="length")]
    assert list(merge_finish([])) == []


@pytest.mark.parametrize(
    "pieces, stops, expected",
    [
        (["Hello", " wor", "ld", "\n\nNext"], ["\n\n"], "Hello world"),
        (["ab", "c</", "s", ">tail"], ["</s>"], "abc"),
        (["ab", "c</", "x"], ["</s>"], "abc</x"),  # a false start is released
        (["Answer: 4", "2"], [], "Answer: 42"),
        (["x", "User:", " hi"], ["User:", "\n\n"], "x"),
    ],
)
def test_stop_filter(pieces, stops, expected):
    f = StopFilter(stops)
    out = "".join(f.feed(p) for p in pieces) + f.flush()
    assert out == expected
    assert f.hit == any(s in "".join(pieces) for s in stops)


def test_yes_share_helpers():
    assert yes_share_from_logprobs([math.log(0.6)], [math.log(0.2)]) == pytest.approx(0.75)
    assert yes_share_from_logprobs([math.log(0.3), math.log(0.3)], [math.log(0.2)]) == pytest.approx(0.75)
    assert yes_share_from_logprobs([], []) is None
    assert yes_share_from_top({"Yes": math.log(0.5), " no": math.log(0.5), "Maybe": 0.0}) == pytest.approx(0.5)
    assert yes_share_from_top({"Maybe": 0.0}) is None
    assert yes_no_from_text("Yes, it does.") == 1.0 and yes_no_from_text(" no.") == 0.0
    assert yes_no_from_text("Nope") is None
    vocab = {"yes": [1], "Yes": [2], " yes": [1], "YES": [7, 8]}
    assert single_token_ids(lambda w: vocab.get(w, []), ["yes", "Yes", " yes", "YES"]) == [1, 2]


# --- the factory ------------------------------------------------------------------------


def test_factory_fake_and_openai(tmp_path):
    fake = make_generator(GeneratorConfig(backend="fake"), tmp_path)
    assert isinstance(fake, Generator)
    from kb_chatbot.app.generators.fake import FakeGenerator

    assert isinstance(fake, FakeGenerator)
    cfg = GeneratorConfig(backend="openai", openai=OpenAIEndpoint(base_url="http://127.0.0.1:9/v1", model="m"))
    gen = make_generator(cfg, tmp_path)
    assert type(gen).__name__ == "OpenAIGenerator" and gen.model_id == "m"
    with pytest.raises(ConfigError, match="generator.adapter"):
        make_generator(cfg.model_copy(update={"adapter": tmp_path}), tmp_path)


def test_factory_builds_local_backends_lazily(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    cfg = GeneratorConfig(backend="transformers", model="smollm2-135m", threads=2)
    gen = make_generator(cfg, tmp_path)
    assert type(gen).__name__ == "HFGenerator" and gen.model_id == SMOLLM2_ID
    assert gen._model is None  # nothing loaded or converted yet
    assert not (tmp_path / "hf").exists()
    assert os.environ["GOMP_SPINCOUNT"] == "1000" and "OMP_WAIT_POLICY" not in os.environ  # thread_wait: spin
    if HAS_LLAMA:
        gen = make_generator(cfg.model_copy(update={"backend": "llamacpp"}), tmp_path)
        assert type(gen).__name__ == "LlamaCppGenerator" and gen._llm is None


def test_factory_rejects_mismatched_model_and_adapter(tmp_path):
    hf = tmp_path / "folder"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="llamacpp backend needs a GGUF"):
        make_generator(GeneratorConfig(backend="llamacpp", model=str(hf)), tmp_path)
    with pytest.raises(ConfigError, match="adapter_config.json missing"):
        make_generator(GeneratorConfig(backend="transformers", model="smollm2-135m", adapter=hf), tmp_path)


def test_llamacpp_refuses_a_peft_folder_with_advice(tmp_path):
    from kb_chatbot.app.generators.llamacpp import resolve_lora

    peft_dir = tmp_path / "adapter"
    peft_dir.mkdir()
    (peft_dir / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="PEFT adapter folder.*convert_lora_to_gguf.*transformers"):
        resolve_lora(peft_dir)
    (peft_dir / "adapter.gguf").write_bytes(b"GGUF")
    assert resolve_lora(peft_dir) == peft_dir / "adapter.gguf"


# --- real models (slow) -----------------------------------------------------------------


@pytest.fixture(scope="session")
def smol_hf_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M converted once from its GGUF (~30 s), shared by the transformers tests."""
    ref = ModelRef(SMOLLM2_ID, gguf_path=smollm2_gguf_path())
    return hf_folder_for(ref, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def smol_hf(smol_hf_dir):
    from kb_chatbot.app.generators.hf import HFGenerator

    gen = HFGenerator(smol_hf_dir, threads=1, device="cpu")
    gen.warm_up()
    return gen


@pytest.fixture(scope="session")
def smol_llama():
    if not HAS_LLAMA:
        pytest.skip("llama-cpp-python is not installed (scripts/setup.sh builds it, ~12 min)")
    from kb_chatbot.app.generators.llamacpp import LlamaCppGenerator

    gen = LlamaCppGenerator(smollm2_gguf_path(), n_threads=1, n_ctx=2048, model_id=SMOLLM2_ID)
    gen.warm_up()
    return gen


def _text(tokens: list[Token]) -> str:
    return "".join(t.text for t in tokens)


def _check_stream(gen):
    first = list(gen.stream(QUESTION, GREEDY))
    second = list(gen.stream(QUESTION, GREEDY))
    assert len(first) >= 2, first  # really streamed, not one blob
    assert _text(first).strip() and _text(first) == _text(second)  # greedy is deterministic
    assert first[-1].finish_reason in ("stop", "length")
    assert all(t.finish_reason is None for t in first[:-1])
    assert all(t.logprob is None for t in first)
    assert "Paris" in _text(first)

    short = list(gen.stream(QUESTION, GenParams(max_tokens=3)))
    assert short[-1].finish_reason == "length" and 1 <= len(short) <= 3

    with_lp = list(gen.stream(QUESTION, GenParams(max_tokens=12, logprobs=True)))
    assert _text(with_lp) == _text(first)
    lps = [t.logprob for t in with_lp if t.text]
    assert lps and all(lp is not None and lp <= 1e-6 for lp in lps)
    assert math.exp(sum(lps)) > 1e-6  # a greedy answer to an easy question is not improbable

    cut = _text(list(gen.stream(QUESTION, GenParams(max_tokens=12, stop=("Paris",)))))
    assert "Paris" not in cut and _text(first).startswith(cut)

    n = gen.count_tokens("The capital of France is Paris.")
    assert 5 <= n <= 12


def _check_yes_probability(gen):
    """Range and consistency. The 135M model cannot judge claims reliably (STACK.md: it invents
    facts), so the ordering of true vs false claims is asserted on the 1.5B model elsewhere."""
    from kb_chatbot.app.answer.prompts import build_support_messages

    ev = "Employees get 25 vacation days per year. Unused days expire on March 31."
    p = gen.yes_probability(build_support_messages("Unused vacation days expire on March 31.", ev))
    q = gen.yes_probability(build_support_messages("The office has a swimming pool.", ev))
    for x in (p, q):
        assert 0.0 < x < 1.0
    assert p != q  # it really reads the prompt
    assert gen.yes_probability(build_support_messages("Unused vacation days expire on March 31.", ev)) == pytest.approx(p)


@pytest.mark.slow
def test_transformers_streams_deterministically(smol_hf):
    _check_stream(smol_hf)


@pytest.mark.slow
def test_transformers_yes_probability(smol_hf):
    _check_yes_probability(smol_hf)


@pytest.mark.slow
@needs_llama
def test_llamacpp_streams_deterministically(smol_llama):
    _check_stream(smol_llama)


@pytest.mark.slow
@needs_llama
def test_llamacpp_yes_probability(smol_llama):
    _check_yes_probability(smol_llama)


@pytest.mark.slow
def test_transformers_loads_a_lora_adapter_and_it_changes_outputs(smol_hf_dir, smol_hf, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kb_chatbot.app.generators.hf import HFGenerator

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(smol_hf_dir), dtype=torch.float32)
    # init_lora_weights=False: random A and B, so the adapter is not a no-op (B=0 by default)
    lora = get_peft_model(base, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False, task_type="CAUSAL_LM"))
    adapter_dir = tmp_path / "tiny-adapter"
    lora.save_pretrained(str(adapter_dir))
    assert (adapter_dir / "adapter_config.json").is_file()

    tuned = HFGenerator(smol_hf_dir, adapter=adapter_dir, threads=1, device="cpu", model_id=SMOLLM2_ID)
    assert tuned.model_id == f"{SMOLLM2_ID}+tiny-adapter"
    out_base = _text(list(smol_hf.stream(QUESTION, GREEDY)))
    out_tuned = _text(list(tuned.stream(QUESTION, GREEDY)))
    assert out_tuned != out_base
    assert out_tuned == _text(list(tuned.stream(QUESTION, GREEDY)))  # still deterministic
    # on CPU the LoRA deltas are merged into the base weights at load: no LoRA layers remain
    assert not any("lora_" in name for name, _ in tuned._model.named_parameters())


@pytest.mark.slow
def test_factory_transformers_converts_gguf_once(tmp_path, smol_hf_dir):
    """make_generator -> transformers on 'smollm2-135m' uses the cached folder under models_dir."""
    import shutil

    models_dir = tmp_path / "models"
    shutil.copytree(smol_hf_dir, models_dir / "hf" / SMOLLM2_ID)  # as left by a previous run
    gen = make_generator(GeneratorConfig(backend="transformers", model="smollm2-135m"), models_dir)
    assert gen.complete(QUESTION, GenParams(max_tokens=8)).strip()


def test_hf_generator_reports_a_broken_folder(tmp_path):
    from kb_chatbot.app.generators.hf import HFGenerator

    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "llama"}')
    gen = HFGenerator(bad, device="cpu")
    with pytest.raises(GeneratorError, match="cannot load model folder .*broken"):
        gen.warm_up()


def write_random_gguf_lora(path: Path, *, n_layers: int = 30, hidden: int = 576, kv: int = 192,
                           rank: int = 4, alpha: float = 8.0, seed: int = 0) -> Path:
    """A random LoRA adapter for SmolLM2-135M in llama.cpp's GGUF adapter format (the layout
    convert_lora_to_gguf.py writes: general.type=adapter, blk.N.attn_q.weight.lora_a/_b)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for i in range(n_layers):
        for name, out in (("attn_q", hidden), ("attn_v", kv)):
            w.add_tensor(f"blk.{i}.{name}.weight.lora_a", (rng.standard_normal((rank, hidden)) * 0.05).astype(np.float32))
            w.add_tensor(f"blk.{i}.{name}.weight.lora_b", (rng.standard_normal((out, rank)) * 0.05).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.slow
@needs_llama
def test_llamacpp_loads_a_gguf_lora_adapter_and_it_changes_outputs(smol_llama, tmp_path):
    from kb_chatbot.app.generators.llamacpp import LlamaCppGenerator

    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    write_random_gguf_lora(adapter_dir / "adapter.gguf")
    tuned = LlamaCppGenerator(smollm2_gguf_path(), n_threads=1, n_ctx=2048, lora_path=adapter_dir, model_id=SMOLLM2_ID)
    assert tuned.model_id == f"{SMOLLM2_ID}+adapter"
    # A small random adapter need not change the greedy words, but it must change the model's
    # distribution: compare the log-probabilities of each generated piece.
    lp_params = GenParams(max_tokens=12, logprobs=True)
    tuned_toks = list(tuned.stream(QUESTION, lp_params))
    base_toks = list(smol_llama.stream(QUESTION, lp_params))
    assert _text(tuned_toks).strip()
    if _text(tuned_toks) == _text(base_toks):
        diffs = [abs(a.logprob - b.logprob) for a, b in zip(tuned_toks, base_toks)]
        assert max(diffs) > 0.05, diffs
    # and the unadapted model is untouched by loading the adapter elsewhere
    assert [t.logprob for t in smol_llama.stream(QUESTION, lp_params)] == [t.logprob for t in base_toks]


@pytest.mark.slow
@needs_llama
def test_llamacpp_default_model_separates_supported_from_unsupported_claims(tmp_path_factory):
    """The real default model (assembled from its 22 packages, ~8 s) judges grounding well."""
    from kb_chatbot.app.generators.llamacpp import LlamaCppGenerator
    from kb_chatbot.app.generators.model_files import DEFAULT_MODEL, assemble_default_model
    from kb_chatbot.app.answer.prompts import build_support_messages

    path = assemble_default_model(tmp_path_factory.mktemp("default"))
    try:
        gen = LlamaCppGenerator(path, n_threads=1, n_ctx=2048, model_id=DEFAULT_MODEL.model_id)
        ev = "Employees get 25 vacation days per year. Unused days expire on March 31."
        supported = [gen.yes_probability(build_support_messages(c, ev)) for c in
                     ("Unused vacation days expire on March 31.", "Employees get 25 vacation days per year.")]
        unsupported = [gen.yes_probability(build_support_messages(c, ev)) for c in
                       ("The office has a swimming pool.", "Employees get 40 vacation days per year.")]
        assert min(supported) > 0.7 and max(unsupported) < 0.4, (supported, unsupported)
        assert "Paris" in gen.complete(QUESTION, GenParams(max_tokens=16))
    finally:
        path.unlink(missing_ok=True)  # 1.1 GB


def test_threads_auto_is_the_physical_cores_this_process_may_use(monkeypatch):
    import os

    from kb_chatbot.core.settings import GeneratorConfig
    from kb_chatbot.app.generators.base import physical_cores, resolve_threads

    n = physical_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))
    assert GeneratorConfig().threads == "auto" and resolve_threads("auto") == n
    assert resolve_threads(3) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert physical_cores() == 1  # pinned to one CPU (taskset, a cgroup cpuset)
    with pytest.raises(ValueError):
        GeneratorConfig(threads=0)


def test_thread_wait_is_set_before_any_model_loads_and_the_environment_wins(tmp_path, monkeypatch):
    """libgomp reads how its threads wait once, when torch or llama.cpp loads it: `kb` sets it as
    soon as the settings are read; one thread needs nothing; an administrator's own setting wins."""
    import subprocess
    import sys

    from kb_chatbot.app.generators.base import configure_threads

    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(var, raising=False)
    configure_threads(1, "sleep")
    assert "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    configure_threads(2, "sleep")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    configure_threads(2, "spin")  # already set: kept
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in os.environ
    # the CLI sets it when it reads the settings, before a command imports torch
    (tmp_path / "kb.yaml").write_text("generator:\n  threads: 2\n  thread_wait: sleep\n")
    code = ("import os, sys; from click.testing import CliRunner; from kb_chatbot.app.kb.cli import main; "
            "r = CliRunner().invoke(main, ['-c', sys.argv[1], 'status']); "
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "kb.yaml")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.split() == ["PASSIVE", "False"], out.stdout + out.stderr
