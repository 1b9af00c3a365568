"""Calibrate the confidence scorer on a labelled question set with the real pipeline.

For each fact of ``facts.jsonl`` (question, keywords, readers; see data/sample/README.md) the
question is asked by a reader (and, for restricted facts, by a non-reader) with the
self-correction pass off and the threshold at 0, so the DRAFT answer and its features are
what gets labelled: the scorer's job is to judge a draft before routing.

A draft is *correct* when it is a substantive answer that contains every keyword of a fact
the asker may read. An abstention is never a correct *answer* (routing turns low confidence
into an abstention anyway), and any substantive answer to an unanswerable or unreadable
question is wrong.

    .venv/bin/python -m kb_chatbot.eval.calibration                     # kb.yaml, data/sample/facts.jsonl
    .venv/bin/python -m kb_chatbot.eval.calibration --limit 10 --model smollm2-135m

Writes ``<data_dir>/confidence_weights.json`` (loaded by build_services), and under
``<data_dir>/reports/``: ``calibration-records.jsonl``, ``calibration-report.json`` and
``calibration-reliability.png``. The eval package reuses :func:`collect_records` and
:func:`label`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from kb_chatbot.app.answer.confidence import FEATURES, WEIGHTS_FILE, ConfidenceModel, sigmoid
from kb_chatbot.eval.metrics import auroc, reliability_bins
from kb_chatbot.app.answer.prompts import is_abstention
from kb_chatbot.core.types import Answer, Principal

log = logging.getLogger(__name__)



# --- fitting the confidence model (moved from answer/confidence.py: offline work) -----------


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iters: int = 50) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method; returns (weights, bias)."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 1e-6  # the bias is (almost) not regularised
    for _ in range(iters):
        p = sigmoid(xb @ w)
        grad = xb.T @ (p - y) + reg * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w[:-1], float(w[-1])


def _records(records: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for r in records:
        feats, correct = (r["features"], r["correct"]) if isinstance(r, Mapping) else r
        xs.append([float(feats.get(k, 0.0)) for k in FEATURES])
        ys.append(1.0 if correct else 0.0)
    return np.asarray(xs, dtype=float).reshape(-1, len(FEATURES)), np.asarray(ys, dtype=float)


def best_threshold(probs: Sequence[float], labels: Sequence[bool]) -> float:
    """The threshold maximising Youden's J (TPR - FPR); ties go to the lower threshold."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=bool)
    if y.all() or (~y).all():
        return 0.5
    cands = np.unique(p)
    best, best_j = 0.5, -2.0
    for t in cands:
        pred = p >= t
        j = pred[y].mean() - pred[~y].mean()
        if j > best_j + 1e-12:
            best, best_j = float(t), j
    return best


def calibrate(records: Iterable[Any], *, l2: float = 1.0, folds: int = 5, seed: int = 0) -> tuple[ConfidenceModel, float, dict[str, Any]]:
    """Fit weights on labelled ``records`` (``{"features": {...}, "correct": bool}`` or pairs).

    Returns ``(model, threshold, report)``; the report holds AUROC in-sample, cross-validated
    (k-fold, the honest figure on a small set) and of the hand-set defaults, per-feature AUROC,
    the metrics at the threshold, the Brier score and reliability bins.
    """
    x, y = _records(records)
    n = len(y)
    if n < 4 or y.min() == y.max():
        raise ValueError(f"calibration needs both right and wrong answers (got {int(y.sum())} right of {n})")
    w, b = _fit_logistic(x, y, l2)
    probs = sigmoid(x @ w + b)
    threshold = best_threshold(probs, y.astype(bool))
    model = ConfidenceModel({k: round(float(v), 4) for k, v in zip(FEATURES, w)}, round(b, 4), round(threshold, 4), f"calibrated on {n} answers")
    default = ConfidenceModel()
    default_probs = [default.score(dict(zip(FEATURES, row))) for row in x]
    cv = np.full(n, np.nan)
    k = min(folds, int(min(y.sum(), n - y.sum())))
    if k >= 2:
        rng = np.random.default_rng(seed)
        fold_of = np.empty(n, dtype=int)
        for cls in (0.0, 1.0):  # stratified
            idx = rng.permutation(np.flatnonzero(y == cls))
            fold_of[idx] = np.arange(len(idx)) % k
        for f in range(k):
            tr, te = fold_of != f, fold_of == f
            if y[tr].min() == y[tr].max():
                continue
            wf, bf = _fit_logistic(x[tr], y[tr], l2)
            cv[te] = sigmoid(x[te] @ wf + bf)
    pred = probs >= threshold
    yb = y.astype(bool)
    sub = x[:, FEATURES.index("abstained")] == 0
    report = {
        "n": n,
        "correct": int(y.sum()),
        "auroc_fitted": auroc(probs, yb),
        "auroc_cross_validated": auroc(cv[~np.isnan(cv)], yb[~np.isnan(cv)]) if not np.isnan(cv).all() else None,
        "auroc_default_weights": auroc(default_probs, yb),
        # abstentions are all "wrong" by definition and easy to spot: this is the hard part
        "auroc_substantive_fitted": auroc(probs[sub], yb[sub]) if sub.any() else None,
        "auroc_substantive_default_weights": auroc(np.asarray(default_probs)[sub], yb[sub]) if sub.any() else None,
        "feature_auroc": {f: auroc(x[:, i], yb) for i, f in enumerate(FEATURES)},
        "threshold": round(threshold, 4),
        "accuracy_at_threshold": float((pred == yb).mean()),
        "true_positive_rate": float(pred[yb].mean()),
        "false_positive_rate": float(pred[~yb].mean()),
        "brier": float(np.mean((probs - y) ** 2)),
        "reliability": [b.__dict__ for b in reliability_bins(probs, yb, n_bins=5) if b.count],
    }
    return model, threshold, report


def plot_reliability(probs: Sequence[float], labels: Sequence[bool], path: str | Path, title: str = "Confidence reliability") -> Path:
    """A reliability diagram (accuracy per confidence bin vs the diagonal) and the score histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b for b in reliability_bins(probs, labels, n_bins=10) if b.count]
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=bool)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax1.plot([b.mean_confidence for b in bins], [b.accuracy for b in bins], "o-", label="answers")
    for b in bins:
        ax1.annotate(str(b.count), (b.mean_confidence, b.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax1.set(xlabel="confidence", ylabel="share correct", xlim=(0, 1), ylim=(0, 1.05), title=title)
    ax1.legend(loc="upper left")
    ax2.hist([p[y], p[~y]], bins=np.linspace(0, 1, 11), label=["correct", "wrong"], color=["tab:green", "tab:red"])
    ax2.set(xlabel="confidence", ylabel="answers", title=f"AUROC {auroc(p, y) or float('nan'):.2f}")
    ax2.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


@dataclass(frozen=True)
class Fact:
    id: str
    question: str
    keywords: tuple[str, ...]
    readers: str | tuple[str, ...]  # "public" or logins
    answerable: bool


def load_facts(path: str | Path) -> list[Fact]:
    """Read facts.jsonl; a bad line is an error naming the file and line."""
    facts = []
    p = Path(path)
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            readers = d.get("readers", "public")
            facts.append(Fact(
                id=str(d["id"]), question=str(d["question"]), keywords=tuple(d.get("keywords") or ()),
                readers=readers if readers == "public" else tuple(str(r).lower() for r in readers),
                answerable=bool(d.get("source_type")) and bool(d.get("keywords")),
            ))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{p}:{i}: not a fact line ({e}); expected id, question, keywords, readers") from None
    return facts


def label(fact: Fact, user: Principal, answer_text: str) -> bool:
    """True when the answer is a substantive, correct answer the user was entitled to."""
    if is_abstention(answer_text):
        return False
    can_read = fact.readers == "public" or user.username in fact.readers
    if not fact.answerable or not can_read:
        return False
    text = answer_text.lower()
    return all(k.lower() in text for k in fact.keywords)


def askers(fact: Fact, principal_for, default_user: str = "bob", outsiders: Sequence[str] = ("bob", "erin")) -> list[Principal]:
    """A reader (public facts: ``default_user``) and, for restricted facts, one non-reader."""
    if fact.readers == "public":
        return [principal_for(default_user)]
    users = [principal_for(fact.readers[0])]
    outsider = next((u for u in outsiders if u not in fact.readers), None)
    if outsider:
        users.append(principal_for(outsider))
    return users


def collect_records(service, facts: Iterable[Fact], principal_for, *, progress: bool = False) -> list[dict[str, Any]]:
    """Ask every fact (see :func:`askers`); one record per answer: features, label, answer, timings."""
    records = []
    facts = list(facts)
    for i, fact in enumerate(facts, start=1):
        for user in askers(fact, principal_for):
            t = time.perf_counter()
            ans: Answer = service.answer(fact.question, user=user)
            feats = {k: float(ans.scores.get(k, 0.0)) for k in FEATURES}
            if not ans.sources:  # no readable hit: abstained before any model call
                feats["abstained"] = 1.0
            rec = {
                "id": fact.id, "user": user.username, "question": fact.question, "answer": ans.text,
                "route": ans.route, "features": feats, "correct": label(fact, user, ans.text),
                "seconds": round(time.perf_counter() - t, 2),
            }
            records.append(rec)
            if progress:
                print(f"[{i}/{len(facts)}] {fact.id} user={user.username} correct={rec['correct']} "
                      f"seconds={rec['seconds']}", file=sys.stderr, flush=True)
    return records


def run(settings, facts_path: Path, *, limit: int | None = None, write: bool = True, progress: bool = True) -> dict[str, Any]:
    """Collect draft answers with the real pipeline, fit the weights, write the artefacts."""
    from kb_chatbot.app.auth import UserDirectory
    from kb_chatbot.app.kb.services import build_services

    draft_settings = settings.model_copy(deep=True)
    draft_settings.answer.self_correction = False
    draft_settings.answer.confidence_threshold = 0.0
    draft_settings.answer.escalation = None
    services = build_services(draft_settings)
    if not services.has_index:
        raise SystemExit(f"no index in {settings.index_dir}: run `kb reindex` first")
    directory = UserDirectory.from_config(settings.server.auth)
    facts = load_facts(facts_path)[:limit]
    records = collect_records(services.answer_service, facts, directory.principal_for, progress=progress)
    model, threshold, report = calibrate(records)
    report["model"] = getattr(services.generator, "model_id", "")
    report["grounding_check"] = settings.answer.grounding_check
    report["facts"] = len(facts)
    report["substantive_answers"] = sum(1 for r in records if r["features"]["abstained"] == 0)
    if write:
        reports = settings.reports_dir
        reports.mkdir(parents=True, exist_ok=True)
        with open(reports / "calibration-records.jsonl", "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        probs = [model.score(r["features"]) for r in records]
        plot_reliability(probs, [r["correct"] for r in records], reports / "calibration-reliability.png",
                         title=f"Confidence reliability ({report['model']}, n={len(records)})")
        (reports / "calibration-report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        model.save(settings.data_dir / WEIGHTS_FILE)
        report["written"] = [str(settings.data_dir / WEIGHTS_FILE), str(reports / "calibration-report.json"),
                             str(reports / "calibration-reliability.png")]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    from kb_chatbot.core.settings import load_settings

    ap = argparse.ArgumentParser(description="Calibrate the answer confidence scorer on facts.jsonl.")
    ap.add_argument("--config", default=None, help="settings YAML (default kb.yaml / KB_CONFIG)")
    ap.add_argument("--facts", default="data/sample/facts.jsonl")
    ap.add_argument("--limit", type=int, default=None, help="only the first N facts")
    ap.add_argument("--model", default=None, help="override generator.model (e.g. smollm2-135m)")
    ap.add_argument("--dry-run", action="store_true", help="report only; write nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    settings = load_settings(args.config)
    if args.model:
        settings.generator.model = args.model
    report = run(settings, Path(args.facts), limit=args.limit, write=not args.dry_run)
    keys = ("model", "n", "correct", "auroc_fitted", "auroc_cross_validated", "auroc_default_weights",
            "auroc_substantive_fitted", "auroc_substantive_default_weights", "threshold", "accuracy_at_threshold")
    summary = {k: report[k] for k in keys}
    print(json.dumps(summary | {"feature_auroc": report["feature_auroc"], "written": report.get("written")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
