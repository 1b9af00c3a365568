"""Prompt-lookup decoding on the OpenVINO int8 model: does it make writing fast enough? (issue 26)

    .venv/bin/kb -c eval/devsets/shared.yaml models prepare --openvino   # the export, once
    .venv/bin/python bench/bench_prompt_lookup_openvino.py --questions 8

Through the service OpenVINO reads prompts ~3x as fast as llama.cpp on AMX but writes slower
(7.5 vs 12.7 tokens/s), so its answers gain only 0.78x (docs/BENCH.md). Answers copy phrases
from their sources, and on OpenVINO checking k drafted tokens costs about one written token
(reading runs ~34 tokens for the price of one written). This measures that idea on the raw model
before it goes into the backend: the real answer prompts of the first ``--questions``
answerable dev-set questions (``bench_prompt_lookup.answer_prompts``: token ids as the service
builds them), greedy, at most 80 new tokens, each written twice in turn on one compiled model:

- ``plain``: one token per step;
- ``lookup``: the last 3 tokens are looked up in the prompt and reply so far, the 8 tokens that
  followed are read with the last token in one step, and the longest run the model agrees with
  (its own greedy choice at each position) is kept, plus its next token; the KV cache is trimmed
  to what was kept.

Reported per prompt: seconds to write (the prompt read is timed apart and is the same for both),
steps, and whether the two texts are equal. The IR model computes the logits of every position
here (the backend computes the last only), so read times are no backend figure.
Writes bench/results/bench_prompt_lookup_openvino.json and .png.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import common  # noqa: F401  (repo on sys.path, offline)
from common import pyplot, save_figure, write_results


class Model:
    def __init__(self, folder: str, threads: int):
        import openvino as ov

        self.ov = ov
        core = ov.Core()
        self.req = core.compile_model(core.read_model(f"{folder}/openvino_model.xml"), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "KV_CACHE_PRECISION": "f32"}).create_infer_request()

    def feed(self, ids: list[int], start: int):
        from kb_chatbot.app.generators.openvino import step_inputs

        self.req.infer(step_inputs(ids, start))
        return self.req.get_tensor("logits").data[0]

    def trim(self, keep: int) -> None:
        for st in self.req.query_state():
            st.state = self.ov.Tensor(st.state.data[:, :, :keep, :].copy())

    def write(self, prompt: list[int], eos: set[int], max_new: int, lookup: bool, k: int = 8, ngram: int = 3):
        """(new tokens, seconds reading the prompt, seconds writing, steps)."""
        self.req.reset_state()
        t0 = time.perf_counter()
        self.feed(prompt[:-1], 0)
        nxt = int(self.feed(prompt[-1:], len(prompt) - 1)[-1].argmax())
        t1 = time.perf_counter()
        seq, out, steps = list(prompt), [], 0
        while nxt is not None and nxt not in eos and len(out) < max_new:
            out.append(nxt)
            seq.append(nxt)
            draft: list[int] = []
            if lookup:
                key = seq[-ngram:]
                for i in range(len(seq) - ngram - 1, -1, -1):
                    if seq[i:i + ngram] == key:
                        draft = seq[i + ngram:i + ngram + k]
                        break
            steps += 1
            logits = self.feed([nxt] + draft, len(seq) - 1)
            kept = 0
            while (kept < len(draft) and len(out) < max_new and draft[kept] not in eos
                   and int(logits[kept].argmax()) == draft[kept]):
                out.append(draft[kept])
                seq.append(draft[kept])
                kept += 1
            nxt = int(logits[kept].argmax())
            if kept < len(draft):
                self.trim(len(seq))
        return out, t1 - t0, time.perf_counter() - t1, steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new", type=int, default=80)
    args = ap.parse_args(argv)
    from bench_prompt_lookup import answer_prompts

    from kb_chatbot.app.generators.model_files import resolve_model
    from kb_chatbot.app.generators.openvino_export import exported_folder
    from kb_chatbot.core.settings import load_settings

    s = load_settings(common.REPO / "eval" / "devsets" / "shared.yaml")
    folder = exported_folder(resolve_model(s.generator, s.models_dir), s.models_dir)
    if folder is None:
        sys.exit("no OpenVINO export: run `kb -c eval/devsets/shared.yaml models prepare --openvino` first")
    _path, _model_id, prompts = answer_prompts(args.questions, "default")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    eos = {tok.eos_token_id, *(tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))}
    model = Model(str(folder), args.threads)
    model.write(prompts[0][1], eos, 4, False)  # warm-up
    rows = []
    for qid, toks in prompts:
        plain = model.write(toks, eos, args.max_new, False)
        look = model.write(toks, eos, args.max_new, True)
        row = {"id": qid, "prompt_tokens": len(toks), "new_tokens": len(plain[0]),
               "read_s": round(plain[1], 2), "plain_write_s": round(plain[2], 2), "lookup_write_s": round(look[2], 2),
               "plain_steps": plain[3], "lookup_steps": look[3], "same_text": plain[0] == look[0]}
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    summary = {"plain_write_s": round(sum(r["plain_write_s"] for r in rows), 2),
               "lookup_write_s": round(sum(r["lookup_write_s"] for r in rows), 2),
               "new_tokens": sum(r["new_tokens"] for r in rows),
               "same_text": f"{sum(r['same_text'] for r in rows)}/{len(rows)}"}
    summary["plain_tok_s"] = round(summary["new_tokens"] / summary["plain_write_s"], 2)
    summary["lookup_tok_s"] = round(summary["new_tokens"] / summary["lookup_write_s"], 2)
    summary["ratio_lookup_to_plain"] = round(summary["lookup_write_s"] / summary["plain_write_s"], 3)
    print(summary)
    out = write_results("bench_prompt_lookup_openvino", {"model": str(folder), "summary": summary, "rows": rows})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["plain_write_s"] for r in rows], 0.4, label="one token per step")
    ax.bar(x + 0.2, [r["lookup_write_s"] for r in rows], 0.4, label="prompt lookup (3-gram, 8 drafted)")
    ax.set_xticks(x, [r["id"] + ("" if r["same_text"] else " *") for r in rows])
    ax.set_ylabel("seconds to write the answer")
    ax.set_title(f"OpenVINO int8: {summary['plain_tok_s']} vs {summary['lookup_tok_s']} tokens/s written; "
                 f"same text {summary['same_text']} (* differs)")
    ax.legend()
    save_figure(fig, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
