"""The answer service end to end on a real (hash-embedded) index with the fake generator:
routing, condensing, the context filter, the answer log, build_services and `kb ask`."""
from __future__ import annotations

import json

import pytest
from answer_fixtures import collect, doc, make_rig, make_settings, build_index
from click.testing import CliRunner

from kb_chatbot.app.answer.condense import condense_question, rewrite_query
from kb_chatbot.app.answer.context_filter import ContextFilter
from kb_chatbot.app.generators.fake import FakeGenerator
from kb_chatbot.app.answer.log import AnswerLog
from kb_chatbot.app.answer.prompts import ABSTAIN_TEXT, SYSTEM_PROMPT
from kb_chatbot.app.answer.service import STATUS_DOUBLE_CHECKING, STATUS_ESCALATING, STATUS_SEARCHING
from kb_chatbot.core.errors import KBError
from kb_chatbot.core.types import Chunk, Hit, Message, Principal

DOCS = [
    doc("pto", "# Paid time off\nFull-time employees get 25 days of paid vacation per year. "
        "Unused vacation days carry over up to 5 days. Vacation requests go through Workday.", title="PTO policy"),
    doc("expenses", "# Expenses\nTravel meals are reimbursed up to 60 dollars per day. "
        "Submit expense receipts within 30 days of the trip.", title="Expense policy"),
    doc("falcon", "# Project Falcon\nThe Falcon robot launch date is March 3. The Falcon payload is 40 kg.",
        acl=["group:engineering"], title="Falcon plan"),
]
BOB = Principal("bob", "bob@acme.example", ("sales",))
ALICE = Principal("alice", "alice@acme.example", ("engineering",))


@pytest.fixture
def rig(tmp_path):
    return make_rig(tmp_path, DOCS)


def test_answered_with_citations_timings_and_log(rig):
    events, ans = collect(rig.service, "How many paid vacation days do full-time employees get?", BOB)
    assert events[0].kind == "status" and events[0].text == STATUS_SEARCHING
    tokens = "".join(e.text for e in events if e.kind == "token")
    assert tokens.strip() == ans.text
    assert ans.route == "answered" and not ans.corrected
    assert ans.text == "Full-time employees get 25 days of paid vacation per year [1]."
    assert [(c.n, c.title, c.doc_id) for c in ans.citations] == [(1, "PTO policy", "t:pto")]
    assert ans.citations[0].quote == "Full-time employees get 25 days of paid vacation per year."
    assert 0.5 <= ans.confidence <= 1.0
    assert {"retrieve", "filter", "first_token", "generate", "total"} <= set(ans.timings)
    assert ans.sources[0].rerank_score is not None and ans.sources[0].text is not None
    row = rig.log.get_answer(ans.answer_id)
    assert row["username"] == "bob" and row["route"] == "answered" and row["answer"] == ans.text
    assert row["source_chunk_ids"] == [h.chunk.id for h in ans.sources]
    assert row["citations"][0]["n"] == 1 and "total" in row["timings"] and row["model"] == "fake"
    d = ans.to_dict()
    assert d["citations"][0]["uri"] == "https://wiki.acme.example/pto" and d["route"] == "answered"


def test_answer_equals_the_streamed_final_answer(rig):
    a = rig.service.answer("expense receipts deadline", user=BOB)
    assert a.text.endswith("[2].") or a.text.endswith("[1].")
    assert "30 days" in a.text


def test_no_readable_hits_abstains_without_calling_the_model(tmp_path):
    rig = make_rig(tmp_path, [doc("falcon", "Falcon launch date is March 3.", acl=["group:engineering"])])
    events, ans = collect(rig.service, "When is the Falcon launch?", BOB)
    assert ans.route == "abstained" and ans.text.startswith(ABSTAIN_TEXT)
    assert ans.citations == () and ans.sources == () and ans.confidence == 0.0
    assert rig.generator.calls == [] and not any(e.kind == "token" for e in events)
    assert "March" not in json.dumps(rig.log.get_answer(ans.answer_id))


def test_invalid_citations_are_dropped(tmp_path):
    gen = FakeGenerator(["Full-time employees get 25 days of paid vacation per year [1][9]. "
                         "Unused vacation days carry over up to 5 days [1, 12]. [14]"])
    rig = make_rig(tmp_path, DOCS, generator=gen)
    ans = rig.service.answer("How many vacation days do employees get?", user=BOB)
    assert ans.route == "answered", ans.scores
    assert ans.text == ("Full-time employees get 25 days of paid vacation per year [1]. "
                        "Unused vacation days carry over up to 5 days [1].")
    assert [c.n for c in ans.citations] == [1]
    assert ans.scores["invalid_share"] == pytest.approx(3 / 5, abs=1e-3)


def test_low_confidence_runs_one_correction_and_replaces_the_draft(tmp_path):
    gen = FakeGenerator(["Employees get 40 days of vacation."])  # uncited, in no source; then the default logic
    rig = make_rig(tmp_path, DOCS, generator=gen)
    events, ans = collect(rig.service, "How many vacation days do employees get?", BOB)
    statuses = [e.text for e in events if e.kind == "status"]
    assert STATUS_DOUBLE_CHECKING in statuses
    kinds = [e.kind for e in events]
    assert kinds[kinds.index("discard") + 1:].count("status") >= 1  # the draft is discarded first
    after = events[[e.text for e in events].index(STATUS_DOUBLE_CHECKING):]
    assert "".join(e.text for e in after if e.kind == "token").strip() == ans.text
    assert ans.corrected and ans.route == "corrected" and "[1]" in ans.text
    assert ans.scores["confidence_draft"] < 0.5 <= ans.confidence
    answer_calls = [c for c in gen.calls if c[0].content == SYSTEM_PROMPT]
    assert len(answer_calls) == 2
    assert "- Employees get 40 days of vacation." in answer_calls[1][-1].content  # the unsupported sentence named


def test_still_low_escalates_when_configured(tmp_path):
    local = FakeGenerator(["No idea.", "Still no idea."])
    big = FakeGenerator(model_id="big-model")
    rig = make_rig(tmp_path, DOCS, generator=local, escalation=big)
    events, ans = collect(rig.service, "How many vacation days do employees get?", BOB)
    assert STATUS_ESCALATING in [e.text for e in events if e.kind == "status"]
    assert ans.route == "escalated" and ans.escalated and ans.corrected
    assert ans.model_id == "big-model" and [c.n for c in ans.citations] == [1]
    assert rig.log.get_answer(ans.answer_id)["escalated"] is True


def test_still_low_without_escalation_abstains_with_closest_sources(tmp_path):
    rig = make_rig(tmp_path, DOCS, generator=FakeGenerator(["Maybe 40 days.", "Perhaps 40 days."]))
    ans = rig.service.answer("How many vacation days do employees get?", user=BOB)
    assert ans.route == "abstained" and ans.corrected and not ans.escalated
    assert ans.text.startswith(ABSTAIN_TEXT) and "40" not in ans.text
    assert ans.citations and ans.citations[0].title == "PTO policy"
    assert [c.n for c in ans.citations] == list(range(1, len(ans.citations) + 1))


def test_model_abstention_routes_to_abstained(rig):
    ans = rig.service.answer("What is the parking garage code?", user=BOB)
    assert ans.route == "abstained" and ans.text.startswith(ABSTAIN_TEXT)


def test_generator_failure_is_an_error_answer(tmp_path):
    class Broken(FakeGenerator):
        def stream(self, messages, params):
            raise RuntimeError("server down")
            yield  # pragma: no cover

    rig = make_rig(tmp_path, DOCS, generator=Broken())
    ans = rig.service.answer("vacation days", user=BOB)
    assert ans.route == "error" and "try again" in ans.text and rig.log.get_answer(ans.answer_id)["route"] == "error"


def test_follow_up_is_condensed_with_history(rig):
    history = [Message("user", "How many vacation days?"),
               Message("assistant", "Full-time employees get 25 days of paid vacation per year [1].")]
    ans = rig.service.answer("And carry over?", user=BOB, history=history)
    assert ans.question == "And carry over?"
    assert "vacation" in ans.standalone_question and "carry over" in ans.standalone_question
    assert "carry over" in ans.text and "condense" in ans.timings


def test_condense_guard_keeps_the_question():
    hist = [Message("user", "vacation days?"), Message("assistant", "25 [1].")]
    assert condense_question(FakeGenerator(), "Any follow up?", [], turns=3) == "Any follow up?"
    assert condense_question(FakeGenerator(), "Any follow up?", hist, turns=0) == "Any follow up?"

    class Says(FakeGenerator):
        def __init__(self, text):
            super().__init__()
            self.text = text

        def _reply(self, messages, task):
            return self.text, 0.5

    q = "What about contractors?"  # leans on the chat: a rejected rewrite falls back to the question before
    joined = "What about contractors? (follow-up to: vacation days?)"
    assert condense_question(Says(""), q, hist, turns=3) == joined
    assert condense_question(Says("Bananas are yellow fruit"), q, hist, turns=3) == joined
    assert condense_question(Says("x " * 400), q, hist, turns=3) == joined
    assert condense_question(Says("What about contractors?"), q, hist, turns=3) == joined  # returned unchanged
    alone = "How many sick days do contractors get?"  # stands alone: a bad rewrite keeps it
    assert condense_question(Says("Bananas are yellow fruit"), alone, hist, turns=3) == alone
    good = "Standalone question: How many vacation days do contractors get?"
    assert condense_question(Says(good), q, hist, turns=3) == "How many vacation days do contractors get?"
    assert rewrite_query(Says("pizza"), "vacation days") == "vacation days"
    assert rewrite_query(FakeGenerator(), "How many vacation days do I get?") == "vacation days"


def test_context_filter_trims_reranks_and_never_drops_all():
    from kb_chatbot.index.embedder import HashEmbedder

    filler = " ".join(f"The office has plants number {i}." for i in range(12))
    long = ("# Benefits\n" + filler + "\n\n"
            "Vacation days are 25 per year. Vacation requests go through Workday. Unused days expire.\n\n"
            "Parking is free. The roof is red. " + filler)
    def h(i, text):
        c = Chunk(id=f"c{i}", doc_id=f"t:{i}", ordinal=0, text=text, start=0, end=len(text))
        return Hit(c, f"D{i}", "u", "t", "wiki", score=1.0 / (i + 1))
    f = ContextFilter(HashEmbedder(), filter_sentences=1, min_relevance=0.99)
    res = f.filter("vacation days per year", [h(0, "Unrelated text about lunch."), h(1, long)], top_k=1)
    assert len(res.hits) == 1  # everything below 0.99, the best one kept
    kept = res.hits[0]
    assert kept.chunk.id == "c1" and kept.rerank_score is not None
    assert kept.text.startswith("# Benefits\n") and "Vacation days are 25 per year." in kept.text
    # the answering paragraph is kept whole: its neighbours come along, the filler does not
    assert "Vacation requests go through Workday." in kept.text and "Unused days expire." in kept.text
    assert "plants" not in kept.text and "…" in kept.text
    assert res.chars_after < res.chars_before
    f2 = ContextFilter(HashEmbedder(), filter_sentences=10, min_relevance=-1)
    short = "Vacation days are 25 per year. Parking is free."
    res2 = f2.filter("vacation days per year", [h(0, "Unrelated text about lunch."), h(1, short)], top_k=5)
    assert [x.chunk.id for x in res2.hits] == ["c1", "c0"] and res2.hits[0].text == short


def test_context_filter_keeps_the_paragraph_richest_in_answer_not_the_best_sentence_first():
    """The best sentence sits in a short paragraph; the next two best share a longer one that
    fits the share only alone (the sample's "can I carry my PTO over?": a weekend-holiday rule
    scored highest, and the carry-over paragraph gave way to a reminder line)."""
    import numpy as np

    from kb_chatbot.app.answer.context_filter import _passage
    from kb_chatbot.core.text import sentence_spans

    text = ("## Carrying over\n\n"
            "You can carry over up to 6 days of unused PTO into the next year. "
            "Carried-over days must be used by March 31 of that year. "
            "Days above the limit are not paid out, except where local law requires it.\n\n"
            "We send a reminder in October to everyone with more than ten days left.\n\n"
            "## Public holidays\n\n"
            "If a holiday falls on a weekend, the office takes the next working day off.")
    spans = sentence_spans(text)
    assert len(spans) == 7
    sims = np.array([0.08, 0.47, 0.49, 0.40, 0.44, 0.29, 0.50], dtype=np.float32)
    out = _passage(text, spans, sims, budget=230)
    assert "up to 6 days" in out and "March 31" in out  # the paragraph of the 2nd and 3rd best
    assert "reminder" not in out and "weekend" not in out
    assert out.startswith("## Carrying over")
    # one paragraph holding the best sentences fits: it is taken whole, as before
    small = _passage(text, spans, sims, budget=120)
    assert "weekend" in small and len(small) < 200
    # a best sentence longer than the share is the passage (a table row, a listing)
    huge = "## T\n\n" + "| a | b | " * 60 + "\n\nShort one here."
    hs = sentence_spans(huge)
    assert _passage(huge, hs, np.array([0.0, 0.9, 0.2], dtype=np.float32), budget=100).count("| a |") == 60


def test_context_filter_takes_near_ties_only_when_configured():
    from kb_chatbot.index.embedder import HashEmbedder

    def h(i, text):
        c = Chunk(id=f"c{i}", doc_id=f"t:{i}", ordinal=0, text=text, start=0, end=len(text))
        return Hit(c, f"D{i}", "u", "t", "wiki", score=1.0)
    texts = ["Vacation days are 25 per year.", "Vacation days are 25 per year!", "Lunch is at noon."]
    hits = [h(i, t) for i, t in enumerate(texts)]
    f = ContextFilter(HashEmbedder(), filter_sentences=4, min_relevance=-1, near_tie_chunks=2)
    assert [x.chunk.id for x in f.filter("vacation days per year", hits, top_k=1).hits] == ["c0", "c1"]
    f = ContextFilter(HashEmbedder(), filter_sentences=4, min_relevance=-1)  # the default: top_k exactly
    assert [x.chunk.id for x in f.filter("vacation days per year", hits, top_k=1).hits] == ["c0"]


def test_context_filter_slm_relevance():
    from kb_chatbot.index.embedder import HashEmbedder

    gen = FakeGenerator(yes=[0.1, 0.9])
    hits = [Hit(Chunk(id=f"c{i}", doc_id=f"t:{i}", ordinal=0, text=t, start=0, end=len(t)), "D", "u", "t", "wiki", score=1.0)
            for i, t in enumerate(["vacation days rule.", "vacation days are 25."])]
    res = ContextFilter(HashEmbedder(), relevance="slm", generator=gen, min_relevance=0.5).filter("vacation days", hits, top_k=5)
    assert len(gen.yes_calls) == 2 and [h.rerank_score for h in res.hits] == [0.9]


def test_answer_log_feedback(tmp_path, rig):
    ans = rig.service.answer("How many vacation days do employees get?", user=BOB)
    rig.log.record_feedback(ans.answer_id, BOB, -1, comment="outdated", correction="It is 27 days [1].")
    rig.log.record_feedback(ans.answer_id, "bob", 1)
    with pytest.raises(KBError, match="another user"):
        rig.log.record_feedback(ans.answer_id, ALICE, 1)
    with pytest.raises(KBError, match="no answer"):
        rig.log.record_feedback("nope", BOB, 1)
    with pytest.raises(ValueError):
        rig.log.record_feedback(ans.answer_id, BOB, 0)
    down = rig.log.feedback(rating=-1)
    assert len(down) == 1 and down[0]["correction"] == "It is 27 days [1]." and down[0]["question"].startswith("How many")
    assert down[0]["source_chunk_ids"] == [h.chunk.id for h in ans.sources]
    s = rig.log.feedback_summary()
    assert (s["answers"], s["feedback"], s["up"], s["down"], s["corrections"]) == (1, 2, 1, 1, 1)
    assert s["routes"] == {"answered": 1}
    assert rig.log.recent_answers(5, username="bob")[0]["id"] == ans.answer_id
    assert AnswerLog(rig.settings.app_db).recent_answers(5, username="alice") == []


def test_build_services_end_to_end(tmp_path):
    from kb_chatbot.app.kb.services import build_services

    settings = make_settings(tmp_path)
    build_index(settings, DOCS)
    services = build_services(settings)
    assert services.has_index and services.escalation is None
    ans = services.answer_service.answer("How many vacation days do employees get?", user=BOB)
    assert ans.route == "answered" and ans.answer_id
    assert services.answer_log.get_answer(ans.answer_id)["username"] == "bob"
    assert services.answer_service is services.answer_service  # built once
    with pytest.raises(TypeError, match="unknown service parts"):
        build_services(settings, nonsense=1)


def _cli_config(tmp_path):
    from kb_chatbot.app.auth import hash_password

    h = hash_password("acme-demo", rounds=4)
    users = tmp_path / "users.yaml"
    users.write_text("users:\n  - username: alice\n    email: alice@acme.example\n    groups: [engineering]\n"
                     f"    password_hash: '{h}'\n  - username: bob\n    email: bob@acme.example\n    groups: [sales]\n"
                     f"    password_hash: '{h}'\n")
    cfg = tmp_path / "kb.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'runtime'}\nembedding: {{model: hash}}\ngenerator: {{backend: fake}}\n"
                   f"sources: [{{name: t, type: wiki, path: {tmp_path}}}]\n"
                   f"server: {{auth: {{users_file: {users}}}}}\n")
    build_index(make_settings(tmp_path), DOCS)
    return cfg


def test_kb_ask_json_and_text(tmp_path):
    from kb_chatbot.app.kb.cli import main

    cfg = _cli_config(tmp_path)
    r = CliRunner().invoke(main, ["--config", str(cfg), "ask", "When is the Falcon robot launch date?", "--user", "alice", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert "March 3" in d["answer"] and d["route"] == "answered" and d["citations"][0]["title"] == "Falcon plan"
    assert {"n", "title", "source", "uri", "page"} <= set(d["citations"][0])
    assert {"retrieve", "first_token", "total"} <= set(d["timings"]) and 0 <= d["confidence"] <= 1
    r = CliRunner().invoke(main, ["--config", str(cfg), "ask", "When is the Falcon robot launch date?", "--user", "bob"])
    assert r.exit_code == 0, r.output
    # bob reads no document about Falcon: the premise check says so, and nothing about it leaks
    assert "March 3" not in r.stdout and "nothing about 'Falcon robot'" in r.stdout and "route abstained" in r.stdout
    r = CliRunner().invoke(main, ["--config", str(cfg), "ask", "How many vacation days do employees get?"])
    assert "25 days" in r.stdout and "Sources:" in r.stdout and "[1] PTO policy" in r.stdout
    r = CliRunner().invoke(main, ["--config", str(cfg), "ask", "vacation", "--user", "mallory"])
    assert r.exit_code != 0 and "mallory" in r.output
    r = CliRunner().invoke(main, ["--config", str(cfg), "ask", "When is the Falcon robot launch date?", "--user", "alice",
                                  "--json-events"])
    events = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "answer" and "sources" in kinds and "token" not in kinds
    assert kinds.index("sources") < kinds.index("answer") and events[-1]["route"] == "answered"
    assert any(s["title"] == "Falcon plan" for s in events[kinds.index("sources")]["sources"])


def test_kb_ask_history_file(tmp_path):
    from kb_chatbot.app.kb.cli import main

    cfg = _cli_config(tmp_path)
    hist = tmp_path / "h.json"
    hist.write_text(json.dumps([{"role": "user", "content": "How many vacation days?"},
                                {"role": "assistant", "content": "25 days [1]."}]))
    r = CliRunner().invoke(main, ["--config", str(cfg), "ask", "And carry over?", "--history-file", str(hist), "--json"])
    assert r.exit_code == 0, r.output
    assert "carry over" in json.loads(r.stdout)["standalone_question"]
    hist.write_text('{"role": "user"}')
    r = CliRunner().invoke(main, ["--config", str(cfg), "ask", "x", "--history-file", str(hist)])
    assert r.exit_code != 0 and "h.json" in r.output


def test_slm_grounding_check_asks_the_generator(tmp_path):
    confidences = []
    for i, p_yes in enumerate((0.02, 0.98)):
        gen = FakeGenerator(yes=[p_yes])  # the SLM's verdict on "does the source state this?"
        rig = make_rig(tmp_path / str(i), DOCS, generator=gen,
                       answer={"grounding_check": "slm", "self_correction": False, "answers_check": True})
        ans = rig.service.answer("How many vacation days do employees get?", user=BOB)
        assert "Claim: Full-time employees get 25 days" in gen.yes_calls[0][-1].content
        # a supported answer is then asked whether it answers the question; a failed one is not
        assert len(gen.yes_calls) == (1 if p_yes < 0.5 else 2)
        # the check reuses the answer prompt's system message and sources block (KV cache)
        answer_prompt = next(c for c in gen.calls if c[0].content == SYSTEM_PROMPT)
        head = answer_prompt[1].content.split("Question: ")[0]
        assert gen.yes_calls[0][0] == answer_prompt[0] and gen.yes_calls[0][1].content.startswith(head)
        if p_yes < 0.5:  # a hard gate: the unsupported sentence is removed, nothing is left
            assert ans.route == "abstained" and ans.confidence == 0.0 and "25 days" not in ans.text
        else:
            assert ans.route == "answered" and ans.scores["support_mean"] == pytest.approx(p_yes)
        confidences.append(ans.confidence)
    assert confidences[0] < 0.5 <= confidences[1]


def test_kb_ask_never_prints_a_discarded_draft_to_stdout(tmp_path, monkeypatch):
    """A terminal cannot take a printed line back: a draft the checks discard (an invented
    amount) must not reach stdout, which gets the verified answer only."""
    import kb_chatbot.app.kb.services
    from kb_chatbot.core.types import Answer, AnswerEvent
    from kb_chatbot.app.kb.cli import main

    cfg = _cli_config(tmp_path)
    real = kb_chatbot.app.kb.services.build_services

    class Invents:
        def stream(self, question, *, user, history=()):
            yield AnswerEvent("status", "Writing the answer…")
            for t in ("The deductible of the Gold plan ", "is $5,000 [1]."):
                yield AnswerEvent("token", t)
            yield AnswerEvent("discard")
            yield AnswerEvent("answer", answer=Answer(question, question, ABSTAIN_TEXT, (), 0.0, "abstained"))

    def services(settings, **kw):
        from types import SimpleNamespace

        return SimpleNamespace(has_index=real(settings, **kw).has_index, answer_service=Invents())

    monkeypatch.setattr(kb_chatbot.app.kb.services, "build_services", services)
    r = CliRunner().invoke(main, ["--config", str(cfg), "ask", "What is the Gold plan deductible?"])
    assert r.exit_code == 0, r.output
    assert "$5,000" not in r.stdout and ABSTAIN_TEXT in r.stdout


def test_an_answer_whose_sources_never_mention_the_subject_abstains(tmp_path):
    """The subject check in the service, on a real index of 321 documents: "juice" is in no
    chunk, the memo the answer would come from speaks of water."""
    topics = ["parking", "lunch", "badges", "printers", "laptops", "travel", "payroll", "security", "plants"]
    filler = [doc(f"note-{i}", f"Note {i} about {topics[i % len(topics)]}: the {topics[(i * 7) % len(topics)]} "
                                f"desk opens at {8 + i % 3} am on floor {i % 12}.") for i in range(320)]
    memo = doc("supplies-memo", "Supplies memo. 20,000 bottles of water were delivered on January 23, 2023.")
    rig = make_rig(tmp_path, [memo, *filler])
    assert rig.index.store.counts()["chunks"] >= 300
    ans = rig.service.answer("How many bottles of juice were delivered?", user=BOB)
    assert ans.route == "abstained" and "do not mention 'juice'" in ans.text, ans.text
    assert ans.scores.get("off_subject") == 1.0 and ans.citations  # the closest sources are listed
    ok = rig.service.answer("How many bottles of water were delivered?", user=BOB)
    assert ok.route == "answered" and "20,000" in ok.text
    # while the answer is written, a sentence that would fail the subject check is not shown
    # either: the page never shows the water sentence to a question about juice
    rig.generator.replies.append("20,000 bottles of water were delivered on January 23, 2023 [1]. "
                                 "They were delivered in a memo [1].")
    events, ans = collect(rig.service, "How many bottles of juice were delivered?", BOB)
    assert ans.route == "abstained" and not any(e.kind == "verified" for e in events)


def test_the_subject_check_counts_only_what_the_asker_may_read(tmp_path):
    """Documents Bob cannot read mention juice often: were they counted, "juice" would not be
    rare, the water answer would be shown, and Bob would learn that hidden documents speak of
    juice. His outcome is the same as with no such documents."""
    topics = ["parking", "lunch", "badges", "printers", "laptops", "travel", "payroll", "security", "plants"]
    filler = [doc(f"note-{i}", f"Note {i} about {topics[i % len(topics)]}: the {topics[(i * 7) % len(topics)]} "
                                f"desk opens at {8 + i % 3} am on floor {i % 12}.") for i in range(320)]
    memo = doc("supplies-memo", "Supplies memo. 20,000 bottles of water were delivered on January 23, 2023.")
    hidden = [doc(f"juice-{i}", f"Board juice tasting {i}: the orange juice supplier changes in March.", acl=["group:board"])
              for i in range(12)]
    rig = make_rig(tmp_path, [memo, *filler, *hidden])
    ans = rig.service.answer("How many bottles of juice were delivered?", user=BOB)
    assert ans.route == "abstained" and "do not mention 'juice'" in ans.text, ans.text
    assert "tasting" not in json.dumps(ans.to_dict())
    board = Principal("dora", "dora@acme.example", ("board",))
    assert rig.service.answer("How many bottles of juice were delivered?", user=board).route != "error"


def test_each_sentence_is_checked_while_the_answer_is_written(tmp_path):
    """Generation pauses when a sentence is complete; the sentence is checked and, having
    passed, streamed as verified text before the next one is written; the invented second
    sentence never reaches the verified stream, and no sentence is checked twice."""
    gen = FakeGenerator(["Full-time employees get 25 days of paid vacation per year [1]. "
                         "Employees also get 12 days of paid sick leave [1]."])
    rig = make_rig(tmp_path, DOCS, generator=gen, answer={"answers_check": True})
    events, ans = collect(rig.service, "How many paid vacation days do full-time employees get?", BOB)
    kinds = [e.kind for e in events]
    first_verified = kinds.index("verified")
    assert events[first_verified].text == "Full-time employees get 25 days of paid vacation per year [1]."
    later_tokens = "".join(e.text for e in events[first_verified:] if e.kind == "token")
    assert "sick leave" in later_tokens  # the second sentence was written after the first was shown
    assert not any("12 days" in e.text for e in events if e.kind == "verified")
    # the reply was continued, not restarted: the second call carries the first sentence as the
    # start of the assistant's reply
    assert gen.calls[1][-1].role == "assistant"
    assert gen.calls[1][-1].content.startswith("Full-time employees get 25 days")
    # sentence 1 once (support), then once whether it answers the question (remembered for the
    # whole answer, which is the same text); sentence 2 failed its facts
    assert len(gen.yes_calls) == 2 and "Reply: Full-time employees get 25 days" in gen.yes_calls[1][-1].content
    assert ans.text == "Full-time employees get 25 days of paid vacation per year [1]."


def test_a_backend_that_cannot_continue_a_reply_is_checked_at_the_end(tmp_path):
    class NoPrefill(FakeGenerator):
        continues_assistant = False

    gen = NoPrefill(["Full-time employees get 25 days of paid vacation per year [1]. "
                     "Unused vacation days carry over up to 5 days [1]."])
    rig = make_rig(tmp_path, DOCS, generator=gen, answer={"answers_check": True})
    events, ans = collect(rig.service, "How many paid vacation days do full-time employees get?", BOB)
    assert not any(e.kind == "verified" for e in events) and len(gen.calls) == 1
    assert ans.route == "answered" and ans.text.count("[1]") == 2


def test_a_question_with_typos_is_corrected_and_says_so(tmp_path):
    """'conect' and 'servises' are in no chunk: the question is corrected to the knowledge
    base's own words before retrieval, the checks and the prompt, and the answer says so."""
    from kb_chatbot.app.web.render import render_answer

    rig = make_rig(tmp_path, [
        doc("vpn", "To connect to the VPN from home, open AcmeTunnel and sign in with single sign-on. "
                   "The client connects to gw-7.vpn.acme.example.", title="VPN"),
        doc("services", "Our services include payroll and benefits administration.", title="Services")])
    ans = rig.service.answer("how do i conect to the vpn from home?", user=BOB)
    assert ans.showing_for == "how do i connect to the vpn from home?"
    assert ans.standalone_question == ans.showing_for and ans.question == "how do i conect to the vpn from home?"
    assert ans.to_dict()["showing_results_for"] == ans.showing_for
    assert "Showing results for <em>how do i connect to the vpn from home?</em>" in render_answer(ans)
    assert rig.service.answer("How do I connect to the VPN?", user=BOB).showing_for is None  # nothing to fix


def test_a_correction_is_never_a_word_only_hidden_documents_hold(tmp_path):
    """'juise' is one edit from 'juice', which only the board's documents use: Bob's question is
    left as typed (a correction would tell him hidden documents speak of juice); Dora's is fixed."""
    rig = make_rig(tmp_path, [
        doc("memo", "Supplies memo. 20,000 bottles of water were delivered on January 23, 2023."),
        doc("board", "Board juice tasting: the orange juice supplier changes in March.", acl=["group:board"])])
    assert rig.service.answer("How many bottles of juise were delivered?", user=BOB).showing_for is None
    dora = Principal("dora", "dora@acme.example", ("board",))
    assert rig.service.answer("How many bottles of juise were delivered?", user=dora).showing_for == \
        "How many bottles of juice were delivered?"


def test_a_supported_answer_to_another_question_is_not_shown(tmp_path):
    """The nurse line's hours are supported by their source, but they do not answer how many
    days a week staff may work from home: the answers-the-question check declines it, and
    nothing of it was streamed as verified text."""
    docs = [doc("nurse-line", "The nurse line is open 24 hours a day, 7 days a week.", title="Nurse line"),
            doc("pto", "Full-time employees get 25 days of paid vacation per year.", title="PTO")]
    gen = FakeGenerator(["The line is open 24 hours a day, 7 days a week [1]."], yes=[0.95, 0.04, 0.95, 0.04])
    rig = make_rig(tmp_path, docs, generator=gen, answer={"self_correction": False, "answers_check": True})
    events, ans = collect(rig.service, "How many days a week may staff work from home?", BOB)
    assert ans.route == "abstained" and "24 hours" not in ans.text
    assert not [e for e in events if e.kind == "verified" and e.text]
    assert any("Reply: The line is open 24 hours" in c[-1].content for c in gen.yes_calls)


def test_the_sources_come_before_any_answer_text(tmp_path):
    """A 'sources' event with the readable sources found, each with its passage, precedes every
    token; `kb ask --json-events` prints it as its first JSON line."""
    rig = make_rig(tmp_path, DOCS)
    events, ans = collect(rig.service, "How many vacation days do full-time employees get?", BOB)
    kinds = [e.kind for e in events]
    assert "sources" in kinds and kinds.index("sources") < kinds.index("token")
    found = events[kinds.index("sources")].sources
    assert found and all(c.quote for c in found) and "sources" in ans.timings
    assert {c.doc_id for c in found} <= {h.chunk.doc_id for h in ans.sources}


def test_a_repeated_question_is_answered_from_the_cache_per_reader(tmp_path):
    """The same question over the same sources, by someone with the same principals, is
    answered without the model; another reader, or a changed source, is asked afresh."""
    rig = make_rig(tmp_path, DOCS)
    first = rig.service.answer("How many vacation days do full-time employees get?", user=BOB)
    calls = len(rig.generator.calls)
    again = rig.service.answer("how many vacation days do  full-time employees get?", user=BOB)
    assert len(rig.generator.calls) == calls and again.text == first.text and again.scores.get("cached") == 1.0
    assert again.answer_id != first.answer_id  # logged as its own answer
    carol = Principal("carol", "carol@acme.example", ("finance",))
    rig.service.answer("How many vacation days do full-time employees get?", user=carol)
    assert len(rig.generator.calls) > calls


def test_an_answer_rated_wrong_is_not_served_again_from_the_cache(tmp_path):
    rig = make_rig(tmp_path, DOCS)
    first = rig.service.answer("How many vacation days do full-time employees get?", user=BOB)
    rig.service.forget(first.answer_id)
    calls = len(rig.generator.calls)
    rig.service.answer("How many vacation days do full-time employees get?", user=BOB)
    assert len(rig.generator.calls) > calls


def test_a_name_inside_the_question_is_never_corrected(tmp_path):
    """'Gold' is one edit from 'old', a word of the knowledge base; capitalised inside the
    question it is a name (the plan asked about), not a typo."""
    rig = make_rig(tmp_path, [doc("plans", "The old Silver plan had a deductible of $1,500. Plans renew in May.")])
    ans = rig.service.answer("What is the deductible of the TTS Gold health plan?", user=BOB)
    assert ans.showing_for is None and "Gold" in ans.text
    # the first word of a sentence may be corrected ('Plams' is in no chunk; 'plans' is)
    assert rig.service.answer("Plams renew in which month?", user=BOB).showing_for == "Plans renew in which month?"


def test_spelling_reaches_hyphenated_parts_and_a_doubled_capital_at_the_start(tmp_path):
    rig = make_rig(tmp_path, [doc("tock", "For a 5-day week, bill at least 32 hours to project work. "
                                          "How much you bill depends on the day count.")])
    assert rig.service.answer("HHow many hours for a 5-dday week?", user=BOB).showing_for == \
        "How many hours for a 5-day week?"


def test_a_name_the_chat_brought_in_does_not_decline_the_follow_up(tmp_path):
    """'Which server does it connect to?' after a question about the VPN client on a Mac: the
    condensed question carries 'Mac' (the page says macOS); the premise check counts only the
    terms of the new question."""
    rig = make_rig(tmp_path, [doc("vpn", "Install AcmeTunnel from the Self Service app on macOS. "
                                         "The client connects to the gateway gw-7.vpn.acme.example.", title="VPN")])
    history = [Message("user", "How do I install the VPN client on a Mac?"),
               Message("assistant", "Install AcmeTunnel from the Self Service app [1].")]
    rig.generator._condense = lambda user: "Which server does the VPN client on a Mac connect to?"
    ans = rig.service.answer("Which server does it connect to?", user=BOB, history=history)
    assert "Mac" in ans.standalone_question and "nothing about" not in ans.text


def test_a_name_of_the_question_that_the_cited_source_never_writes_declines_the_answer(tmp_path):
    """The premise check finds 'Mac' in a source found; the answer cites only the VPN page, which
    never says Mac: it answers another question (SQuAD 2.0's swapped names and centuries). In a
    follow-up, only the names the asker typed are asked of the cited source."""
    docs = [doc("vpn", "The VPN client connects to the gateway gw-7.vpn.acme.example.", title="VPN"),
            doc("mac", "Mac laptops get updates from the Self Service app every month.", title="Laptops")]
    q = "Which gateway does the VPN client on a Mac connect to?"
    # by default only numbers are asked of the cited source: a name may say only where the asker
    # is ("from the Lisbon office"), and the generic answer holds
    assert make_rig(tmp_path / "default", docs).service.answer(q, user=BOB).route == "answered"
    rig = make_rig(tmp_path, docs, answer={"subject_names": "all"})
    ans = rig.service.answer(q, user=BOB)
    assert ans.route == "abstained" and "do not mention 'Mac'" in ans.text, ans.text
    assert ans.scores.get("off_subject") == 1.0
    history = [Message("user", "How do I update my Mac?"),
               Message("assistant", "Mac laptops get updates from the Self Service app [1].")]
    rig.generator._condense = lambda user: q
    ans = rig.service.answer("Which gateway does the VPN client connect to?", user=BOB, history=history)
    assert ans.route == "answered" and "gw-7" in ans.text, ans.text


def test_a_doubled_letter_typed_once_is_restored_before_a_shorter_word(tmp_path):
    rig = make_rig(tmp_path, [doc("pto", "You can carry over up to 6 days of unused PTO. Car rentals need approval. "
                                         "A car is a car. Cars are booked in Concur.")])
    assert rig.service.answer("how many unused PTO days can I cary over?", user=BOB).showing_for == \
        "how many unused PTO days can I carry over?"


def test_a_real_word_is_never_corrected_into_another(tmp_path):
    """'worms' is in no chunk and one edit from 'norms', which is: a word of the language is the
    subject of the question, not a typo (the near-miss question must stay near-miss)."""
    from kb_chatbot.app.answer.spelling import SpellChecker
    from kb_chatbot.index.store import porter_stems

    rig = make_rig(tmp_path, [doc("duck", "Leaves have 50 calories per portion. Team norms are on the wiki.")])
    store = rig.index.store
    speller = SpellChecker(store.vocabulary, porter_stems, store.surface_forms,
                           dictionary={"worms", "calories", "portion"}.__contains__)
    assert speller.correct("How many calories do worms have?", BOB.principals()).fixes == ()
    assert speller.correct("Where are the team normss?", BOB.principals()).text == "Where are the team norms?"


def _speller(rig):
    from kb_chatbot.app.answer.spelling import SpellChecker
    from kb_chatbot.index.store import porter_stems

    store = rig.index.store
    return SpellChecker(store.vocabulary, porter_stems, store.surface_forms, phrases=store.phrase_chunk_count)


def test_a_misspelt_name_is_corrected_into_a_name_the_sources_write(tmp_path):
    """'Normaandy', 'Cypruq' and "Robett's" are capitalised inside the question: names, corrected
    only into names the knowledge base writes capitalised (the possessive kept); 'Acme' is never
    made the shorter common word 'Ace', and 'Nomans' is the knowledge base's 'Normans', not the
    'Romans' it mentions once."""
    rig = make_rig(tmp_path, [doc("normans", "The Normans gave their name to Normandy. Robert's army took Cyprus "
                                             "in 1191. The Normans fought the Byzantines; the Normans settled. "
                                             "Unlike the Romans, the Normans built castles. Ace pilots flew."),
                              doc("board", "The Zanzibar office opens in May.", acl=["group:board"])])
    sp, me = _speller(rig), BOB.principals()
    # a name only a document Bob may not read writes is never his correction
    assert sp.correct("When does the Zanzibbar office open?", me).fixes == ()
    assert sp.correct("When does the Zanzibbar office open?", frozenset({"group:board"})).text == \
        "When does the Zanzibar office open?"
    assert sp.correct("Who ruled Normaandy and Cypruq?", me).text == "Who ruled Normandy and Cyprus?"
    assert sp.correct("How many men were in Robett's army?", me).text == "How many men were in Robert's army?"
    assert sp.correct("When did the Nomans arrive?", me).text == "When did the Normans arrive?"
    assert sp.correct("What does the Acme line cost?", me).fixes == ()


def test_spelling_finds_forms_the_sources_write_only_in_another_form(tmp_path):
    """'emplyees' is one edit from 'employees', whose index term ('employe') is no stem of itself;
    'invaade' is one edit from 'invade', which the source writes only as 'invaded'; a rare word
    of the language is corrected into a far commoner one the source writes ('rued' -> 'ruled');
    another form of a source's word is no typo ('computations' where it says 'computational')."""
    rig = make_rig(tmp_path, [doc("h", "All employees may work remotely. The Normans invaded England and "
                                       "ruled it. The method has a computational cost.")])
    sp, me = _speller(rig), BOB.principals()
    assert sp.correct("May emplyees work remotely?", me).text == "May employees work remotely?"
    assert sp.correct("When did they invaade England?", me).text == "When did they invade England?"
    assert sp.correct("Who rued England?", me).text == "Who ruled England?"
    assert sp.correct("What do the computations cost?", me).fixes == ()


def test_a_short_word_english_hardly_knows_gets_its_lost_letter_back(tmp_path):
    """'wrk', 'hte' and 'arw' (3 letters, no word of the language) are 'work', 'the' and 'are'
    (not 'raw') by a letter put back, two swapped or a keyboard neighbour; a short code the
    sources lack ('sso') is left as typed, for the subject check to decline, and so is a short
    word of the language ('mus') and a short name ('Kin')."""
    rig = make_rig(tmp_path, [doc("h", "Overtime is paid for work past 40 hours. The so-called SSL chapter: "
                                       "the musicians must rest, they are raw. Kim and the king left.")])
    sp, me = _speller(rig), BOB.principals()
    assert sp.correct("Is overtime paid for wrk past 40 hours?", me).text == "Is overtime paid for work past 40 hours?"
    assert sp.correct("What arw the musicians?", me).text == "What are the musicians?"
    assert sp.correct("Who wrote hte chapter?", me).text == "Who wrote the chapter?"
    assert sp.correct("Does sso work with the chapter?", me).fixes == ()
    assert sp.correct("What mus the musicians do?", me).fixes == ()
    assert sp.correct("Where did Kin go?", me).fixes == ()


def test_a_short_word_english_knows_a_little_is_corrected_only_into_a_far_commoner_one(tmp_path):
    """'hom' (Zipf 2.8: a rare word of the language) is 'home' (5.8), which the sources write:
    "how do i conect to the vpn from hom?"; the same kind of word the sources write themselves
    stays ('cna' beside 'CNA'), and one whose near words are not far commoner stays too."""
    rig = make_rig(tmp_path, [doc("h", "Connect to the VPN from home with AcmeTunnel. The cna role is paid. "
                                       "The dude was there.")])
    sp, me = _speller(rig), BOB.principals()
    assert sp.correct("how do i connect to the vpn from hom?", me).text == "how do i connect to the vpn from home?"
    assert sp.correct("Is the cna paid?", me).fixes == ()
    assert sp.correct("Was the dud there?", me).fixes == ()  # 'dud' 3.0: 'dude' (4.8) is not 1,000x commoner


def test_a_mistyped_first_word_is_a_question_word(tmp_path):
    """'Whar', 'Wbere' and 'Hiw' open a question: 'What', 'Where', 'How', though the sources
    write 'war', 'were' and 'his' (one edit away too) and never a question word; a word of the
    language there ('Were') stays, and inside a sentence the rule does not apply."""
    rig = make_rig(tmp_path, [doc("h", "The war was long. Were the Normans at war? His army and his fleet "
                                       "were in Sicily; the army fought the war there.")])
    sp, me = _speller(rig), BOB.principals()
    assert sp.correct("Whar was the war about?", me).text == "What was the war about?"
    assert sp.correct("Wbere were the Normans?", me).text == "Where were the Normans?"
    assert sp.correct("Hiw big was his army?", me).text == "How big was his army?"
    assert sp.correct("Were the Normans in Sicily?", me).fixes == ()
    assert sp.correct("I read about it. Whre was the war?", me).text == "I read about it. Where was the war?"
    assert sp.correct("The whar was long?", me).text != "The what was long?"


def test_near_equal_corrections_are_told_apart_by_the_words_beside_them(tmp_path):
    """'leav' is one edit from 'leave' and from 'lead', which these sources write more often:
    beside 'annual' it is the 'leave' they write as 'annual leave'; with no such neighbour the
    commoner word stays the correction, and a phrase only a hidden document writes is no context."""
    rig = make_rig(tmp_path, [doc("h", "Annual leave accrues each pay period."),
                              doc("t", "The team lead reviews the plan."), doc("p", "A project lead leads it."),
                              doc("r", "Requests go to the tech lead."),
                              doc("x", "Sick leave is private.", acl=["group:hr"])])
    sp, me = _speller(rig), BOB.principals()
    assert sp.correct("How much annual leav do I accrue?", me).text == "How much annual leave do I accrue?"
    assert sp.correct("Who is the leav?", me).text == "Who is the lead?"
    assert sp.correct("How much sick leav is there?", me).text == "How much sick lead is there?"
    assert sp.correct("How much sick leav is there?", me | {"group:hr"}).text == "How much sick leave is there?"
    # the index matches stems ('dos' is 'do' there): function words are not told apart by context
    rig = make_rig(tmp_path / "b", [doc("d", "In what ways do models grow? The dos and don'ts of the DOS era. "
                                             "Does it work? It does.")])
    assert _speller(rig).correct("In what ways doss it grow?", me).text == "In what ways does it grow?"


@pytest.mark.slow
def test_still_low_escalates_to_a_real_openai_compatible_server(tmp_path, llamacpp_server):
    """The escalation model behind llama-cpp-python's own server (not our stub): the question,
    the sources and the streamed reply go through it, and the answer names its model."""
    from kb_chatbot.app.generators.openai_compat import OpenAIGenerator

    before = llamacpp_server.requests("/v1/chat/completions")
    big = OpenAIGenerator(llamacpp_server.url, "escalate", timeout=120)
    rig = make_rig(tmp_path, DOCS, generator=FakeGenerator(["No idea.", "Still no idea."]), escalation=big)
    events, ans = collect(rig.service, "How many vacation days do employees get?", BOB)
    assert STATUS_ESCALATING in [e.text for e in events if e.kind == "status"]
    assert llamacpp_server.requests("/v1/chat/completions") > before
    # the 135M model may or may not write a checked answer; either way it is escalated, and
    # nothing unchecked is shown
    assert ans.escalated and ans.route in ("escalated", "abstained")
    if ans.route == "escalated":
        assert ans.model_id == "escalate" and ans.citations
    else:
        assert ans.text.startswith(ABSTAIN_TEXT)
