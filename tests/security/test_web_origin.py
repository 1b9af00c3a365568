"""A web page only its own origin can drive: a foreign origin gets neither CORS headers nor an
answer, and the login cookie is first-party (SameSite=Lax)."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from core.settings import load_settings
from kb.services import build_services
from web.app import WarmUp, asgi_app, build_app
from web.auth import UserDirectory

SAMPLE = __import__("pathlib").Path(__file__).resolve().parents[2] / "data" / "sample"
HOST = {"host": "kb.acme.example"}
EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from ingest.sync import sync_sources

    root = tmp_path_factory.mktemp("web")
    cfg = root / "kb.yaml"
    cfg.write_text(f"""data_dir: {root / 'data'}
sources:
  - {{name: acme-wiki, type: wiki, path: {SAMPLE / 'wiki'}}}
embedding: {{model: hash}}
generator: {{backend: fake}}
retrieval: {{context_filter: false}}
server:
  allowed_origins: ["https://intranet.acme.example"]
  auth: {{mode: users_file, users_file: {SAMPLE / 'users.yaml'}}}
""", encoding="utf-8")
    settings = load_settings(cfg)
    sync_sources(settings, settings.sources)
    services = build_services(settings)
    directory = UserDirectory.from_config(settings.server.auth)
    demo = build_app(services, settings, warmup=WarmUp(services), directory=directory)
    with TestClient(asgi_app(demo, settings, directory), base_url="http://kb.acme.example") as c:
        yield c


def test_a_foreign_preflight_gets_no_cors_headers(client):
    r = client.options("/gradio_api/queue/join", headers={
        **HOST, "Origin": EVIL, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert r.status_code == 403
    assert not any(k.lower().startswith("access-control-") for k in r.headers)


def test_a_foreign_origin_cannot_log_in_or_ask(client):
    r = client.post("/login", data={"username": "alice", "password": "acme-demo"}, headers={**HOST, "Origin": EVIL})
    assert r.status_code == 403 and "set-cookie" not in r.headers
    r = client.post("/gradio_api/queue/join", json={"data": ["What is the VPN?"], "fn_index": 0},
                    headers={**HOST, "Origin": EVIL})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_the_own_origin_logs_in_with_a_first_party_cookie(client):
    r = client.post("/login", data={"username": "alice", "password": "acme-demo"},
                    headers={**HOST, "Origin": "http://kb.acme.example"})
    assert r.status_code == 200, r.text
    cookies = r.headers.get_list("set-cookie")
    assert cookies and all("samesite=lax" in c.lower() for c in cookies)
    assert not any("samesite=none" in c.lower() for c in cookies)


def test_a_listed_origin_gets_cors_for_itself_only(client):
    r = client.get("/config", headers={**HOST, "Origin": "https://intranet.acme.example"})
    assert r.headers.get("access-control-allow-origin") == "https://intranet.acme.example"
    r = client.get("/config", headers=HOST)  # no Origin (same-origin navigation): served, no CORS
    assert "access-control-allow-origin" not in r.headers
