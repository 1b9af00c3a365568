"""Two real `kb serve` processes on one PostgreSQL + pgvector (``store.backend: postgres``),
each with its own data folder, behind a reverse proxy that signs users in (header mode): both
answer from the same index; a re-index started from the second node's admin tab is seen by the first
at its next question; `kill -9` of one node leaves the other answering and the shared answer
log whole. The browser's own protocol is used (``run/predict``, ``queue/join`` + SSE)."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.contracts.test_store_contract import _pg_url, pg_server  # noqa: F401  (the session fixture)

REPO = Path(__file__).resolve().parents[3]
PROXY_SECRET = "two-nodes-" + secrets.token_hex(4)


def _config(folder: Path, data_dir: Path, wiki: Path, url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "kb.yaml"
    cfg.write_text(f"""
data_dir: {data_dir}
store: {{backend: postgres, url: '{url}'}}
index: {{kind: hnsw}}
sources: [{{name: wiki, type: wiki, path: {wiki}, base_url: "https://wiki.acme.example/"}}]
embedding: {{model: hash}}
generator: {{backend: fake}}
retrieval: {{context_filter: false}}
server:
  auth: {{mode: header, proxy_secret: {PROXY_SECRET}, admins: [admin@acme.example]}}
""", encoding="utf-8")
    return cfg


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kb(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    return subprocess.run([sys.executable, "-m", "kb_chatbot.app.kb.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)


class Node:
    def __init__(self, cfg: Path, log: Path):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
        self.log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "kb_chatbot.app.kb.cli", "-c", str(cfg), "serve",
                                      "--port", str(self.port), "--no-ingest"], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(self.base + "/", headers=self.headers("alice@acme.example"), timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"node on {self.port} never answered:\n{log.read_text()[-3000:]}")

    @staticmethod
    def headers(user: str) -> dict[str, str]:
        return {"X-Forwarded-User": user, "X-Forwarded-Email": user, "X-Proxy-Secret": PROXY_SECRET}

    def ask(self, question: str, user: str, submit: int, answer: int) -> str:
        session = secrets.token_hex(6)
        with httpx.Client(base_url=self.base, timeout=120, headers=self.headers(user)) as c:
            r = c.post("/gradio_api/run/predict", json={"data": [question, None], "fn_index": submit,
                                                         "session_hash": session, "event_data": None})
            assert r.status_code == 200, r.text
            r = c.post("/gradio_api/queue/join", json={"data": [None], "fn_index": answer,
                                                        "session_hash": session, "event_data": None})
            assert r.status_code == 200, r.text
            with c.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                        msg = json.loads(line[5:])
                        assert msg.get("success"), msg
                        return json.dumps(msg["output"]["data"][0][-1]["content"])
        raise AssertionError("no answer")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()


def _fn_indexes(cfg: Path) -> tuple[int, int]:
    """The page's event handler numbers, from the same page built here (the nodes build it alike)."""
    from kb_chatbot.app.kb.services import build_services
    from kb_chatbot.app.web.app import WarmUp, build_app
    from kb_chatbot.core.settings import load_settings

    settings = load_settings(cfg)
    services = build_services(settings)
    demo = build_app(services, settings, warmup=WarmUp(services))
    names = {getattr(fn.fn, "__name__", ""): i for i, fn in demo.fns.items()}
    return names["on_submit"], names["on_answer"], names["on_reindex"]


@pytest.mark.slow
def test_two_nodes_one_postgres(tmp_path, pg_server):  # noqa: F811
    from kb_chatbot.app.answer.log import PgAnswerLog

    url = _pg_url(pg_server)
    wiki = tmp_path / "wiki"
    wiki.mkdir()
    (wiki / "pto.md").write_text("---\ntitle: Vacation policy\n---\n# Vacation\n\nEmployees get 25 vacation days "
                                 "per year.\n")
    (wiki / "vpn.md").write_text("---\ntitle: VPN\n---\n# VPN\n\nConnect to the VPN with GlobalProtect.\n")
    cfg_a = _config(tmp_path / "a", tmp_path / "a" / "data", wiki, url)
    cfg_b = _config(tmp_path / "b", tmp_path / "b" / "data", wiki, url)
    first = _kb("-c", str(cfg_a), "reindex")
    assert first.returncode == 0, first.stderr
    submit, answer, reindex = _fn_indexes(cfg_a)
    a, b = Node(cfg_a, tmp_path / "a.log"), Node(cfg_b, tmp_path / "b.log")
    try:
        for node in (a, b):  # the same index, and a user signed in by the proxy, on either node
            shown = node.ask("How many vacation days per year?", "alice@acme.example", submit, answer)
            assert "25 vacation days" in shown and "Vacation policy" in shown, shown
        # a re-index started from node B's admin tab is seen by node A at its next question:
        # the generation pointer is in Postgres
        from kb_chatbot.index.pg import PgGenerations

        gens = PgGenerations(url)
        before = gens.current()
        (wiki / "parking.md").write_text("---\ntitle: Parking\n---\n# Parking\n\nVisitors park on level minus two.\n")
        r = httpx.post(b.base + "/gradio_api/run/predict", headers=Node.headers("admin@acme.example"), timeout=60,
                       json={"data": [], "fn_index": reindex, "session_hash": secrets.token_hex(6), "event_data": None})
        assert r.status_code == 200 and "Re-indexing" in json.dumps(r.json()["data"][0]), r.text
        deadline = time.monotonic() + 120
        while gens.current() == before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert gens.current() != before, (tmp_path / "b.log").read_text()[-3000:]
        shown = a.ask("Where do visitors park?", "bob@acme.example", submit, answer)
        assert "level minus two" in shown and "Parking" in shown, shown
        # the shell commands on the same store: `kb ask` (node A's socket answers it: same
        # machine, same account) and a scheduled run with nothing to do
        asked = _kb("-c", str(cfg_a), "ask", "Where do visitors park?", "--json")
        assert asked.returncode == 0 and "level minus two" in json.loads(asked.stdout)["answer"], asked.stderr
        once = _kb("-c", str(cfg_b), "schedule", "--once")
        assert once.returncode == 0, once.stderr
        a.kill()  # node A dies; node B answers on, and the answer log in Postgres holds every answer
        shown = b.ask("Where do visitors park?", "carol@acme.example", submit, answer)
        assert "level minus two" in shown, shown
        users = [r["username"] for r in PgAnswerLog(url).recent_answers(10)]
        assert sorted(users) == ["alice@acme.example", "alice@acme.example", "anonymous", "bob@acme.example",
                                 "carol@acme.example"], users
        # nothing of it lives in a node's folder: the last ingest run, too, is in Postgres
        assert not (tmp_path / "a" / "data" / "app.sqlite3").exists()
        from kb_chatbot.core.settings import load_settings
        from kb_chatbot.ingest.report import recent_runs

        runs = recent_runs(load_settings(cfg_a))  # node A's settings see the run made with B's
        assert len(runs) == 3 and runs[1]["generation"] and runs[1]["totals"]["added"] == 1, runs[1]
        assert runs[0]["generation"] is None  # the scheduled run: nothing changed, nothing published
    finally:
        a.kill()
        b.kill()
        shutil.rmtree(tmp_path / "a" / "data", ignore_errors=True)


@pytest.mark.slow
def test_a_login_on_one_node_works_on_the_other_and_signing_out_ends_it_on_both(tmp_path, pg_server):  # noqa: F811
    """users_file mode: the login token and the cookie's name are in Postgres, not in a node."""
    from tests.app.web.test_chat_app import SAMPLE

    url = _pg_url(pg_server)
    wiki = tmp_path / "wiki"
    wiki.mkdir()
    (wiki / "pto.md").write_text("---\ntitle: Vacation policy\n---\n# Vacation\n\nEmployees get 25 vacation days.\n")
    cfgs = []
    for name in ("a", "b"):
        cfg = _config(tmp_path / name, tmp_path / name / "data", wiki, url)
        text = cfg.read_text().replace(f"auth: {{mode: header, proxy_secret: {PROXY_SECRET}, admins: [admin@acme.example]}}",
                                       f"auth: {{mode: users_file, users_file: {SAMPLE / 'users.yaml'}}}")
        cfg.write_text(text)
        cfgs.append(cfg)
    assert _kb("-c", str(cfgs[0]), "reindex").returncode == 0
    a, b = Node(cfgs[0], tmp_path / "a.log"), Node(cfgs[1], tmp_path / "b.log")
    try:
        with httpx.Client(base_url=a.base, timeout=60) as ca:
            r = ca.post("/login", data={"username": "alice", "password": "acme-demo"})
            assert r.status_code == 200, r.text
            cookies = dict(ca.cookies)
        assert any(k.startswith("access-token") for k in cookies)
        with httpx.Client(base_url=b.base, timeout=60, cookies=cookies) as cb:
            me = cb.get("/config")
            assert me.status_code == 200, me.text  # node B knows node A's login
        with httpx.Client(base_url=b.base, timeout=60) as anon:
            assert anon.get("/config").status_code == 401  # and not without it
        with httpx.Client(base_url=a.base, timeout=60, cookies=cookies) as ca:
            ca.get("/logout")
        with httpx.Client(base_url=b.base, timeout=60, cookies=cookies) as cb:
            assert cb.get("/config").status_code == 401  # signed out on A: gone on B too
    finally:
        a.kill()
        b.kill()
