"""Seconds per LoRA training step of the default answer model (Qwen2.5-Coder-1.5B, the
transformers folder `kb models prepare --hf` makes from the packaged GGUF) on this CPU, before
sizing a run (docs/FINETUNE.md):

    .venv/bin/python bench/bench_lora_step.py            # 3 set-ups, 1 warm-up + 3 timed steps each

One step = one real answer prompt (retrieval + context filter over the handbook dev set, as
served: ~850 tokens) with a 40-token reply as the only labelled tokens, forward + backward +
AdamW update, batch 1, bf16 where the CPU has it, every core. The set-ups differ in where the
adapter sits: every layer, or only the last N layers (the backward pass then stops at the lowest
adapted layer). Writes bench/results/bench_lora_step.json and .png.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import common  # noqa: F401  (repo on sys.path, offline)
from common import machine, pyplot, save_figure, write_results

SETUPS = (("all 28 layers", None), ("last 8 layers", 8), ("last 4 layers", 4))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--r", type=int, default=16)
    args = ap.parse_args(argv)
    import torch

    from bench_backends import answer_prompts
    from kb_chatbot.finetune.config import TrainConfig
    from kb_chatbot.finetune.train import load_model

    torch.set_num_threads(args.threads)
    _, hf, prompts = answer_prompts(args.steps + 1)
    rows = []
    for name, top in SETUPS:
        cfg = TrainConfig(lora={"r": args.r, "alpha": 2 * args.r, "dropout": 0.0, "target_modules": "all-linear",
                                "top_layers": top}, quantization="none", dtype="auto")
        from pathlib import Path

        t0 = time.perf_counter()
        model, _tok, facts = load_model(cfg, Path(hf))
        load_s = time.perf_counter() - t0
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        times = []
        for i, p in enumerate(prompts):
            ids = torch.tensor([p["tokens"] + p["tokens"][-40:]])  # prompt + a 40-token "reply"
            labels = ids.clone()
            labels[:, : len(p["tokens"])] = -100
            t0 = time.perf_counter()
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            dt = time.perf_counter() - t0
            if i:  # the first step is a warm-up
                times.append(dt)
            print(f"{name:14s} step {i} tokens={ids.shape[1]} {dt:6.1f}s loss={loss.item():.3f}", file=sys.stderr,
                  flush=True)
        rows.append({"setup": name, "top_layers": top, "trainable_params": facts["trainable_params"],
                     "dtype": facts["dtype"], "load_s": round(load_s, 1), "tokens": int(ids.shape[1]),
                     "step_s": [round(t, 1) for t in times], "mean_step_s": round(sum(times) / len(times), 1)})
        del model, opt
    base = rows[0]["mean_step_s"]
    for r in rows:
        r["vs_all_layers"] = round(r["mean_step_s"] / base, 2)
        print(r)
    out = write_results("bench_lora_step", {"machine": machine(), "threads": args.threads, "r": args.r, "rows": rows})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    bars = ax.bar([r["setup"] for r in rows], [r["mean_step_s"] for r in rows], color="#4878a8")
    ax.bar_label(bars, fmt="%.1f s")
    ax.set_ylabel("seconds per step (1 example, ~890 tokens)")
    ax.set_title(f"LoRA r={args.r} all-linear on Qwen2.5-Coder-1.5B, {args.threads} threads, {rows[0]['dtype']}",
                 fontsize=10)
    save_figure(fig, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
