"""Logins: the users file, bcrypt checks, proxy headers, admin detection, `kb users`."""
from __future__ import annotations

import bcrypt
import pytest
from click.testing import CliRunner

from kb_chatbot.app.auth import (
    UserDirectory,
    hash_password,
    load_users,
    principal_from_headers,
    verify_password,
)
from kb_chatbot.core.errors import ConfigError
from kb_chatbot.core.settings import AuthConfig
from kb_chatbot.core.types import Principal


def _hash(pw: str) -> str:
    return bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture
def users_file(tmp_path):
    p = tmp_path / "users.yaml"
    p.write_text(
        f"""
users:
  - username: alice
    email: alice@acme.example
    display_name: Alice Liddell
    groups: [engineering]
    password_hash: "{_hash('acme-demo')}"
  - username: Bob
    email: bob@acme.example
    groups: sales
    password_hash: "{_hash('hunter2')}"
  - username: root
    groups: [admins]
    password_hash: "{_hash('x')}"
""",
        encoding="utf-8",
    )
    return p


def test_verify_accepts_right_password_and_denies_others(users_file):
    d = UserDirectory(load_users(users_file))
    assert d.verify("alice", "acme-demo")
    assert d.verify("ALICE", "acme-demo")  # logins are case-insensitive
    assert not d.verify("alice", "acme-demo ")
    assert not d.verify("alice", "")
    assert not d.verify("bob", "acme-demo")
    assert d.verify("bob", "hunter2")
    assert not d.verify("mallory", "acme-demo")
    assert not d.verify("", "")


def test_principal_carries_email_groups_and_admin(users_file):
    d = UserDirectory(load_users(users_file), admins=["alice"])
    alice = d.principal_for("alice")
    assert alice == Principal(username="alice", email="alice@acme.example", groups=("engineering",),
                              display_name="Alice Liddell", is_admin=True)
    assert "user:alice@acme.example" in alice.principals()
    assert "group:engineering" in alice.principals()
    bob = d.principal_for("Bob")
    assert bob.groups == ("sales",) and not bob.is_admin
    assert d.principal_for("root").is_admin  # member of the admins group
    assert d.principal_for("nobody").is_anonymous
    assert d.principal_for(None).principals() == frozenset({"public"})


@pytest.mark.parametrize(
    "body, needle",
    [
        ("users: [{username: alice}]", "entry 1 ('alice'): 'password_hash'"),
        ("users: [{username: 'bad name', password_hash: '$2b$x'}]", "entry 1 ('bad name'): 'username'"),
        ("users: [{username: a, password_hash: '$2b$x', email: nope}]", "'email' is not an email"),
        ("users: [{username: a, password_hash: '$2b$x', role: admin}]", "unknown field(s) role"),
        ("users: [{username: a, password_hash: '$2b$x'}, {username: A, password_hash: '$2b$y'}]",
         "entry 2 ('A'): user 'A' appears twice"),
        ("users: [{username: a, password_hash: '$2b$x', groups: {x: 1}}]", "'groups' must be a list"),
        ("- just a list", "expected a mapping with a 'users:' list"),
        ("users: [unclosed", "not valid YAML"),
    ],
)
def test_bad_users_file_names_file_and_entry(tmp_path, body, needle):
    p = tmp_path / "u.yaml"
    p.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_users(p)
    assert str(p) in str(e.value)
    assert needle in str(e.value)


def test_missing_users_file_says_how_to_create(tmp_path):
    with pytest.raises(ConfigError, match="kb users add"):
        load_users(tmp_path / "none.yaml")


def test_verify_password_handles_garbage():
    h = hash_password("pw", rounds=4)
    assert verify_password("pw", h)
    assert not verify_password("pw", "not a hash")
    assert not verify_password("x" * 100, h)
    with pytest.raises(ValueError):
        hash_password("")


def test_header_principal_parsing():
    cfg = AuthConfig(mode="header", admins=["dave@acme.example"], proxy_secret="s3cret")
    secret = {"X-Proxy-Secret": "s3cret"}
    p = principal_from_headers({**secret, "x-forwarded-user": "Alice", "X-Forwarded-Email": "Alice@Acme.example",
         "X-Forwarded-Groups": "engineering, proj-falcon,,"}, cfg)
    assert p.username == "alice" and p.email == "alice@acme.example"
    assert p.groups == ("engineering", "proj-falcon")
    assert not p.is_admin
    assert {"user:alice", "user:alice@acme.example", "group:proj-falcon"} <= p.principals()
    # email only: the login is derived, the admin list matches on the email
    dave = principal_from_headers({**secret, "X-Forwarded-Email": "dave@acme.example"}, cfg)
    assert dave.username == "dave" and dave.is_admin
    # the user header may carry an email
    assert principal_from_headers({**secret, "X-Forwarded-User": "erin@acme.example"}, cfg).email == "erin@acme.example"
    assert principal_from_headers({**secret, "X-Forwarded-User": "x", "X-Forwarded-Groups": "Admins"}, cfg).is_admin
    # no headers, blank headers, or a claim to be "anonymous": public documents only
    assert principal_from_headers({**secret, }, cfg).is_anonymous
    assert principal_from_headers({**secret, "X-Forwarded-User": "  "}, cfg).is_anonymous
    assert principal_from_headers({**secret, "X-Forwarded-User": "anonymous"}, cfg).principals() == {"public"}


def test_custom_header_names():
    cfg = AuthConfig(mode="header", user_header="Remote-User", groups_header="Remote-Groups",
                     trusted_proxies=["10.0.0.0/8"])
    p = principal_from_headers({"remote-user": "carol", "remote-groups": "people-ops;admins"}, cfg, "10.1.2.3")
    assert p.username == "carol" and p.groups == ("people-ops", "admins") and p.is_admin


def test_kb_users_add_and_list(tmp_path, monkeypatch):
    from kb_chatbot.app.kb.cli import main

    path = tmp_path / "users.yaml"
    cfg = tmp_path / "kb.yaml"
    cfg.write_text(f"server:\n  auth:\n    users_file: {path}\n    admins: [zed]\n", encoding="utf-8")
    monkeypatch.setattr("kb_chatbot.app.auth.hash_password", lambda pw, rounds=4: _hash(pw))
    runner = CliRunner()
    r = runner.invoke(main, ["-c", str(cfg), "users", "add", "zed", "--email", "zed@acme.example",
                             "--groups", "engineering, security"], input="s3cret\ns3cret\n")
    assert r.exit_code == 0, r.output
    assert "added user zed" in r.output
    users = load_users(path)
    assert users["zed"].groups == ("engineering", "security")
    assert "s3cret" not in path.read_text()
    assert UserDirectory(users).verify("zed", "s3cret")

    # mismatched confirmation is asked again; then a password change keeps email and groups
    r = runner.invoke(main, ["-c", str(cfg), "users", "add", "zed"], input="a\nb\nnew\nnew\n")
    assert r.exit_code == 0, r.output
    assert "updated user zed" in r.output
    users = load_users(path)
    assert users["zed"].email == "zed@acme.example" and users["zed"].groups == ("engineering", "security")
    assert UserDirectory(users).verify("zed", "new") and not UserDirectory(users).verify("zed", "s3cret")

    r = runner.invoke(main, ["-c", str(cfg), "users", "list"])
    assert r.exit_code == 0, r.output
    assert "zed" in r.output and "engineering,security" in r.output and "yes" in r.output
    assert "$2b$" not in r.output


def test_kb_users_add_rejects_bad_name(tmp_path):
    from kb_chatbot.app.kb.cli import main

    r = CliRunner().invoke(main, ["users", "add", "bad name", "--file", str(tmp_path / "u.yaml")],
                           input="x\nx\n")
    assert r.exit_code != 0
    assert "NAME" in r.output


def test_header_mode_needs_a_trusted_proxy_and_ignores_everyone_else():
    import pytest as _pytest
    from pydantic import ValidationError

    with _pytest.raises(ValidationError, match="trusted_proxies"):
        AuthConfig(mode="header")
    cfg = AuthConfig(mode="header", trusted_proxies=["127.0.0.1"], proxy_secret="s3cret")
    claim = {"X-Forwarded-User": "mallory", "X-Forwarded-Groups": "admins,hr"}
    assert principal_from_headers(claim, cfg, "192.0.2.7").is_anonymous  # straight from a client
    assert principal_from_headers({**claim, "X-Proxy-Secret": "wrong"}, cfg, "192.0.2.7").is_anonymous
    assert principal_from_headers({**claim, "X-Proxy-Secret": "s3cret"}, cfg, "192.0.2.7").username == "mallory"
    assert principal_from_headers(claim, cfg, "127.0.0.1").is_admin
