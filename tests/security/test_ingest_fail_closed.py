"""ACLs never fail open at ingest: each case reproduces a way a restricted page used to become
readable by everyone (issue "Fail-closed security"), through the real sync and retriever."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kb_chatbot.core.settings import Settings, SourceConfig
from kb_chatbot.core.types import Principal
from kb_chatbot.index.embedder import HashEmbedder
from kb_chatbot.index.generation import open_index
from kb_chatbot.index.retriever import HybridRetriever
from kb_chatbot.ingest.sync import sync_sources

ANON = Principal("anonymous")
CAROL = Principal("carol", groups=("hr",))


def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", embedding={"model": "hash"},
                    chunking={"chunk_tokens": 64, "overlap_tokens": 0})


def sync(s: Settings, src: SourceConfig):
    return sync_sources(s, [src], embedder=HashEmbedder())


def visible(s: Settings, user: Principal, query: str) -> str:
    hits = HybridRetriever(open_index(s), HashEmbedder(), s.retrieval).retrieve(query, user=user, top_k=10)
    return "\n".join(h.chunk.text for h in hits)


def write(root: Path, rel: str, text: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture
def wiki(tmp_path):
    root = tmp_path / "wiki"
    write(root, "hr/bands.md", "---\ntitle: Salary bands\naccess: [group:hr]\n---\nZQXBAND salary bands are secret.\n")
    write(root, "public/parking.md", "# Parking\nZQXPARK parking is free.\n")
    write(root, "public/old.md", "# Old\nZQXOLD this page will be deleted.\n")
    return root


def test_front_matter_that_stops_parsing_removes_the_page_and_pruning_goes_on(tmp_path, wiki):
    s, src = settings(tmp_path), SourceConfig(name="w", type="wiki", path=wiki)
    sync(s, src)
    assert "ZQXBAND" not in visible(s, ANON, "ZQXBAND salary") and "ZQXBAND" in visible(s, CAROL, "ZQXBAND salary")
    # the classic: an unquoted colon makes the YAML invalid, and access: was silently dropped
    write(wiki, "hr/bands.md", "---\ntitle: HR: salary bands\naccess: [group:hr]\n---\nZQXBAND salary bands are secret.\n")
    (wiki / "public/old.md").unlink()
    rep = sync(s, src)
    [sr] = rep.sources
    assert any(f.path == "hr/bands.md" and "front matter is not valid YAML" in f.reason for f in sr.failures)
    assert rep.exit_code == 1
    assert "ZQXBAND" not in visible(s, ANON, "ZQXBAND salary")
    assert "ZQXBAND" not in visible(s, CAROL, "ZQXBAND salary")  # not indexed until fixed
    assert "ZQXOLD" not in visible(s, ANON, "ZQXOLD deleted")  # deletions elsewhere still happen
    assert "ZQXPARK" in visible(s, ANON, "ZQXPARK parking")


def test_an_invalid_access_entry_removes_the_older_more_open_version(tmp_path, wiki):
    s, src = settings(tmp_path), SourceConfig(name="w", type="wiki", path=wiki)
    write(wiki, "hr/plans.md", "# Plans\nZQXPLAN reorganisation plans.\n")  # public at first
    sync(s, src)
    assert "ZQXPLAN" in visible(s, ANON, "ZQXPLAN plans")
    write(wiki, "hr/plans.md", "---\naccess: [hr]\n---\nZQXPLAN reorganisation plans.\n")  # meant group:hr
    (wiki / "public/old.md").unlink()
    rep = sync(s, src)
    assert any("'hr'" in f.reason for f in rep.sources[0].failures)
    assert "ZQXPLAN" not in visible(s, ANON, "ZQXPLAN plans")
    assert "ZQXOLD" not in visible(s, ANON, "ZQXOLD deleted")


def _drive_with_docx(tmp_path: Path, name: str, text: str) -> tuple[Path, Settings, SourceConfig]:
    """A public drive holding one docx, synced once."""
    import docx

    drive = tmp_path / "drive"
    drive.mkdir()
    d = docx.Document()
    d.add_paragraph(text)
    d.save(drive / name)
    s = settings(tmp_path)
    src = SourceConfig(name="d", type="drive", path=drive, default_acl="public")
    sync(s, src)
    return drive, s, src


def test_a_file_that_stops_parsing_after_its_access_narrowed_is_removed(tmp_path):
    drive, s, src = _drive_with_docx(tmp_path, "payroll.docx", "ZQXPAY payroll calendar for everyone.")
    assert "ZQXPAY" in visible(s, ANON, "ZQXPAY payroll")
    # restricted in the sidecar and password-protected (it no longer parses) in the same step
    (drive / "permissions.json").write_text(json.dumps({"payroll.docx": {"groups": ["hr"]}}))
    (drive / "payroll.docx").write_bytes(b"PK\x03\x04 encrypted, not a zip any more")
    sync(s, src)
    assert "ZQXPAY" not in visible(s, ANON, "ZQXPAY payroll")


def test_a_broken_file_with_unchanged_access_keeps_its_previous_version(tmp_path):
    drive, s, src = _drive_with_docx(tmp_path, "meals.docx", "ZQXMEAL meals are reimbursed.")
    (drive / "meals.docx").write_bytes(b"PK\x03\x04 broken")
    rep = sync(s, src)
    assert rep.sources[0].failed == 1
    assert "ZQXMEAL" in visible(s, ANON, "ZQXMEAL meals")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks here")
def test_symlinks_are_skipped_and_reported(tmp_path, wiki):
    secret = write(tmp_path / "elsewhere", "secret.txt", "ZQXSECRET root password of the build server.")
    os.symlink(secret, wiki / "public" / "parking-link.md")
    os.symlink(tmp_path / "elsewhere", wiki / "public" / "linked-folder")
    s, src = settings(tmp_path), SourceConfig(name="w", type="wiki", path=wiki)
    rep = sync(s, src)
    assert any(f.path == "public/parking-link.md" and "symbolic link" in f.reason for f in rep.sources[0].failures)
    assert "ZQXSECRET" not in visible(s, ANON, "ZQXSECRET root password")
    assert "ZQXSECRET" not in visible(s, CAROL, "ZQXSECRET root password")


def test_drive_files_nobody_listed_are_private_by_default(tmp_path):
    drive = tmp_path / "drive"
    write(drive, "policies/travel.txt", "ZQXTRAVEL travel policy.")
    write(drive, "hr/review.txt", "ZQXREVIEW performance review of Dana.")
    (drive / "permissions.json").write_text(json.dumps({"policies/": {"public": True}}))
    src = SourceConfig(name="d", type="drive", path=drive)
    assert src.default_acl == "deny"
    assert SourceConfig(name="w", type="wiki", path=drive).default_acl == "public"
    s = settings(tmp_path)
    sync(s, src)
    assert "ZQXTRAVEL" in visible(s, ANON, "ZQXTRAVEL travel")
    assert "ZQXREVIEW" not in visible(s, ANON, "ZQXREVIEW review")


def test_sidecar_keys_are_normalised_and_unmatched_ones_are_failures(tmp_path):
    drive = tmp_path / "drive"
    write(drive, "HR/Café-bands.txt", "ZQXCAFE bands.")
    write(drive, "public/a.txt", "ZQXA public.")
    # key in another case and in decomposed Unicode; a typo that matches nothing
    (drive / "permissions.json").write_text(json.dumps({
        "hr/cafe\u0301-bands.txt": {"groups": ["hr"]}, "public/": {"public": True},
        "finance/budgte.xlsx": {"groups": ["finance"]}}, ensure_ascii=False), encoding="utf-8")
    s = settings(tmp_path)
    rep = sync(s, SourceConfig(name="d", type="drive", path=drive))
    assert "ZQXCAFE" not in visible(s, ANON, "ZQXCAFE bands") and "ZQXCAFE" in visible(s, CAROL, "ZQXCAFE bands")
    [f] = [f for f in rep.sources[0].failures if "matches no file" in f.reason]
    assert "finance/budgte.xlsx" in f.reason and rep.exit_code == 1
    assert "ZQXA" in visible(s, ANON, "ZQXA public")  # a typo in the sidecar blocks nothing else


def test_the_admin_view_of_failed_files_shows_only_what_the_admin_may_read(tmp_path, wiki):
    """A failed file's path and reason name a restricted page: an admin who may not read it sees
    a count, not the name; an admin who may read it sees the row; `kb status` (no reader) all."""
    from kb_chatbot.ingest.report import status_info

    s = settings(tmp_path)
    drive = tmp_path / "drive"
    write(drive, "public/menu.txt", "ZQXMENU lunch menu.")
    write(drive, "hr/ZQXSECRET-layoffs-2027.txt", "ZQXLAY the list.")
    (drive / "permissions.json").write_text(json.dumps({"hr/": {"groups": ["hr"]}, "public/": {"public": True}}))
    sources = [SourceConfig(name="d", type="drive", path=drive), SourceConfig(name="w", type="wiki", path=wiki)]
    sync_sources(s, sources, embedder=HashEmbedder())
    (drive / "hr/ZQXSECRET-layoffs-2027.txt").write_bytes(b"\x00\x01binary now\x00" * 50)
    (drive / "public/menu.txt").write_bytes(b"\x00\x01binary now\x00" * 50)
    write(wiki, "hr/bands.md", "---\ntitle: HR: salary bands\naccess: [group:hr]\n---\nZQXBAND secret.\n")
    sync_sources(s, sources, embedder=HashEmbedder())

    everything = status_info(s)["last_run"]
    assert len(everything["failures"]) == 3
    ops_admin = Principal("olga", groups=("admins", "ops"), is_admin=True)
    seen = status_info(s, reader=ops_admin)["last_run"]
    assert [f["path"] for f in seen["failures"]] == ["public/menu.txt"]
    assert "ZQXSECRET" not in json.dumps(seen) and "bands" not in json.dumps(seen)
    assert seen["failures_hidden"] == {"d": 1, "w": 1}
    hr_admin = Principal("hana", groups=("admins", "hr"), is_admin=True)
    seen = status_info(s, reader=hr_admin)["last_run"]
    # the drive file's ACL is known (the sidecar); the page whose front matter broke has none
    assert sorted(f["path"] for f in seen["failures"]) == ["hr/ZQXSECRET-layoffs-2027.txt", "public/menu.txt"]
    assert seen["failures_hidden"] == {"w": 1}
