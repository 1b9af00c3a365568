"""Slack export connector: real exports from ../shared (folder and zip), plus tiny exports built
in tmp_path for private channels, DMs, edits and broken files."""
from __future__ import annotations

import json
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kb_chatbot.core.errors import SourceError
from kb_chatbot.core.protocols import Connector
from kb_chatbot.core.settings import SourceConfig
from kb_chatbot.core.types import PUBLIC, user_principal
from kb_chatbot.ingest.connectors import make_connector
from kb_chatbot.ingest.connectors.slack import SlackConnector
from kb_chatbot.ingest.connectors.slack_mrkdwn import render_blocks, render_mrkdwn

VIEWER = ("corpus", "slack", "slack-export-viewer-testarchive")
ZULIP = ("corpus", "slack", "zulip-slack-fixtures")


# --- helpers ------------------------------------------------------------------------------


def _zip_folder(folder: Path, dest: Path, prefix: str = "") -> Path:
    """Zip ``folder`` as Slack does (optionally under one top-level folder)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return dest


def _ingest(path: Path, **kw) -> tuple[list, SlackConnector]:
    conn = SlackConnector(path, source=kw.pop("source", "sl"), **kw)
    return list(conn.documents()), conn


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _day(ts: str) -> str:
    return datetime.fromtimestamp(float(ts), tz=timezone.utc).strftime("%Y-%m-%d")


def _file_by_day(folder: Path, messages: list[dict]) -> None:
    """File messages under their own date, as Slack does (replies land in other day files)."""
    days: dict[str, list[dict]] = {}
    for m in messages:
        days.setdefault(_day(m["ts"]), []).append(m)
    for day, msgs in days.items():
        target = folder / f"{day}.json"
        existing = json.loads(target.read_text()) if target.exists() else []
        _write(target, existing + msgs)


@pytest.fixture
def zulip_export(shared_dir, tmp_path) -> Path:
    """The zulip fixtures arranged in the standard export layout (their message files sit in
    test folders): #random gets its day files plus the normal-thread messages, #general the
    thread with a reply broadcast to the channel. Listings are the fixtures' own files."""
    src = shared_dir.joinpath(*ZULIP)
    out = tmp_path / "zulip-export"
    for name in ("channels.json", "dms.json", "mpims.json"):
        _write(out / name, json.loads((src / name).read_text()))
    for day in sorted((src / "test_slack_importer" / "random").glob("*.json")):
        _write(out / "random" / day.name, json.loads(day.read_text()))
    fixtures = src / "exported_messages_fixtures"
    _file_by_day(out / "random", json.loads((fixtures / "normal_thread.json").read_text()))
    _file_by_day(out / "general", json.loads((fixtures / "thread_with_broadcast_reply.json").read_text()))
    return out


USERS = [
    {"id": "UA", "name": "alice", "profile": {"display_name": "", "real_name": "Alice Archer",
                                              "email": "Alice@Acme.example"}},
    {"id": "UB", "name": "bob", "profile": {"display_name": "bobby", "real_name": "Bob Brown",
                                            "email": "bob@acme.example"}},
    {"id": "UC", "name": "carol", "profile": {"real_name": "Carol Chen"}},
    {"id": "UBOT", "name": "deploybot", "is_bot": True, "profile": {"real_name": "Deploy Bot"}},
]


@pytest.fixture
def tiny_export(tmp_path) -> Path:
    """Public, private, no-members private, DM and group-DM conversations with edits and noise."""
    root = tmp_path / "tiny"
    _write(root / "users.json", USERS)
    _write(root / "channels.json", [{"id": "C1", "name": "general", "members": ["UA", "UB", "UC"]},
                                     {"id": "C9", "name": "leaky", "is_private": True, "members": ["UA"]}])
    _write(root / "groups.json", [{"id": "G1", "name": "proj-falcon", "members": ["UA", "UC"]},
                                   {"id": "G2", "name": "secret"}])
    _write(root / "dms.json", [{"id": "D1", "members": ["UA", "UB"]}])
    _write(root / "mpims.json", [{"id": "G3", "name": "mpdm-alice--bob--carol-1", "members": ["UA", "UB", "UC"]}])
    _write(root / "general" / "2024-03-04.json", [
        {"type": "message", "subtype": "channel_join", "user": "UC", "text": "<@UC> has joined the channel",
         "ts": "1709546400.000100"},
        {"type": "message", "user": "UA", "text": "Launch moved to <#G1|proj-falcon> &amp; see <https://wiki.acme.example/launch|the plan>",
         "ts": "1709550000.000200", "edited": {"user": "UA", "ts": "1709553600.000000"}},
        {"type": "message", "subtype": "bot_message", "bot_id": "B1", "text": "Build 42 passed", "ts": "1709550100.000300"},
        {"type": "message", "user": "UBOT", "text": "Deploy finished", "ts": "1709550200.000400"},
        {"type": "message", "user": "UB", "text": "", "ts": "1709550300.000500",
         "files": [{"id": "F1", "name": "q1-budget.xlsx", "title": "Q1 budget"}]},
        {"type": "message", "user": "UC", "text": "<!here> standup moved", "ts": "1709550400.000600"},
        {"type": "message", "user": "UA", "text": "old text", "ts": "1709550500.000700"},
        {"type": "message", "subtype": "message_changed", "ts": "1709550600.000800",
         "message": {"type": "message", "user": "UA", "text": "new text", "ts": "1709550500.000700",
                     "edited": {"user": "UA", "ts": "1709550600.000800"}}},
        {"type": "message", "user": "USLACKBOT", "subtype": "tombstone", "hidden": True,
         "text": "This message was deleted.", "ts": "1709550700.000900"},
    ])
    _write(root / "general" / "2024-03-05.json", "not a list")  # valid JSON, wrong shape
    (root / "general" / "2024-03-06.json").write_text("[{\"ts\": ", encoding="utf-8")  # corrupt
    _write(root / "general" / "2024-03-07.json", [
        {"type": "message", "user": "UB", "text": "After the outage: all good", "ts": "1709805600.000100"}])
    _write(root / "proj-falcon" / "2024-03-04.json", [
        {"type": "message", "user": "UA", "text": "Falcon ships on Friday", "ts": "1709550000.000100",
         "thread_ts": "1709550000.000100", "reply_count": 1}])
    _write(root / "proj-falcon" / "2024-03-05.json", [
        {"type": "message", "user": "UC", "text": "Confirmed with <@UA>", "ts": "1709640000.000100",
         "thread_ts": "1709550000.000100", "parent_user_id": "UA"}])
    _write(root / "secret" / "2024-03-04.json", [{"type": "message", "user": "UA", "text": "hush", "ts": "1709550000.000100"}])
    _write(root / "leaky" / "2024-03-04.json", [{"type": "message", "user": "UA", "text": "marked private", "ts": "1709550000.000100"}])
    _write(root / "D1" / "2024-03-04.json", [{"type": "message", "user": "UB", "text": "my salary question", "ts": "1709550000.000100"}])
    _write(root / "mpdm-alice--bob--carol-1" / "2024-03-04.json", [
        {"type": "message", "user": "UC", "text": "lunch?", "ts": "1709550000.000100"}])
    _write(root / "mystery" / "2024-03-04.json", [{"type": "message", "user": "UA", "text": "who reads me", "ts": "1709550000.000100"}])
    return root


def _by_id(docs) -> dict:
    return {d.id: d for d in docs}


# --- real exports -------------------------------------------------------------------------


def test_viewer_archive_folder_and_zip_give_same_documents(shared_dir, tmp_path):
    folder = shared_dir.joinpath(*VIEWER)
    docs, conn = _ingest(folder)
    zipped, zconn = _ingest(_zip_folder(folder, tmp_path / "export.zip"))
    nested, _ = _ingest(_zip_folder(folder, tmp_path / "nested.zip", prefix="My Workspace Slack export/"))
    assert isinstance(conn, Connector)
    assert conn.failures == [] and zconn.failures == []
    assert [(d.id, d.content_hash()) for d in docs] == [(d.id, d.content_hash()) for d in zipped]
    assert [d.id for d in nested] == [d.id for d in docs]
    ids = {d.id for d in docs}
    assert {"sl:C0JGLMMNX:2016-01-15", "sl:C0JL6CGQ2:2016-03-25"} <= ids
    assert {d.metadata["channel"] for d in docs} == {"enrique", "traveling-sailor"}
    assert all(d.acl == frozenset({PUBLIC}) and d.source_type == "slack" for d in docs)
    # 158 messages: 94 bot posts, 8 joins and 3 integration notices are noise; 53 remain
    assert sum(d.metadata["message_count"] for d in docs) == 53


def test_viewer_archive_text_names_noise_and_markup(shared_dir):
    docs = _by_id(_ingest(shared_dir.joinpath(*VIEWER))[0])
    all_text = "\n".join(d.text for d in docs.values())
    assert "has joined the channel" not in all_text
    assert "new commit" not in all_text and "New branch" not in all_text  # GitHub bot posts
    assert "added an integration" not in all_text
    assert "<@U" not in all_text and "&gt;" not in all_text
    day = docs["sl:C0JGLMMNX:2016-01-15"]
    assert day.title == "#enrique 2016-01-15"
    # user ids resolved: display name first, real name when the display name is empty
    assert "hamza (2016-01-15 05:55): @abilinski: Created an issue for a setup.py" in day.text
    ga = docs["sl:C0JGLMMNX:2016-03-17"].text
    assert 'heroeshannibal (2016-03-17 15:32): >"Essentially what I\'m getting' in ga
    assert "@doubledeez: This is a pretty good intro: https://www.youtube.com/watch?v=zwYV11a__HQ" in ga
    sailor = docs["sl:C0JL6CGQ2:2016-03-27"].text
    assert "Best fitness: 28919.8689279" in sailor  # <tel:x|x> collapses to its label
    # legacy file share and file comment kept as text, authored by the uploader / commenter
    assert "doubledeez (2016-03-27 19:11): @doubledeez uploaded a file: 10 cities (https://mesos-magellan.slack.com/files/U0BMS113R/F0VQ4C4BT/10_cities.js)" in sailor
    assert "doubledeez (2016-03-27 19:14): @doubledeez commented on @doubledeez’s file 10 cities" in sailor


def test_viewer_archive_edited_message_final_text(shared_dir):
    docs = _by_id(_ingest(shared_dir.joinpath(*VIEWER))[0])
    doc = docs["sl:C0JL6CGQ2:2016-03-26"]
    sec = next(s for s in doc.sections if s.slack_ts == "1458972985.000010")
    line = doc.text[sec.start:sec.end]
    assert line.startswith("hamza (2016-03-26 06:16): ```{\"cities\": {")
    assert '"start_city": "Houston"' in line
    assert doc.updated_at >= datetime.fromtimestamp(1458981134, tz=timezone.utc)  # the edit


def test_sections_tile_text_and_carry_message_ts(shared_dir):
    folder = shared_dir.joinpath(*VIEWER)
    raw_ts = {m["ts"] for f in folder.glob("*/*.json") for m in json.loads(f.read_text())}
    for doc in _ingest(folder)[0]:
        lines = []
        for i, sec in enumerate(doc.sections):
            assert sec.slack_ts in raw_ts
            if i:
                assert sec.start == doc.sections[i - 1].end + 1 and doc.text[sec.start - 1] == "\n"
            lines.append(doc.text[sec.start:sec.end])
        assert "\n".join(lines) == doc.text
        assert doc.sections[0].start == 0 and doc.sections[-1].end == len(doc.text)
        assert doc.metadata["message_count"] == len(doc.sections)
        assert [float(s.slack_ts) for s in doc.sections] == sorted(float(s.slack_ts) for s in doc.sections)


def test_permalink_and_updated_at(shared_dir):
    folder = shared_dir.joinpath(*VIEWER)
    for base in ("https://mesos-magellan.slack.com", "https://mesos-magellan.slack.com/"):
        docs = _by_id(_ingest(folder, base_url=base)[0])
        doc = docs["sl:C0JGLMMNX:2016-01-15"]
        assert doc.uri == "https://mesos-magellan.slack.com/archives/C0JGLMMNX/p1452837352000006"
    doc = _by_id(_ingest(folder)[0])["sl:C0JGLMMNX:2016-01-15"]
    assert doc.uri.startswith("https://slack.com/archives/C0JGLMMNX/p")
    assert doc.updated_at.tzinfo is not None
    assert doc.updated_at == datetime.fromtimestamp(float(doc.sections[-1].slack_ts), tz=timezone.utc)


def test_zulip_threads_span_day_files_and_broadcast_once(zulip_export, tmp_path):
    docs, conn = _ingest(zulip_export)
    zdocs, _ = _ingest(_zip_folder(zulip_export, tmp_path / "zulip.zip"))
    assert [(d.id, d.content_hash()) for d in docs] == [(d.id, d.content_hash()) for d in zdocs]
    assert conn.failures == []
    by_id = _by_id(docs)
    # parent filed 2015-06-12, reply filed 2015-08-18: one document
    thread = by_id["sl:C061A0WJG:1434139102.000002"]
    assert thread.text.splitlines() == ["U061A5N1G (2015-06-12 19:58): message body text",
                                        "U061A5N1G (2015-08-18 03:24): random"]
    assert thread.title == "#random thread: message body text"
    assert thread.uri == "https://slack.com/archives/C061A0WJG/p1434139102000002"
    assert thread.metadata == {"channel": "random", "channel_id": "C061A0WJG", "conversation_type": "public",
                               "thread_ts": "1434139102.000002", "message_count": 2}
    # the reply's ts is older than its parent's in this fixture: the parent still comes first
    other = by_id["sl:C061A0WJG:1539868294.000007"]
    assert [s.slack_ts for s in other.sections] == ["1539868294.000007", "1449868294.000007"]
    assert other.updated_at == datetime.fromtimestamp(1539868294.000007, tz=timezone.utc)
    # the broadcast reply lives in its thread only: #general has no day-window document
    general = [d for d in docs if d.metadata["channel_id"] == "C061A0YJG"]
    assert [d.id for d in general] == ["sl:C061A0YJG:1434139102.000002"]
    assert "everyone should see this" in general[0].text
    assert sum(d.text.count("everyone should see this") for d in docs) == 1
    # no users.json: ids stay raw; joins dropped; special mentions rendered
    day = by_id["sl:C061A0WJG:2018-01-20"]
    assert "has joined" not in day.text and "<" not in day.text
    assert "U8W3QFGQ5 (2018-01-20 17:15): @channel" in day.text
    assert "@U6006P1CN uploaded a file: dirac72.md (https://plan8team.slack.com/files/U6006P1CN/F8VSW87RR/dirac72.md) and commented: test upload attachment" in day.text
    assert by_id["sl:C061A0WJG:2017-06-25"].text == "U6006P1CN (2017-06-25 14:31): edfadfa"


def test_zulip_fixtures_in_place_without_day_folders(shared_dir):
    """Listed conversations whose folders are absent are skipped quietly, not failures."""
    docs, conn = _ingest(shared_dir.joinpath(*ZULIP))
    assert docs == [] and conn.failures == []


# --- tiny exports: ACL, edits, failures ---------------------------------------------------


def test_acl_per_conversation_type(tiny_export):
    docs, conn = _ingest(tiny_export)
    by_chan = {}
    for d in docs:
        by_chan.setdefault(d.metadata["channel_id"], []).append(d)
    alice = {user_principal("alice@acme.example"), user_principal("slack:UA")}
    bob = {user_principal("bob@acme.example"), user_principal("slack:UB")}
    carol = {user_principal("slack:UC")}  # no email in users.json
    assert all(d.acl == {PUBLIC} for d in by_chan["C1"])
    assert {d.metadata["conversation_type"] for d in by_chan["C1"]} == {"public"}
    falcon = by_chan["G1"]
    assert [d.acl for d in falcon] == [frozenset(alice | carol)]
    assert falcon[0].metadata["conversation_type"] == "private"
    assert by_chan["G2"][0].acl == frozenset()  # no members list: nobody
    assert by_chan["C9"][0].acl == frozenset(alice)  # is_private in channels.json: never public
    assert by_chan["C9"][0].metadata["conversation_type"] == "private"
    dm = by_chan["D1"][0]
    assert dm.acl == frozenset(alice | bob) and dm.title == "DM Alice Archer, bobby 2024-03-04"
    assert dm.metadata["conversation_type"] == "dm" and dm.id == "sl:D1:2024-03-04"
    mp = by_chan["G3"][0]
    assert mp.acl == frozenset(alice | bob | carol) and mp.title == "Group DM Alice Archer, bobby, Carol Chen 2024-03-04"
    for d in docs:
        if d.metadata["conversation_type"] != "public":
            assert PUBLIC not in d.acl
    # a folder nobody lists has unknown readers: reported, not indexed
    assert "who reads me" not in "".join(d.text for d in docs)
    assert any(f.path == "mystery" and "not indexed" in f.reason for f in conn.failures)


def test_private_thread_across_days_and_names(tiny_export):
    by_id = _by_id(_ingest(tiny_export)[0])
    thread = by_id["sl:G1:1709550000.000100"]
    assert thread.title == "#proj-falcon thread: Falcon ships on Friday"
    assert thread.text == ("Alice Archer (2024-03-04 11:00): Falcon ships on Friday\n"
                           "Carol Chen (2024-03-05 12:00): Confirmed with @Alice Archer")


def test_noise_edits_files_and_markup_in_tiny_export(tiny_export):
    by_id = _by_id(_ingest(tiny_export)[0])
    day = by_id["sl:C1:2024-03-04"]
    assert day.text.splitlines() == [
        "Alice Archer (2024-03-04 11:00): Launch moved to #proj-falcon & see the plan (https://wiki.acme.example/launch)",
        "bobby (2024-03-04 11:05): [file: Q1 budget]",
        "Carol Chen (2024-03-04 11:06): @here standup moved",
        "Alice Archer (2024-03-04 11:08): new text",
    ]
    assert day.metadata["message_count"] == 4 and day.metadata["thread_ts"] is None
    # the latest edit (12:00) is later than every message
    assert day.updated_at == datetime(2024, 3, 4, 12, 0, tzinfo=timezone.utc)
    assert day.uri == "https://slack.com/archives/C1/p1709550000000200"  # first kept message


def test_broken_day_files_reported_and_rest_ingested(tiny_export):
    docs, conn = _ingest(tiny_export)
    paths = {f.path: f for f in conn.failures}
    assert {"general/2024-03-05.json", "general/2024-03-06.json"} <= set(paths)
    for p in ("general/2024-03-05.json", "general/2024-03-06.json"):
        assert paths[p].doc_id is None and "channel_id=C1" in paths[p].reason
    assert "After the outage: all good" in _by_id(docs)["sl:C1:2024-03-07"].text


def test_window_hours_split_a_day(tiny_export):
    docs, _ = _ingest(tiny_export, window_hours=6)
    ids = {d.id for d in docs if d.metadata["channel_id"] == "C1"}
    assert ids == {"sl:C1:2024-03-04T06", "sl:C1:2024-03-07T06"}
    doc = _by_id(docs)["sl:C1:2024-03-04T06"]
    assert doc.title == "#general 2024-03-04 06:00 UTC"


def test_missing_users_json_keeps_ids(tiny_export):
    (tiny_export / "users.json").unlink()
    by_id = _by_id(_ingest(tiny_export)[0])
    assert by_id["sl:G1:1709550000.000100"].text.endswith("UC (2024-03-05 12:00): Confirmed with @UA")
    assert by_id["sl:G1:1709550000.000100"].acl == {user_principal("slack:UA"), user_principal("slack:UC")}


def test_not_an_export_raises_source_error(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(SourceError, match="not a Slack export"):
        SlackConnector(tmp_path / "notes")
    with pytest.raises(SourceError, match="not found"):
        SlackConnector(tmp_path / "missing")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SourceError, match="bad.zip"):
        SlackConnector(tmp_path / "bad.zip")


def test_corrupt_listing_stops_the_source(tiny_export):
    (tiny_export / "groups.json").write_text("[{", encoding="utf-8")
    conn = SlackConnector(tiny_export)
    with pytest.raises(SourceError, match="groups.json"):
        list(conn.documents())


def test_make_connector_builds_slack(tiny_export):
    src = SourceConfig(name="acme-slack", type="slack", path=tiny_export, base_url="https://acme.slack.com",
                       slack_window_hours=24)
    conn = make_connector(src)
    assert conn.source_type == "slack" and conn.expected_count() is None
    doc = next(iter(conn.documents()))
    assert doc.id.startswith("acme-slack:") and doc.source == "acme-slack"
    assert doc.uri.startswith("https://acme.slack.com/archives/")


# --- mrkdwn rendering ---------------------------------------------------------------------

NAMES = {"U1": "Ann Lee", "U2": "bo", "W3": "Enterprise Eve"}
CHANNELS = {"C1": "general", "G7": "proj-falcon"}


@pytest.mark.parametrize("raw, expected", [
    ("<@U1> hi", "@Ann Lee hi"),
    ("<@U1|ann> hi", "@Ann Lee hi"),
    ("<@U404>", "@U404"),
    ("<@U404|ghost>", "@ghost"),
    ("<#C1|general> and <#G7>", "#general and #proj-falcon"),
    ("<#C999|old-name>", "#old-name"),
    ("<#C999>", "#C999"),
    ("<https://x.example/a?b=1&amp;c=2|the docs>", "the docs (https://x.example/a?b=1&c=2)"),
    ("<https://x.example>", "https://x.example"),
    ("<https://x.example|https://x.example>", "https://x.example"),
    ("<mailto:ann@acme.example|ann@acme.example>", "ann@acme.example"),
    ("<!here> <!channel> <!everyone> <!here|here>", "@here @channel @everyone @here"),
    ("<!subteam^S12|@oncall> ping", "@oncall ping"),
    ("<!date^1392734382^{date_short}|Feb 18, 2014>", "Feb 18, 2014"),
    ("a &lt; b &amp;&amp; c &gt; d", "a < b && c > d"),
    ("literal &amp;lt;tag&amp;gt;", "literal &lt;tag&gt;"),
    ("&lt;@U1&gt; typed literally", "<@U1> typed literally"),
])
def test_render_mrkdwn(raw, expected):
    assert render_mrkdwn(raw, NAMES, CHANNELS) == expected


def test_render_mrkdwn_does_not_unescape_names():
    assert render_mrkdwn("<@U9>", {"U9": "R&amp;D"}) == "@R&amp;D"


def test_render_blocks_rich_text():
    blocks = [{"type": "rich_text", "elements": [
        {"type": "rich_text_section", "elements": [
            {"type": "user", "user_id": "U1"}, {"type": "text", "text": " see "},
            {"type": "channel", "channel_id": "C1"}, {"type": "text", "text": " and "},
            {"type": "link", "url": "https://x.example", "text": "docs"}]},
        {"type": "rich_text_list", "style": "bullet", "elements": [
            {"type": "rich_text_section", "elements": [{"type": "text", "text": "one"}]},
            {"type": "rich_text_section", "elements": [{"type": "text", "text": "two"}]}]},
    ]}]
    assert render_blocks(blocks, NAMES, CHANNELS) == "@Ann Lee see #general and docs (https://x.example)\n- one\n- two"


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_plain = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_piece = st.one_of(_plain.map(lambda t: ("text", t)), st.sampled_from(sorted(NAMES)).map(lambda u: ("user", u)))


@settings(max_examples=200, deadline=None)
@given(st.lists(_piece, max_size=8))
def test_render_mrkdwn_round_trip_property(pieces):
    """Escaped text plus known-user mentions render to the raw text with @Names, and no
    ``<@U`` is left unless the user literally typed one."""
    raw = "".join(_escape(v) if k == "text" else f"<@{v}>" for k, v in pieces)
    expected = "".join(v if k == "text" else "@" + NAMES[v] for k, v in pieces)
    out = render_mrkdwn(raw, NAMES, CHANNELS)
    assert out == expected
    if not any(k == "text" and "<" in v for k, v in pieces):
        assert "<@U" not in out and "<@W" not in out


def test_folder_claimed_by_public_and_private_is_skipped(tiny_export):
    """A public channel and a private one with the same folder name: readers are ambiguous."""
    channels = json.loads((tiny_export / "channels.json").read_text())
    _write(tiny_export / "channels.json", channels + [{"id": "C5", "name": "proj-falcon", "members": []}])
    docs, conn = _ingest(tiny_export)
    assert not [d for d in docs if d.metadata["channel"] == "proj-falcon"]
    assert [f.path for f in conn.failures if "claimed" in f.reason] == ["proj-falcon"]
    assert "Falcon ships" not in "".join(d.text for d in docs)


def test_private_channel_name_not_looked_up_and_failures_not_repeated(tiny_export):
    _write(tiny_export / "general" / "2024-03-07.json", [
        {"type": "message", "user": "UB", "text": "ask in <#G1> or <#C1>", "ts": "1709805600.000100"}])
    conn = SlackConnector(tiny_export, source="sl")
    first = _by_id(conn.documents())
    n_failures = len(conn.failures)
    second = _by_id(conn.documents())
    assert len(conn.failures) == n_failures  # a second pass reports afresh, not twice
    assert first.keys() == second.keys()
    assert first["sl:C1:2024-03-07"].text.endswith("ask in #G1 or #general")


def test_missing_users_json_and_listed_conversations_without_folders_are_reported(tiny_export, tmp_path):
    """Nothing silent: both end up in the ingest report's skipped list, named, with what to do."""
    from kb_chatbot.core.settings import Settings, SourceConfig
    from kb_chatbot.index.embedder import HashEmbedder
    from kb_chatbot.ingest.sync import sync_sources

    (tiny_export / "users.json").unlink()
    channels = json.loads((tiny_export / "channels.json").read_text())
    _write(tiny_export / "channels.json", channels + [{"id": "C7", "name": "quiet", "members": ["UA"]}])
    s = Settings(data_dir=tmp_path / "data", embedding={"model": "hash"})
    rep = sync_sources(s, [SourceConfig(name="sl", type="slack", path=tiny_export)], embedder=HashEmbedder())
    [src] = rep.sources
    skipped = {f.path: f.reason for f in src.skipped}
    assert "users.json" in skipped and "raw user ids" in skipped["users.json"]
    assert "C7" in skipped and "no folder of day files" in skipped["C7"]
    assert src.added > 0  # the rest of the export is indexed as before
