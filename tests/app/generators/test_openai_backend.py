"""The openai backend against a small OpenAI-compatible server started in the test (no network)."""
from __future__ import annotations

import socket

import pytest

from kb_chatbot.app.generators import make_escalation_generator
from kb_chatbot.app.generators.openai_compat import OpenAIGenerator
from kb_chatbot.core.errors import GeneratorError
from kb_chatbot.core.settings import OpenAIEndpoint
from kb_chatbot.core.types import GenParams, Message
from tests.openai_stub import PIECES

MSGS = [Message("system", "Answer from the sources."), Message("user", "How many vacation days?")]


def test_streams_pieces_with_logprobs_and_finish_reason(openai_server):
    gen = OpenAIGenerator(openai_server.url, "big-model", api_key="sk-test", timeout=5)
    toks = list(gen.stream(MSGS, GenParams(max_tokens=50, logprobs=True, stop=("\n\n",))))
    assert [t.text for t in toks] == [p for p, _ in PIECES]
    assert [t.logprob for t in toks] == pytest.approx([lp for _, lp in PIECES])
    assert [t.finish_reason for t in toks] == [None, None, None, "stop"]
    req = openai_server.requests[-1]
    assert req["stream"] is True and req["logprobs"] is True and req["stop"] == ["\n\n"]
    assert req["messages"] == [{"role": "system", "content": "Answer from the sources."},
                               {"role": "user", "content": "How many vacation days?"}]
    assert req["auth"] == "Bearer sk-test"


def test_length_finish_and_no_logprobs_unless_asked(openai_server):
    gen = OpenAIGenerator(openai_server.url, "big-model", timeout=5)
    toks = list(gen.stream(MSGS, GenParams(max_tokens=2)))
    assert "".join(t.text for t in toks) == "Vacation is"
    assert toks[-1].finish_reason == "length"
    assert all(t.logprob is None for t in toks)
    assert "logprobs" not in openai_server.requests[-1]


def test_yes_probability_from_top_logprobs(openai_server):
    gen = OpenAIGenerator(openai_server.url, "big-model", timeout=5)
    p_true = gen.yes_probability([Message("user", "Is this TRUE? yes or no")])
    p_false = gen.yes_probability([Message("user", "Is this false? yes or no")])
    assert p_true == pytest.approx((0.72 + 0.02) / (0.72 + 0.02 + 0.18))
    assert p_false == pytest.approx((0.1 + 0.02) / (0.1 + 0.02 + 0.85))
    req = openai_server.requests[-1]
    assert req["max_tokens"] == 1 and req["top_logprobs"] == 20 and req["temperature"] == 0.0


def test_yes_probability_falls_back_to_text_without_logprobs(openai_server):
    openai_server.give_logprobs = False
    gen = OpenAIGenerator(openai_server.url, "big-model", timeout=5)
    assert gen.yes_probability([Message("user", "Is this TRUE?")]) == 1.0
    assert gen.yes_probability([Message("user", "Is this false?")]) == 0.0


def test_unreachable_server_gives_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gen = OpenAIGenerator(f"http://127.0.0.1:{port}/v1", "big-model", timeout=2, max_retries=0)
    with pytest.raises(GeneratorError, match=rf"cannot reach the model server at http://127.0.0.1:{port}/v1"):
        list(gen.stream(MSGS, GenParams()))
    with pytest.raises(GeneratorError, match="cannot reach"):
        gen.yes_probability(MSGS)


def test_unknown_model_is_reported_with_status(openai_server):
    gen = OpenAIGenerator(openai_server.url, "no-such-model", timeout=5, max_retries=0)
    with pytest.raises(GeneratorError, match=r"HTTP 404.*no-such-model"):
        list(gen.stream(MSGS, GenParams()))


def test_escalation_factory_uses_endpoint_settings(openai_server):
    gen = make_escalation_generator(OpenAIEndpoint(base_url=openai_server.url, model="big-model", api_key="sk-secret-123", timeout_s=3))
    assert gen.model_id == "big-model"
    assert "sk-secret-123" not in repr(gen)  # the key never shows in logs
    assert gen.complete(MSGS, GenParams(max_tokens=3)) == "Vacation is 25 days"
