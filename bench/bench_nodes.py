"""20 people asking at once: one `kb serve` node vs two nodes on one PostgreSQL (store.backend:
postgres), the fake model, the sample company, through the page's own HTTP protocol.

    .venv/bin/python bench/bench_nodes.py            # 20 users, 2 questions each

Each user is a thread that signs in through the proxy header (``server.auth.mode: header``)
and asks its questions one after the other (``run/predict``, then ``queue/join`` and the event
stream until the answer is complete). With one node all 20 go to it; with two, users
alternate between them (a proxy's round robin with sticky sessions). Reported per set-up:
errors, p50/p95 of one answer's wall time (question sent to last event), answers per second;
and the two-node / one-node ratios of the same run. The fake model answers in milliseconds, so
this measures the app nodes, the queue and Postgres, not a language model: with a real model
each node's ``server.concurrency`` slots are the limit.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common  # noqa: F401  (threads, sys.path)
import numpy as np

from common import REPO, pyplot, save_figure, write_results

SAMPLE = REPO / "data" / "sample"
SECRET = "bench-" + secrets.token_hex(4)
TOPICS = ["vacation days", "the VPN", "expense reports", "parental leave", "a new laptop"]


def config(folder: Path, url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "kb.yaml"
    cfg.write_text(f"""
data_dir: {folder / 'data'}
store: {{backend: postgres, url: '{url}'}}
index: {{kind: hnsw}}
sources:
  - {{name: acme-wiki, type: wiki, path: {SAMPLE / 'wiki'}}}
  - {{name: acme-slack, type: slack, path: {SAMPLE / 'slack'}}}
embedding: {{model: hash}}
generator: {{backend: fake}}
server: {{auth: {{mode: header, proxy_secret: {SECRET}}}}}
""", encoding="utf-8")
    return cfg


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(cfg: Path, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    proc = subprocess.Popen([sys.executable, "-m", "kb_chatbot.app.kb.cli", "-c", str(cfg), "serve", "--port",
                             str(port), "--no-ingest"], env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(360):
        try:
            if httpx.get(base + "/", headers=headers("u0"), timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit(f"node did not start: {log.read_text()[-2000:]}")


def headers(user: str) -> dict[str, str]:
    return {"X-Forwarded-User": f"{user}@acme.example", "X-Proxy-Secret": SECRET}


def ask(base: str, user: str, question: str, submit: int, answer: int, ranks: list[int] | None = None) -> float:
    """Seconds from sending ``question`` to its last event; queue places Gradio sent go to ``ranks``."""
    import httpx

    session = secrets.token_hex(6)
    t0 = time.perf_counter()
    with httpx.Client(base_url=base, timeout=300, headers=headers(user)) as c:
        r = c.post("/gradio_api/run/predict", json={"data": [question, None], "fn_index": submit,
                                                     "session_hash": session, "event_data": None})
        r.raise_for_status()
        r = c.post("/gradio_api/queue/join", json={"data": [None], "fn_index": answer, "session_hash": session,
                                                    "event_data": None})
        r.raise_for_status()
        with c.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if ranks is not None and msg.get("msg") == "estimation" and msg.get("rank") is not None:
                        ranks.append(int(msg["rank"]))
                    if msg.get("msg") == "process_completed":
                        if not msg.get("success"):
                            raise RuntimeError(str(msg)[:300])
                        return time.perf_counter() - t0
    raise RuntimeError("the stream ended without an answer")


def run(bases: list[str], users: int, per_user: int, submit: int, answer: int) -> dict:
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def user(i: int) -> None:
        base = bases[i % len(bases)]
        for j in range(per_user):
            q = f"User {i}, question {j}: what is the policy on {TOPICS[(i + j) % len(TOPICS)]}?"
            try:
                s = ask(base, f"u{i}", q, submit, answer)
                with lock:
                    times.append(s)
            except Exception as e:  # counted, never raised: the figure is the error count
                with lock:
                    errors.append(repr(e)[:200])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"nodes": len(bases), "answers": len(times), "errors": len(errors), "error_samples": errors[:3],
            "p50_s": round(float(np.percentile(times, 50)), 3) if times else None,
            "p95_s": round(float(np.percentile(times, 95)), 3) if times else None,
            "answers_per_s": round(len(times) / wall, 2), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--per-user", type=int, default=2)
    args = ap.parse_args()
    import pgserver

    from kb_chatbot.app.kb.services import build_services
    from kb_chatbot.app.web.app import WarmUp, build_app
    from kb_chatbot.core.settings import load_settings
    from kb_chatbot.ingest.sync import sync_sources

    with tempfile.TemporaryDirectory() as tmp:
        srv = pgserver.get_server(str(Path(tmp) / "pg"), cleanup_mode="stop")
        procs = []
        try:
            srv.psql("CREATE DATABASE nodes;")
            url = srv.get_uri().replace("/postgres?", "/nodes?")
            cfgs = [config(Path(tmp) / f"n{i}", url) for i in range(2)]
            settings = load_settings(cfgs[0])
            sync_sources(settings, settings.sources)
            services = build_services(settings)
            names = {getattr(fn.fn, "__name__", ""): i for i, fn in build_app(services, settings,
                                                                               warmup=WarmUp(services)).fns.items()}
            submit, answer = names["on_submit"], names["on_answer"]
            nodes = [start_node(c, Path(tmp) / f"n{i}.log") for i, c in enumerate(cfgs)]
            procs = [p for p, _ in nodes]
            bases = [b for _, b in nodes]
            run(bases, 2, 1, submit, answer)  # warm both nodes (first question loads the page's parts)
            one = run(bases[:1], args.users, args.per_user, submit, answer)
            print("one node ", one)
            two = run(bases, args.users, args.per_user, submit, answer)
            print("two nodes", two)
        finally:
            for p in procs:
                p.kill()
                p.wait()
            srv.cleanup()
    ratios = {"p95_two_over_one": round(two["p95_s"] / one["p95_s"], 2) if one["p95_s"] and two["p95_s"] else None,
              "throughput_two_over_one": round(two["answers_per_s"] / one["answers_per_s"], 2)}
    print("ratios", ratios)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(["1 node", "2 nodes"], [one["p95_s"] or 0, two["p95_s"] or 0], label="p95 (s)")
    ax.bar(["1 node", "2 nodes"], [one["p50_s"] or 0, two["p50_s"] or 0], label="p50 (s)")
    ax.set_ylabel("seconds per answer")
    ax.set_title(f"{args.users} users x {args.per_user} questions, fake model, one Postgres\n"
                 f"errors: {one['errors']} (1 node), {two['errors']} (2 nodes)")
    ax.legend()
    save_figure(fig, write_results("bench_nodes", {"users": args.users, "per_user": args.per_user,
                                                   "one_node": one, "two_nodes": two, "ratios": ratios}))


if __name__ == "__main__":
    main()
