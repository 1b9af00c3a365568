"""Human verdicts that override the automatic ones, and the terminal labeller behind ``kb eval label``.

A labels file is JSONL, one object per labelled answer:
``{"id": "hb-07", "answer_key": "3f2a…", "verdict": "wrong", "note": "copay is $30"}``.
``answer_key`` fingerprints the exact answer text (:func:`kb_chatbot.eval.verdict.answer_key`): a label
is about one answer, so a new run whose answer differs is judged afresh, not by an old label.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from kb_chatbot.core.errors import KBError
from kb_chatbot.eval.verdict import VERDICTS

#: Keys of the labeller's prompt -> verdicts.
KEYS = {"c": "correct", "w": "wrong", "v": "vacuous", "a": "abstained"}


class LabelFileError(KBError):
    """A labels file cannot be read; the message names the file, line and field."""


def load_labels(path: str | Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(question id, answer key) -> label row. A missing file is no labels."""
    path = Path(path)
    if not path.exists():
        return {}
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LabelFileError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or row.get("verdict") not in VERDICTS:
            raise LabelFileError(f"{path}:{lineno}: 'verdict' must be one of {', '.join(VERDICTS)}")
        if not row.get("id") or not row.get("answer_key"):
            raise LabelFileError(f"{path}:{lineno}: 'id' and 'answer_key' are required")
        out[(str(row["id"]), str(row["answer_key"]))] = row
    return out


def apply_labels(result: dict[str, Any], labels: dict[tuple[str, str], dict[str, Any]]) -> int:
    """Put human verdicts on the matching answer records and recompute the summaries.
    Returns how many records got a label."""
    from kb_chatbot.eval import records as rec

    n = 0
    for run in result.get("answers", {}).values():
        for r in run["records"]:
            row = labels.get((r["id"], r.get("answer_key", "")))
            rec.finalize(r, row["verdict"] if row else None)
            n += bool(row)
        run["summary"] = rec.summarize_answers(run["records"])
    return n


def rejudge(result: dict[str, Any]) -> int:
    """Recompute every answer record's automatic verdict with today's rules (a results file
    written by an older version, or before the rules changed), then the summaries."""
    from kb_chatbot.eval import records as rec
    from kb_chatbot.eval.verdict import answer_key, judge

    n = 0
    for run in result.get("answers", {}).values():
        for r in run["records"]:
            j = judge(r["answerable"], r.get("expected_answer", ""), "" if r["abstained"] else r["answer"],
                      r["question"])
            if r.get("error"):
                j = type(j)("wrong", "the answer model failed")
            r["verdict"], r["verdict_reason"] = j.verdict, j.reason
            r["answer_key"] = answer_key(r["answer"])
            r.setdefault("page_match", None)
            rec.finalize(r, r.get("human_verdict"))
            n += 1
        run["summary"] = rec.summarize_answers(run["records"])
    return n


def label_records(records: Iterable[dict[str, Any]], labels_path: str | Path, *,
                  ask: Callable[[str], str], show: Callable[[str], None], only_unlabelled: bool = True) -> int:
    """Walk ``records``, show each answer, ask for a verdict and append it to ``labels_path``.
    ``ask`` returns one of c/w/v/a, s (skip) or q (quit). Returns how many were labelled."""
    path = Path(labels_path)
    have = load_labels(path)
    done = 0
    with path.open("a", encoding="utf-8") as f:
        for r in records:
            key = (r["id"], r.get("answer_key", ""))
            if only_unlabelled and key in have:
                continue
            show(
                f"\n[{r['id']}] {'answerable' if r['answerable'] else 'NOT answerable'}\n"
                f"Q: {r['question']}\nReference: {r.get('expected_answer') or '(none)'}\n"
                f"Answer: {r['answer']}\nAutomatic: {r['verdict']} ({r.get('verdict_reason', '')})"
            )
            while True:
                choice = ask("verdict [c]orrect [w]rong [v]acuous [a]bstained, [s]kip, [q]uit").strip().lower()[:1]
                if choice in KEYS or choice in ("s", "q"):
                    break
            if choice == "q":
                break
            if choice == "s":
                continue
            row = {"id": r["id"], "answer_key": r.get("answer_key", ""), "verdict": KEYS[choice],
                   "automatic": r["verdict"], "question": r["question"]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            done += 1
    return done
