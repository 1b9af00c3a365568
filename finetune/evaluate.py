"""Base vs tuned on the held-out split: the evaluation module's metrics, per example and summed up.

Each held-out example's prompt (system + sources + question, exactly as built) is answered
greedily by the base model and by base + adapter through the real generator backends.
Metrics come from :mod:`kb_chatbot.eval.metrics` (the evaluation issue's definitions):

- answer correctness: SQuAD token F1 of the answer (citation markers stripped) against the
  reference sentence, on answerable and feedback examples;
- citation accuracy: precision/recall of the cited source numbers against the gold source(s)
  (chunk level), and the share of answers that cite the gold source;
- refusal: share of unanswerable examples answered with the abstention sentence
  (:func:`kb_chatbot.app.answer.prompts.is_abstention`), and share of answerable ones refused (false refusals);
- latency: first-token and total seconds per answer (p50/p95), tokens per second.

The paired per-example F1 differences get a sign test and a bootstrap interval, so a small
held-out set does not pass noise off as a gain.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from kb_chatbot.core.errors import KBError
from kb_chatbot.core.types import GenParams, Message

log = logging.getLogger(__name__)

METRIC_LABELS = {
    "token_f1": "answer token F1 (answerable)",
    "gold_cited": "cites the gold source (answerable)",
    "citation_precision": "citation precision",
    "citation_recall": "citation recall",
    "refusal_unanswerable": "refuses when unanswerable",
    "false_refusal": "refuses when answerable (lower is better)",
}


@dataclass(frozen=True)
class Scored:
    text: str
    token_f1: float | None
    abstained: bool
    cited: list[int]
    citation_precision: float | None
    citation_recall: float | None
    gold_cited: bool | None
    first_token_s: float | None
    total_s: float
    tokens: int


def score_answer(row: dict[str, Any], text: str) -> dict[str, Any]:
    """The metrics of one answer to one held-out example (pure: no model)."""
    from kb_chatbot.app.answer.citations import cited_numbers, strip_markers
    from kb_chatbot.app.answer.prompts import is_abstention
    from kb_chatbot.eval.metrics import citation_precision_recall, token_f1

    n_sources = len(row.get("source_chunk_ids") or [])
    cited = [n for n in cited_numbers(text) if 1 <= n <= n_sources]
    abstained = is_abstention(text)
    answerable = row["kind"] != "unanswerable"
    out: dict[str, Any] = {"abstained": abstained, "cited": cited, "token_f1": None,
                           "citation_precision": None, "citation_recall": None, "gold_cited": None}
    if answerable:
        out["token_f1"] = token_f1(strip_markers(text), strip_markers(row["reference"]))
        gold = list(row.get("gold_sources") or [])
        if gold:
            ids = row["source_chunk_ids"]
            pr = citation_precision_recall([(ids[n - 1], None) for n in cited], [(ids[n - 1], None) for n in gold])
            out.update(citation_precision=pr.precision, citation_recall=pr.recall,
                       gold_cited=any(n in cited for n in gold))
    return out


def run_model(generator: Any, rows: Sequence[dict[str, Any]], *, max_tokens: int = 96,
              progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Answer every example greedily; per example its text, timings and metrics."""
    results = []
    params = GenParams(max_tokens=max_tokens, temperature=0.0)
    for i, row in enumerate(rows, 1):
        msgs = [Message(m["role"], m["content"]) for m in row["messages"][:-1]]
        t0 = time.perf_counter()
        first = None
        pieces: list[str] = []
        for tok in generator.stream(msgs, params):
            if tok.text and first is None:
                first = time.perf_counter() - t0
            pieces.append(tok.text)
        total = time.perf_counter() - t0
        text = "".join(pieces).strip()
        results.append({"text": text, "first_token_s": first, "total_s": total,
                        "tokens": _count(generator, text), **score_answer(row, text)})
        if progress:
            progress(i, len(rows))
    return results


def _count(generator: Any, text: str) -> int:
    try:
        return int(generator.count_tokens(text))
    except Exception:  # a backend without a tokenizer count
        return len(text.split())


def summarize(rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    from kb_chatbot.eval.metrics import abstention_rates, mean, percentiles, rate

    answerable = [r["kind"] != "unanswerable" for r in rows]
    rates = abstention_rates([x["abstained"] for x in results], answerable)
    gen_s = [x["total_s"] for x in results]
    toks = sum(x["tokens"] for x in results)
    return {
        "n": len(results),
        "n_answerable": sum(answerable),
        "n_unanswerable": len(results) - sum(answerable),
        "token_f1": mean(x["token_f1"] for x in results),
        "gold_cited": rate(x["gold_cited"] for x in results if x["gold_cited"] is not None),
        "citation_precision": mean(x["citation_precision"] for x in results),
        "citation_recall": mean(x["citation_recall"] for x in results),
        "refusal_unanswerable": rates["unanswerable"],
        "false_refusal": rates["answerable"],
        "latency_total_s": percentiles(gen_s),
        "latency_first_token_s": percentiles([x["first_token_s"] for x in results if x["first_token_s"] is not None]),
        "tokens_per_s": (toks / sum(gen_s)) if sum(gen_s) > 0 else None,
    }


def compare(base: Sequence[dict[str, Any]], tuned: Sequence[dict[str, Any]]) -> dict[str, Any]:
    from kb_chatbot.eval.metrics import paired_bootstrap, sign_test

    f1b = [x["token_f1"] for x in base]
    f1t = [x["token_f1"] for x in tuned]
    # per-example "right behaviour": refusal on unanswerable, gold cited and no refusal on answerable
    okb = [_right(x) for x in base]
    okt = [_right(x) for x in tuned]
    return {"token_f1": {**sign_test(f1b, f1t), **paired_bootstrap(f1b, f1t)},
            "right_behaviour": {**sign_test(okb, okt), **paired_bootstrap(okb, okt)}}


def _right(x: dict[str, Any]) -> float:
    if x["token_f1"] is None:  # unanswerable
        return float(x["abstained"])
    return float(bool(x["gold_cited"]) and not x["abstained"])


def write_report(report: dict[str, Any], out_dir: Path, name: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md", "png": out_dir / f"{name}.png"}
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["md"].write_text(markdown(report), encoding="utf-8")
    plot(report, paths["png"])
    return paths


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def markdown(report: dict[str, Any]) -> str:
    b, t = report["base"]["summary"], report["tuned"]["summary"]
    lines = [
        f"# Fine-tuning evaluation: {report['adapter_name']}",
        "",
        f"Base `{report['base_model']}` vs base + adapter `{report['adapter']}` on {b['n']} held-out examples "
        f"({b['n_answerable']} answerable, {b['n_unanswerable']} unanswerable; backend {report['backend']}, "
        f"greedy, max {report['max_tokens']} new tokens). Held-out documents are never trained on.",
        "",
        "| metric | base | tuned | delta |",
        "|---|---|---|---|",
    ]
    for key, label in METRIC_LABELS.items():
        bv, tv = b.get(key), t.get(key)
        delta = "n/a" if bv is None or tv is None else f"{tv - bv:+.3f}"
        lines.append(f"| {label} | {_fmt(bv)} | {_fmt(tv)} | {delta} |")
    for key, label in (("latency_first_token_s", "first token s"), ("latency_total_s", "answer s")):
        for q in ("p50", "p95"):
            lines.append(f"| {label} {q} | {_fmt(b[key][q])} | {_fmt(t[key][q])} | |")
    lines.append(f"| tokens/s | {_fmt(b['tokens_per_s'])} | {_fmt(t['tokens_per_s'])} | |")
    c = report["comparison"]
    for key, label in (("token_f1", "token F1"), ("right_behaviour", "right behaviour (gold cited / refused)")):
        s = c[key]
        ci = "n/a" if s["delta"] is None else f"{s['delta']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"
        p = "n/a" if s["p_value"] is None else f"{s['p_value']:.3g}"
        lines.append("")
        lines.append(f"Paired {label}: tuned better on {s['wins']}, worse on {s['losses']}, tied on {s['ties']}; "
                     f"mean delta (95% bootstrap CI) {ci}; sign test p = {p}.")
    lines.append("")
    lines.append("Examples (first 5):")
    lines.append("")
    for ex in report["examples"][:5]:
        lines.append(f"- **{ex['kind']}** {ex['question']}")
        lines.append(f"  - reference: {ex['reference']}")
        lines.append(f"  - base: {ex['base'][:300]}")
        lines.append(f"  - tuned: {ex['tuned'][:300]}")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = list(METRIC_LABELS)
    b = [report["base"]["summary"].get(k) or 0.0 for k in keys]
    t = [report["tuned"]["summary"].get(k) or 0.0 for k in keys]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=120)
    ax.bar(x - 0.2, b, 0.4, label="base")
    ax.bar(x + 0.2, t, 0.4, label="base + LoRA")
    import textwrap

    ax.set_xticks(x, ["\n".join(textwrap.wrap(METRIC_LABELS[k], 16)) for k in keys], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share / score")
    ax.set_title(f"{report['adapter_name']}: held-out n={report['base']['summary']['n']}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def make_generators(adapter_dir: Path, settings: Any, *, backend: str = "transformers", threads: int = 1):
    """(base, tuned) generators for the adapter's base model, from its ``kb_adapter.json``."""
    from kb_chatbot.app.generators.model_files import resolve_model
    from kb_chatbot.core.settings import GeneratorConfig
    from kb_chatbot.finetune.export import read_metadata

    meta = read_metadata(adapter_dir)
    name = meta["base_model"]["name"]
    ref = resolve_model(GeneratorConfig(model=name), settings.models_dir, base_dir=settings.config_dir)
    if backend == "transformers":
        from kb_chatbot.app.generators.hf import HFGenerator

        mk = lambda ad: HFGenerator(ref, models_dir=settings.models_dir, threads=threads, adapter=ad,  # noqa: E731
                                    context_tokens=settings.generator.context_tokens, device="cpu" if threads else None)
    elif backend == "llamacpp":
        from kb_chatbot.app.generators.llamacpp import LlamaCppGenerator

        if ref.gguf_path is None:
            raise KBError(f"backend llamacpp needs a GGUF base model; {name} is an HF folder")
        mk = lambda ad: LlamaCppGenerator(ref.gguf_path, n_threads=threads,  # noqa: E731
                                          n_ctx=settings.generator.context_tokens, lora_path=ad, model_id=ref.model_id)
    else:
        raise KBError(f"unknown backend {backend!r} (transformers | llamacpp)")
    return mk(None), mk(adapter_dir), meta


def evaluate_adapter(adapter_dir: Path, settings: Any, *, data_dir: Path | None = None, backend: str = "transformers",
                     limit: int | None = None, max_tokens: int = 96, threads: int = 1, out_dir: Path | None = None,
                     progress: Callable[[str, int, int], None] | None = None, generators: tuple | None = None
                     ) -> tuple[dict[str, Any], dict[str, Path]]:
    """Run base and tuned on the held-out split; write ``<name>.json/.md/.png``; return (report, paths)."""
    from kb_chatbot.finetune.data import HELDOUT_FILE
    from kb_chatbot.finetune.train import read_examples

    adapter_dir = Path(adapter_dir).resolve()
    if generators is None:
        base_gen, tuned_gen, meta = make_generators(adapter_dir, settings, backend=backend, threads=threads)
    else:
        base_gen, tuned_gen = generators
        from kb_chatbot.finetune.export import read_metadata

        meta = read_metadata(adapter_dir)
    data_dir = Path(data_dir or meta["data"]["dir"])
    rows = read_examples(data_dir / HELDOUT_FILE)
    if limit:
        rows = rows[:limit]
    if not rows:
        raise KBError(f"{data_dir / HELDOUT_FILE} has no examples")
    if meta["data"].get("data_hash"):
        from kb_chatbot.finetune.data import MANIFEST

        mpath = data_dir / MANIFEST
        cur = json.loads(mpath.read_text(encoding="utf-8")).get("data_hash") if mpath.is_file() else None
        if cur and cur != meta["data"]["data_hash"]:
            log.warning("finetune eval data_hash=%s differs from the adapter's training data %s: held-out documents "
                        "may have been trained on", cur[:12], meta["data"]["data_hash"][:12])
    results = {}
    for label, gen in (("base", base_gen), ("tuned", tuned_gen)):
        cb = (lambda i, n, label=label: progress(label, i, n)) if progress else None
        results[label] = run_model(gen, rows, max_tokens=max_tokens, progress=cb)
    report = {
        "adapter": str(adapter_dir),
        "adapter_name": adapter_dir.name,
        "base_model": meta["base_model"]["model_id"],
        "backend": backend,
        "max_tokens": max_tokens,
        "data_dir": str(data_dir),
        "data_hash": meta["data"].get("data_hash"),
        "base": {"summary": summarize(rows, results["base"])},
        "tuned": {"summary": summarize(rows, results["tuned"])},
        "comparison": compare(results["base"], results["tuned"]),
        "examples": [
            {"kind": r["kind"], "question": r["question"], "reference": r["reference"], "doc_id": r["doc_id"],
             "base": b["text"], "tuned": t["text"],
             "base_metrics": {k: v for k, v in b.items() if k != "text"},
             "tuned_metrics": {k: v for k, v in t.items() if k != "text"}}
            for r, b, t in zip(rows, results["base"], results["tuned"])
        ],
    }
    out_dir = Path(out_dir) if out_dir else settings.reports_dir / "finetune"
    paths = write_report(report, out_dir, adapter_dir.name)
    log.info("finetune eval adapter=%s n=%d f1_base=%s f1_tuned=%s report=%s", adapter_dir.name, len(rows),
             report["base"]["summary"]["token_f1"], report["tuned"]["summary"]["token_f1"], paths["md"])
    return report, paths
