"""The Generator seam (kb_chatbot.core.protocols.Generator): every backend passes the same suite.
A new backend is done when it is added to BACKENDS and this file passes."""
from __future__ import annotations

import importlib.util

import pytest

from kb_chatbot.core.protocols import Generator
from kb_chatbot.core.types import GenParams, Message, Token

QUESTION = [Message("system", "You are a helpful assistant. Answer in one short sentence."),
            Message("user", "What is the capital of France?")]
CHECK = [Message("system", "You check facts. Reply with one word: yes or no."),
         Message("user", "<source>\nParis is the capital of France.\n</source>\nClaim: TRUE Paris is the capital.\n"
                         "Does the source state this claim? Answer yes or no.")]
BACKENDS = ["fake", "openai", "openai-llamacpp-server", "llamacpp", "openvino", "transformers"]


@pytest.fixture(scope="module")
def _smol_hf(tmp_path_factory):
    from kb_chatbot.app.generators.hf import HFGenerator
    from kb_chatbot.app.generators.model_files import SMOLLM2_ID, ModelRef, hf_folder_for, smollm2_gguf_path

    folder = hf_folder_for(ModelRef(SMOLLM2_ID, gguf_path=smollm2_gguf_path()), tmp_path_factory.mktemp("models"))
    return HFGenerator(folder, threads=1, device="cpu")


@pytest.fixture(scope="module")
def _smol_llama():
    if not importlib.util.find_spec("llama_cpp"):
        pytest.skip("llama-cpp-python is not installed")
    from kb_chatbot.app.generators.llamacpp import LlamaCppGenerator
    from kb_chatbot.app.generators.model_files import SMOLLM2_ID, smollm2_gguf_path

    return LlamaCppGenerator(smollm2_gguf_path(), n_threads=1, n_ctx=2048, model_id=SMOLLM2_ID)


@pytest.fixture(scope="module")
def _smol_openvino(smol_openvino_dir):
    from kb_chatbot.app.generators.openvino import OpenVINOGenerator

    return OpenVINOGenerator(smol_openvino_dir, threads=1, n_ctx=2048)


@pytest.fixture(params=[
    "fake", "openai",
    pytest.param("openai-llamacpp-server", marks=pytest.mark.slow),
    pytest.param("llamacpp", marks=pytest.mark.slow),
    pytest.param("openvino", marks=pytest.mark.slow),
    pytest.param("transformers", marks=pytest.mark.slow),
])
def gen(request, openai_server):
    if request.param == "fake":
        from kb_chatbot.app.generators.fake import FakeGenerator

        return FakeGenerator()
    if request.param == "openai":
        from kb_chatbot.app.generators.openai_compat import OpenAIGenerator

        return OpenAIGenerator(openai_server.url, "big-model", timeout=5)
    if request.param == "openai-llamacpp-server":  # a real OpenAI-compatible server, not our stub
        from kb_chatbot.app.generators.openai_compat import OpenAIGenerator

        return OpenAIGenerator(request.getfixturevalue("llamacpp_server").url, "answer", timeout=60)
    return request.getfixturevalue({"llamacpp": "_smol_llama", "openvino": "_smol_openvino"}.get(request.param, "_smol_hf"))


def _text(tokens):
    return "".join(t.text for t in tokens)


def test_implements_the_whole_protocol(gen):
    assert isinstance(gen, Generator)
    assert isinstance(gen.model_id, str) and gen.model_id
    gen.warm_up()


def test_streams_tokens_and_ends_with_a_finish_reason(gen):
    toks = list(gen.stream(QUESTION, GenParams(max_tokens=24)))
    assert toks and all(isinstance(t, Token) for t in toks)
    assert _text(toks).strip()
    assert toks[-1].finish_reason in ("stop", "length")
    assert all(t.finish_reason is None for t in toks[:-1])


def test_max_tokens_is_honoured(gen):
    toks = list(gen.stream(QUESTION, GenParams(max_tokens=2)))
    assert 1 <= len([t for t in toks if t.text]) <= 2 and toks[-1].finish_reason == "length"


def test_stop_strings_end_the_reply_and_are_not_returned(gen):
    full = _text(gen.stream(QUESTION, GenParams(max_tokens=24)))
    words = full.split()
    assert len(words) >= 2, full
    stop = words[1]
    cut = _text(gen.stream(QUESTION, GenParams(max_tokens=24, stop=(stop,))))
    assert stop not in cut and full.startswith(cut.rstrip())


def test_complete_is_the_joined_stream(gen):
    params = GenParams(max_tokens=16)
    assert gen.complete(QUESTION, params) == _text(gen.stream(QUESTION, params))


def test_logprobs_only_when_asked(gen):
    plain = [t for t in gen.stream(QUESTION, GenParams(max_tokens=6)) if t.text]
    assert all(t.logprob is None for t in plain)
    with_lp = [t for t in gen.stream(QUESTION, GenParams(max_tokens=6, logprobs=True)) if t.text]
    assert with_lp and all(t.logprob is not None and t.logprob <= 1e-6 for t in with_lp)


def test_yes_probability_is_a_probability_and_reads_the_prompt(gen):
    p = gen.yes_probability(CHECK)
    assert 0.0 <= p <= 1.0
    assert gen.yes_probability(CHECK) == pytest.approx(p)  # deterministic


def test_count_tokens(gen):
    short, long = gen.count_tokens("Paris."), gen.count_tokens("Paris is the capital of France. " * 4)
    assert 1 <= short < long


def test_a_trailing_assistant_message_is_continued_when_the_backend_says_so(gen):
    """The answer service pauses after a sentence and resumes with the reply so far as a
    trailing assistant message; a backend that declares ``continues_assistant`` carries on
    from there (greedy: the rest of its own reply), instead of starting the reply again."""
    params = GenParams(max_tokens=24, temperature=0.0)
    whole = _text(gen.stream(QUESTION, params))
    if not getattr(gen, "continues_assistant", False):
        pytest.skip("this backend checks answers at the end (no reply prefill)")
    words = whole.split(" ")
    assert len(words) >= 3, whole
    start = " ".join(words[: len(words) // 2])
    rest = _text(gen.stream([*QUESTION, Message("assistant", start)], GenParams(max_tokens=24, temperature=0.0)))
    # the reply so far and its continuation read as the whole reply (the last words may differ:
    # the token budget counts from the pause, and re-tokenised text may split differently)
    n = len(words) - 2
    assert (start + rest).split()[:n] == whole.split()[:n], (whole, start, rest)
