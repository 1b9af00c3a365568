"""What reading a few tokens at once costs llama.cpp on this CPU: the number that decides whether
drafting tokens and verifying them in one batch (prompt-lookup or speculative decoding) can
write faster than one token per step.

    .venv/bin/python bench/bench_batch_cost.py            # default model, 2 threads

The default model reads a real 800-token prompt (18F handbook pages in ../shared), then, from
that cached prefix, one batch of b tokens with logits for each of them (as a verify step
needs), b = 1..12, each the median of 7 tries. A step that verifies k drafted tokens costs
t(1 + k); writing one token costs t(1). Drafts pay only when more than
(t(1 + k) - t(1)) / t(1) of them are accepted per step on average. It also reports whether the
logits of tokens read in a batch equal those of the same tokens read one at a time (llama.cpp's
CPU kernels for a batch and for one token round differently; where they differ, greedy text
can change at near-ties): every position of each batch against the same tokens read one by
one, as plain decoding reads them. Writes bench/results/bench_batch_cost.json and .png.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import common  # noqa: F401  (repo on sys.path, offline)
from common import SHARED, pyplot, save_figure, write_results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="generator.model: default (1.5B) or smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=12)
    ap.add_argument("--tries", type=int, default=7)
    args = ap.parse_args(argv)

    import numpy as np

    from kb_chatbot.app.generators import make_generator
    from kb_chatbot.core.settings import load_settings

    s = load_settings(common.REPO / "kb.yaml")
    s.generator.model = args.model
    s.generator.backend = "llamacpp"
    s.generator.threads = args.threads
    gen = make_generator(s.generator, s.models_dir, base_dir=s.config_dir)
    llm = gen._load()
    pages = sorted((SHARED / "corpus" / "wiki-18f-handbook" / "pages").rglob("*.md"))
    text = "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in pages[:20])
    prompt = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)[:800]
    llm.reset()
    llm.eval(prompt[:700])
    base = llm.n_tokens
    n_vocab = llm.n_vocab()

    def read(tokens: list[int], start: int = 0) -> tuple[float, list[np.ndarray]]:
        """Seconds to read ``tokens`` in one batch after the prefix (and ``start`` of them read
        before), and each position's logits."""
        llm.n_tokens = base + start
        llm._ctx.kv_cache_seq_rm(-1, base + start, -1)
        llm._batch.set_batch(batch=tokens, n_past=base + start, logits_all=True)
        t0 = time.perf_counter()
        llm._ctx.decode(llm._batch)
        dt = time.perf_counter() - t0
        return dt, [np.ctypeslib.as_array(llm._ctx.get_logits_ith(i), shape=(n_vocab,)).copy()
                    for i in range(len(tokens))]

    draft = prompt[700:700 + args.max_batch]
    one_by_one = [read([t], start=i)[1][0] for i, t in enumerate(draft)]  # as plain decoding reads them
    rows = []
    for b in range(1, args.max_batch + 1):
        times, logits = [], []
        for _ in range(args.tries):
            dt, logits = read(draft[:b])
            times.append(dt)
        diff = max(float(np.abs(a - r).max()) for a, r in zip(logits, one_by_one))
        same = sum(int(a.argmax()) == int(r.argmax()) for a, r in zip(logits, one_by_one))
        rows.append({"batch": b, "ms": round(1000 * statistics.median(times), 1),
                     "logit_max_abs_diff": round(diff, 4), "same_argmax": same})
        print(f"batch {b:2d}: {rows[-1]['ms']:7.1f} ms  (logits vs the same tokens read one by one: "
              f"max |diff| {diff:.4f}, same argmax {same}/{b})", file=sys.stderr, flush=True)
    t1 = rows[0]["ms"]
    for r in rows:
        r["breakeven_accept_share"] = round((r["ms"] - t1) / t1 / max(1, r["batch"] - 1), 3) if r["batch"] > 1 else None
    out = write_results("bench_batch_cost", {"model": gen.model_id, "threads": args.threads, "rows": rows})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["batch"] for r in rows], [r["ms"] for r in rows], "o-", label="one batch of b tokens")
    ax.plot([r["batch"] for r in rows], [t1 * r["batch"] for r in rows], "--", color="#888",
            label="b tokens written one by one")
    ax.set_xlabel("tokens read in one step (1 + drafted)")
    ax.set_ylabel("ms")
    ax.legend()
    ax.set_title(f"{gen.model_id}, {args.threads} threads: cost of a verify step", fontsize=10)
    save_figure(fig, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
