"""Quality metrics: pure functions over plain values, each with a known value on a hand-made case.

Conventions: a *source* is ``(file, page)`` with ``page`` 1-based or None; ranks are 1-based;
a metric that is undefined for its input (no positives for AUROC, no citations for precision)
returns ``None`` and means skip it, never 0. Means skip ``None`` values and report how many
questions they cover.
"""
from __future__ import annotations

import collections
import math
import re
import string
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np

SourceRef = tuple[str, "int | None"]
MatchLevel = Literal["file", "page"]


# --- matching sources -------------------------------------------------------------------------


def _norm_path(p: str) -> str:
    p = p.replace("\\", "/").strip().lower()
    p = p.split("#", 1)[0]
    return p.strip("/")


def file_matches(retrieved: str, expected: str) -> bool:
    """True when ``retrieved`` (a document path or id such as ``aragog:papers/bert.pdf``) ends
    with ``expected`` at a folder boundary, case-insensitively. ``bert.pdf`` matches
    ``aragog:bert.pdf`` and ``papers/bert.pdf`` but not ``albert.pdf``."""
    r, e = _norm_path(retrieved), _norm_path(expected)
    if not e:
        return False
    if ":" in r and ":" not in e:  # a doc id "source:path": compare the path part
        r = r.split(":", 1)[1]
    return r == e or r.endswith("/" + e)


def _names(file: str | Sequence[str]) -> tuple[str, ...]:
    return (file,) if isinstance(file, str) else tuple(file)


def source_matches(retrieved: SourceRef, expected: SourceRef, level: MatchLevel) -> bool:
    """File match, and at ``page`` level also equal pages (an expected page of None: file only).

    A retrieved source's file may be a list of the names it goes by (a Slack conversation: its
    document id, its conversation id and its channel name); any one may match."""
    if not any(file_matches(name, expected[0]) for name in _names(retrieved[0])):
        return False
    if level == "page" and expected[1] is not None:
        return retrieved[1] == expected[1]
    return True


def first_relevant_rank(retrieved: Sequence[SourceRef], expected: Sequence[SourceRef],
                        level: MatchLevel = "file") -> int | None:
    """1-based rank of the first retrieved source matching any expected one; None if none does."""
    for rank, r in enumerate(retrieved, 1):
        if any(source_matches(r, e, level) for e in expected):
            return rank
    return None


def hit_at_k(ranks: Sequence[int | None], k: int) -> float | None:
    """Fraction of questions whose first relevant rank is <= k (None when no questions)."""
    if not ranks:
        return None
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks)


def mrr(ranks: Sequence[int | None]) -> float | None:
    """Mean reciprocal rank (0 for a question with no relevant result)."""
    if not ranks:
        return None
    return sum(1.0 / r for r in ranks if r is not None) / len(ranks)


# --- answers vs references --------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 of the normalised bags of words (1.0 when both are empty)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def cosine_similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays (rows need not be normalised)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    denom = np.where((na == 0) | (nb == 0), 1.0, na * nb)
    return np.where((na == 0) | (nb == 0), 0.0, (a * b).sum(axis=1) / denom)


def embedding_similarity(embedder, predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Cosine similarity of each prediction to its reference with ``embedder`` (semantic answer
    similarity, as ARAGOG's SAS metric; MiniLM here instead of a cross-encoder)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not predictions:
        return []
    vecs = embedder.embed_documents(list(predictions) + list(references))
    n = len(predictions)
    return [float(x) for x in cosine_similarities(vecs[:n], vecs[n:])]


def keyword_recall(answer: str, keywords: Sequence[str]) -> float | None:
    """Fraction of ``keywords`` found in ``answer`` (normalised, whole words); None if none."""
    if not keywords:
        return None
    text = f" {normalize_answer(answer)} "
    return sum(1 for k in keywords if f" {normalize_answer(k)} " in text) / len(keywords)


def context_recall(reference: str, contexts: Sequence[str], stopwords: Iterable[str] = ()) -> float | None:
    """Share of the reference answer's distinct normalised words (minus ``stopwords``) that
    occur in the retrieved ``contexts``: a lexical proxy for "the evidence reached the prompt"
    when a data set names no pages. None when the reference has no such word."""
    stop = {normalize_answer(w) for w in stopwords}
    ref = {w for w in normalize_answer(reference).split() if w not in stop}
    if not ref:
        return None
    seen: set[str] = set()
    for c in contexts:
        seen.update(normalize_answer(c).split())
    return len(ref & seen) / len(ref)


# --- citations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float | None  # None: nothing cited
    recall: float | None  # None: nothing expected


def citation_precision_recall(cited: Sequence[SourceRef], expected: Sequence[SourceRef],
                              level: MatchLevel = "file") -> PrecisionRecall:
    """Precision: share of distinct cited sources that match an expected one. Recall: share of
    expected sources matched by some citation. At ``file`` level pages are ignored and
    duplicates collapse per file."""
    def key(f: str | Sequence[str]) -> tuple[str, ...]:
        return tuple(sorted(_norm_path(n) for n in _names(f)))

    if level == "file":
        cited = [(list(k), None) for k in dict.fromkeys(key(f) for f, _ in cited)]
        expected = [(f, None) for f in dict.fromkeys(_norm_path(f) for f, _ in expected)]
    else:
        cited = [(list(k), p) for k, p in dict.fromkeys((key(f), p) for f, p in cited)]
        expected = list(dict.fromkeys((_norm_path(f), p) for f, p in expected))
    precision = (sum(1 for c in cited if any(source_matches(c, e, level) for e in expected)) / len(cited)
                 if cited else None)
    recall = (sum(1 for e in expected if any(source_matches(c, e, level) for c in cited)) / len(expected)
              if expected else None)
    return PrecisionRecall(precision, recall)


# --- abstention, hallucination ------------------------------------------------------------------


def rate(flags: Iterable[bool]) -> float | None:
    """Share of True among ``flags`` (None when empty)."""
    flags = list(flags)
    return sum(1 for f in flags if f) / len(flags) if flags else None


def abstention_rates(abstained: Sequence[bool], answerable: Sequence[bool]) -> dict[str, float | None]:
    """``unanswerable``: share of unanswerable questions the system declined (higher is better);
    ``answerable``: share of answerable ones it declined (false abstentions, lower is better)."""
    if len(abstained) != len(answerable):
        raise ValueError("abstained and answerable differ in length")
    return {
        "unanswerable": rate(a for a, ok in zip(abstained, answerable) if not ok),
        "answerable": rate(a for a, ok in zip(abstained, answerable) if ok),
    }


def hallucination_rate(unsupported_counts: Sequence[int], abstained: Sequence[bool]) -> float | None:
    """Share of answers (abstentions excluded) with at least one claim unsupported by the sources
    it cites, ``unsupported_counts[i]`` being the count of such sentences in answer ``i``."""
    if len(unsupported_counts) != len(abstained):
        raise ValueError("unsupported_counts and abstained differ in length")
    return rate(n > 0 for n, a in zip(unsupported_counts, abstained) if not a)


# --- calibration ----------------------------------------------------------------------------------


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for ``labels`` (True = correct), rank-based
    (Mann-Whitney U / (n_pos * n_neg)) with tied scores counted as half. None when all labels
    are equal (undefined)."""
    from scipy.stats import rankdata

    if len(scores) != len(labels):
        raise ValueError("scores and labels differ in length")
    y = np.asarray(labels, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=np.float64), method="average")
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


@dataclass(frozen=True)
class ReliabilityBin:
    lo: float
    hi: float
    count: int
    mean_confidence: float | None
    accuracy: float | None


def reliability_bins(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1]; bin i holds lo <= c < hi (the last also holds 1.0)."""
    if len(confidences) != len(correct):
        raise ValueError("confidences and correct differ in length")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    c = np.clip(np.asarray(confidences, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(correct, dtype=np.float64)
    idx = np.minimum((c * n_bins).astype(int), n_bins - 1)
    out = []
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        out.append(ReliabilityBin(b / n_bins, (b + 1) / n_bins, n,
                                  float(c[m].mean()) if n else None, float(y[m].mean()) if n else None))
    return out


def expected_calibration_error(bins: Sequence[ReliabilityBin]) -> float | None:
    """ECE = sum over bins of (bin share) * |accuracy - mean confidence|; None with no data."""
    total = sum(b.count for b in bins)
    if total == 0:
        return None
    return float(sum(b.count / total * abs(b.accuracy - b.mean_confidence) for b in bins if b.count))


# --- latency ----------------------------------------------------------------------------------------


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95)) -> dict[str, float | None]:
    """``{"p50": .., "p95": ..}`` with numpy's linear interpolation (None when empty)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    return {f"p{q:g}": (float(np.percentile(v, q)) if len(v) else None) for q in qs}


def latency_summary(timings: Sequence[Mapping[str, float]], qs: Sequence[float] = (50, 95)) -> dict[str, dict]:
    """Per stage (key of the timing dicts, seconds): n, mean and percentiles."""
    stages: dict[str, list[float]] = {}
    for t in timings:
        for k, v in t.items():
            if v is not None:
                stages.setdefault(k, []).append(float(v))
    return {k: {"n": len(v), "mean": float(np.mean(v)), **percentiles(v, qs)} for k, v in stages.items()}


# --- aggregation and significance -----------------------------------------------------------------


def mean(values: Iterable[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def sign_test(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, float | int | None]:
    """Paired two-sided sign test of ``b`` vs ``a`` over questions where both are defined and
    differ: ``wins`` (b > a), ``losses``, ``ties`` and the exact binomial ``p_value``."""
    from scipy.stats import binomtest

    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    wins = sum(1 for x, y in pairs if y > x)
    losses = sum(1 for x, y in pairs if y < x)
    ties = len(pairs) - wins - losses
    p = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else None
    return {"wins": wins, "losses": losses, "ties": ties, "p_value": None if p is None else float(p)}


def paired_bootstrap(a: Sequence[float | None], b: Sequence[float | None], *, n_resamples: int = 2000,
                     seed: int = 0, confidence: float = 0.95) -> dict[str, float | None]:
    """Mean of (b - a) over questions where both are defined, with a percentile bootstrap
    confidence interval (resampling questions, fixed seed)."""
    d = np.asarray([y - x for x, y in zip(a, b) if x is not None and y is not None], dtype=np.float64)
    if not len(d):
        return {"delta": None, "ci_low": None, "ci_high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_resamples, len(d)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return {"delta": float(d.mean()), "ci_low": float(np.quantile(means, alpha)),
            "ci_high": float(np.quantile(means, 1 - alpha)), "n": int(len(d))}
