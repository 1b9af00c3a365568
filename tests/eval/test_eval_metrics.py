"""Metric functions on hand-made cases whose values are worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kb_chatbot.eval import metrics as m


def test_file_matches_at_folder_boundary():
    assert m.file_matches("aragog:bert.pdf", "bert.pdf")
    assert m.file_matches("acme-drive:papers/BERT.pdf", "bert.pdf")
    assert m.file_matches("https://drive.acme.example/papers/bert.pdf#page=3", "papers/bert.pdf")
    assert m.file_matches("acme-wiki:hr/pto.md", "hr/pto.md")
    assert not m.file_matches("aragog:albert.pdf", "bert.pdf")
    assert not m.file_matches("acme-wiki:hr/pto.md", "it/pto.md")
    assert not m.file_matches("aragog:bert.pdf", "")


def test_first_relevant_rank_file_and_page_levels():
    retrieved = [("s:a.pdf", 3), ("s:b.pdf", 7), ("s:b.pdf", 2), ("s:c.md", None)]
    assert m.first_relevant_rank(retrieved, [("b.pdf", 2)], "file") == 2
    assert m.first_relevant_rank(retrieved, [("b.pdf", 2)], "page") == 3
    assert m.first_relevant_rank(retrieved, [("b.pdf", None)], "page") == 2  # no page: file only
    assert m.first_relevant_rank(retrieved, [("d.pdf", 1)], "file") is None
    assert m.first_relevant_rank(retrieved, [("x.pdf", 1), ("c.md", None)], "file") == 4
    assert m.first_relevant_rank([], [("a.pdf", 1)]) is None


def test_hit_at_k_and_mrr():
    ranks = [1, 3, None, 2]
    assert m.hit_at_k(ranks, 1) == 0.25
    assert m.hit_at_k(ranks, 5) == 0.75
    assert m.hit_at_k(ranks, 2) == 0.5
    assert m.mrr(ranks) == pytest.approx((1 + 1 / 3 + 0 + 1 / 2) / 4)
    assert m.hit_at_k([], 5) is None and m.mrr([]) is None


def test_squad_normalisation_and_token_f1():
    assert m.normalize_answer("The  Cat, sat!") == "cat sat"
    # pred: masked lm and nsp ; ref: masked lm mlm and next sentence prediction nsp
    # common: masked lm and nsp = 4; P = 4/4, R = 4/8 -> F1 = 2*1*0.5/1.5 = 2/3
    assert m.token_f1("Masked LM and NSP", "Masked LM (MLM) and Next Sentence Prediction (NSP).") == pytest.approx(2 / 3)
    assert m.token_f1("the answer", "An answer.") == 1.0
    assert m.token_f1("", "") == 1.0
    assert m.token_f1("", "something") == 0.0
    assert m.token_f1("a the", "x") == 0.0  # only articles: empty after normalisation
    assert m.token_f1("red blue", "green") == 0.0
    # repeated tokens are counted with multiplicity: pred "a a b"->"b"? no: "x x y" vs "x y y"
    # common = min counts: x:1, y:1 = 2; P = 2/3, R = 2/3 -> F1 = 2/3
    assert m.token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert m.exact_match("The Cat.", "cat") == 1.0


def test_cosine_and_embedding_similarity():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0], [1.0, 0.0]])
    np.testing.assert_allclose(m.cosine_similarities(a, b), [0.0, 1.0, 0.0])

    class TwoWords:  # "embeds" by counting two words: exact, known cosines
        def embed_documents(self, texts):
            v = np.array([[t.split().count("cat"), t.split().count("dog")] for t in texts], dtype=np.float32)
            return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)

    sims = m.embedding_similarity(TwoWords(), ["cat", "cat dog"], ["cat cat", "dog"])
    assert sims == pytest.approx([1.0, math.sqrt(0.5)])
    assert m.embedding_similarity(TwoWords(), [], []) == []


def test_keyword_recall():
    assert m.keyword_recall("You get 25 days of PTO per year.", ["25 days", "PTO", "sick leave"]) == pytest.approx(2 / 3)
    assert m.keyword_recall("anything", []) is None


def test_citation_precision_recall():
    cited = [("drive:a.pdf", 1), ("drive:a.pdf", 2), ("drive:b.pdf", 5), ("drive:z.pdf", 1)]
    expected = [("a.pdf", 2), ("b.pdf", 4), ("c.pdf", None)]
    f = m.citation_precision_recall(cited, expected, "file")
    assert f.precision == pytest.approx(2 / 3)  # a, b of a, b, z
    assert f.recall == pytest.approx(2 / 3)  # a, b of a, b, c
    p = m.citation_precision_recall(cited, expected, "page")
    assert p.precision == pytest.approx(1 / 4)  # only (a, 2) of 4 distinct cited pages
    assert p.recall == pytest.approx(1 / 3)
    none = m.citation_precision_recall([], expected)
    assert none.precision is None and none.recall == 0.0
    assert m.citation_precision_recall(cited, []).recall is None


def test_abstention_and_hallucination_rates():
    r = m.abstention_rates([True, False, True, False, False], [False, False, True, True, True])
    assert r == {"unanswerable": 0.5, "answerable": 1 / 3}
    assert m.abstention_rates([], []) == {"unanswerable": None, "answerable": None}
    # answers 0 and 2 abstained (excluded); of the 3 others, one has an unsupported claim
    assert m.hallucination_rate([5, 0, 0, 2, 0], [True, False, True, False, False]) == pytest.approx(1 / 3)
    assert m.hallucination_rate([1], [True]) is None


def test_auroc_known_values_and_ties():
    assert m.auroc([0.9, 0.8, 0.3, 0.1], [True, True, False, False]) == 1.0
    assert m.auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    # pos {0.8, 0.4}, neg {0.6, 0.2}: pairs won 0.8>0.6, 0.8>0.2, 0.4>0.2; lost 0.4<0.6 -> 3/4
    assert m.auroc([0.8, 0.6, 0.4, 0.2], [True, False, True, False]) == 0.75
    # all scores tied: every pair counts half
    assert m.auroc([0.5, 0.5, 0.5], [True, False, False]) == 0.5
    # one tie across classes: pos {0.7, 0.5}, neg {0.5, 0.1}: 0.7>both (2), 0.5=0.5 (0.5), 0.5>0.1 (1) -> 3.5/4
    assert m.auroc([0.7, 0.5, 0.5, 0.1], [True, True, False, False]) == 0.875


def test_auroc_undefined_and_bad_input():
    assert m.auroc([0.2, 0.9], [True, True]) is None
    assert m.auroc([0.2, 0.9], [False, False]) is None
    assert m.auroc([], []) is None
    with pytest.raises(ValueError):
        m.auroc([0.1], [True, False])


def test_auroc_matches_sklearn_on_random_ties():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 200) / 4  # many ties
    labels = rng.random(200) < 0.4
    assert m.auroc(scores, labels) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores))


def test_reliability_bins_and_ece():
    conf = [0.05, 0.15, 0.95, 1.0, 0.55, 0.45]
    correct = [False, False, True, False, True, True]
    bins = m.reliability_bins(conf, correct, n_bins=2)
    assert [b.count for b in bins] == [3, 3]  # [0, .5): .05 .15 .45 ; [.5, 1]: .95 1.0 .55
    assert bins[0].mean_confidence == pytest.approx(0.65 / 3)
    assert bins[0].accuracy == pytest.approx(1 / 3)
    assert bins[1].mean_confidence == pytest.approx(2.5 / 3)
    assert bins[1].accuracy == pytest.approx(2 / 3)
    ece = m.expected_calibration_error(bins)
    assert ece == pytest.approx(0.5 * abs(1 / 3 - 0.65 / 3) + 0.5 * abs(2 / 3 - 2.5 / 3))
    ten = m.reliability_bins([0.0, 0.1, 0.99, 1.0], [True] * 4)
    assert [b.count for b in ten] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert ten[2].mean_confidence is None
    assert m.expected_calibration_error(m.reliability_bins([], [])) is None
    perfect = m.reliability_bins([1.0, 1.0, 0.0], [True, True, False])
    assert m.expected_calibration_error(perfect) == 0.0


def test_percentiles_and_latency_summary():
    assert m.percentiles([1, 2, 3, 4, 5]) == {"p50": 3.0, "p95": pytest.approx(4.8)}
    assert m.percentiles([]) == {"p50": None, "p95": None}
    s = m.latency_summary([{"retrieve": 0.1, "total": 2.0}, {"retrieve": 0.3, "total": 4.0}, {"total": 6.0}])
    assert s["retrieve"]["n"] == 2 and s["retrieve"]["p50"] == pytest.approx(0.2)
    assert s["total"]["p95"] == pytest.approx(5.8)  # 4 + 0.9 * 2
    assert s["total"]["mean"] == pytest.approx(4.0)


def test_sign_test_and_bootstrap():
    a = [0.1, 0.2, 0.3, 0.4, 0.5, None]
    b = [0.2, 0.3, 0.4, 0.5, 0.5, 0.9]
    st = m.sign_test(a, b)
    assert (st["wins"], st["losses"], st["ties"]) == (4, 0, 1)
    assert st["p_value"] == pytest.approx(2 * 0.5 ** 4)  # two-sided exact binomial: 0.125
    bs = m.paired_bootstrap(a, b, n_resamples=500)
    assert bs["n"] == 5 and bs["delta"] == pytest.approx(0.08)
    assert 0.0 <= bs["ci_low"] <= 0.08 <= bs["ci_high"] <= 0.1 + 1e-12
    assert m.sign_test([1.0], [1.0])["p_value"] is None
    assert m.paired_bootstrap([None], [1.0])["delta"] is None


def test_mean_skips_undefined():
    assert m.mean([1.0, None, 0.0]) == 0.5
    assert m.mean([None]) is None


def test_context_recall():
    # reference words (normalised, "the" dropped as an article, "of" a given stop word): masked lm nsp
    ref = "The Masked LM of NSP."
    assert m.context_recall(ref, ["a masked language model", "NSP task"], stopwords=["of"]) == pytest.approx(2 / 3)
    assert m.context_recall(ref, ["Masked LM and NSP"], stopwords=["of"]) == 1.0
    assert m.context_recall(ref, [], stopwords=["of"]) == 0.0
    assert m.context_recall("the of", ["x"], stopwords=["of"]) is None


def test_retrieved_source_with_several_names():
    slack = (["acme-slack:C024:1700000000.0001", "acme-slack:C024", "acme-slack:proj-falcon"], None)
    assert m.first_relevant_rank([("acme-wiki:hr/pto.md", None), slack], [("proj-falcon", None)]) == 2
    assert m.first_relevant_rank([slack], [("C024", None)]) == 1
    pr = m.citation_precision_recall([slack, slack, ("acme-wiki:x.md", None)], [("proj-falcon", None)])
    assert (pr.precision, pr.recall) == (0.5, 1.0)
