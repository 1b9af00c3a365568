"""Consistency of the sample knowledge base (data/sample): formats, ACL wiring and test facts.

These tests read the files directly (no connectors), so they catch a broken sample before
any ingest, retrieval or ACL test builds on it.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
SLACK = SAMPLE / "slack"
WIKI = SAMPLE / "wiki"
DRIVE = SAMPLE / "drive"
GENERATOR = REPO / "scripts" / "make_sample_drive.py"
LOGINS = ["alice", "bob", "carol", "dave", "erin", "admin"]


# --------------------------------------------------------------------------- readers of the sample


def load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        pytest.fail(f"{path}: not valid JSON: {e}")


def users_yaml() -> list[dict]:
    return yaml.safe_load((SAMPLE / "users.yaml").read_text(encoding="utf-8"))["users"]


def facts() -> list[dict]:
    lines = (SAMPLE / "facts.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def slack_conversations() -> dict[str, dict]:
    """folder name -> {"kind", "meta"} for every listed conversation."""
    out: dict[str, dict] = {}
    for listing, kind in (("channels.json", "public"), ("groups.json", "private"), ("mpims.json", "mpim")):
        for c in load_json(SLACK / listing):
            out[c["name"]] = {"kind": kind, "meta": c}
    for c in load_json(SLACK / "dms.json"):
        out[c["id"]] = {"kind": "dm", "meta": c}
    return out


def slack_messages(folder: str) -> list[tuple[str, dict]]:
    """(day file name, message) for every message of one conversation, in file order."""
    out = []
    for day in sorted((SLACK / folder).glob("*.json")):
        out += [(day.name, m) for m in load_json(day)]
    return out


def slack_message_text(m: dict) -> str:
    parts = [m.get("text", "")]
    parts += [f.get("title", "") + " " + f.get("name", "") for f in m.get("files", [])]
    parts += [a.get("fallback", "") + " " + a.get("text", "") for a in m.get("attachments", [])]
    return "\n".join(parts)


def docx_text(path: Path) -> str:
    import docx

    d = docx.Document(str(path))
    parts = [p.text for p in d.paragraphs]
    for table in d.tables:
        for row in table.rows:
            parts.append(" | ".join(c.text for c in row.cells))
    return "\n".join(parts)


def pptx_slides(path: Path) -> list[str]:
    from pptx import Presentation

    slides = []
    for slide in Presentation(str(path)).slides:
        parts = [sh.text_frame.text for sh in slide.shapes if sh.has_text_frame]
        if slide.has_notes_slide:
            parts.append(slide.notes_slide.notes_text_frame.text)
        slides.append("\n".join(parts))
    return slides


def xlsx_text(path: Path) -> str:
    import openpyxl

    wb = openpyxl.load_workbook(str(path), read_only=True, data_only=True)
    parts = []
    for ws in wb.worksheets:
        parts.append(f"# {ws.title}")
        for row in ws.iter_rows(values_only=True):
            parts.append(" | ".join("" if v is None else str(v) for v in row))
    wb.close()
    return "\n".join(parts)


def pdf_pages(path: Path) -> list[str]:
    from pypdf import PdfReader

    return [p.extract_text() or "" for p in PdfReader(str(path)).pages]


def drive_text(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".docx":
        return docx_text(path)
    if suffix == ".pptx":
        return "\n".join(pptx_slides(path))
    if suffix == ".xlsx":
        return xlsx_text(path)
    if suffix == ".pdf":
        return "\n".join(pdf_pages(path))
    return path.read_text(encoding="utf-8")


def corpus() -> dict[tuple[str, str], str]:
    """(source_type, path or conversation) -> searchable text, for every sample document."""
    out: dict[tuple[str, str], str] = {}
    for p in sorted(WIKI.rglob("*")):
        if p.is_file():
            out[("wiki", p.relative_to(WIKI).as_posix())] = p.read_text(encoding="utf-8")
    for folder in slack_conversations():
        out[("slack", folder)] = "\n".join(slack_message_text(m) for _, m in slack_messages(folder))
    for p in sorted(DRIVE.rglob("*")):
        if p.is_file() and p.name != "permissions.json":
            out[("drive", p.relative_to(DRIVE).as_posix())] = drive_text(p)
    return out


@pytest.fixture(scope="module")
def texts() -> dict[tuple[str, str], str]:
    return corpus()


def load_generator():
    spec = importlib.util.spec_from_file_location("make_sample_drive", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- Slack export


def test_every_slack_json_parses_and_day_files_match_their_dates():
    files = sorted(SLACK.rglob("*.json"))
    assert len(files) > 10
    for f in files:
        data = load_json(f)
        assert isinstance(data, list), f"{f}: a Slack export file holds a JSON list"
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}\.json", f.name):
            for m in data:
                assert m.get("type") == "message" and "ts" in m, f"{f}: message without type/ts: {m}"
                assert re.fullmatch(r"\d{10}\.\d{6}", m["ts"]), f"{f}: odd ts {m['ts']!r}"
                day = datetime.fromtimestamp(float(m["ts"]), tz=timezone.utc).date().isoformat()
                assert f"{day}.json" == f.name, f"{f}: message ts {m['ts']} is from {day}"
            assert [float(m["ts"]) for m in data] == sorted(float(m["ts"]) for m in data), f"{f}: not in time order"


def test_every_conversation_has_a_folder_and_every_folder_a_listing():
    convs = slack_conversations()
    folders = {p.name for p in SLACK.iterdir() if p.is_dir()}
    assert folders == set(convs)
    kinds = Counter(c["kind"] for c in convs.values())
    assert kinds == {"public": 3, "private": 2, "dm": 1, "mpim": 1}
    assert convs["mpdm-bob--carol--erin-1"]["meta"]["name"] == "mpdm-bob--carol--erin-1"


def test_conversation_members_are_users_and_private_membership_is_as_documented():
    users = load_json(SLACK / "users.json")
    by_id = {u["id"]: u for u in users}
    assert len(by_id) == len(users), "duplicate user ids"
    login_of = {u["id"]: u["name"] for u in users}
    for name, conv in slack_conversations().items():
        members = conv["meta"]["members"]
        assert members, f"{name}: no members"
        for m in members:
            assert m in by_id, f"{name}: member {m} is not in users.json"
            assert not by_id[m]["is_bot"], f"{name}: bot {m} listed as a member"
    convs = slack_conversations()
    members = {n: sorted(login_of[m] for m in c["meta"]["members"]) for n, c in convs.items()}
    assert members["proj-falcon"] == ["alice", "dave"]
    assert members["security-incidents"] == ["admin", "dave"]
    assert members["D01ALIBOB"] == ["alice", "bob"]
    assert members["mpdm-bob--carol--erin-1"] == ["bob", "carol", "erin"]
    assert "bob" not in members["proj-falcon"]


def test_slack_users_match_the_login_users():
    people = {u["name"]: u for u in load_json(SLACK / "users.json") if not u["is_bot"]}
    logins = {u["username"]: u for u in users_yaml()}
    assert set(people) == set(logins) == set(LOGINS)
    for login, u in people.items():
        assert u["profile"]["email"] == logins[login]["email"]
        assert u["profile"]["real_name"] == u["real_name"] == logins[login]["display_name"]
    bots = [u for u in load_json(SLACK / "users.json") if u["is_bot"]]
    assert [b["name"] for b in bots] == ["deploybot"] and bots[0]["profile"]["bot_id"]


def test_thread_replies_reference_existing_parents():
    spans_days = broadcasts = 0
    for folder in slack_conversations():
        msgs = slack_messages(folder)
        by_ts = {m["ts"]: (day, m) for day, m in msgs}
        assert len(by_ts) == len(msgs), f"{folder}: duplicate ts"
        replies = defaultdict(list)
        for day, m in msgs:
            if m.get("thread_ts") and m["thread_ts"] != m["ts"]:
                assert m["thread_ts"] in by_ts, f"{folder}/{day}: reply {m['ts']} has no parent {m['thread_ts']}"
                parent_day, parent = by_ts[m["thread_ts"]]
                assert m["parent_user_id"] == parent["user"], f"{folder}: reply {m['ts']} names the wrong parent user"
                replies[m["thread_ts"]].append(m)
                spans_days += day != parent_day
                if m.get("subtype") == "thread_broadcast":
                    broadcasts += 1
                    assert m["root"]["ts"] == parent["ts"]
        for thread_ts, rs in replies.items():
            parent = by_ts[thread_ts][1]
            assert parent["thread_ts"] == parent["ts"]
            assert parent["reply_count"] == len(rs)
            assert [r["ts"] for r in parent["replies"]] == [r["ts"] for r in rs]
            assert parent["latest_reply"] == rs[-1]["ts"]
            assert set(parent["reply_users"]) == {r["user"] for r in rs}
    assert spans_days >= 1, "no thread has a reply in a later day file"
    assert broadcasts >= 1, "no thread_broadcast reply"


def test_slack_export_covers_the_message_shapes_connectors_must_handle():
    all_msgs = [m for folder in slack_conversations() for _, m in slack_messages(folder)]
    assert 40 <= len(all_msgs) <= 80
    subtypes = Counter(m.get("subtype") for m in all_msgs)
    assert subtypes["channel_join"] >= 2 and subtypes["bot_message"] >= 1 and subtypes["thread_broadcast"] >= 1
    bot_msgs = [m for m in all_msgs if m.get("subtype") == "bot_message"]
    assert all(m.get("bot_id") and m.get("username") == "deploybot" for m in bot_msgs)
    assert any(m.get("user") == "U01DEPLOY" and "subtype" not in m for m in all_msgs), "no message from the bot user"
    edited = [m for m in all_msgs if "edited" in m]
    assert edited and all(float(m["edited"]["ts"]) > float(m["ts"]) for m in edited)
    shares = [f for m in all_msgs for f in m.get("files", [])]
    assert shares and all({"id", "name", "title", "mimetype", "url_private"} <= set(f) for f in shares)
    joined = "\n".join(m.get("text", "") for m in all_msgs)
    for markup in ("<@U01ALICE>", "<#C01SUP|support>", "<#C01ENG|engineering>", "<https://status.acme.example|status page>", "&amp;"):
        assert markup in joined, f"mrkdwn sample {markup!r} missing"
    ids = {u["id"] for u in load_json(SLACK / "users.json")}
    for mention in re.findall(r"<@(U[A-Z0-9]+)>", joined):
        assert mention in ids, f"mention of unknown user {mention}"


# --------------------------------------------------------------------------- wiki


def front_matter(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    m = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert m, f"{path}: no YAML front matter"
    return yaml.safe_load(m.group(1))


def test_wiki_markdown_front_matter_and_structure():
    pages = sorted(WIKI.rglob("*.md"))
    assert len(pages) >= 12
    restricted = []
    for p in pages:
        fm = front_matter(p)
        for key in ("title", "date", "permalink", "tags"):
            assert fm.get(key), f"{p}: front matter lacks {key}"
        assert fm["permalink"].startswith("/") and fm["permalink"].endswith("/")
        assert "\n## " in p.read_text(encoding="utf-8"), f"{p}: no ## headings"
        if "access" in fm:
            restricted.append((p.relative_to(WIKI).as_posix(), fm["access"]))
    assert restricted == [("hr/performance-calibration.md", ["group:people-ops"])]
    raw = "\n".join(p.read_text(encoding="utf-8") for p in pages)
    for noise in ("{% include", "{{ site.baseurl }}", "{:.table"):
        assert noise in raw, f"no Jekyll/kramdown noise {noise!r} left for the connector to strip"
    long_pages = [p for p in pages if len(p.read_text(encoding="utf-8").split()) > 600]
    assert len(long_pages) >= 3, "need pages longer than one 512-token chunk"


def test_wiki_html_pages_look_like_a_confluence_export():
    from bs4 import BeautifulSoup

    pages = sorted(WIKI.rglob("*.html"))
    assert len(pages) >= 5
    for p in pages:
        soup = BeautifulSoup(p.read_text(encoding="utf-8"), "html.parser")
        space, _, title = soup.title.string.partition(" : ")
        assert space and title, f"{p}: <title> is not 'Space : Page'"
        assert soup.select_one("#main-header #breadcrumb-section ol#breadcrumbs li"), p
        assert soup.select_one("h1#title-heading").get_text(strip=True) == soup.title.string
        body = soup.select_one("#content.view #main-content.wiki-content")
        assert body and body.find("h2"), f"{p}: no main content with h2 headings"
        assert soup.select_one("#footer"), p


# --------------------------------------------------------------------------- drive, logins


def test_permissions_keys_point_at_existing_paths():
    perms = load_json(DRIVE / "permissions.json")
    emails = {u["email"] for u in users_yaml()}
    groups = {g for u in users_yaml() for g in u["groups"]}
    for key, rule in perms.items():
        target = DRIVE / key
        if key.endswith("/"):
            assert target.is_dir(), f"permissions.json: folder {key} does not exist"
        else:
            assert target.is_file(), f"permissions.json: file {key} does not exist"
        assert set(rule) <= {"users", "groups", "public"}, f"permissions.json: {key}: unknown keys {set(rule)}"
        assert set(rule.get("users", [])) <= emails, f"{key}: unknown users"
        assert set(rule.get("groups", [])) <= groups, f"{key}: unknown groups"
        assert isinstance(rule.get("public", False), bool)


def test_drive_files_have_the_promised_structure():
    assert len(pdf_pages(DRIVE / "policies/security-handbook.pdf")) == 6
    slides = pptx_slides(DRIVE / "sales/falcon-launch-deck.pptx")
    assert len(slides) == 8
    from pptx import Presentation

    assert all(s.has_notes_slide and s.notes_slide.notes_text_frame.text
               for s in Presentation(str(DRIVE / "sales/falcon-launch-deck.pptx")).slides)
    import docx
    import openpyxl

    d = docx.Document(str(DRIVE / "policies/travel-policy.docx"))
    assert d.tables and any(p.style.name.startswith("Heading") for p in d.paragraphs)
    assert len(openpyxl.load_workbook(str(DRIVE / "sales/q3-2026-pipeline.xlsx")).sheetnames) == 2
    rows = list(csv.DictReader(io.StringIO((DRIVE / "finance/budget-2027.csv").read_text(encoding="utf-8"))))
    assert rows and all(int(r["total_usd"]) == sum(int(r[q]) for q in ("q1_usd", "q2_usd", "q3_usd", "q4_usd")) for r in rows)


def test_users_yaml_hashes_verify_the_demo_password():
    import bcrypt

    users = users_yaml()
    assert [u["username"] for u in users] == LOGINS
    groups = {u["username"]: u["groups"] for u in users}
    assert groups["dave"] == ["engineering", "security"] and groups["admin"] == ["admins"]
    for u in users:
        assert u["email"] == f"{u['username']}@acme.example" and u["display_name"]
        h = u["password_hash"].encode()
        assert bcrypt.checkpw(b"acme-demo", h), f"{u['username']}: hash does not match acme-demo"
        assert not bcrypt.checkpw(b"acme-demo2", h)


# --------------------------------------------------------------------------- facts


def readers_of(source_type: str, path: str) -> str | list[str]:
    """Who may read a sample document, worked out from the source's own ACL data."""
    if source_type == "wiki":
        fm = front_matter(WIKI / path) if path.endswith(".md") else {}
        principals = set(fm.get("access", ["public"]))
    elif source_type == "slack":
        conv = slack_conversations()[path]
        if conv["kind"] == "public":
            return "public"
        logins = {u["id"]: u["name"] for u in load_json(SLACK / "users.json")}
        return sorted(logins[m] for m in conv["meta"]["members"])
    else:
        perms = load_json(DRIVE / "permissions.json")
        keys = [k for k in perms if k == path or (k.endswith("/") and path.startswith(k))]
        rule = perms[max(keys, key=len)] if keys else {"public": True}  # kb.yaml: default_acl public
        principals = {"public"} if rule.get("public") else set()
        principals |= {f"user:{e}" for e in rule.get("users", [])} | {f"group:{g}" for g in rule.get("groups", [])}
    if "public" in principals:
        return "public"
    return sorted(u["username"] for u in users_yaml()
                  if principals & ({f"user:{u['username']}", f"user:{u['email']}"} | {f"group:{g}" for g in u["groups"]}))


def test_facts_file_shape_and_coverage():
    fs = facts()
    ids = [f["id"] for f in fs]
    assert len(ids) == len(set(ids)) >= 25
    for f in fs:
        assert set(f) == {"id", "question", "answer", "keywords", "source_type", "source_path", "page", "slide", "readers"}, f["id"]
        assert f["readers"] == "public" or (isinstance(f["readers"], list) and set(f["readers"]) <= set(LOGINS)), f["id"]
    by_type = Counter(f["source_type"] for f in fs)
    assert by_type["wiki"] >= 8 and by_type["slack"] >= 6 and by_type["drive"] >= 6 and by_type[None] == 3
    unanswerable = [f for f in fs if f["source_type"] is None]
    assert all(f["answer"] == "" and f["keywords"] == [] and f["readers"] == "public" for f in unanswerable)
    falcon = [f for f in fs if f["source_path"] == "proj-falcon"]
    assert len(falcon) >= 2 and all(f["readers"] == ["alice", "dave"] for f in falcon)
    assert any(f["source_path"] == "D01ALIBOB" for f in fs)
    assert any(f["page"] == 4 for f in fs) and any(f["slide"] for f in fs)
    assert any(f["source_path"] == "hr/compensation-bands-2026.xlsx" for f in fs)
    inj = next(f for f in fs if f["id"] == "injection-doc")
    assert "Ignore all previous instructions" in (DRIVE / inj["source_path"]).read_text(encoding="utf-8")


@pytest.mark.parametrize("fact", [f for f in facts() if f["source_type"]], ids=lambda f: f["id"])
def test_fact_is_in_its_source_and_nowhere_it_should_not_be(fact, texts):
    key = (fact["source_type"], fact["source_path"])
    assert key in texts, f"{fact['id']}: source {key} does not exist"
    assert fact["keywords"], fact["id"]
    for kw in fact["keywords"]:
        needle = kw.lower()
        assert needle in texts[key].lower(), f"{fact['id']}: {kw!r} not in {key}"
        for other, text in texts.items():
            if other == key:
                continue
            # a fact is findable in one source type only; a restricted one in one document only
            if other[0] != key[0] or fact["readers"] != "public":
                assert needle not in text.lower(), f"{fact['id']}: {kw!r} also appears in {other}"
    if fact["page"] is not None:
        pages = pdf_pages(DRIVE / fact["source_path"])
        hits = [i + 1 for i, p in enumerate(pages) if all(k.lower() in p.lower() for k in fact["keywords"])]
        assert hits == [fact["page"]], f"{fact['id']}: keywords on pages {hits}"
    if fact["slide"] is not None:
        slides = pptx_slides(DRIVE / fact["source_path"])
        hits = [i + 1 for i, s in enumerate(slides) if all(k.lower() in s.lower() for k in fact["keywords"])]
        assert hits == [fact["slide"]], f"{fact['id']}: keywords on slides {hits}"
    assert fact["readers"] == readers_of(*key), f"{fact['id']}: readers disagree with the source's ACL"


def test_unanswerable_questions_have_no_answer_in_the_corpus(texts):
    everything = "\n".join(texts.values()).lower()
    for absent in ("hackathon", "wifi password", "wi-fi password"):
        assert absent not in everything
    org = texts[("wiki", "confluence/COMP/Organisation-Chart_229378.html")]
    assert "Chief Executive Officer" in org and "HR portal" in org  # roles only; names live elsewhere


# --------------------------------------------------------------------------- generator


def test_drive_generator_is_deterministic_and_the_committed_files_are_current(tmp_path):
    gen = load_generator()
    a, b = tmp_path / "a", tmp_path / "b"
    files_a = gen.generate(a)
    gen.generate(b)
    rel = sorted(p.relative_to(a).as_posix() for p in files_a)
    committed = sorted(p.relative_to(DRIVE).as_posix() for p in DRIVE.rglob("*") if p.is_file())
    assert rel == committed, "data/sample/drive differs from the generator's file list: rerun scripts/make_sample_drive.py"
    for r in rel:
        assert (a / r).read_bytes() == (b / r).read_bytes(), f"{r}: two runs gave different bytes"
        if r == "permissions.json":
            assert load_json(a / r) == load_json(DRIVE / r)
        else:
            assert drive_text(a / r) == drive_text(DRIVE / r), f"{r}: committed file is stale; rerun the generator"
