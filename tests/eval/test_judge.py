"""The optional judge: a second verdict per answer from an OpenAI-compatible model, stored next
to the automatic verdict and the hand label, never replacing them."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from kb_chatbot.eval.judge import Judge, JudgeError, judge_messages, judge_records, parse_verdict
from kb_chatbot.eval.records import judge_summary
from kb_chatbot.core.types import Token
from kb_chatbot.app.generators.fake import FakeGenerator
from kb_chatbot.app.kb.cli import main


def test_parse_verdict_reads_the_first_verdict_word():
    assert parse_verdict("Wrong.") == "wrong"
    assert parse_verdict("Verdict: correct (the 25 days are stated)") == "correct"
    assert parse_verdict("VACUOUS") == "vacuous"
    assert parse_verdict("I cannot tell") is None and parse_verdict("") is None


def test_the_judge_reads_question_reference_and_answer():
    msgs = judge_messages("How many PTO days?", "25 days.", "You get  25\ndays [1].")
    assert "correct" in msgs[0].content and "vacuous" in msgs[0].content
    assert "Question: How many PTO days?" in msgs[1].content
    assert "Reference answer: 25 days." in msgs[1].content and "Answer to grade: You get 25 days [1]." in msgs[1].content
    unanswerable = judge_messages("Who is the CEO?", None, "Jane Roe.")[1].content
    assert "documents do not answer" in unanswerable


class _Scripted(FakeGenerator):
    """Replies with the scripted texts in order, whatever is asked."""

    def stream(self, messages, params):
        self.calls.append(list(messages))
        yield Token(self.replies.popleft(), finish_reason="stop")


class _Failing(FakeGenerator):
    def stream(self, messages, params):
        raise OSError("connection refused")


def test_records_get_a_verdict_or_no_opinion_and_agreement_is_counted():
    records = [
        {"id": "a", "question": "q1", "answerable": True, "expected_answer": "25 days", "answer": "25 days [1].",
         "final_verdict": "correct", "human_verdict": "correct"},
        {"id": "b", "question": "q2", "answerable": True, "expected_answer": "$35", "answer": "It is 30 minutes.",
         "final_verdict": "correct"},
        {"id": "c", "question": "q3", "answerable": False, "expected_answer": "", "answer": "The knowledge base …",
         "final_verdict": "abstained"},
    ]
    judge = Judge(_Scripted(["correct", "Wrong: no amount.", "no idea"]))
    assert judge_records(records, judge) == 2
    assert [r["judge_verdict"] for r in records] == ["correct", "wrong", None]
    s = judge_summary(records)
    assert s["judged"] == 2 and s["judge_agreement"] == 0.5
    assert s["judge_human_labelled"] == 1 and s["judge_human_agreement"] == 1.0
    # a failed call is no opinion on that answer, and the run goes on
    rows = [dict(records[0])]
    assert judge_records(rows, Judge(_Failing())) == 0
    assert rows[0]["judge_verdict"] is None and "connection refused" in rows[0]["judge_reply"]


def test_options_are_checked(monkeypatch):
    with pytest.raises(JudgeError, match="--judge-model"):
        Judge.from_options("http://127.0.0.1:9/v1", None)
    monkeypatch.delenv("KB_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(JudgeError, match="KB_TEST_JUDGE_KEY"):
        Judge.from_options("http://127.0.0.1:9/v1", "m", "KB_TEST_JUDGE_KEY")


def test_kb_eval_with_a_judge_endpoint(tmp_path, openai_server):
    """`kb eval run --judge-url` against a local OpenAI-compatible server: every answer is sent
    with its question and reference, the reply is stored, the report states the agreement."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pto.md").write_text("# Paid time off\n\nEvery employee gets 25 days of paid time off per year.\n")
    qs = [{"id": "pto", "question": "How many days of paid time off do employees get?",
           "expected_answer": "25 days of paid time off per year."},
          {"id": "moon", "question": "Where is the moon base cafeteria?", "expected_answer": "", "answerable": False}]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(q) for q in qs) + "\n")
    (tmp_path / "kb.yaml").write_text("data_dir: runtime\nembedding:\n  model: hash\ngenerator:\n  backend: fake\n")

    def grade(body):  # a judge that calls an answer correct when it holds the reference's number
        user = body["messages"][-1]["content"]
        ref = re.search(r"Reference answer: (.*)", user).group(1)
        ans = re.search(r"Answer to grade: (.*)", user).group(1)
        if "does not contain" in ans or "nothing about" in ans:
            return "abstained"
        nums = re.findall(r"\d+", ref)
        return "Correct." if nums and all(n in ans for n in nums) else "wrong"

    openai_server.reply = grade
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["-c", str(tmp_path / "kb.yaml"), "eval", str(tmp_path / "q.jsonl"),
                                    "--corpus-name", "tiny", "--corpus-path", str(docs), "-q", "--out", str(out),
                                    "--judge-url", openai_server.url, "--judge-model", "big-model"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    asked = [r for r in openai_server.requests if r["path"] == "/v1/chat/completions"]
    assert len(asked) == 2 and "Question: How many days of paid time off" in asked[0]["messages"][-1]["content"]
    result = json.loads((out / "results.json").read_text())
    run = next(iter(result["answers"].values()))
    by_id = {r["id"]: r for r in run["records"]}
    assert by_id["pto"]["judge_verdict"] == by_id["pto"]["final_verdict"] == "correct"
    assert by_id["moon"]["judge_verdict"] == "abstained" and by_id["moon"]["judge_model"] == "big-model"
    assert run["summary"]["judged"] == 2 and run["summary"]["judge_agreement"] == 1.0
    assert "judge big-model gave 2 verdicts, agrees with the final verdict on 1.000" in (out / "report.md").read_text()
