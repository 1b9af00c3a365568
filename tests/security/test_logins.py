"""Logins: bcrypt off the event loop, backoff on guessing, users-file changes applied at once."""
from __future__ import annotations

import asyncio
import os
import time

from kb_chatbot.app.auth import UserDirectory, UserRecord, hash_password, save_users


def _directory(tmp_path):
    path = tmp_path / "users.yaml"
    save_users(path, {
        "alice": UserRecord("alice", hash_password("right", rounds=4), email="alice@acme.example", groups=("hr",)),
        "bob": UserRecord("bob", hash_password("right", rounds=4)),
    })
    return path, UserDirectory.from_config(type("A", (), {"users_file": path, "admins": []})())


def test_guessing_backs_off_and_a_right_password_then_waits_too(tmp_path):
    _, d = _directory(tmp_path)
    for _ in range(UserDirectory.FREE_FAILURES):
        assert not d.verify("alice", "guess")
    assert d.locked_for("alice") > 0
    assert not d.verify("alice", "right")  # refused without even checking, until the wait ends
    assert d.verify("bob", "right")  # another user is not affected


def test_bcrypt_runs_off_the_event_loop(tmp_path):
    _, d = _directory(tmp_path)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.create_task(ticker())
        ok = await d.verify_async("bob", "right")
        t.cancel()
        return ok, ticks

    ok, ticks = asyncio.run(main())
    assert ok and ticks > 0  # the loop kept serving while bcrypt ran


def test_removed_users_and_groups_lose_access_without_a_restart(tmp_path):
    path, d = _directory(tmp_path)
    assert d.principal_for("alice").groups == ("hr",)
    save_users(path, {"alice": UserRecord("alice", hash_password("right", rounds=4), email="alice@acme.example")})
    os.utime(path, (time.time() + 5, time.time() + 5))
    d._checked = 0.0  # skip the one-second re-check interval
    assert d.principal_for("alice").groups == ()
    assert d.principal_for("bob").is_anonymous and not d.verify("bob", "right")
