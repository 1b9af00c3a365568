"""Answer speed: the settings this round found vs now, on the same questions, in one run.

    .venv/bin/python bench/bench_answer.py                       # default model, 12 questions
    .venv/bin/python bench/bench_answer.py --model smollm2-135m --questions 4   # a quick look
    .venv/bin/python bench/bench_answer.py --backends llamacpp,openvino          # two backends

Both runs use today's answer service (premise check, context filter, verification, correction)
over the trust dev set's corpus (the 18F handbook and the Drive files in ../shared, indexed
once by ``kb eval`` into ``data/runtime/eval-dev``; indexed here if missing), asking questions
of ``eval/devsets/handbook.jsonl`` spread over answerable and near-miss ones:

- ``before``: no spelling correction and no answers-the-question check;
- ``now``: both on (the spelling pass, and one more yes/no over the cached prompt per answer:
  the cost of the check if ``answer.answers_check`` is switched on; ``kb.yaml`` ships it off).

Both use the same threads (``auto``), embedder dtype and context budget; the answer cache is
off in both (every question is new to it anyway). With ``--backends A,B`` the two runs are two
generator backends instead (issue 26's bake-off through the whole service: checks, correction
and all), both with the answer settings of the config.

The runs alternate per question (before, now), each with its own model instance, so machine
noise hits both alike. Per run: time to first token (from the question's arrival), total,
the first checked sentence the chat page shows (the draft itself is not shown), the answer's own per-stage timings (retrieve, premise, filter, generate, verify, other),
prompt and answer tokens. Before the questions, each run measures its prefill and decode
rates on a fixed prompt; the physical limit of a question is then prompt tokens / prefill rate
+ answer tokens / decode rate (what the model alone needs; everything above it is pipeline).

Writes bench/results/bench_answer-<model>.json and .png (p50 first token and total per run,
and the share of time per stage).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import common  # noqa: F401  (repo on sys.path, offline)
from common import machine, pyplot, save_figure, write_results

#: Non-overlapping stages of Answer.timings ("generate" covers every generation, the
#: correction's too; "other" is the rest of the total: the correction's re-retrieval, scoring).
STAGES = ("retrieve", "premise", "filter", "generate", "verify")
RUNS = ("before", "now")


def pct(vals: list[float], q: float) -> float:
    vals = sorted(vals)
    if not vals:
        return float("nan")
    k = (len(vals) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def spread(questions: list, n: int) -> list:
    """n questions, answerable and near-miss alternating in the file's order (3 : 1)."""
    ans = [q for q in questions if q.answerable]
    miss = [q for q in questions if not q.answerable]
    out: list = []
    while len(out) < n and (ans or miss):
        for _ in range(3):
            if ans and len(out) < n:
                out.append(ans.pop(0))
        if miss and len(out) < n:
            out.append(miss.pop(0))
    return out


def rates(generator) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) of ``generator`` on a fixed ~700-token prompt."""
    from kb_chatbot.core.types import GenParams, Message

    filler = " ".join(f"Rule {i}: travel receipts over ${i * 5} are kept for {i + 2} years." for i in range(60))
    msgs = [Message("system", "You answer questions."), Message("user", f"{filler}\nWrite a long list of all the rules.")]
    n_prompt = sum(generator.count_tokens(m.content) for m in msgs)
    t = time.perf_counter()
    list(generator.stream(msgs, GenParams(max_tokens=1)))
    prefill = n_prompt / (time.perf_counter() - t)
    t = time.perf_counter()
    first = None
    text = []
    for tok in generator.stream(msgs, GenParams(max_tokens=65)):  # the prompt is cached now
        if first is None:
            first = time.perf_counter()
        text.append(tok.text)
    n_out = max(1, generator.count_tokens("".join(text)) - 1)
    decode = n_out / (time.perf_counter() - (first or t))
    return prefill, decode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="generator.model: default (1.5B) or smollm2-135m")
    ap.add_argument("--questions", type=int, default=12)
    ap.add_argument("--config", default=str(common.REPO / "eval" / "devsets" / "shared.yaml"))
    ap.add_argument("--questions-file", default=str(common.REPO / "eval" / "devsets" / "handbook.jsonl"))
    ap.add_argument("--backends", default=None,
                    help="two generator backends to compare with today's settings, e.g. llamacpp,openvino")
    args = ap.parse_args(argv)
    runs = tuple(args.backends.split(",")) if args.backends else RUNS
    if len(runs) != 2:
        ap.error("--backends takes two names, e.g. llamacpp,openvino")

    from kb_chatbot.app.answer.prompts import build_messages
    from kb_chatbot.core.settings import load_settings
    from kb_chatbot.eval.questions import load_questions
    from kb_chatbot.eval.runner import corpus_settings, ensure_indexed, eval_principal
    from kb_chatbot.app.generators import make_generator
    from kb_chatbot.app.generators.base import resolve_threads
    from kb_chatbot.index.embedder import load_embedder
    from kb_chatbot.index.generation import open_index
    from kb_chatbot.app.kb.services import build_services

    base = load_settings(args.config)
    base.generator.model = args.model
    from kb_chatbot.app.generators.base import configure_threads, resolve_threads

    # as `kb` does: before the embedder brings OpenMP in with torch (generator.thread_wait)
    configure_threads(resolve_threads(base.generator.threads), base.generator.thread_wait)
    settings = {k: base.model_copy(deep=True) for k in runs}
    for k, s in settings.items():
        s.generator.threads, s.embedding.dtype, s.answer.cache_size = "auto", "auto", 0
        if args.backends:
            s.generator.backend = k
    if not args.backends:
        b, n = settings["before"], settings["now"]
        b.answer.spelling, b.answer.answers_check = False, False
        n.answer.spelling, n.answer.answers_check = True, True
    corpus = {k: corpus_settings(s, "handbook,drive") for k, s in settings.items()}
    embedders = {k: load_embedder(c.embedding) for k, c in corpus.items()}
    ensure_indexed(corpus[runs[1]], embedder=embedders[runs[1]], progress=True)
    index = open_index(corpus[runs[1]])
    user = eval_principal(index)
    services, gens, meas = {}, {}, {}
    for k in runs:
        gens[k] = make_generator(settings[k].generator, base.models_dir, base_dir=base.config_dir)
        gens[k].warm_up()
        meas[k] = dict(zip(("prefill_tps", "decode_tps"), rates(gens[k])))
        meas[k]["threads"] = resolve_threads(settings[k].generator.threads)
        meas[k]["embedding_dtype"] = getattr(embedders[k], "dtype", settings[k].embedding.dtype)
        services[k] = build_services(corpus[k], embedder=embedders[k], index=index, generator=gens[k],
                                     answer_log=None).answer_service
        print(f"{k}: threads={meas[k]['threads']} prefill {meas[k]['prefill_tps']:.1f} tok/s, "
              f"decode {meas[k]['decode_tps']:.1f} tok/s", file=sys.stderr, flush=True)
    questions = spread(load_questions(args.questions_file), args.questions)
    rows: dict[str, list[dict]] = {k: [] for k in runs}
    for i, q in enumerate(questions, 1):
        for k in runs:
            ans = services[k].answer(q.question, user=user)
            t = ans.timings
            p_tok = sum(gens[k].count_tokens(m.content) for m in build_messages(ans.standalone_question, ans.sources)) \
                if ans.scores.get("premise_missing") is None else 0
            a_tok = gens[k].count_tokens(ans.text) if ans.route != "abstained" else 12
            limit = p_tok / meas[k]["prefill_tps"] + (a_tok / meas[k]["decode_tps"] if p_tok else 0.0)
            row = {"id": q.id, "answerable": q.answerable, "route": ans.route, "answer": ans.text[:300],
                   "first_token": t.get("first_token", t.get("total", 0.0)), "total": t.get("total", 0.0),
                   # what the chat page shows first: the first checked sentence, else the answer
                   "first_shown": t.get("first_verified", t.get("total", 0.0)),
                   "prompt_tokens": p_tok, "answer_tokens": a_tok, "physical_limit": round(limit, 3),
                   "corrected": bool(ans.corrected), **{f"stage_{s}": t.get(s, 0.0) for s in STAGES}}
            rows[k].append(row)
            print(f"[{i}/{len(questions)}] {k:6s} {q.id:6s} {ans.route:10s} first={row['first_token']:6.1f}s "
                  f"shown={row['first_shown']:6.1f}s total={row['total']:6.1f}s limit={limit:5.1f}s prompt={p_tok}", file=sys.stderr, flush=True)
    summary = {}
    for k in runs:
        r = rows[k]
        tot = sum(x["total"] for x in r) or 1.0
        summary[k] = {
            **{m: round(v, 2) for m, v in meas[k].items() if isinstance(v, float)},
            "threads": meas[k]["threads"], "embedding_dtype": meas[k]["embedding_dtype"],
            "first_token_p50": round(pct([x["first_token"] for x in r], 0.5), 2),
            "first_token_p95": round(pct([x["first_token"] for x in r], 0.95), 2),
            "first_shown_p50": round(pct([x["first_shown"] for x in r], 0.5), 2),
            "total_p50": round(pct([x["total"] for x in r], 0.5), 2),
            "total_p95": round(pct([x["total"] for x in r], 0.95), 2),
            "physical_limit_p50": round(pct([x["physical_limit"] for x in r], 0.5), 2),
            "prompt_tokens_mean": round(statistics.mean(x["prompt_tokens"] for x in r), 1),
            "stage_share": {**{s: round(sum(x[f"stage_{s}"] for x in r) / tot, 3) for s in STAGES},
                            "other": round(1 - sum(sum(x[f"stage_{s}"] for x in r) for s in STAGES) / tot, 3)},
            "corrected": sum(x["corrected"] for x in r),
            "answered": sum(x["route"] != "abstained" for x in r),
        }
    for key in ("first_token_p50", "first_shown_p50", "total_p50", "total_p95"):
        summary.setdefault(f"ratio_{runs[1]}_to_{runs[0]}", {})[key] = round(
            summary[runs[1]][key] / summary[runs[0]][key], 3)
    same = sum(a["answer"] == b["answer"] for a, b in zip(rows[runs[0]], rows[runs[1]]))
    summary["same_answers"] = f"{same}/{len(questions)}"
    print(json.dumps(summary, indent=2))
    name = f"bench_answer-{args.model.replace('/', '_')}" + (f"-{'-vs-'.join(runs)}" if args.backends else "")
    out = write_results(name, {"model": gens[runs[1]].model_id, "models": {k: g.model_id for k, g in gens.items()},
                               "questions": len(questions), "summary": summary, "runs": rows})
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    x = range(len(runs))
    bars_of = (("first_token_p50", "first token p50"), ("first_shown_p50", "first checked sentence p50"),
               ("total_p50", "total p50"), ("physical_limit_p50", "physical limit p50"))
    for j, (key, label) in enumerate(bars_of):
        vals = [summary[k][key] for k in runs]
        bars = axes[0].bar([i + 0.2 * (j - 1.5) for i in x], vals, width=0.2, label=label)
        axes[0].bar_label(bars, fmt="%.1f")
    axes[0].set_xticks(list(x), [f"{k}\n({summary[k]['threads']} thr, {summary[k]['embedding_dtype']})" for k in runs])
    axes[0].set_ylabel("seconds")
    axes[0].legend()
    bottom = [0.0] * len(runs)
    for s in (*STAGES, "other"):
        vals = [summary[k]["stage_share"][s] for k in runs]
        axes[1].bar(list(x), vals, bottom=bottom, label=s)
        bottom = [a + v for a, v in zip(bottom, vals)]
    axes[1].set_xticks(list(x), list(runs))
    axes[1].set_ylabel("share of total time")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{gens[runs[1]].model_id}: {len(questions)} dev-set questions, same run, {machine()['cpu']}")
    save_figure(fig, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
