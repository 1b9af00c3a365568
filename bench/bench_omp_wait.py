"""How llama.cpp's worker threads wait between operations, on an idle machine and with another
busy process on the cores: sleeping at once (``OMP_WAIT_POLICY=PASSIVE``, ``generator.thread_wait:
sleep``) or spinning briefly first (``GOMP_SPINCOUNT=1000``, ``thread_wait: spin``), in one run:

    .venv/bin/python bench/bench_omp_wait.py                    # 2 threads, 2 answer prompts, 3 rounds

Each setting runs in its own process (libgomp reads the environment when it loads), through
the product's generator factory (``make_generator``, ``generator.threads: 2``), on the answer
prompts the service builds for the first answerable questions of the trust dev set
(``bench_prompt_lookup.answer_prompts``): seconds reading each prompt and tokens written per
second (greedy, 60 tokens whether or not the answer ends: writing measured steadily). Settings
alternate within each round; "busy" runs
the same with one more process spinning on a core (what a re-index, a second app or a test run
does to a shared server). Writes bench/results/bench_omp_wait.json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (repo on sys.path, offline)
from common import pyplot, save_figure, write_results

#: (name, environment) of each way to wait; OMP_WAIT_POLICY and GOMP_SPINCOUNT are cleared first
SETTINGS = (
    ("sleep (PASSIVE)", {"OMP_WAIT_POLICY": "PASSIVE"}),                      # generator.thread_wait: sleep
    ("spin briefly (GOMP_SPINCOUNT=1000)", {"GOMP_SPINCOUNT": "1000"}),        # generator.thread_wait: spin
)


def child(prompts_file: str, threads: int, new_tokens: int) -> int:
    from kb_chatbot.app.generators import make_generator
    from kb_chatbot.core.settings import load_settings

    s = load_settings(common.REPO / "kb.yaml")
    s.generator.backend, s.generator.threads = "llamacpp", threads
    gen = make_generator(s.generator, s.models_dir, base_dir=s.config_dir)
    llm = gen._load()
    out = []
    for qid, tokens in json.loads(Path(prompts_file).read_text()):
        llm.reset()
        t0 = time.perf_counter()
        t1, n = None, 0
        for _tok in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0):
            t1 = t1 or time.perf_counter()
            n += 1
            if n > new_tokens:  # a fixed number of tokens, end of answer or not: writing measured steadily
                break
        t2 = time.perf_counter()
        out.append({"id": qid, "prompt_tokens": len(tokens), "read_s": t1 - t0, "write_s": t2 - t1, "new_tokens": n - 1})
    print(json.dumps({"wait": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}, "rows": out}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=60)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.threads, args.new_tokens)

    from bench_prompt_lookup import answer_prompts

    _path, _model_id, prompts = answer_prompts(args.prompts, "default")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(prompts, fh)
    runs: dict[str, dict[str, list[dict]]] = {c: {n: [] for n, _ in SETTINGS} for c in ("idle", "busy")}
    for condition in ("idle", "busy"):
        busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition == "busy" else None)
        try:
            for r in range(args.rounds):
                for name, env in SETTINGS:
                    e = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
                    e.update(env)
                    res = subprocess.run([sys.executable, __file__, "--child", fh.name, "--threads", str(args.threads),
                                          "--new-tokens", str(args.new_tokens)], env=e, capture_output=True, text=True,
                                         timeout=900)
                    if res.returncode != 0:
                        raise SystemExit(f"{name}: child failed:\n{res.stderr[-2000:]}")
                    rows = json.loads(res.stdout.strip().splitlines()[-1])["rows"]
                    runs[condition][name] += rows
                    w = sum(x["new_tokens"] for x in rows) / sum(x["write_s"] for x in rows)
                    print(f"{condition} round {r + 1} {name:16s} write {w:5.1f} tok/s "
                          f"read {statistics.median(x['read_s'] for x in rows):5.2f} s", file=sys.stderr, flush=True)
        finally:
            if busy is not None:
                busy.kill()
    os.unlink(fh.name)
    summary: dict[str, dict] = {}
    for condition, by in runs.items():
        base = by[SETTINGS[0][0]]
        for name, rows in by.items():
            write_tps = sum(x["new_tokens"] for x in rows) / sum(x["write_s"] for x in rows)
            summary.setdefault(condition, {})[name] = {
                "write_tps": round(write_tps, 1),
                "read_tps": round(sum(x["prompt_tokens"] for x in rows) / sum(x["read_s"] for x in rows), 1),
                "write_speed_vs_sleep": round(write_tps / (sum(x["new_tokens"] for x in base)
                                                           / sum(x["write_s"] for x in base)), 2),
                "total_s_vs_sleep": round(sum(x["read_s"] + x["write_s"] for x in rows)
                                          / sum(x["read_s"] + x["write_s"] for x in base), 2),
                "answers": len(rows),
            }
    print(json.dumps(summary, indent=1))
    out = write_results("bench_omp_wait", {"threads": args.threads, "summary": summary, "runs": runs})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    names = [n for n, _ in SETTINGS]
    width = 0.38
    for i, condition in enumerate(("idle", "busy")):
        bars = ax.bar([j + i * width for j in range(len(names))], [summary[condition][n]["write_tps"] for n in names],
                      width, label=f"{condition} machine" if condition == "idle" else "another process busy on a core")
        ax.bar_label(bars, fmt="%.1f")
    ax.set_xticks([j + width / 2 for j in range(len(names))], [n.replace(" (", "\n(") for n in names])
    ax.set_ylabel("tokens written per second")
    ax.legend()
    ax.set_title(f"llama.cpp, {args.threads} threads: how the worker threads wait", fontsize=10)
    save_figure(fig, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
