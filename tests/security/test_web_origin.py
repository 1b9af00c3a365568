"""A web page only its own origin can drive: a foreign origin gets neither CORS headers nor an
answer, and the login cookie is first-party (SameSite=Lax)."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from kb_chatbot.core.settings import load_settings
from kb_chatbot.app.kb.services import build_services
from kb_chatbot.app.web.app import WarmUp, asgi_app, build_app
from kb_chatbot.app.auth import UserDirectory

SAMPLE = __import__("pathlib").Path(__file__).resolve().parents[2] / "data" / "sample"
HOST = {"host": "kb.acme.example"}
EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from kb_chatbot.ingest.sync import sync_sources

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


# --- sessions end; guessing from one address slows down --------------------------------------


def _login(client, user="alice", password="acme-demo"):
    return client.post("/login", data={"username": user, "password": password},
                       headers={**HOST, "Origin": "http://kb.acme.example"})


def _guard(client):
    from kb_chatbot.app.web.session import SessionGuard

    app = client.app.app  # SameOriginMiddleware -> SessionGuard
    assert isinstance(app, SessionGuard)
    return app


def test_a_login_cookie_has_a_max_age_and_the_session_ends_when_it_is_old(client):
    guard = _guard(client)
    r = _login(client)
    assert r.status_code == 200
    assert all("max-age=43200" in c.lower() for c in r.headers.get_list("set-cookie"))
    assert client.get("/gradio_api/user", headers=HOST).json() == "alice"
    real = guard.clock
    try:
        guard.clock = lambda: real() + 13 * 3600  # 13 hours later: past session_hours (12)
        assert client.get("/gradio_api/user", headers=HOST).json() is None
        r = client.get("/gradio_api/login_check", headers=HOST)
        assert r.status_code == 401
    finally:
        guard.clock = real
    assert client.get("/gradio_api/user", headers=HOST).json() is None  # the token is gone for good


def test_an_idle_session_ends(client):
    guard = _guard(client)
    assert _login(client).status_code == 200
    real = guard.clock
    try:
        guard.clock = lambda: real() + 60 * 60  # used an hour later: within idle_minutes (120)
        assert client.get("/gradio_api/user", headers=HOST).json() == "alice"
        guard.clock = lambda: real() + 60 * 60 + 121 * 60  # then idle for 121 minutes
        assert client.get("/gradio_api/user", headers=HOST).json() is None
    finally:
        guard.clock = real


def test_a_token_the_guard_never_saw_issued_is_refused(client):
    guard = _guard(client)
    guard.tokens["forged-or-stale"] = "alice"
    client.cookies.set("access-token-unsecure-x", "forged-or-stale")
    try:
        assert client.get("/gradio_api/user", headers=HOST).json() is None
        assert "forged-or-stale" not in guard.tokens
    finally:
        client.cookies.clear()


def test_many_failed_logins_from_one_address_wait_even_for_other_names(client):
    from kb_chatbot.app.web.session import AddressBackoff

    guard = _guard(client)
    guard.backoff = AddressBackoff()
    for i in range(AddressBackoff.FREE_FAILURES):  # a different name each time: the per-user backoff never trips
        assert _login(client, user=f"user{i}", password="guess").status_code == 400
    r = _login(client)  # the right password, but this address must wait
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "set-cookie" not in r.headers
    guard.backoff = AddressBackoff()
    assert _login(client).status_code == 200
