"""CPU runtimes for the default answer model against llama.cpp, on the same real answer prompts:

    .venv/bin/pip install onnxruntime-genai openvino-genai      # the runtimes (not project deps)
    .venv/bin/python bench/bench_backends.py --convert-python /path/to/venv-with-converters/bin/python
    .venv/bin/python bench/bench_backends.py                     # converted folders reused

Every runtime gets the packaged Qwen2.5-Coder-1.5B, converted on this machine without a download:
the Q4_K_M GGUF (llama.cpp, as served) → the transformers folder `kb models prepare --hf` makes →
onnxruntime-genai's model builder (int4 MatMulNBits, accuracy level 4 = int8 compute) and
optimum-intel's OpenVINO export (int4 and int8 weights). The converters pin other versions of
huggingface-hub / torch than this project, so they run under ``--convert-python`` (a separate
venv with ``onnxruntime-genai onnx onnx_ir optimum-intel[openvino] nncf``); the runtimes
themselves load in this venv.

The prompts are the answer prompts today's service builds (retrieval + context filter; the same
token ids for every runtime) for answerable questions of the trust dev set
(``eval/devsets/handbook.jsonl`` over the handbook and Drive files in ../shared). Each runtime
runs in its own process (peak memory is its own), with 2 threads, greedy, at most 80 new tokens;
per prompt: time to the first token (prompt read), time to the end of the first sentence, decode
speed, total, and whether the text equals llama.cpp's. Writes bench/results/bench_backends.json
and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401  (repo on sys.path, offline)
from common import RESULTS, machine, pyplot, save_figure, write_results

#: (name, converted folder under --work, how it is converted)
RUNTIMES = ("llama.cpp Q4_K_M", "onnxruntime-genai int4", "OpenVINO int4", "OpenVINO int8",
            "OpenVINO GGUF Q4_K_M")
_SENTENCE_END = re.compile(r"[.!?](\s|$)|\n")


def answer_prompts(n: int) -> tuple[str, str, list[dict]]:
    """(GGUF path, HF folder, prompts): token ids of the first ``n`` answerable dev-set questions."""
    from bench_prompt_lookup import answer_prompts as lookup_prompts

    from kb_chatbot.app.generators.model_files import hf_folder_for, resolve_model
    from kb_chatbot.core.settings import load_settings

    path, _model_id, prompts = lookup_prompts(n, "default")
    s = load_settings(common.REPO / "eval" / "devsets" / "shared.yaml")
    hf = hf_folder_for(resolve_model(s.generator, s.models_dir), s.models_dir)
    return path, str(hf), [{"id": qid, "tokens": toks} for qid, toks in prompts]


def convert(python: str, hf: str, work: Path) -> dict[str, float]:
    """Convert the HF folder with each runtime's own converter; seconds per conversion."""
    cmds = {
        "onnxruntime-genai int4": [python, "-m", "onnxruntime_genai.models.builder", "-i", hf, "-o",
                                   str(work / "ort-int4"), "-p", "int4", "-e", "cpu",
                                   "--extra_options", "int4_accuracy_level=4"],
        "OpenVINO int4": [python, "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model", hf,
                          "--task", "text-generation-with-past", "--weight-format", "int4", str(work / "ov-int4")],
        "OpenVINO int8": [python, "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model", hf,
                          "--task", "text-generation-with-past", "--weight-format", "int8", str(work / "ov-int8")],
    }
    took = {}
    for name, cmd in cmds.items():
        print(f"converting: {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode:  # optimum-intel 2.2's int8 export fails on a local folder: measured without it
            print(f"conversion failed: {name} (exit {proc.returncode})", file=sys.stderr)
            continue
        took[name] = round(time.perf_counter() - t0, 1)
    return took


def folder_of(name: str, gguf: str, work: Path) -> str:
    return {"llama.cpp Q4_K_M": gguf, "onnxruntime-genai int4": str(work / "ort-int4"),
            "OpenVINO int4": str(work / "ov-int4"), "OpenVINO int8": str(work / "ov-int8"),
            "OpenVINO GGUF Q4_K_M": gguf}[name]  # OpenVINO GenAI reads the packaged GGUF itself


# -- workers: one runtime, every prompt, in this process --------------------------------------

def _llamacpp(path: str, threads: int):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def run(tokens: list[int], max_new: int):
        llm.reset()
        for tok in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                return
            yield tok

    return run, lambda toks: llm.detokenize(toks).decode("utf-8", "replace")


def _ort(path: str, threads: int):
    import onnxruntime_genai as og

    config = og.Config(path)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    tok = og.Tokenizer(model)

    def run(tokens: list[int], max_new: int):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(tokens) + max_new)
        gen = og.Generator(model, params)
        gen.append_tokens(tokens)
        while not gen.is_done():
            gen.generate_next_token()
            t = int(gen.get_next_tokens()[0])
            if gen.is_done() and t in (151643, 151645):  # <|endoftext|>, <|im_end|>
                return
            yield t

    return run, lambda toks: tok.decode(toks)


def _openvino(path: str, threads: int):
    import numpy as np
    import openvino as ov
    import openvino_genai as ovg
    import queue
    import threading

    sched = ovg.SchedulerConfig()
    sched.enable_prefix_caching = False  # every prompt read in full, as llama.cpp's reset=True here
    pipe = ovg.LLMPipeline(path, "CPU", scheduler_config=sched, INFERENCE_NUM_THREADS=threads)
    tokenizer = pipe.get_tokenizer()

    def run(tokens: list[int], max_new: int):
        cfg = ovg.GenerationConfig()
        cfg.max_new_tokens = max_new
        cfg.do_sample = False
        q: queue.Queue = queue.Queue()
        stop = threading.Event()

        class Streamer(ovg.StreamerBase):
            def write(self, token):  # noqa: D401  (an int, or a list of ints in newer releases)
                for t in (token if isinstance(token, list) else [token]):
                    q.put(int(t))
                return ovg.StreamingStatus.STOP if stop.is_set() else ovg.StreamingStatus.RUNNING

            def end(self):
                q.put(None)

        ids = np.array([tokens], dtype=np.int64)
        inputs = ovg.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        th = threading.Thread(target=pipe.generate, args=(inputs, cfg, Streamer()))
        th.start()
        try:
            while (t := q.get()) is not None:
                if t in (151643, 151645):
                    continue
                yield t
        finally:  # a caller that stops early: end this generation before the next one starts
            stop.set()
            th.join()

    return run, lambda toks: tokenizer.decode(toks)


def worker(name: str, folder: str, prompts_file: str, threads: int, max_new: int) -> None:
    t0 = time.perf_counter()
    make = _llamacpp if name.startswith("llama.cpp") else _ort if name.startswith("onnx") else _openvino
    run, decode = make(folder, threads)
    load_s = time.perf_counter() - t0
    prompts = json.loads(Path(prompts_file).read_text())
    # one untimed warm-up (first-call allocations, kernel selection) on a prompt of its own
    for _ in zip(range(4), run(prompts[-1]["tokens"][::-1][:300], 4)):
        pass
    rows = []
    for p in prompts:
        out: list[int] = []
        t0 = time.perf_counter()
        t_first = t_sentence = None
        for tok in run(p["tokens"], max_new):
            now = time.perf_counter()
            t_first = t_first or now
            out.append(tok)
            if t_sentence is None and _SENTENCE_END.search(decode(out)):
                t_sentence = now
            if len(out) >= max_new:
                break
        t_end = time.perf_counter()
        t_first = t_first or t_end
        rows.append({"id": p["id"], "prompt_tokens": len(p["tokens"]), "new_tokens": len(out),
                     "prefill_s": round(t_first - t0, 3), "first_sentence_s": round((t_sentence or t_end) - t0, 3),
                     "decode_s": round(t_end - t_first, 3), "total_s": round(t_end - t0, 3), "text": decode(out)})
        print(f"{name:24s} {p['id']:8s} prompt={len(p['tokens'])} new={len(out)} first={t_first - t0:5.2f}s "
              f"sentence={rows[-1]['first_sentence_s']:5.2f}s total={t_end - t0:5.2f}s", file=sys.stderr, flush=True)
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork + exec)
    peak = next((int(ln.split()[1]) / 1024 for ln in Path("/proc/self/status").read_text().splitlines()
                 if ln.startswith("VmHWM:")), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({"load_s": round(load_s, 2), "peak_rss_mib": round(peak), "rows": rows}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new", type=int, default=80)
    ap.add_argument("--work", type=Path, default=common.REPO / "data" / "runtime" / "bench-backends",
                    help="where the converted models go")
    ap.add_argument("--convert-python", help="a python with the converters: converts first")
    ap.add_argument("--only", help="comma-separated runtime names")
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from the last JSON")
    ap.add_argument("--name", default="bench_backends",
                    help="results file name under bench/results (one per CPU kind: bench_backends-amx)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.folder, args.prompts_file, args.threads, args.max_new)
        return 0

    if args.plot_only:
        d = json.loads((RESULTS / f"{args.name}.json").read_text())
        plot(d["summary"], RESULTS / f"{args.name}.json", threads=d["threads"],
             n=next(iter(d["summary"].values()))["prompts"], cpu=d["machine"]["cpu"])
        return 0
    gguf, hf, prompts = answer_prompts(args.prompts)
    args.work.mkdir(parents=True, exist_ok=True)
    converted = convert(args.convert_python, hf, args.work) if args.convert_python else {}
    pfile = args.work / "prompts.json"
    pfile.write_text(json.dumps(prompts))
    names = [n for n in RUNTIMES if not args.only or n in args.only.split(",")]
    results = {}
    for name in names:
        folder = folder_of(name, gguf, args.work)
        if not Path(folder).exists():
            print(f"skipped {name}: {folder} missing (run with --convert-python)", file=sys.stderr)
            continue
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--folder", folder, "--prompts-file",
                               str(pfile), "--threads", str(args.threads), "--max-new", str(args.max_new)],
                              stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            print(f"{name} failed (exit {proc.returncode})", file=sys.stderr)
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = results.get("llama.cpp Q4_K_M")
    summary = {}
    for name, r in results.items():
        rows = r["rows"]
        summary[name] = {
            "prefill_tps": round(sum(x["prompt_tokens"] for x in rows) / sum(x["prefill_s"] for x in rows), 1),
            "decode_tps": round(sum(x["new_tokens"] - 1 for x in rows) / max(1e-9, sum(x["decode_s"] for x in rows)), 1),
            "p50_first_token_s": round(statistics.median([x["prefill_s"] for x in rows]), 2),
            "p50_first_sentence_s": round(statistics.median([x["first_sentence_s"] for x in rows]), 2),
            "p50_total_s": round(statistics.median([x["total_s"] for x in rows]), 2),
            "load_s": r["load_s"], "peak_rss_mib": r["peak_rss_mib"],
            "same_text_as_llamacpp": (sum(a["text"] == b["text"] for a, b in zip(rows, base["rows"]))
                                      if base else None),
            "prompts": len(rows),
        }
        if base:  # llama.cpp runs first, so its summary is there
            summary[name]["first_sentence_vs_llamacpp"] = round(
                summary[name]["p50_first_sentence_s"] / summary["llama.cpp Q4_K_M"]["p50_first_sentence_s"], 2)
    for name, s in summary.items():
        print(f"{name:24s} {s}")
    out = write_results(args.name, {"machine": machine(), "threads": args.threads, "max_new": args.max_new,
                                           "converted_s": converted, "summary": summary, "runs": results})
    plot(summary, out, threads=args.threads, n=len(prompts), cpu=machine()["cpu"])
    return 0


def plot(summary: dict, out: Path, *, threads: int, n: int, cpu: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.4))
    ns = list(summary)
    colors = ["#4878a8", "#d08040", "#60a060", "#a060a0", "#c8b040"][: len(ns)]
    for ax, key, label, fmt in ((axes[0], "prefill_tps", "prompt read, tokens/s", "%.0f"),
                                (axes[1], "decode_tps", "write, tokens/s", "%.1f"),
                                (axes[2], "p50_first_sentence_s", "p50 first sentence, s (lower is better)", "%.1f"),
                                (axes[3], "same_text_as_llamacpp", f"answers equal to llama.cpp's (of {n})", "%d")):
        bars = ax.bar(range(len(ns)), [summary[k][key] or 0 for k in ns], color=colors)
        ax.bar_label(bars, fmt=fmt)
        ax.set_xticks(range(len(ns)), [k.replace(" ", "\n").replace("-genai", "-\ngenai") for k in ns], fontsize=8)
        ax.set_title(label, fontsize=10)
    fig.suptitle(f"Qwen2.5-Coder-1.5B, {threads} threads, {n} real answer prompts, greedy; {cpu}", fontsize=10)
    save_figure(fig, out)


if __name__ == "__main__":
    sys.exit(main())
