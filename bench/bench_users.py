"""20 people asking at once on one node with the real model (llama.cpp, the packaged
Qwen2.5-Coder-1.5B), the sample company, through the page's own HTTP protocol:

    .venv/bin/python bench/bench_users.py            # 20 users, one new question each, then the same again
    .venv/bin/python bench/bench_users.py --backend openvino   # the same on OpenVINO (AMX machines)

Each user is a thread that signs in through the proxy header and asks one question of
``data/sample/facts.jsonl`` (20 different questions). llama.cpp answers one question at a time
(one context: ``server.concurrency`` slots queue in front of it), so the figure is how long the
last person waits, whether anyone gets an error, and whether the waiting line tells each person
their place while they wait (Gradio's queue "estimation" messages, counted per user). The second
round asks the same 20 questions again: the answer cache serves them. Reports per round: errors,
p50/p95 of one answer's wall time, answers per second, users told their place.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import common  # noqa: F401  (threads, sys.path)
import numpy as np
from bench_nodes import SECRET, ask, start_node

from common import REPO, machine, pyplot, save_figure, write_results

SAMPLE = REPO / "data" / "sample"


def config(folder: Path, backend: str = "llamacpp") -> Path:
    """The sample company with the packaged default model (assembled once into the repo's data
    dir; for ``openvino`` its export there, made if missing, as `kb models prepare --openvino`)."""
    from kb_chatbot.app.generators.model_files import DEFAULT_MODEL, ModelRef, assemble_default_model

    model = assemble_default_model(REPO / "data" / "runtime" / "models")
    if backend == "openvino":
        from kb_chatbot.app.generators.openvino_export import export_openvino

        model = export_openvino(ModelRef(DEFAULT_MODEL.model_id, gguf_path=model), REPO / "data" / "runtime" / "models")
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "kb.yaml"
    cfg.write_text(f"""
data_dir: {folder / 'data'}
sources:
  - {{name: acme-wiki, type: wiki, path: {SAMPLE / 'wiki'}}}
  - {{name: acme-slack, type: slack, path: {SAMPLE / 'slack'}}}
  - {{name: acme-drive, type: drive, path: {SAMPLE / 'drive'}, default_acl: public}}
generator: {{model: {model}, backend: {backend}}}
server: {{auth: {{mode: header, proxy_secret: {SECRET}}}}}
""", encoding="utf-8")
    return cfg


def run(base: str, questions: list[str], submit: int, answer: int) -> dict:
    times: list[float] = []
    errors: list[str] = []
    told: list[int] = []
    lock = threading.Lock()

    def user(i: int) -> None:
        ranks: list[int] = []
        try:
            s = ask(base, f"u{i}", questions[i], submit, answer, ranks)
            with lock:
                times.append(s)
                told.append(len(ranks))
        except Exception as e:  # counted, never raised: the figure is the error count
            with lock:
                errors.append(repr(e)[:200])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
        time.sleep(0.05)  # everyone within a second, in a known order
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"answers": len(times), "errors": len(errors), "error_samples": errors[:3],
            "p50_s": round(float(np.percentile(times, 50)), 2) if times else None,
            "p95_s": round(float(np.percentile(times, 95)), 2) if times else None,
            "max_s": round(max(times), 2) if times else None,
            "answers_per_s": round(len(times) / wall, 3), "wall_s": round(wall, 1),
            "users_told_their_place": sum(1 for n in told if n > 0), "times": sorted(round(t, 2) for t in times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--backend", default="llamacpp", choices=["llamacpp", "openvino"])
    args = ap.parse_args()
    from kb_chatbot.app.kb.services import build_services
    from kb_chatbot.app.web.app import WarmUp, build_app
    from kb_chatbot.core.settings import load_settings
    from kb_chatbot.ingest.sync import sync_sources

    facts = [json.loads(x) for x in (SAMPLE / "facts.jsonl").read_text().splitlines() if x.strip()]
    questions = [f["question"] for f in facts if f.get("readers") == "public"][: args.users]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(Path(tmp) / "n0", args.backend)
        settings = load_settings(cfg)
        sync_sources(settings, settings.sources)
        services = build_services(settings)
        names = {getattr(fn.fn, "__name__", ""): i for i, fn in build_app(services, settings,
                                                                           warmup=WarmUp(services)).fns.items()}
        del services
        submit, answer = names["on_submit"], names["on_answer"]
        proc, base = start_node(cfg, Path(tmp) / "n0.log")
        try:
            ask(base, "warm", "Where is the office?", submit, answer)  # loads the model
            new = run(base, questions, submit, answer)
            print("new questions", {k: v for k, v in new.items() if k != "times"}, file=sys.stderr)
            again = run(base, questions, submit, answer)
            print("asked again  ", {k: v for k, v in again.items() if k != "times"}, file=sys.stderr)
        finally:
            proc.kill()
            proc.wait()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r, label in ((new, "new questions"), (again, "the same questions again")):
        ax.plot(range(1, len(r["times"]) + 1), r["times"], marker="o", label=label)
    ax.set_xlabel("person (by how long they waited)")
    ax.set_ylabel("seconds to the whole answer")
    ax.set_title(f"{len(questions)} people at once, one node, Qwen2.5-Coder-1.5B on {args.backend}, {machine()['cpu']}\n"
                 f"errors {new['errors']} / {again['errors']}; p95 {new['p95_s']} s / {again['p95_s']} s")
    ax.legend()
    name = "bench_users" if args.backend == "llamacpp" else f"bench_users-{args.backend}"
    save_figure(fig, write_results(name, {"machine": machine(), "backend": args.backend, "users": len(questions),
                                          "new": new, "again": again}))


if __name__ == "__main__":
    main()
