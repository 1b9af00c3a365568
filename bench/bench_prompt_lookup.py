"""Prompt-lookup decoding (llama-cpp-python's ``LlamaPromptLookupDecoding``) against plain
greedy decoding, on real answer prompts, in one run:

    .venv/bin/python bench/bench_prompt_lookup.py              # default model, 6 prompts

Answers copy from their sources, so drafting the next tokens from n-grams of the prompt and
verifying them in one batch could decode faster. The prompts are the answer prompts today's
service builds (retrieval + context filter) for answerable questions of the trust dev set
(``eval/devsets/handbook.jsonl`` over the 18F handbook and Drive files in ../shared). Each
configuration gets its own model instance, the same prompts, greedy decoding, at most 80 new
tokens; per prompt it times the prefill (to the first token) and the decode, and checks that
the text is identical to plain decoding's.

llama-cpp-python's speculative path needs the logits of every prompt token (``logits_all``):
prefill computes the vocabulary projection for all of them, and the logits buffer is
n_ctx × vocabulary floats (2.5 GB for Qwen's 152k vocabulary at 4k context). Writes
bench/results/bench_prompt_lookup-<model>.json and .png.
"""
from __future__ import annotations

import argparse
import sys
import time

import common  # noqa: F401  (repo on sys.path, offline)
from common import pyplot, save_figure, write_results

#: (name, draft tokens per step; 0 = plain decoding)
CONFIGS = (("plain", 0), ("lookup, 4 draft tokens", 4), ("lookup, 10 draft tokens", 10))


def answer_prompts(n: int, model: str):
    """Token ids of the answer prompts of the first ``n`` answerable dev-set questions."""
    from kb_chatbot.app.answer.prompts import build_messages
    from kb_chatbot.app.answer.writer import Run
    from kb_chatbot.core.settings import load_settings
    from kb_chatbot.eval.questions import load_questions
    from kb_chatbot.eval.runner import _Parts, corpus_settings, ensure_indexed, eval_principal
    from kb_chatbot.index.generation import open_index
    from kb_chatbot.app.kb.services import build_services

    s = load_settings(common.REPO / "eval" / "devsets" / "shared.yaml")
    s.generator.model = model
    cs = corpus_settings(s, "handbook,drive")
    parts = _Parts()
    ensure_indexed(cs, embedder=parts.embedder(cs), progress=False)
    index = open_index(cs)
    gen = parts.generator(s)
    svc = build_services(cs, embedder=parts.embedder(cs), index=index, generator=gen, answer_log=None).answer_service
    user = eval_principal(index)
    out = []
    for q in [q for q in load_questions(common.REPO / "eval" / "devsets" / "handbook.jsonl") if q.answerable][:n]:
        run = Run(q.question, user)
        context = svc._filter(q.question, svc._retrieve(q.question, run), run)
        out.append((q.id, gen._prompt_tokens(build_messages(q.question, context))))
    return str(gen.model_path), gen.model_id, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="generator.model: default (1.5B) or smollm2-135m")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new", type=int, default=80)
    args = ap.parse_args(argv)

    import llama_cpp
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    path, model_id, prompts = answer_prompts(args.prompts, args.model)
    rows: dict[str, list[dict]] = {}
    for name, draft in CONFIGS:
        # logits_all must be passed explicitly: 0.3.x sizes its logits buffer from the argument,
        # not from the draft model's need, and crashes on the first long prompt otherwise
        llm = llama_cpp.Llama(model_path=path, n_ctx=4096, n_threads=args.threads, n_threads_batch=args.threads,
                              verbose=False, logits_all=bool(draft),
                              draft_model=LlamaPromptLookupDecoding(num_pred_tokens=draft) if draft else None)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        rows[name] = []
        for qid, tokens in prompts:
            llm.reset()
            out: list[int] = []
            t0 = time.perf_counter()
            t1 = None
            for tok in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
                t1 = t1 or time.perf_counter()
                if llama_cpp.llama_vocab_is_eog(vocab, tok) or len(out) >= args.max_new:
                    break
                out.append(tok)
            t2 = time.perf_counter()
            rows[name].append({"id": qid, "prompt_tokens": len(tokens), "new_tokens": len(out),
                               "prefill_s": round(t1 - t0, 3), "decode_s": round(t2 - t1, 3),
                               "text": llm.detokenize(out).decode("utf-8", "replace")})
            print(f"{name:24s} {qid:6s} prompt={len(tokens)} new={len(out)} prefill={t1 - t0:5.2f}s "
                  f"decode={t2 - t1:5.2f}s", file=sys.stderr, flush=True)
        del llm
    summary = {}
    for name, r in rows.items():
        summary[name] = {
            "prefill_tps": round(sum(x["prompt_tokens"] for x in r) / sum(x["prefill_s"] for x in r), 1),
            "decode_tps": round(sum(x["new_tokens"] for x in r) / max(1e-9, sum(x["decode_s"] for x in r)), 1),
            "total_s": round(sum(x["prefill_s"] + x["decode_s"] for x in r), 2),
            "identical_to_plain": all(a["text"] == b["text"] for a, b in zip(r, rows["plain"])),
        }
    print(summary)
    out = write_results(f"bench_prompt_lookup-{args.model}", {"model": model_id, "threads": args.threads,
                                                              "summary": summary, "runs": rows})
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(summary)
    for ax, key, label in ((axes[0], "prefill_tps", "prefill tokens/s"), (axes[1], "decode_tps", "decode tokens/s")):
        bars = ax.bar(range(len(names)), [summary[n][key] for n in names], color=["#4878a8", "#d08040", "#c05050"])
        ax.bar_label(bars, fmt="%.1f")
        ax.set_xticks(range(len(names)), [n.replace(", ", ",\n") for n in names])
        ax.set_ylabel(label)
    fig.suptitle(f"{model_id}, {args.threads} threads, {len(prompts)} answer prompts: prompt lookup vs plain (same output)")
    save_figure(fig, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
