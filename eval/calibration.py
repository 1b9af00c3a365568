"""Calibrate the confidence scorer on a labelled question set with the real pipeline.

For each fact of ``facts.jsonl`` (question, keywords, readers; see data/sample/README.md) the
question is asked by a reader (and, for restricted facts, by a non-reader) with the
self-correction pass off and the threshold at 0, so the DRAFT answer and its features are
what gets labelled: the scorer's job is to judge a draft before routing.

A draft is *correct* when it is a substantive answer that contains every keyword of a fact
the asker may read. An abstention is never a correct *answer* (routing turns low confidence
into an abstention anyway), and any substantive answer to an unanswerable or unreadable
question is wrong.

    .venv/bin/python -m eval.calibration                     # kb.yaml, data/sample/facts.jsonl
    .venv/bin/python -m eval.calibration --limit 10 --model smollm2-135m

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
from typing import Any, Iterable, Sequence

from answer.confidence import FEATURES, WEIGHTS_FILE, calibrate, plot_reliability
from answer.prompts import is_abstention
from core.types import Answer, Principal

log = logging.getLogger(__name__)


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
    from web.auth import UserDirectory
    from kb.services import build_services

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
    from core.settings import load_settings

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
