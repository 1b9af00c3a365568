"""Write an evaluation result as JSON, a markdown report and PNG plots.

Files in the output folder: ``results.json`` (everything, per-question records included),
``report.md`` (the tables), ``calibration.jsonl`` (``{"features", "correct"}`` per answer, the
input of ``kb_chatbot.app.answer.confidence.calibrate``), and plots: ``retrieval.png`` (hit@1/hit@5/MRR per run),
``answers.png`` (answer metrics per variant), ``reliability.png`` (confidence vs share correct),
``latency.png`` (p50/p95 per stage), ``ab.png`` (A vs B with bootstrap intervals, A/B only).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ANSWER_COLUMNS = [
    ("shown_and_wrong", "shown & wrong"),
    ("abstention_unanswerable", "abstain (unanswerable)"),
    ("false_abstention", "false abstention"),
    ("page_citation_match", "page cite match"),
    ("accuracy", "correct"),
    ("token_f1", "token F1"),
    ("similarity", "similarity"),
    ("citation_precision_file", "cite P (file)"),
    ("citation_recall_file", "cite R (file)"),
    ("similarity_accuracy", "sim >= 0.7 (old)"),
    ("hallucination_rate", "unsupported"),
    ("auroc", "AUROC"),
    ("ece", "ECE"),
]
PAGE_COLUMNS = [("citation_precision_page", "cite P (page)"), ("citation_recall_page", "cite R (page)")]
STAGES = ("retrieve", "premise", "filter", "first_token", "generate", "verify", "score", "correction", "total")


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [f"# Evaluation: {meta['corpus']}", ""]
    lines.append(f"{meta['questions']} questions ({meta['answerable']} answerable), created {meta['created']}, "
                 f"{meta['seconds']} s. Configs: " + ", ".join(f"{k} = `{v}`" for k, v in meta["configs"].items()) + ".")
    for c in result["corpus"].values():
        lines.append(f"Corpus `{c['source']}` ({c['path']}): {c['documents']} documents, {c['chunks']} chunks"
                     + (f"; {len(c['failed_files'])} files could not be read" if c["failed_files"] else "") + ".")
    lines.append("")
    if result["retrieval"]:
        lines += ["## Retrieval", "",
                  f"Over answerable questions with expected sources; MRR over the first {meta['retrieve_k']} chunks "
                  "(the context-filter run keeps top_k). Context recall: share of the reference answer's words "
                  "(stop words aside) found in the top_k chunk texts the prompt would get.", "",
                  "| run | n | hit@1 | hit@5 | MRR | hit@1 (page) | hit@5 (page) | MRR (page) | context recall | context chars | p50 latency |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, run in result["retrieval"].items():
            s = run["summary"]
            page = s["page"] if s["n_page"] else {}
            lat = (s.get("latency") or {}).get("p50")
            lines.append(f"| {name} | {s['n']} | {_f(s['file']['hit@1'])} | {_f(s['file']['hit@5'])} | "
                         f"{_f(s['file']['mrr@10'])} | {_f(page.get('hit@1'))} | {_f(page.get('hit@5'))} | "
                         f"{_f(page.get('mrr@10'))} | {_f(s.get('context_recall'))} | {_f(s.get('context_chars'), 0)} | "
                         f"{_f(lat * 1000 if lat is not None else None, 1)} ms |")
        lines.append("")
    if result["answers"]:
        has_pages = any(r["summary"].get("citation_precision_page") is not None for r in result["answers"].values())
        cols = ANSWER_COLUMNS + (PAGE_COLUMNS if has_pages else [])
        lines += ["## Answers", "",
                  f"{meta['answer_subset']} questions, each judged correct, wrong, vacuous or abstained from its facts "
                  "(eval/verdict.py; human labels override). Shown & wrong: answers shown that are wrong or vacuous, "
                  "over all questions. Correct: a correct answer (an abstention, on an unanswerable question). "
                  "Page cite match: answerable questions with expected pages whose answer cites one. "
                  f"sim >= {meta['sim_correct']} (old): the former similarity rule, for comparison. Unsupported: "
                  "shown answers with a sentence whose facts its cited source lacks. AUROC/ECE: confidence vs "
                  "correct, shown answers.", "",
                  "| variant | model | n | " + " | ".join(c[1] for c in cols) + " | total p50 | total p95 |",
                  "|---|---|---|" + "---|" * len(cols) + "---|---|"]
        for name, run in result["answers"].items():
            s = run["summary"]
            tot = s["latency"].get("total", {})
            lines.append(f"| {name} | {run['model']} | {s['n']} | " + " | ".join(_f(s[c[0]]) for c in cols)
                         + f" | {_f(tot.get('p50'), 1)} s | {_f(tot.get('p95'), 1)} s |")
        lines += ["", "### Latency per stage (seconds, p50 / p95)", "",
                  "| variant | " + " | ".join(STAGES) + " |", "|---|" + "---|" * len(STAGES)]
        for name, run in result["answers"].items():
            lat = run["summary"]["latency"]
            cells = [f"{_f(lat[k]['p50'], 2)} / {_f(lat[k]['p95'], 2)}" if k in lat else "–" for k in STAGES]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "### Routes and verdicts", ""]
        for name, run in result["answers"].items():
            s = run["summary"]
            lines.append(f"- {name}: routes " + ", ".join(f"{k} {v}" for k, v in sorted(s["routes"].items()))
                         + "; verdicts " + ", ".join(f"{k} {v}" for k, v in s.get("verdicts", {}).items())
                         + (f"; {s['human_labelled']} labelled by hand, automatic verdict agrees on "
                            f"{_f(s['human_agreement'])}" if s.get("human_labelled") else "")
                         + (f"; judge {s.get('judge_model', '')} gave {s['judged']} verdicts, agrees with the "
                            f"final verdict on {_f(s['judge_agreement'])}"
                            + (f" and with the hand labels on {_f(s['judge_human_agreement'])}"
                               if s.get("judge_human_labelled") else "") if s.get("judged") else ""))
        lines.append("")
    if result.get("ab"):
        lines += ["## A/B (B − A, paired by question)", "",
                  "| metric | A | B | delta | 95% CI | B better / worse / tie | sign test p |", "|---|---|---|---|---|---|---|"]
        for kind, rows in result["ab"].items():
            for key, r in rows.items():
                st = r["sign_test"]
                better, worse = (st["wins"], st["losses"]) if r["higher_is_better"] else (st["losses"], st["wins"])
                lines.append(f"| {kind}: {key} | {_f(r['a'])} | {_f(r['b'])} | {_f(r['delta'])} | "
                             f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}] | {better} / {worse} / {st['ties']} | "
                             f"{_f(st['p_value'])} |")
        lines.append("")
    return "\n".join(lines)


# --- plots ----------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_retrieval(result: dict[str, Any], path: Path) -> Path | None:
    runs = result["retrieval"]
    if not runs:
        return None
    plt = _plt()
    import numpy as np

    names = list(runs)
    metrics = [("hit@1", "file"), ("hit@5", "file"), ("mrr@10", "file")]
    if any(r["summary"]["n_page"] for r in runs.values()):
        metrics += [("hit@1", "page"), ("hit@5", "page"), ("mrr@10", "page")]
    metrics.append(("context_recall", None))
    x = np.arange(len(metrics))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(9, 1.4 * len(metrics) + 4), 4))
    for i, n in enumerate(names):
        vals = [(runs[n]["summary"][lvl][k] if lvl else runs[n]["summary"].get(k)) or 0.0 for k, lvl in metrics]
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=n)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, [f"{k}\n({lvl})" if lvl else k.replace("_", "\n") for k, lvl in metrics])
    ax.set(ylim=(0, 1.08), ylabel="score", title=f"Retrieval on {result['meta']['corpus']}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_answers(result: dict[str, Any], path: Path) -> Path | None:
    runs = result["answers"]
    if not runs:
        return None
    plt = _plt()
    import numpy as np

    cols = [c for c in ANSWER_COLUMNS if c[0] != "ece"]
    names = list(runs)
    x = np.arange(len(cols))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(14, 4.5))
    for i, n in enumerate(names):
        vals = [runs[n]["summary"][c[0]] for c in cols]
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, [v or 0.0 for v in vals], width, label=n)
        ax.bar_label(bars, labels=[_f(v, 2) for v in vals], fontsize=6)
    ax.set_xticks(x, [c[1].replace(" (", "\n(") for c in cols], fontsize=8)
    ax.set(ylim=(0, 1.1), ylabel="share / score",
           title=f"Answers on {result['meta']['corpus']} ({result['meta']['answer_subset']} questions)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_reliability(result: dict[str, Any], path: Path) -> Path | None:
    """The first answer run's confidence vs correctness (kb_chatbot.app.answer.confidence's reliability diagram)."""
    from kb_chatbot.eval.calibration import plot_reliability as draw

    for name, run in result["answers"].items():
        rows = [r for r in run["records"] if not r["abstained"] and not r["error"]]
        if rows:
            return draw([r["confidence"] for r in rows], [r["correct"] for r in rows], path,
                        title=f"Confidence reliability: {name}"[:70])
    return None


def plot_latency(result: dict[str, Any], path: Path) -> Path | None:
    runs = result["answers"]
    if not runs:
        return None
    plt = _plt()
    import numpy as np

    stages = [s for s in STAGES if any(s in r["summary"]["latency"] for r in runs.values())]
    names = list(runs)
    x = np.arange(len(stages))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(11, 4))
    for i, n in enumerate(names):
        lat = runs[n]["summary"]["latency"]
        p50 = [lat[s]["p50"] if s in lat else 0.0 for s in stages]
        p95 = [lat[s]["p95"] if s in lat else 0.0 for s in stages]
        pos = x + (i - (len(names) - 1) / 2) * width
        ax.bar(pos, p50, width, label=f"{n} (p50)")
        ax.scatter(pos, p95, marker="_", s=150, color="black", zorder=3)
    ax.set_xticks(x, stages)
    ax.set(ylabel="seconds", title="Latency per stage: bars p50, ticks p95")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_ab(result: dict[str, Any], path: Path) -> Path | None:
    ab = result.get("ab")
    if not ab:
        return None
    plt = _plt()
    rows = [(f"{kind}: {k}", r) for kind, rs in ab.items() for k, r in rs.items() if r["delta"] is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    for i, (name, r) in enumerate(rows):
        good = (r["delta"] >= 0) == r["higher_is_better"]
        ax.barh(i, r["delta"], color="tab:green" if good else "tab:red")
        ax.errorbar(r["delta"], i, xerr=[[r["delta"] - r["ci_low"]], [r["ci_high"] - r["delta"]]], color="black", capsize=4)
        ax.text(0, i + 0.3, f" A {_f(r['a'], 3)} → B {_f(r['b'], 3)}", fontsize=8)
    ax.axvline(0, color="grey")
    ax.set_yticks(range(len(rows)), [n for n, _ in rows], fontsize=8)
    ax.set(xlabel="B − A (95% bootstrap CI); green: B better", title="A/B by question")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write every file; returns name -> path of what was written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    p = out / "results.json"
    p.write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    written["json"] = p
    p = out / "report.md"
    p.write_text(markdown(result) + "\n", encoding="utf-8")
    written["markdown"] = p
    if result["answers"]:
        p = out / "calibration.jsonl"
        with p.open("w", encoding="utf-8") as fh:
            for run in result["answers"].values():
                for r in run["records"]:
                    if not r["abstained"] and not r["error"] and r["features"]:
                        fh.write(json.dumps({"features": r["features"], "correct": r["correct"]}) + "\n")
        written["calibration"] = p
    for name, fn in (("retrieval", plot_retrieval), ("answers", plot_answers), ("reliability", plot_reliability),
                     ("latency", plot_latency), ("ab", plot_ab)):
        try:
            p = fn(result, out / f"{name}.png")
        except Exception as e:  # a plot never loses the numbers
            log.warning("plot failed name=%s error=%r", name, e)
            continue
        if p is not None:
            written[name] = Path(p)
    return written
