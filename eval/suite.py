"""An evaluation no single set can fool: several third-party sets and a typo copy of each,
every figure per set, one table and one plot.

A suite file (YAML) names the sets::

    sets:
      - name: handbook                       # a label for the tables
        questions: ../devsets/handbook.jsonl # JSONL, ARAGOG or SQuAD (relative to this file)
        config: ../devsets/shared.yaml       # settings whose sources hold the corpus
        corpus_name: handbook,drive          # those sources (or the name of corpus_path)
        corpus_path: null                    # a folder indexed as an ad-hoc drive source
        answers: 30                          # questions the model answers (seeded sample)

A SQuAD file's paragraphs become the corpus (one file each, written under the eval folder).
Each set's sample is stratified: answerable and unanswerable questions in the set's
proportion, at least a third unanswerable where the set has them. ``--typos`` adds the same
sample with typos (:mod:`kb_chatbot.eval.typos`). Human labels (``kb eval label``) override the
automatic verdicts wherever an answer's text is the one labelled.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import yaml

from kb_chatbot.core.errors import ConfigError
from kb_chatbot.eval.questions import EvalQuestion, load_questions, write_squad_corpus

log = logging.getLogger(__name__)

#: The figures the suite reports per set, with their direction (+1 higher is better).
FIGURES = [
    ("correct_answerable", "answered right", +1),
    ("shown_and_wrong", "shown & wrong", -1),
    ("false_abstention", "false abstention", -1),
    ("abstention_unanswerable", "unanswerable declined", +1),
    ("page_citation_match", "page cite match", +1),
    ("ece", "ECE (shown)", -1),
]
MIN_UNANSWERABLE_SHARE = 1 / 3


@dataclass(frozen=True)
class SetSpec:
    name: str
    questions: Path
    config: Path | None
    corpus_name: str
    corpus_path: Path | None = None
    answers: int | None = None
    format: str = "auto"


def load_suite(path: str | Path) -> list[SetSpec]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the suite file ({e})") from None
    sets = raw.get("sets")
    if not isinstance(sets, list) or not sets:
        raise ConfigError(f"{path}: 'sets' must be a non-empty list of sets")
    out = []
    for i, s in enumerate(sets, 1):
        where = f"{path}: set {i}"
        if not isinstance(s, dict) or not s.get("name") or not s.get("questions") or not s.get("corpus_name"):
            raise ConfigError(f"{where}: needs 'name', 'questions' and 'corpus_name'")

        def rel(v):
            return None if v is None else (path.parent / v).resolve()

        q = rel(s["questions"])
        if not q.exists():
            raise ConfigError(f"{where} ({s['name']}): questions not found: {q}")
        out.append(SetSpec(name=str(s["name"]), questions=q, config=rel(s.get("config")),
                           corpus_name=str(s["corpus_name"]), corpus_path=rel(s.get("corpus_path")),
                           answers=s.get("answers"), format=str(s.get("format", "auto"))))
    return out


def sample(questions: Sequence[EvalQuestion], n: int | None, seed: int = 7) -> list[EvalQuestion]:
    """``n`` questions, answerable and unanswerable in the set's proportion (at least a third
    unanswerable when the set has any), seeded, in the set's order."""
    qs = list(questions)
    if not n or n >= len(qs):
        return qs
    rng = random.Random(seed)
    yes = [i for i, q in enumerate(qs) if q.answerable]
    no = [i for i, q in enumerate(qs) if not q.answerable]
    k_no = min(len(no), max(round(n * len(no) / len(qs)), round(n * MIN_UNANSWERABLE_SHARE) if no else 0))
    k_yes = min(len(yes), n - k_no)
    picked = rng.sample(yes, k_yes) + rng.sample(no, k_no)
    return [qs[i] for i in sorted(picked)]


def open_set(spec: SetSpec, default_config: Path | None, eval_dir: Path | None
             ) -> tuple[Any, Path | None, list[EvalQuestion]]:
    """A set's settings, corpus folder (a SQuAD file's paragraphs written under the eval
    folder) and questions."""
    from kb_chatbot.core.settings import load_settings

    cfg_path = spec.config or default_config
    settings = load_settings(cfg_path) if cfg_path else load_settings(None)
    corpus_path = spec.corpus_path
    fmt = spec.format
    if fmt == "squad" or (fmt == "auto" and _is_squad(spec.questions)):
        base = Path(eval_dir) if eval_dir else settings.data_dir / "eval"
        corpus_path = write_squad_corpus(spec.questions, base / "corpora" / spec.name)
        fmt = "squad"
    return settings, corpus_path, load_questions(spec.questions, fmt, corpus_dir=corpus_path)  # type: ignore[arg-type]


def run_suite(specs: Sequence[SetSpec], *, typos: bool, seed: int, default_config: Path | None,
              eval_dir: Path | None, labels: Path | None, progress: bool = True,
              on_set: Callable[[str, dict], None] | None = None, run: Callable[..., dict] | None = None,
              variants: Collection[str] | None = None) -> dict[str, Any]:
    """Run every set (and its typo copy); returns ``{"sets": {label: summary...}, "runs": ...}``.
    ``variants`` (labels such as "aragog~typo") limits what runs: a change that can only touch
    the typo copies is judged on them alone."""
    from kb_chatbot.eval.labels import apply_labels, load_labels
    from kb_chatbot.eval.runner import EvalOptions, run_evaluation
    from kb_chatbot.eval.typos import typo_copy

    run = run or run_evaluation
    out: dict[str, Any] = {"sets": {}, "runs": {}, "seed": seed}
    for spec in specs:
        cfg_path = spec.config or default_config
        settings, corpus_path, qs = open_set(spec, default_config, eval_dir)
        picked = sample(qs, spec.answers, seed)
        choices = [(spec.name, picked)] + ([(f"{spec.name}~typo", typo_copy(picked, seed=seed))] if typos else [])
        for label, chosen in choices:
            if variants is not None and label not in variants:
                continue
            log.info("suite set=%s questions=%d answerable=%d", label, len(chosen), sum(q.answerable for q in chosen))
            opts = EvalOptions(corpus_name=spec.corpus_name, corpus_path=corpus_path, eval_dir=eval_dir,
                               progress=progress)
            result = run(chosen, [(str(cfg_path) if cfg_path else None, settings)], opts)
            if labels is not None:
                apply_labels(result, load_labels(labels))
            [answers] = result["answers"].values()
            out["runs"][label] = result
            out["sets"][label] = _summary(answers["summary"], result)
            if on_set:
                on_set(label, out)
    return out


def _is_squad(path: Path) -> bool:
    from kb_chatbot.eval.questions import detect_format

    return path.suffix == ".json" and detect_format(path) == "squad"


def _summary(s: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    retrieval = next(iter(result["retrieval"].values()), {}).get("summary", {})
    out = {key: s.get(key) for key, _label, _d in FIGURES}
    out.update(n=s["n"], n_answerable=s["n_answerable"], n_unanswerable=s["n_unanswerable"],
               verdicts=s["verdicts"], human_labelled=s["human_labelled"], human_agreement=s["human_agreement"],
               context_recall=retrieval.get("context_recall"),
               p50_total=(s.get("latency") or {}).get("total", {}).get("p50"))
    return out


def markdown(suite: dict[str, Any]) -> str:
    cols = FIGURES + [("context_recall", "context recall", +1)]
    lines = ["| set | n (ans / unans) | " + " | ".join(c[1] for c in cols) + " | labelled by hand | p50 s |",
             "|---|---|" + "---|" * len(cols) + "---|---|"]

    def f(x):
        return "–" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    for name, s in suite["sets"].items():
        lines.append(f"| {name} | {s['n']} ({s['n_answerable']} / {s['n_unanswerable']}) | "
                     + " | ".join(f(s.get(k)) for k, _l, _d in cols)
                     + f" | {s['human_labelled']} | {f(s.get('p50_total'))} |")
    return "\n".join(lines)


def _pyplot():
    """matplotlib's pyplot on the file backend, or None where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(suite: dict[str, Any], path: Path) -> Path | None:
    """Answered right, shown-and-wrong and false abstention per set, side by side."""
    plt = _pyplot()
    if plt is None:
        return None
    names = list(suite["sets"])
    figs = FIGURES[:3]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names) + 2), 4))
    w = 0.8 / len(figs)
    for j, (key, label, _d) in enumerate(figs):
        vals = [suite["sets"][n].get(key) or 0.0 for n in names]
        bars = ax.bar([i + (j - 1) * w for i in range(len(names))], vals, w, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share (right, false abstention:\nof answerable questions)", fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title("Answers per third-party set (clean and typo copies)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(suite: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    from kb_chatbot.eval.report import write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for label, result in suite["runs"].items():
        write_report(result, out_dir / label)
    slim = {k: v for k, v in suite.items() if k != "runs"}
    (out_dir / "suite.json").write_text(json.dumps(slim, indent=1, default=str), encoding="utf-8")
    (out_dir / "suite.md").write_text(markdown(suite) + "\n", encoding="utf-8")
    written["json"], written["md"] = out_dir / "suite.json", out_dir / "suite.md"
    p = plot(suite, out_dir / "suite.png")
    if p:
        written["png"] = p
    return written


# --- before / after: what a change did, answer by answer ------------------------------------


def load_run(folder: str | Path) -> dict[str, dict[str, Any]]:
    """The per-set results of a suite run folder (or several, comma-separated: a run split over
    processes with ``--only``): set label -> results, read from ``<folder>/<set>/results.json``."""
    out: dict[str, dict[str, Any]] = {}
    for part in str(folder).split(","):
        base = Path(part)
        if not base.is_dir():
            raise ConfigError(f"{base}: not a suite run folder (kb eval suite --out)")
        for f in sorted(base.glob("*/results.json")):
            try:
                out[f.parent.name] = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"{f}: not an eval results file ({e})") from None
    if not out:
        raise ConfigError(f"{folder}: no <set>/results.json inside; is it a kb eval suite --out folder?")
    return out


def compare(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
            labels: dict | None = None) -> dict[str, Any]:
    """Figures per set before -> after (human labels applied to both) and every question whose
    answer text changed, with both verdicts; ``unlabelled`` lists the shown answers of ``after``
    no human has read yet (the figures count their automatic verdict until someone does)."""
    from kb_chatbot.eval.labels import apply_labels

    sets: dict[str, Any] = {}
    changed: list[dict[str, Any]] = []
    unlabelled: list[dict[str, Any]] = []
    for name in [n for n in after if n in before]:
        runs = {}
        for side, res in (("before", before[name]), ("after", after[name])):
            res = json.loads(json.dumps(res))  # labels rewrite the records: work on a copy
            if labels:
                apply_labels(res, labels)
            [answers] = res["answers"].values()
            runs[side] = (answers["records"], _summary(answers["summary"], res))
        sets[name] = {side: summ for side, (_recs, summ) in runs.items()}
        old = {(r["id"], r["question"]): r for r in runs["before"][0]}
        for r in runs["after"][0]:
            if not r["abstained"] and r.get("human_verdict") is None:
                unlabelled.append({"set": name, "id": r["id"], "question": r["question"], "answer": r["answer"]})
            o = old.get((r["id"], r["question"]))
            if o is not None and o["answer"] != r["answer"]:
                changed.append({"set": name, "id": r["id"], "question": r["question"],
                                "answerable": r["answerable"], "expected": r.get("expected_answer"),
                                "before": {"answer": o["answer"], "verdict": o.get("final_verdict")},
                                "after": {"answer": r["answer"], "verdict": r.get("final_verdict"),
                                          "labelled": r.get("human_verdict") is not None}})
    return {"sets": sets, "changed": changed, "unlabelled": unlabelled}


def compare_markdown(cmp: dict[str, Any]) -> str:
    """The comparison as markdown: a before -> after table per figure, then the changed answers."""
    cols = FIGURES + [("context_recall", "context recall", +1)]

    def f(x):
        return "–" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)

    lines = ["| set | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    worse = []
    for name, s in cmp["sets"].items():
        cells = []
        for key, label, direction in cols:
            b, a = s["before"].get(key), s["after"].get(key)
            mark = ""
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and f(a) != f(b):  # as shown
                better = (a - b) * direction > 0
                mark = " ▲" if better else " ▼"
                if not better:
                    worse.append(f"{name}: {label} {f(b)} → {f(a)}")
            cells.append(f"{f(b)} → **{f(a)}**{mark}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Worse (▼): {'; '.join(worse) if worse else 'none'}", "",
              f"## Answers that changed ({len(cmp['changed'])})", ""]
    for c in cmp["changed"]:
        flag = "" if c["after"]["labelled"] or c["after"]["verdict"] == "abstained" else " (not read yet)"
        lines += [f"- **{c['set']} {c['id']}** ({'answerable' if c['answerable'] else 'unanswerable'}): "
                  f"{c['before']['verdict']} → {c['after']['verdict']}{flag}",
                  f"  - Q: {c['question']}", f"  - before: {' '.join(c['before']['answer'].split())}",
                  f"  - after: {' '.join(c['after']['answer'].split())}"]
        if c["expected"]:
            lines.append(f"  - expected: {' '.join(str(c['expected']).split())}")
    if cmp["unlabelled"]:
        lines += ["", f"Shown answers no human has read yet: {len(cmp['unlabelled'])} "
                      "(label them: kb eval label <after>/<set>)"]
    return "\n".join(lines)


def compare_plot(cmp: dict[str, Any], path: Path) -> Path | None:
    """Answered right, shown-and-wrong and false abstention per set, before (light) and after."""
    plt = _pyplot()
    if plt is None:
        return None
    names = list(cmp["sets"])
    figs = FIGURES[:3]
    fig, axes = plt.subplots(1, len(figs), figsize=(4 * len(figs), 3.6), sharey=True)
    for ax, (key, label, direction) in zip(axes, figs):
        for j, side in enumerate(("before", "after")):
            vals = [cmp["sets"][n][side].get(key) or 0.0 for n in names]
            bars = ax.bar([i + (j - 0.5) * 0.4 for i in range(len(names))], vals, 0.4, label=side,
                          alpha=0.45 if side == "before" else 1.0, color="C0" if direction > 0 else "C3")
            ax.bar_label(bars, fmt="%.2f", fontsize=6)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, 1.1)
        ax.set_title(f"{label} ({'higher' if direction > 0 else 'lower'} is better)", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
