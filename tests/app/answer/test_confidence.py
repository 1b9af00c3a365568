"""Confidence: features from real signals, the logistic model, calibration and its report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kb_chatbot.app.answer.citations import extract_citations
from kb_chatbot.app.answer.confidence import FEATURES, ConfidenceModel, answer_features, sentence_support
from kb_chatbot.eval.calibration import best_threshold, calibrate, plot_reliability
from kb_chatbot.eval.metrics import auroc
from kb_chatbot.app.generators.fake import FakeGenerator
from kb_chatbot.app.answer.prompts import ABSTAIN_TEXT
from kb_chatbot.core.errors import ConfigError
from kb_chatbot.core.types import Chunk, Hit
from kb_chatbot.index.embedder import HashEmbedder


def hit(n: int, text: str, dense: float | None, bm25: float | None = None) -> Hit:
    chunk = Chunk(id=f"c{n}", doc_id=f"t:d{n}", ordinal=0, text=text, start=0, end=len(text))
    return Hit(chunk, f"Doc {n}", f"https://w/{n}", "t", "wiki", score=1.0, dense_score=dense, bm25_score=bm25)


HITS = [
    hit(1, "Full-time employees get 25 days of vacation per year. Requests go through Workday.", 0.71, 3.2),
    hit(2, "Meals are reimbursed up to 60 dollars per day.", 0.35, None),
]


QUESTION = "How many vacation days do employees get?"


def features(answer: str, hits=HITS, mode="embedding", logprobs=(-0.1, -0.2), question=QUESTION):
    res = extract_citations(answer, hits)
    sup = sentence_support(res.sentences, hits, mode=mode, embedder=HashEmbedder(), generator=FakeGenerator())
    return answer_features(res, hits, sup, logprobs, question=question)


def test_features_are_bounded_and_named():
    f = features("Employees get 25 days of vacation per year [1].")
    assert set(f) == set(FEATURES)
    assert all(0.0 <= v <= 1.0 for v in f.values())
    assert f["top_dense"] == pytest.approx(0.71) and f["margin"] == pytest.approx(0.36)
    assert f["bm25_agree"] == 0.5 and f["cited_fraction"] == 1.0
    assert f["token_prob"] == pytest.approx(np.exp(-0.15), abs=1e-4)


def test_supported_cited_answer_beats_uncited_and_invented_and_abstention():
    m = ConfidenceModel()
    good = m.score(features("Full-time employees get 25 days of vacation per year [1]."))
    invented = m.score(features("Employees get unlimited vacation and a free car [2]."))
    uncited = m.score(features("Employees get 25 days of vacation per year."))
    invalid = m.score(features("Employees get 25 days of vacation per year [7]."))
    abstained = m.score(features(ABSTAIN_TEXT))
    vacuous = m.score(features("Employees get vacation days [1]."))
    assert features("Employees get vacation days [1].")["novelty"] == 0.0
    assert features(ABSTAIN_TEXT)["novelty"] == 0.0
    assert features("Full-time employees get 25 days of vacation per year [1].")["novelty"] == 0.5
    assert good > 0.8 and good > vacuous
    assert good > invented and good > uncited and good > invalid
    assert uncited < 0.5 and invalid < 0.5 and invented < 0.5 and abstained < 0.1


@pytest.mark.parametrize("mode", ["embedding", "slm", "off"])
def test_support_modes_rank_supported_above_unsupported(mode):
    res = extract_citations("Employees get 25 days of vacation per year [1]. Bananas are blue [1]. Uncited claim.", HITS)
    sup = sentence_support(res.sentences, HITS, mode=mode, embedder=HashEmbedder(), generator=FakeGenerator())
    assert len(sup) == 3 and sup[2] == 0.0
    if mode != "off":
        assert sup[0] > sup[1]


def test_slm_support_asks_the_generator_once_per_cited_sentence():
    gen = FakeGenerator(yes=[0.9, 0.2])
    res = extract_citations("A [1]. B [2]. C.", HITS)
    assert sentence_support(res.sentences, HITS, mode="slm", generator=gen) == [0.9, 0.2, 0.0]
    assert len(gen.yes_calls) == 2 and "Claim: A." in gen.yes_calls[0][-1].content


def test_auroc_known_values():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.5, 0.6], [True, True]) is None


def synthetic(n=200, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        correct = bool(rng.random() < 0.6)
        f = {k: float(rng.random()) for k in FEATURES}
        f["support_mean"] = float(np.clip(rng.normal(0.75 if correct else 0.35, 0.15), 0, 1))
        f["cited_fraction"] = float(1.0 if correct or rng.random() < 0.4 else 0.0)
        f["abstained"] = 0.0
        out.append({"features": f, "correct": correct})
    return out


def test_calibrate_learns_the_signal_and_reports(tmp_path):
    model, threshold, report = calibrate(synthetic())
    assert report["n"] == 200 and 0 < threshold < 1
    assert report["auroc_fitted"] > 0.9 and report["auroc_cross_validated"] > 0.85
    assert report["feature_auroc"]["support_mean"] > 0.85
    assert abs(report["feature_auroc"]["margin"] - 0.5) < 0.15  # noise feature
    assert model.weights["support_mean"] > 2 * abs(model.weights["margin"])
    assert 0 <= report["false_positive_rate"] < report["true_positive_rate"] <= 1
    path = model.save(tmp_path / "w.json")
    loaded = ConfidenceModel.load(path)
    assert loaded.weights == model.weights and loaded.threshold == model.threshold
    assert json.loads(path.read_text())["origin"].startswith("calibrated on 200")


def test_calibrate_needs_both_classes():
    recs = [r | {"correct": True} for r in synthetic(10)]
    with pytest.raises(ValueError, match="both right and wrong"):
        calibrate(recs)


def test_best_threshold_maximises_youden():
    assert best_threshold([0.1, 0.4, 0.6, 0.9], [False, False, True, True]) == 0.6


def test_weights_file_missing_gives_defaults_bad_file_is_a_clear_error(tmp_path):
    assert ConfidenceModel.load(tmp_path / "none.json").origin == "hand-set defaults"
    bad = tmp_path / "bad.json"
    bad.write_text('{"bias": 0, "weights": {"nonsense": 1}}')
    with pytest.raises(ConfigError, match="bad.json"):
        ConfidenceModel.load(bad)


def test_reliability_plot_is_written(tmp_path):
    recs = synthetic(50)
    model, _, _ = calibrate(recs)
    probs = [model.score(r["features"]) for r in recs]
    out = plot_reliability(probs, [r["correct"] for r in recs], tmp_path / "rel.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- calibration on facts (the pipeline part) --------------------------------------------

def test_facts_labels_and_askers(tmp_path, sample_dir):
    from kb_chatbot.eval.calibration import Fact, askers, label, load_facts
    from kb_chatbot.core.types import Principal

    facts = load_facts(sample_dir / "facts.jsonl")
    assert len(facts) >= 10 and any(not f.answerable for f in facts)
    pto = Fact("pto", "How many days carry over?", ("6 days",), "public", True)
    secret = Fact("falcon", "Launch?", ("March 9",), ("alice", "dave"), True)
    none = Fact("ceo", "CEO?", (), "public", False)
    bob, alice = Principal("bob"), Principal("alice")
    assert label(pto, bob, "You can carry over up to 6 Days [1].")
    assert not label(pto, bob, "You can carry over 5 days [1].")
    assert not label(pto, bob, ABSTAIN_TEXT)
    assert label(secret, alice, "It is March 9 [2].") and not label(secret, bob, "It is March 9 [2].")
    assert not label(none, bob, "The CEO is Jane [1].") and not label(none, bob, ABSTAIN_TEXT)
    who = askers(secret, lambda n: Principal(n))
    assert [u.username for u in who] == ["alice", "bob"]
    bad = tmp_path / "f.jsonl"
    bad.write_text('{"id": "x", "question": "q"}\nnot json\n')
    with pytest.raises(ValueError, match="f.jsonl:2"):
        load_facts(bad)


def test_collect_records_runs_the_service(tmp_path):
    from answer_fixtures import doc, make_rig

    from kb_chatbot.eval.calibration import Fact, collect_records
    from kb_chatbot.core.types import Principal

    rig = make_rig(tmp_path, [doc("pto", "Full-time employees can carry over 6 days of unused vacation.")],
                   answer={"self_correction": False, "confidence_threshold": 0.0})
    facts = [Fact("pto", "How many unused vacation days carry over?", ("6 days",), "public", True),
             Fact("ceo", "Who is the chief executive?", (), "public", False)]
    recs = collect_records(rig.service, facts, lambda n: Principal(n))
    assert [r["correct"] for r in recs] == [True, False]
    assert set(recs[0]["features"]) == set(FEATURES) and recs[0]["route"] == "answered"
