"""``kb ingest | reindex | status | schedule`` through click's CliRunner (and one real
``kb schedule`` process stopped with SIGTERM)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kb_chatbot.core.settings import ScheduleConfig, load_settings
from kb_chatbot.index.generation import Generations, ingest_lock
from kb_chatbot.app.kb.cli import main

REPO = Path(__file__).resolve().parents[3]


def _config(tmp_path: Path, sources: str = "", extra: str = "") -> Path:
    cfg = tmp_path / "kb.yaml"
    cfg.write_text(f"data_dir: data\nembedding: {{model: hash}}\nchunking: {{chunk_tokens: 64, overlap_tokens: 8}}\n"
                   f"{sources}{extra}", encoding="utf-8")
    return cfg


def _wiki(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pto.md").write_text("---\ntitle: Vacation\n---\n# Vacation\n\nEmployees get 25 vacation days.\n")
    (root / "robots.md").write_text("# Robots\n\nRobots charge in bay 4 overnight.\n")
    return root


def _drive(root: Path, broken: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("Parking is on level minus two.\n")
    if broken:
        (root / "budget.xlsx").write_bytes(b"definitely not a spreadsheet")
    return root


SOURCES = """sources:
  - {name: acme-wiki, type: wiki, path: wiki}
  - {name: acme-drive, type: drive, path: drive}
"""


def run(cfg: Path, *args: str):
    return CliRunner().invoke(main, ["-c", str(cfg), *args], catch_exceptions=False)


@pytest.mark.parametrize("command", ["ingest", "reindex", "status", "schedule"])
def test_help_has_worked_examples(command):
    res = CliRunner().invoke(main, [command, "--help"])
    assert res.exit_code == 0
    assert "Examples:" in res.output and f"kb {command}" in res.output


def test_ingest_prints_summary_and_report(tmp_path):
    cfg = _config(tmp_path)
    wiki = _wiki(tmp_path / "handbook")
    res = run(cfg, "ingest", "wiki", str(wiki), "--no-progress")
    assert res.exit_code == 0, res.output
    assert "added" in res.output and "unchanged" in res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("handbook "))  # named after the folder
    assert line.split()[:7] == ["handbook", "wiki", "2", "0", "0", "0", "0"]
    report_path = Path(res.output.split("report: ")[1].split()[0])
    assert report_path.is_file() and json.loads(report_path.read_text())["ok"] is True
    assert "published generation" in res.output

    again = run(cfg, "ingest", "wiki", str(wiki), "--json")
    assert again.exit_code == 0
    data = json.loads(again.stdout)
    assert data["totals"]["unchanged"] == 2 and data["generation"] is None and data["chunks_embedded"] == 0


def test_ingest_exit_codes(tmp_path):
    cfg = _config(tmp_path, SOURCES)
    drive = _drive(tmp_path / "drive", broken=True)
    res = run(cfg, "ingest", "drive", str(drive), "--json")
    assert res.exit_code == 1  # a file failed, the rest was indexed
    data = json.loads(res.stdout)
    [src] = data["sources"]
    assert src["name"] == "acme-drive"  # matched the configured source by type and path
    assert src["added"] == 1 and src["failed"] == 1 and src["failures"][0]["path"] == "budget.xlsx"
    human = run(cfg, "ingest", "drive", str(drive), "--no-progress")
    assert human.exit_code == 1 and "budget.xlsx" in human.output

    assert run(cfg, "ingest", "wiki", str(tmp_path / "missing")).exit_code == 2  # usage: no such path
    assert run(cfg, "ingest", "confluence", str(drive)).exit_code == 2
    wrong = run(cfg, "ingest", "wiki", str(drive), "--source-name", "acme-drive")
    assert wrong.exit_code == 2 and "configured as type 'drive'" in wrong.output
    bad_name = run(cfg, "ingest", "wiki", str(drive), "--source-name", "no spaces allowed")
    assert bad_name.exit_code == 2 and "--source-name" in bad_name.output


def test_ingest_busy_exits_3(tmp_path, monkeypatch):
    import kb_chatbot.index.generation

    monkeypatch.setattr(kb_chatbot.index.generation, "LOCK_WAIT_S", 0.2)
    cfg = _config(tmp_path)
    wiki = _wiki(tmp_path / "wiki")
    with ingest_lock(load_settings(cfg)):
        res = run(cfg, "ingest", "wiki", str(wiki), "--no-progress")
    assert res.exit_code == 3
    assert f"another ingest is running (pid {os.getpid()})" in res.output


def test_reindex_and_status(tmp_path):
    cfg = _config(tmp_path, SOURCES)
    res = run(cfg, "status")
    assert res.exit_code == 0 and "none yet" in res.output and "last run: never" in res.output
    _wiki(tmp_path / "wiki")
    _drive(tmp_path / "drive", broken=True)

    res = run(cfg, "reindex", "--no-progress")
    assert res.exit_code == 1, res.output  # the broken spreadsheet
    assert "acme-wiki" in res.output and "acme-drive" in res.output and "budget.xlsx" in res.output

    st = json.loads(run(cfg, "status", "--json").stdout)
    by_name = {s["name"]: s for s in st["sources"]}
    assert by_name["acme-wiki"]["documents"] == 2 and by_name["acme-wiki"]["chunks"] >= 2
    assert by_name["acme-drive"]["documents"] == 1 and by_name["acme-drive"]["last_status"] == "partial"
    assert st["generation"] == Generations(load_settings(cfg).index_dir).current()
    assert st["index_kind"] == "flat" and st["embedder"] == "hash-embedder"
    assert st["last_run"]["ok"] is False
    assert st["last_run"]["failures"][0]["path"] == "budget.xlsx" and st["last_run"]["failures"][0]["reason"]

    human = run(cfg, "status")
    assert human.exit_code == 0
    assert "acme-wiki" in human.output and "with failures" in human.output and "budget.xlsx" in human.output

    (tmp_path / "drive" / "budget.xlsx").unlink()
    res = run(cfg, "reindex", "--source", "acme-drive", "--json")
    assert res.exit_code == 0
    assert [s["name"] for s in json.loads(res.stdout)["sources"]] == ["acme-drive"]

    unknown = run(cfg, "reindex", "--source", "nope")
    assert unknown.exit_code == 2 and "unknown source 'nope'" in unknown.output


def test_reindex_source_failure_and_no_sources(tmp_path):
    cfg = _config(tmp_path, SOURCES)
    _wiki(tmp_path / "wiki")  # drive folder missing: that source fails, the wiki is indexed
    res = run(cfg, "reindex", "--json")
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    drive = next(s for s in data["sources"] if s["name"] == "acme-drive")
    assert drive["status"] == "failed" and "not found" in drive["error"]
    assert next(s for s in data["sources"] if s["name"] == "acme-wiki")["added"] == 2

    (tmp_path / "e").mkdir()
    res = run(_config(tmp_path / "e"), "reindex")
    assert res.exit_code == 2 and "no enabled sources" in res.output


def test_bad_config_is_exit_2(tmp_path):
    cfg = tmp_path / "kb.yaml"
    cfg.write_text("data_dir: data\nindex: {kind: lsh}\n")
    res = CliRunner().invoke(main, ["-c", str(cfg), "status"])
    assert res.exit_code == 2 and "index.kind" in res.output


# --- schedule -------------------------------------------------------------------------


def test_build_trigger():
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    from kb_chatbot.core.errors import ConfigError
    from kb_chatbot.ingest.schedule import build_trigger

    t = build_trigger(ScheduleConfig(cron="30 2 * * 1-5"), timezone="UTC")
    assert isinstance(t, CronTrigger)
    from datetime import datetime, timezone

    nxt = t.get_next_fire_time(None, datetime(2024, 1, 6, 12, 0, tzinfo=timezone.utc))  # a Saturday
    assert nxt == datetime(2024, 1, 8, 2, 30, tzinfo=timezone.utc)  # Monday 02:30
    assert isinstance(build_trigger(ScheduleConfig(interval_minutes=15)), IntervalTrigger)
    assert isinstance(build_trigger(ScheduleConfig(cron="0 3 * * *", interval_minutes=5)), CronTrigger)  # cron wins
    with pytest.raises(ConfigError, match="no schedule configured"):
        build_trigger(ScheduleConfig())
    with pytest.raises(ConfigError, match="schedule.cron"):
        build_trigger(ScheduleConfig(cron="99 * * * *"))


def test_scheduler_runs_job_without_overlap_and_stops(tmp_path):
    from apscheduler.triggers.interval import IntervalTrigger

    from kb_chatbot.ingest.schedule import run_scheduler

    cfg = _config(tmp_path)
    running, max_running, runs = [0], [0], []
    lock = threading.Lock()

    def job():
        with lock:
            running[0] += 1
            max_running[0] = max(max_running[0], running[0])
        time.sleep(0.7)  # longer than the interval: the next run must not start on top of it
        with lock:
            running[0] -= 1
            runs.append(time.monotonic())

    stop = threading.Event()
    t = threading.Thread(target=run_scheduler, args=(load_settings(cfg),),
                         kwargs=dict(trigger=IntervalTrigger(seconds=0.2), job=job, stop=stop, install_signals=False))
    t.start()
    deadline = time.monotonic() + 20
    while len(runs) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    t.join(timeout=20)
    assert not t.is_alive()
    assert len(runs) >= 2 and max_running[0] == 1


def test_scheduled_run_skips_when_locked_and_runs_otherwise(tmp_path, caplog):
    from kb_chatbot.ingest.schedule import run_reindex_once

    cfg = _config(tmp_path, "sources:\n  - {name: acme-wiki, type: wiki, path: wiki}\n")
    _wiki(tmp_path / "wiki")
    s = load_settings(cfg)
    with ingest_lock(s), caplog.at_level("INFO", logger="kb_chatbot.ingest.schedule"):
        assert run_reindex_once(s, lock_timeout=0.1) is None
    assert "scheduled reindex skipped" in caplog.text and "another ingest is running" in caplog.text
    report = run_reindex_once(s)
    assert report is not None and report.ok and report.totals()["added"] == 2


def test_schedule_once_and_missing_schedule(tmp_path):
    cfg = _config(tmp_path, "sources:\n  - {name: acme-wiki, type: wiki, path: wiki}\n")
    _wiki(tmp_path / "wiki")
    res = run(cfg, "schedule")
    assert res.exit_code == 2 and "no schedule configured" in res.output
    res = run(cfg, "schedule", "--once")
    assert res.exit_code == 0 and "acme-wiki" in res.output


def test_schedule_process_stops_cleanly_on_sigterm(tmp_path):
    cfg = _config(tmp_path, "sources:\n  - {name: acme-wiki, type: wiki, path: wiki}\n",
                  "schedule: {interval_minutes: 60}\n")
    _wiki(tmp_path / "wiki")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "kb_chatbot.app.kb.cli", "-c", str(cfg), "schedule"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if "scheduler started" in line:
                break
        assert any("scheduler started" in ln for ln in lines), "".join(lines)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, out
    assert "scheduler stopped" in out


@pytest.mark.parametrize("field,expected", [
    ("*", "*"), ("1-5", "mon,tue,wed,thu,fri"), ("0", "sun"), ("7", "sun"), ("sat,sun", "sat,sun"),
    ("*/2", "tue,thu,sat,sun"), ("1-7", "*"), ("mon-wed,5", "mon,tue,wed,fri"), ("5/1", "fri,sat"),
])
def test_crontab_weekdays_use_sunday_zero(field, expected):
    from kb_chatbot.ingest.schedule import crontab_weekdays

    assert crontab_weekdays(field) == expected


@pytest.mark.parametrize("field", ["8", "fri-mon", "x", "1/0"])
def test_crontab_weekdays_rejects_bad_fields(field):
    from kb_chatbot.core.errors import ConfigError
    from kb_chatbot.ingest.schedule import crontab_weekdays

    with pytest.raises(ConfigError, match="schedule.cron"):
        crontab_weekdays(field, "0 2 * * " + field)
