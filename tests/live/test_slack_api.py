"""slack-api against a local Slack Web API: first sync, unchanged re-sync (list calls only,
nothing embedded), late thread replies, edits, deletions, membership changes, archiving,
429 with Retry-After, expired and missing tokens, and the token never in a log line."""
from __future__ import annotations

import logging
import time

import pytest

from kb_chatbot.core.settings import SourceConfig
from kb_chatbot.core.types import Principal
from tests.live.conftest import CountingEmbedder, doc_acls, doc_texts, readable, resync_unchanged, settings, sync
from tests.live.fakeapi import FakeSlack, Reply

TOKEN = "xoxb-test-token-123456"
ALICE = Principal("alice", email="alice@acme.example")
BOB = Principal("bob", email="bob@acme.example")
DAY = 86400.0


NOW = time.time()


def ts(days_ago: float, n: int = 0) -> str:
    return f"{NOW - days_ago * DAY:.0f}.{n:06d}"


@pytest.fixture
def slack(monkeypatch):
    fake = FakeSlack(TOKEN)
    fake.add_user("UA", "Alice", "alice@acme.example")
    fake.add_user("UB", "Bob", "bob@acme.example")
    fake.add_user("UC", "Carol", None)
    fake.add_channel("CPUB", "general")
    fake.add_channel("CPRIV", "payroll", private=True, members=["UA", "UB"])
    fake.add_channel("COUT", "random", bot_member=False)
    fake.post("CPUB", ts(40), "UA", "The espresso machine on floor 3 is descaled on Mondays.")
    fake.post("CPUB", ts(3, 1), "UB", "Where is the quokka badge printer?")
    fake.post("CPUB", ts(3, 2), "UA", "The quokka badge printer is in room 214.", thread_ts=ts(3, 1))
    fake.post("CPRIV", ts(60), "UB", "The walrus bonus budget was approved last quarter.")
    fake.post("CPRIV", ts(2), "UA", "Payroll closes on the 25th for the walrus bonus run.")
    fake.post("CPRIV", ts(1), "UB", "Bonus letters go out by email.")
    monkeypatch.setenv("KB_SECRET_ACME_SLACK", TOKEN)
    yield fake
    fake.close()


def _src(fake: FakeSlack, **kw) -> SourceConfig:
    return SourceConfig(name="acme-slack", type="slack-api", url=fake.url + "/api/", **kw)


def test_first_sync_reads_threads_windows_and_members(tmp_path, slack):
    s = settings(tmp_path)
    rep = sync(s, _src(slack))
    src = rep.sources[0]
    assert src.status == "ok", src.error
    acls = doc_acls(s, "acme-slack")
    thread = f"acme-slack:CPUB:{ts(3, 1)}"
    assert thread in acls and acls[thread] == {"public"}
    texts = doc_texts(s, "acme-slack")
    assert "room 214" in texts[thread] and "quokka badge printer?" in texts[thread]
    priv = [d for d in acls if d.startswith("acme-slack:CPRIV:")]
    assert priv and all({"user:alice@acme.example", "user:bob@acme.example"} <= acls[d] for d in priv)
    assert not any(d.startswith("acme-slack:COUT:") for d in acls)  # the bot is not in #random
    assert any("invite" in f.reason for f in src.skipped)
    assert src.api_calls["users.list"] == 2  # 3 users, pages of 2: the cursor was followed
    assert readable(s, BOB, "walrus bonus payroll") & set(priv)
    assert not readable(s, Principal("mallory", email="mallory@acme.example"), "walrus bonus payroll") & set(priv)


def test_unchanged_workspace_resyncs_with_list_calls_only(tmp_path, slack):
    rep = resync_unchanged(settings(tmp_path), _src(slack), slack)  # nothing embedded, nothing published
    assert set(slack.calls) <= {"auth.test", "users.list", "conversations.list", "conversations.members",
                                "conversations.history"}
    assert "conversations.replies" not in slack.calls
    assert rep.sources[0].api_calls == dict(sorted(slack.calls.items()))


def test_late_reply_edit_and_delete_reach_the_index(tmp_path, slack):
    s = settings(tmp_path)
    sync(s, _src(slack))
    # a reply to a 3-day-old thread (older than the newest message seen), an edit, a deletion
    slack.post("CPUB", ts(0.01, 5), "UB", "Update: the printer moved to the zeppelin lounge.", thread_ts=ts(3, 1))
    slack.edit("CPRIV", ts(1), "Bonus letters go out by carrier pigeon.", ts(0.01, 6))
    slack.delete("CPRIV", ts(2))
    slack.reset_calls()
    rep = sync(s, _src(slack))
    assert rep.sources[0].status == "ok"
    texts = doc_texts(s, "acme-slack")
    assert "zeppelin lounge" in texts[f"acme-slack:CPUB:{ts(3, 1)}"]
    assert slack.calls["conversations.replies"] == 2  # only the thread that changed: 3 messages, 2 pages
    joined = " ".join(texts.values())
    assert "carrier pigeon" in joined and "by email" not in joined
    assert "closes on the 25th" not in joined  # the deleted message is gone (its window doc removed)


def test_membership_change_updates_access_without_reembedding(tmp_path, slack):
    s = settings(tmp_path)
    sync(s, _src(slack))
    assert readable(s, BOB, "walrus bonus payroll")
    slack.channels["CPRIV"]["members"] = ["UA"]  # Bob leaves #payroll; no message changes
    emb = CountingEmbedder()
    rep = sync(s, _src(slack), emb)
    # the 60-day-old window is outside the lookback: its readers change without a read
    assert emb.seen == [] and rep.sources[0].acl_updated == 1
    assert not any(d.startswith("acme-slack:CPRIV:") for d in readable(s, BOB, "walrus bonus payroll"))
    assert any(d.startswith("acme-slack:CPRIV:") for d in readable(s, ALICE, "walrus bonus payroll"))


def test_archived_or_left_channels_are_removed(tmp_path, slack):
    s = settings(tmp_path)
    sync(s, _src(slack))
    slack.channels["CPRIV"]["is_archived"] = True
    slack.channels["CPUB"]["is_member"] = False  # the bot was removed from #general
    rep = sync(s, _src(slack))
    assert rep.sources[0].deleted >= 3
    assert doc_acls(s, "acme-slack") == {}


def test_rate_limit_is_retried_after_retry_after(tmp_path, slack):
    s = settings(tmp_path)
    slack.faults["conversations.history"] = [Reply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"})]
    t0 = time.monotonic()
    rep = sync(s, _src(slack))
    assert rep.sources[0].status == "ok"
    assert time.monotonic() - t0 >= 1.0  # it waited as told
    assert doc_acls(s, "acme-slack")


def test_expired_token_fails_the_source_and_keeps_its_documents(tmp_path, slack, caplog):
    s = settings(tmp_path)
    sync(s, _src(slack))
    before = doc_acls(s, "acme-slack")
    slack.expired = True
    slack.channels["CPUB"]["is_archived"] = True  # would remove documents, were it read
    with caplog.at_level(logging.DEBUG):
        rep = sync(s, _src(slack))
    src = rep.sources[0]
    assert src.status == "failed" and "token_expired" in src.error and "KB_SECRET_ACME_SLACK" in src.error
    assert rep.exit_code != 0
    assert doc_acls(s, "acme-slack") == before


def test_missing_token_names_the_variable(tmp_path, slack, monkeypatch):
    monkeypatch.delenv("KB_SECRET_ACME_SLACK")
    rep = sync(settings(tmp_path), _src(slack))
    assert rep.sources[0].status == "failed"
    assert "KB_SECRET_ACME_SLACK" in rep.sources[0].error


def test_secrets_file_must_be_private_and_the_token_never_logged(tmp_path, slack, monkeypatch, capsys):
    monkeypatch.delenv("KB_SECRET_ACME_SLACK")
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(f"acme-slack:\n  token: {TOKEN}\n")
    secrets.chmod(0o644)
    rep = sync(settings(tmp_path), _src(slack, secrets_file=secrets))
    assert rep.sources[0].status == "failed" and "chmod 600" in rep.sources[0].error
    secrets.chmod(0o600)
    # the CLI's logging: debug on, the redaction filter on its handler; slack_sdk logs headers
    from kb_chatbot.core.secrets import install_redaction

    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.DEBUG)
    install_redaction()
    try:
        rep = sync(settings(tmp_path / "b"), _src(slack, secrets_file=secrets))
        logging.getLogger("x").warning("oops the token is %s", TOKEN)
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    assert rep.sources[0].status == "ok"
    err = capsys.readouterr().err
    assert "[secret]" in err and TOKEN not in err
