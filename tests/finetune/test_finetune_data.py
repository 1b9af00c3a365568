"""The data builder on a small hash-embedded index: prompt format, citations, abstentions, ACLs,
split by document, dedup, feedback, manifest."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kb_chatbot.app.answer.citations import cited_numbers
from kb_chatbot.app.answer.prompts import ABSTAIN_TEXT, QUESTION_PREFIX, SYSTEM_PROMPT
from kb_chatbot.core.text import overlap
from kb_chatbot.core.types import Answer, Hit
from kb_chatbot.finetune import data as data_mod
from kb_chatbot.finetune.data import HELDOUT_FILE, MANIFEST, TRAIN_FILE, BuildOptions, build_dataset, dedupe, split_by_document
from kb_chatbot.finetune.questions import ExtractiveWriter, ModelWriter, QA, normalise_question

from conftest import PAGES, SECRET, build_index, make_settings, sample_docs


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _build(settings, tmp_path, **kw):
    kw.setdefault("questions_per_chunk", 2)
    opts = BuildOptions(out_dir=tmp_path / "ftdata", **kw)
    report = build_dataset(settings, opts)
    return report, _read(report.out_dir / TRAIN_FILE), _read(report.out_dir / HELDOUT_FILE)


def test_examples_use_the_service_prompt_exactly(kb_settings, tmp_path, monkeypatch):
    built: list[list] = []
    real = data_mod.build_messages

    def recording(question, hits, history=()):
        msgs = real(question, hits, history)
        built.append([{"role": m.role, "content": m.content} for m in msgs])
        return msgs

    monkeypatch.setattr(data_mod, "build_messages", recording)
    _, train, held = _build(kb_settings, tmp_path)
    rows = train + held
    assert len(rows) >= 15
    for r in rows:
        prompt = r["messages"][:-1]
        assert prompt in built  # byte-for-byte what kb_chatbot.app.answer.prompts.build_messages returned
        assert prompt[0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert f"{QUESTION_PREFIX}{r['question']}" in prompt[1]["content"]
        assert prompt[1]["content"].count("<source id=") == len(r["source_chunk_ids"]) <= 3
        assert r["messages"][-1]["role"] == "assistant"
        assert r["messages"][-1]["content"] == r["reference"]


def test_answerable_examples_cite_the_gold_source(kb_settings, tmp_path):
    _, train, held = _build(kb_settings, tmp_path)
    answerable = [r for r in train + held if r["kind"] == "answerable"]
    assert len(answerable) >= 10
    positions = set()
    for r in answerable:
        assert cited_numbers(r["reference"]) == r["gold_sources"]
        n = r["gold_sources"][0]
        positions.add(n)
        assert r["source_chunk_ids"][n - 1] == r["chunk_id"]
        user = r["messages"][1]["content"]
        block = user.split(f'<source id="{n}"', 1)[1].split("</source>", 1)[0]
        assert overlap(r["reference"].replace(f"[{n}]", ""), block) >= 0.9  # the fact is in that source
        assert not any(ch.isdigit() for ch in r["question"].split("about", 1)[-1])  # the value is not asked away
    assert len(positions) > 1  # the gold source is not always [1]


def test_unanswerable_examples_refuse_and_lack_the_answer(kb_settings, tmp_path):
    _, train, held = _build(kb_settings, tmp_path, unanswerable_ratio=1.0)
    rows = train + held
    by_question = {(r["question"], r["chunk_id"]): r for r in rows if r["kind"] == "answerable"}
    unanswerable = [r for r in rows if r["kind"] == "unanswerable"]
    assert len(unanswerable) >= 10
    for r in unanswerable:
        assert r["messages"][-1]["content"] == ABSTAIN_TEXT
        assert r["gold_sources"] == []
        assert r["doc_id"] not in r["source_doc_ids"]  # the gold document is dropped entirely
        gold = by_question[(r["question"], r["chunk_id"])]
        answer = gold["reference"].split(" [")[0]
        for part in r["messages"][1]["content"].split("<source id=")[1:]:
            assert overlap(answer, part.split("</source>")[0]) < 0.9


def test_split_keeps_each_document_on_one_side(kb_settings, tmp_path):
    report, train, held = _build(kb_settings, tmp_path, heldout_share=0.3)
    train_docs = {r["doc_id"] for r in train}
    held_docs = {r["doc_id"] for r in held}
    assert train and held
    assert not train_docs & held_docs
    assert 2 <= len(held_docs) <= 4  # ~30% of 10 public documents
    manifest = json.loads((report.out_dir / MANIFEST).read_text())
    assert sorted(held_docs) == manifest["heldout_doc_ids"]


def test_split_function_is_seeded_and_by_document():
    rows = [{"doc_id": f"d{i % 7}", "i": i} for i in range(40)]
    a = split_by_document(rows, 0.2, seed=3)
    b = split_by_document(rows, 0.2, seed=3)
    assert a == b
    train, held = a
    assert {r["doc_id"] for r in train}.isdisjoint({r["doc_id"] for r in held})
    assert len(train) + len(held) == 40
    assert len({r["doc_id"] for r in held}) == 1  # round(7 * 0.2)


def test_dedupe_by_normalised_question_and_gold_chunk():
    rows = [
        {"question": "What is the VPN gateway?", "chunk_id": "c1", "kind": "answerable"},
        {"question": "what is the  VPN gateway", "chunk_id": "c1", "kind": "answerable"},  # same after normalising
        {"question": "What is the VPN gateway?", "chunk_id": "c2", "kind": "answerable"},  # other gold chunk
        {"question": "What is the VPN gateway?", "chunk_id": "c1", "kind": "unanswerable"},
    ]
    out = dedupe(rows)
    assert [(r["chunk_id"], r["kind"]) for r in out] == [("c1", "answerable"), ("c2", "answerable"), ("c1", "unanswerable")]


def test_built_data_has_no_duplicates_and_is_deterministic(kb_settings, tmp_path):
    r1, train, held = _build(kb_settings, tmp_path / "a", questions_per_chunk=2)
    keys = [(normalise_question(r["question"]), r["chunk_id"], r["kind"]) for r in train + held]
    assert len(keys) == len(set(keys))
    r2, _, _ = _build(kb_settings, tmp_path / "b", questions_per_chunk=2)
    assert r1.data_hash == r2.data_hash
    digest = hashlib.sha256()
    for name in (TRAIN_FILE, HELDOUT_FILE):
        digest.update(name.encode() + b"\0" + (r1.out_dir / name).read_bytes())
    manifest = json.loads((r1.out_dir / MANIFEST).read_text())
    assert manifest["data_hash"] == digest.hexdigest() == r1.data_hash
    assert manifest["counts"]["train"] == len(train) and manifest["counts"]["heldout"] == len(held)


def test_restricted_text_never_reaches_public_examples(kb_settings, tmp_path):
    _, train, held = _build(kb_settings, tmp_path, unanswerable_ratio=1.0)
    blob = json.dumps(train + held)
    assert SECRET not in blob and "exceptional" not in blob
    assert all(r["owner"] == "public" for r in train + held)
    assert not any(d == "t:calibration" for r in train + held for d in r["source_doc_ids"])


def test_include_restricted_builds_examples_for_a_reader(kb_settings, tmp_path):
    report, train, held = _build(kb_settings, tmp_path, include_restricted=True, heldout_share=0.0)
    rows = train + held
    secret_rows = [r for r in rows if SECRET in json.dumps(r)]
    assert secret_rows, "the restricted page should be used with include_restricted"
    for r in secret_rows:
        assert r["owner"] == "group:people-ops"
    store_acl = {"t:calibration": {"group:people-ops"}}
    for r in rows:  # every source of every example is readable by the example's owner
        for d in r["source_doc_ids"]:
            assert r["owner"] in store_acl.get(d, {"public"}) or "public" in store_acl.get(d, {"public"})
    manifest = json.loads((report.out_dir / MANIFEST).read_text())
    assert manifest["restricted"] is True and manifest["notes"]


def _hit(settings, doc_id: str) -> Hit:
    from kb_chatbot.index.generation import open_index

    store = open_index(settings).store
    rows = store.chunk_rows(store.chunk_ids().tolist(), {"public", "group:people-ops"})
    row = next(r for r in rows.values() if r.chunk.doc_id == doc_id)
    return Hit(chunk=row.chunk, doc_title=row.doc_title, doc_uri=row.doc_uri, source=row.source,
               source_type=row.source_type, score=1.0)


def test_feedback_thumbs_up_and_corrections(kb_settings, tmp_path):
    from kb_chatbot.app.answer.log import AnswerLog

    log = AnswerLog(kb_settings.app_db)
    vpn, secret = _hit(kb_settings, "t:vpn"), _hit(kb_settings, "t:calibration")
    q_up, q_down, q_bare, q_secret = ("Which host is the VPN gateway?", "How fast does IT answer VPN tickets?",
                                      "Is the VPN slow?", "How many people can be rated exceptional?")
    ids = {}
    for q, text, hits in ((q_up, "The gateway is gw-7.vpn.acme.example [1].", [vpn]),
                          (q_down, "Within a day [1].", [vpn]), (q_bare, "No [1].", [vpn]),
                          (q_secret, "At most 8 percent [1].", [secret])):
        ans = Answer(q, q, text, (), 0.9, "answered", sources=tuple(hits))
        ids[q] = log.record_answer(ans, "carol")
    log.record_feedback(ids[q_up], "carol", 1)
    log.record_feedback(ids[q_down], "carol", -1, correction="The IT helpdesk answers VPN tickets within 4 business hours [1].")
    log.record_feedback(ids[q_bare], "carol", -1, comment="unhelpful")  # no correction: not a training signal
    log.record_feedback(ids[q_secret], "carol", 1)  # restricted source: not in a public build
    report, train, held = _build(kb_settings, tmp_path)
    fb = {r["question"]: r for r in train + held if r["kind"] == "feedback"}
    assert set(fb) == {q_up, q_down}
    assert fb[q_up]["reference"] == "The gateway is gw-7.vpn.acme.example [1]."
    assert fb[q_down]["reference"].startswith("The IT helpdesk answers")
    assert fb[q_down]["doc_id"] == "t:vpn" and fb[q_down]["gold_sources"] == [1]
    assert report.counts["feedback_skipped_no_correction"] == 1
    assert report.counts["feedback_skipped_sources"] == 1


def test_feedback_condensed_from_history_counts_as_restricted(kb_settings, tmp_path):
    """A follow-up's condensed question folds earlier answers in (they may quote a restricted
    document): a public build leaves it out even when its own sources are public."""
    from kb_chatbot.app.answer.log import AnswerLog

    log = AnswerLog(kb_settings.app_db)
    vpn = _hit(kb_settings, "t:vpn")
    follow = "And who runs it?"
    condensed = "Who runs the VPN gateway that the 8 percent calibration cap applies to?"
    ans = Answer(follow, condensed, "The IT team runs it [1].", (), 0.9, "answered", sources=(vpn,))
    log.record_feedback(log.record_answer(ans, "carol"), "carol", 1)
    report, train, held = _build(kb_settings, tmp_path)
    assert not any(r["kind"] == "feedback" for r in train + held)
    assert report.counts["feedback_skipped_history"] == 1
    assert "calibration cap" not in "".join(p.read_text() for p in report.out_dir.glob("*.jsonl"))


def test_extractive_writer_picks_complete_fact_sentences():
    from kb_chatbot.core.types import Chunk

    text = ("## Carry-over\nUp to 6 unused days can be carried over and must be used by March 31.\n"
            "Where do I ask about this?\nwhen someone leaves the company their access\nis removed.")
    chunk = Chunk("c1", "t:pto", 0, text, 0, len(text), heading_path=("Carry-over",))
    qas = ExtractiveWriter(per_chunk=3).write(chunk, "Paid Time Off")
    answers = [qa.answer for qa in qas]
    assert answers == ["Up to 6 unused days can be carried over and must be used by March 31."]
    assert "'Carry-over' section of Paid Time Off" in qas[0].question and qas[0].question.endswith("?")
    assert "6" not in qas[0].question and "31" not in qas[0].question


class _Scripted:
    model_id = "scripted"

    def __init__(self, reply: str):
        self.reply = reply

    def stream(self, messages, params):
        from kb_chatbot.core.types import Token

        yield Token(self.reply, finish_reason="stop")


def test_model_writer_keeps_grounded_pairs_and_falls_back():
    from kb_chatbot.core.types import Chunk

    text = "## Gateway\nThe VPN gateway hostname is gw-7.vpn.acme.example for all offices."
    chunk = Chunk("c1", "t:vpn", 0, text, 0, len(text), heading_path=("Gateway",))
    good = ModelWriter(_Scripted("Question: What is the VPN gateway hostname?\nAnswer: The VPN gateway hostname is "
                                 "gw-7.vpn.acme.example."), ExtractiveWriter(), origin="slm")
    assert good.write(chunk, "VPN") == [QA("What is the VPN gateway hostname?",
                                           "The VPN gateway hostname is gw-7.vpn.acme.example.", "slm")]
    invented = ModelWriter(_Scripted("Question: What is the capital of France?\nAnswer: Paris is lovely in spring."),
                           ExtractiveWriter(), origin="slm")
    out = invented.write(chunk, "VPN")
    assert [qa.origin for qa in out] == ["extractive"] and invented.rejected == 1


def test_build_data_cli(tmp_path):
    settings_file = tmp_path / "kb.yaml"
    settings_file.write_text(
        "data_dir: runtime\nembedding: {model: hash}\ngenerator: {backend: fake}\nretrieval: {top_k: 3}\n"
        f"sources:\n  - {{name: t, type: wiki, path: {tmp_path}}}\n", encoding="utf-8")
    build_index(make_settings(tmp_path, data_dir=str(tmp_path / "runtime")), sample_docs())
    from kb_chatbot.app.kb.cli import main

    res = CliRunner().invoke(main, ["-c", str(settings_file), "finetune", "build-data", "--per-chunk", "2"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "runtime" / "finetune" / "data"
    assert (out / TRAIN_FILE).is_file() and (out / HELDOUT_FILE).is_file() and (out / MANIFEST).is_file()
    assert "held-out:" in res.output and "data hash:" in res.output


def test_build_data_without_public_chunks_says_what_to_do(tmp_path):
    from kb_chatbot.core.errors import KBError

    settings = make_settings(tmp_path)
    build_index(settings, [d for d in sample_docs() if "public" not in d.acl])
    with pytest.raises(KBError, match="--include-restricted"):
        build_dataset(settings, BuildOptions(out_dir=tmp_path / "out"))


def test_ten_public_pages_are_all_used(kb_settings, tmp_path):
    _, train, held = _build(kb_settings, tmp_path)
    assert {r["doc_id"] for r in train + held} == {f"t:{k}" for k in PAGES}


def test_replies_the_verifier_rejects_are_left_out(kb_settings, tmp_path, monkeypatch):
    """Every other reply gets a number its source does not hold: the answer service's verifier
    (its facts gate) rejects those, so neither they nor their near-miss twin are trained on."""
    real = data_mod.cite
    calls = {"n": 0}

    def cite_inventing(answer: str, n: int) -> str:
        calls["n"] += 1
        if calls["n"] % 2:
            answer = answer.rstrip(". ") + ", within 987 days."
        return real(answer, n)

    monkeypatch.setattr(data_mod, "cite", cite_inventing)
    report, train, held = _build(kb_settings, tmp_path / "checked")
    rows = train + held
    answerable = [r for r in rows if r["kind"] == "answerable"]
    assert answerable and not any("987" in r["reference"] for r in rows)
    assert report.counts["replies_failed_verification"] >= 5
    assert report.counts["replies_verified"] >= len({(r["question"], r["chunk_id"]) for r in answerable})

    calls["n"] = 0
    report, train, held = _build(kb_settings, tmp_path / "unchecked", verify="off")
    assert any("987" in r["reference"] for r in train + held)  # the check is what removed them
    assert "replies_failed_verification" not in report.counts
