"""Answer confidence in [0, 1] from real signals, combined by a small logistic model.

Signals (features, each roughly in [0, 1]):

============== ==================================================================
top_dense      best dense cosine among the prompt's sources (is anything on topic?)
margin         best minus second-best dense cosine (one clear winner or a toss-up)
bm25_agree     share of the prompt's sources found by BOTH dense and BM25 retrieval
rerank_top     best rerank score of the context filter (sentence-level relevance)
cited_fraction share of answer sentences carrying a valid citation
invalid_share  share of cited numbers that named no provided source (dropped)
support_mean   mean support of answer sentences by their cited source (0 if uncited):
               SLM P(yes) for "does the source state this?" (grounding_check: slm) or
               best sentence cosine (grounding_check: embedding)
support_min    the weakest sentence's support (one invented sentence is enough to be wrong)
token_prob     exp(mean token log-probability) of the answer; 0.5 when unknown
novelty        share of the answer's content words that are NOT in the question but ARE in
               the cited sources (grounded new information): 0 for a vacuous restatement
               ("The champion for X is [2].") that cites and "matches" its source but says
               nothing, 0 for invented content, 0 for an abstention
abstained      1 when the answer is the abstention sentence
dropped_share  share of the draft's sentences that verification removed (the rest is shown)
============== ==================================================================

``confidence = sigmoid(bias + sum(w_i * x_i))``. :data:`DEFAULT_WEIGHTS` are hand-set (see the
comments there); ``kb_chatbot.eval.calibration.calibrate`` fits them on labelled answers (offline, with
its plots). Calibrated weights live in a small JSON (``<data_dir>/confidence_weights.json``),
loaded by :meth:`ConfidenceModel.load` when present.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kb_chatbot.app.answer.citations import AnswerSentence, CitationResult, strip_markers
from kb_chatbot.app.answer.prompts import build_support_messages, is_abstention
from kb_chatbot.core.text import content_words, split_sentences
from kb_chatbot.core.types import Hit

log = logging.getLogger(__name__)

FEATURES = (
    "top_dense", "margin", "bm25_agree", "rerank_top", "cited_fraction", "invalid_share",
    "support_mean", "support_min", "token_prob", "novelty", "abstained", "dropped_share",
)

#: Hand-set weights, chosen so that: an on-topic (cosine ~0.6), fully cited, well supported
#: (~0.7) answer scores ~0.95; an uncited or unsupported answer on weak retrieval scores
#: below 0.3; an abstention scores below 0.1 whatever else holds (it is "not an answer",
#: which routes it to the correction pass and, failing that, to an honest abstention).
DEFAULT_WEIGHTS: dict[str, float] = {
    "top_dense": 2.0,
    "margin": 1.0,
    "bm25_agree": 0.5,
    "rerank_top": 1.0,
    "cited_fraction": 1.0,
    "invalid_share": -1.5,
    "support_mean": 3.0,
    "support_min": 1.0,
    "token_prob": 1.0,
    "novelty": 4.0,
    "abstained": -6.0,
    "dropped_share": -2.0,
}
#: novelty (4.0, bias -1.0 for it) was added after vacuous cited answers of the 1.5B model
#: passed at 0.8+ on the sample facts; support then outweighs citing (an invented but cited
#: sentence stays below 0.5).
DEFAULT_BIAS = -5.0
WEIGHTS_FILE = "confidence_weights.json"


def sigmoid(z: np.ndarray | float) -> Any:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


@dataclass(frozen=True)
class ConfidenceModel:
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    bias: float = DEFAULT_BIAS
    threshold: float = 0.5  # recommended by calibration; the service uses answer.confidence_threshold
    origin: str = "hand-set defaults"

    def score(self, features: Mapping[str, float]) -> float:
        z = self.bias + sum(w * float(features.get(k, 0.0)) for k, w in self.weights.items())
        return float(sigmoid(z))

    def to_json(self) -> dict[str, Any]:
        return {"bias": self.bias, "weights": dict(self.weights), "threshold": self.threshold, "origin": self.origin}

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | Path | None) -> "ConfidenceModel":
        """The weights in ``path``; the defaults when it does not exist (a bad file is an error)."""
        if path is None or not Path(path).is_file():
            return cls()
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            weights = {str(k): float(v) for k, v in data["weights"].items()}
            unknown = sorted(set(weights) - set(FEATURES))
            if unknown:
                raise ValueError(f"unknown features {unknown}")
            return cls(weights, float(data["bias"]), float(data.get("threshold", 0.5)), str(data.get("origin", path)))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            from kb_chatbot.core.errors import ConfigError

            raise ConfigError(
                f"{path}: not a confidence weights file ({e}); delete it to use the defaults or re-run calibration"
            ) from None


# --- signals ----------------------------------------------------------------------------


def retrieval_features(hits: Sequence[Hit]) -> dict[str, float]:
    dense = sorted((h.dense_score for h in hits if h.dense_score is not None), reverse=True)
    top = dense[0] if dense else 0.0
    second = dense[1] if len(dense) > 1 else 0.0
    both = [h for h in hits if h.dense_score is not None and h.bm25_score is not None]
    rerank = [h.rerank_score for h in hits if h.rerank_score is not None]
    return {
        "top_dense": max(0.0, float(top)),
        "margin": max(0.0, float(top - second)) if dense else 0.0,
        "bm25_agree": len(both) / len(hits) if hits else 0.0,
        "rerank_top": max(0.0, float(max(rerank))) if rerank else max(0.0, float(top)),
    }


def sentence_support(
    sentences: Sequence[AnswerSentence],
    hits: Sequence[Hit],
    *,
    mode: str = "embedding",
    embedder=None,
    generator=None,
) -> list[float]:
    """How well each sentence is supported by the sources it cites (0 for an uncited sentence)."""
    if mode == "slm" and generator is not None:
        out = []
        for s in sentences:
            if not s.cited:
                out.append(0.0)
                continue
            evidence = "\n".join(hits[n - 1].prompt_text for n in s.cited)
            out.append(float(generator.yes_probability(build_support_messages(s.claim, evidence))))
        return out
    if mode == "off" or embedder is None:
        return [1.0 if s.cited else 0.0 for s in sentences]
    cited = [s for s in sentences if s.cited]
    if not cited:
        return [0.0] * len(sentences)
    src_sents: dict[int, list[str]] = {}
    for s in cited:
        for n in s.cited:
            if n not in src_sents:
                src_sents[n] = split_sentences(hits[n - 1].prompt_text) or [hits[n - 1].prompt_text]
    order = sorted(src_sents)
    texts = [s.claim for s in cited] + [t for n in order for t in src_sents[n]]
    vecs = np.asarray(embedder.embed_documents(texts), dtype=np.float32)
    claim_vecs, pos, src_vecs = vecs[: len(cited)], len(cited), {}
    for n in order:
        src_vecs[n] = vecs[pos : pos + len(src_sents[n])]
        pos += len(src_sents[n])
    support = {}
    for s, v in zip(cited, claim_vecs):
        support[id(s)] = max(float(np.max(src_vecs[n] @ v)) for n in s.cited)
    return [max(0.0, support[id(s)]) if s.cited else 0.0 for s in sentences]


def answer_features(
    result: CitationResult,
    hits: Sequence[Hit],
    support: Sequence[float],
    token_logprobs: Sequence[float] = (),
    question: str = "",
) -> dict[str, float]:
    """The feature vector of one answer (see the module docstring)."""
    feats = retrieval_features(hits)
    sents = result.sentences
    abstained = is_abstention(result.text)
    feats["cited_fraction"] = (sum(1 for s in sents if s.cited) / len(sents)) if sents and not abstained else 0.0
    feats["invalid_share"] = result.markers_invalid / result.markers_total if result.markers_total else 0.0
    sup = list(support) if not abstained else []
    feats["support_mean"] = float(np.mean(sup)) if sup else 0.0
    feats["support_min"] = float(np.min(sup)) if sup else 0.0
    lps = [lp for lp in token_logprobs if lp is not None and math.isfinite(lp)]
    feats["token_prob"] = float(math.exp(sum(lps) / len(lps))) if lps else 0.5
    cited = {n for s in sents for n in s.cited}
    evidence = " ".join(hits[n - 1].prompt_text for n in sorted(cited))
    feats["novelty"] = 0.0 if abstained else novelty(question, result.text, evidence)
    feats["abstained"] = 1.0 if abstained else 0.0
    feats.setdefault("dropped_share", 0.0)  # set by the service from the verification
    return {k: round(float(feats[k]), 6) for k in FEATURES}


def novelty(question: str, answer: str, evidence: str) -> float:
    """Share of the answer's content words that are new (not in the question) and in ``evidence``."""
    words = content_words(strip_markers(answer))
    if not words:
        return 0.0
    return len((words - content_words(question)) & content_words(evidence)) / len(words)
