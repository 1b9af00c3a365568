"""``kb ingest``, ``kb reindex``, ``kb status``, ``kb schedule``.

Exit codes: 0 nothing failed, 1 a file or a source failed (the rest was still indexed),
2 usage or settings error, 3 another ingest is running. Heavy modules are imported inside
the commands so ``kb --help`` stays fast.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from kb_chatbot.app.kb.progress import TqdmProgress
from kb_chatbot.app.kb.settings import get_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3

_EXIT_HELP = """
\b
Exit codes: 0 nothing failed, 1 some file or source failed (everything
else was indexed), 2 bad usage or settings, 3 another ingest is running."""


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    return s or "source"


def _resolve_source(settings: Any, source_type: str, path: Path, name: str | None) -> Any:
    """A configured source (by --source-name, else by type + path) or an ad-hoc one."""
    from pydantic import ValidationError

    from kb_chatbot.core.settings import SourceConfig

    path = path.resolve()
    if name:
        for s in settings.sources:
            if s.name == name:
                if s.type != source_type:
                    raise click.UsageError(f"source {name!r} is configured as type {s.type!r}, not {source_type!r}")
                return s.model_copy(update={"path": path})
    else:
        for s in settings.sources:
            if s.type == source_type and Path(s.path).resolve() == path:
                return s
        name = _slug(path.stem if path.is_file() else path.name)
        clash = next((s for s in settings.sources if s.name == name), None)
        if clash is not None:
            raise click.UsageError(
                f"{path} would get the source name {name!r}, which the settings use for {clash.path}; "
                "pass --source-name NAME")
    try:
        return SourceConfig(name=name, type=source_type, path=path)
    except ValidationError as e:
        raise click.UsageError(f"--source-name {name!r}: {e.errors()[0]['msg']}") from None


def _run_sync(settings: Any, sources: list[Any], *, as_json: bool, progress: bool, full: bool = False) -> int:
    """Sync, print the summary (or JSON), return the exit code."""
    from kb_chatbot.core.errors import IngestBusy
    from kb_chatbot.ingest.sync import sync_sources

    try:
        with TqdmProgress(enabled=progress and not as_json) as bars:
            report = sync_sources(settings, sources, progress=bars, full=full)
    except IngestBusy as e:
        click.secho(f"error: {e}", fg="red", err=True)
        return EXIT_BUSY
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_summary(report)
    return report.exit_code


def _print_summary(report: Any) -> None:
    cols = ("added", "updated", "deleted", "unchanged", "failed")
    width = max([len("source")] + [len(s.name) for s in report.sources])
    tw = max([len("type")] + [len(s.type) for s in report.sources])
    click.echo()
    click.echo(f"{'source':<{width}}  {'type':<{tw}}  " + "  ".join(f"{c:>9}" for c in cols) + "  status")
    for s in report.sources:
        status = click.style(s.status, fg={"ok": "green", "partial": "yellow"}.get(s.status, "red"))
        click.echo(f"{s.name:<{width}}  {s.type:<{tw}}  " + "  ".join(f"{getattr(s, c):>9}" for c in cols)
                   + f"  {status}")
    t = report.totals()
    click.echo(f"{'total':<{width}}  {'':<{tw}}  " + "  ".join(f"{t[c]:>9}" for c in cols))
    for s in report.sources:
        if s.error:
            click.secho(f"source {s.name} failed: {s.error}", fg="red")
        for f in s.failures:
            click.secho(f"  skipped {s.name}: {f.path}: {f.reason}", fg="yellow")
        for note in s.notes:
            click.echo(f"  note {s.name}: {note}")
        if s.api_calls:
            calls = ", ".join(f"{k} {v}" for k, v in s.api_calls.items())
            click.echo(f"  api {s.name}: {sum(s.api_calls.values())} calls ({calls})")
    for note in report.notes:
        click.echo(f"note: {note}")
    if report.generation:
        click.echo(f"published generation {report.generation}: {report.documents_total} documents, "
                   f"{report.chunks_total} chunks; {report.chunks_embedded} chunks embedded in {report.seconds:.1f} s")
    else:
        click.echo(f"nothing changed; serving generation {report.current_generation or '(none)'} "
                   f"({report.seconds:.1f} s)")
    click.echo(f"report: {report.report_path}")


@click.command(epilog="""\b
Examples:
  kb ingest wiki data/sample/wiki --source-name acme-wiki
  kb ingest slack exports/acme-slack.zip       # a workspace export, folder or .zip
  kb ingest drive /srv/drive-export --json     # JSON report on stdout
\b
A source named in the settings (--source-name, or the same type and path)
keeps its settings (base_url, ACL defaults); otherwise the source is named
after the folder. Re-running only re-embeds what changed; documents gone
from PATH are deleted from the index.
""" + _EXIT_HELP)
@click.argument("source_type", metavar="wiki|slack|drive", type=click.Choice(["wiki", "slack", "drive"]))
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--source-name", "-n", help="Source name (document ids are prefixed with it).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (no progress bars).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.pass_context
def ingest(ctx: click.Context, source_type: str, path: Path, source_name: str | None, as_json: bool,
           no_progress: bool) -> None:
    """Index one wiki folder, Slack export or Drive export."""
    settings = get_settings(ctx)
    src = _resolve_source(settings, source_type, path, source_name)
    ctx.exit(_run_sync(settings, [src], as_json=as_json, progress=not no_progress))


@click.command(epilog="""\b
Examples:
  kb reindex                          # every enabled source in kb.yaml
  kb reindex --source acme-wiki       # only this one (repeatable)
  kb --config /etc/kb/kb.yaml reindex --json > last-run.json
  kb reindex --source acme-slack --full   # an API source read whole again, not by its cursor
""" + _EXIT_HELP)
@click.option("--source", "-s", "names", multiple=True, help="Only this configured source (repeatable).")
@click.option("--full", is_flag=True,
              help="API sources (slack-api, confluence, gdrive): read everything again instead of the changes "
                   "since the last sync; what the source no longer has is removed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (no progress bars).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.pass_context
def reindex(ctx: click.Context, names: tuple[str, ...], full: bool, as_json: bool, no_progress: bool) -> None:
    """Sync every source in the settings: add new, update changed, delete vanished documents."""
    settings = get_settings(ctx)
    if names:
        sources = [settings.source(n) for n in dict.fromkeys(names)]  # ConfigError names the known ones
    else:
        sources = [s for s in settings.sources if s.enabled]
        if not sources:
            raise click.UsageError("no enabled sources in the settings: add some under 'sources:' "
                                   "or use `kb ingest wiki|slack|drive PATH`")
    ctx.exit(_run_sync(settings, sources, as_json=as_json, progress=not no_progress, full=full))


@click.command(epilog="""\b
Examples:
  kb status
  kb status --json | jq '.sources[] | {name, documents, chunks}'
""")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Sources with document/chunk counts, the last run and its failures, the index."""
    settings = get_settings(ctx)
    from kb_chatbot.ingest.report import status_info

    st = status_info(settings)
    if as_json:
        click.echo(json.dumps(st, indent=2, ensure_ascii=False))
        return
    if st["generation"]:
        click.echo(f"index: generation {st['generation']} ({st['generation_created_at']}), {st['documents']} documents, "
                   f"{st['chunks']} chunks, {st['index_kind']} ({st['index_structure']}), embedder {st['embedder']}")
    else:
        click.echo(f"index: none yet in {settings.index_dir} (run `kb reindex`)")
    click.echo(f"data: {st['data_dir']}")
    if st["sources"]:
        width = max(len("source"), *(len(s["name"]) for s in st["sources"]))
        click.echo(f"\n{'source':<{width}}  {'type':<5}  {'docs':>6}  {'chunks':>7}  {'last run':<25}  status")
        for s in st["sources"]:
            flag = "" if s["configured"] else "  (not in settings)"
            if s["configured"] and not s["enabled"]:
                flag = "  (disabled)"
            click.echo(f"{s['name']:<{width}}  {s['type']:<5}  {s['documents']:>6}  {s['chunks']:>7}  "
                       f"{s['last_run_at'] or 'never':<25}  {s['last_status'] or '-'}{flag}")
    last = st["last_run"]
    if last:
        t = last["totals"] or {}
        click.echo(f"\nlast run: {last['finished_at']} {'ok' if last['ok'] else 'with failures'}: "
                   + ", ".join(f"{k} {v}" for k, v in t.items()))
        for e in last["source_errors"]:
            click.secho(f"  source {e['source']} failed: {e['error']}", fg="red")
        for f in last["failures"]:
            click.secho(f"  skipped {f['source']}: {f['path']}: {f['reason']}", fg="yellow")
        click.echo(f"  report: {last['report_path']}")
    else:
        click.echo("\nlast run: never")
    sched = st["schedule"]
    click.echo(f"schedule: {sched.get('cron') or (str(sched.get('interval_minutes')) + ' min' if sched.get('interval_minutes') else 'none')}")


@click.command(epilog="""\b
Examples:
  kb schedule                  # runs until Ctrl-C / SIGTERM, on schedule.cron
  kb schedule --once           # one reindex now, then exit (for cron/systemd)
\b
kb.yaml:
  schedule:
    cron: "0 2 * * *"          # nightly at 02:00 (min hour day month weekday)
    # interval_minutes: 60     # or every hour
\b
crontab line instead of a long-running scheduler:
  0 2 * * * cd /srv/kb && .venv/bin/kb schedule --once >> data/runtime/schedule.log 2>&1

or a systemd service running `kb schedule` (Restart=on-failure); it stops
cleanly on SIGTERM, letting a running reindex finish.
""" + _EXIT_HELP)
@click.option("--once", is_flag=True, help="Run one reindex now and exit.")
@click.pass_context
def schedule(ctx: click.Context, once: bool) -> None:
    """Re-index on the schedule in the settings; two runs never overlap."""
    from kb_chatbot.ingest.schedule import build_trigger, run_reindex_once, run_scheduler

    settings = get_settings(ctx)
    if once:
        from kb_chatbot.core.errors import IngestBusy
        from kb_chatbot.ingest.sync import sync_sources

        sources = [s for s in settings.sources if s.enabled]
        if not sources:
            raise click.UsageError("no enabled sources in the settings")
        try:
            report = sync_sources(settings, sources)
        except IngestBusy as e:
            click.secho(f"skipped: {e}", fg="yellow", err=True)
            ctx.exit(EXIT_BUSY)
        _print_summary(report)
        ctx.exit(report.exit_code)
    trigger = build_trigger(settings.schedule)  # ConfigError (exit 2) before anything starts
    click.echo(f"scheduling reindex: {trigger}; Ctrl-C to stop", err=True)
    run_scheduler(settings, trigger=trigger, job=lambda: run_reindex_once(settings))


@click.command("embed-worker", epilog="""\b
Examples:
  kb embed-worker            # help the ingest running now, then exit
  kb embed-worker --follow   # on a GPU machine: help every ingest, until stopped
""")
@click.option("--follow", is_flag=True, help="Keep waiting for the next ingest instead of exiting.")
@click.option("--poll", type=float, default=2.0, show_default=True, help="Seconds between looks for work.")
@click.pass_context
def embed_worker(ctx: click.Context, follow: bool, poll: float) -> None:
    """Embed chunks of the ingest in progress (store.backend: postgres): pulls batches of chunks
    without a vector from the store, as many workers on as many machines as you start."""
    import time

    from kb_chatbot.core.errors import ConfigError
    from kb_chatbot.index.embedder import load_embedder
    from kb_chatbot.index.pg import building_schemas, connect, embed_pending

    settings = get_settings(ctx)
    if settings.store.backend != "postgres":
        raise ConfigError("kb embed-worker needs store.backend: postgres (with SQLite the ingest embeds alone)")
    embedder = load_embedder(settings.embedding)
    conn = connect(settings.store.url)
    total = 0
    try:
        while True:
            for schema in building_schemas(settings.store.url):
                n = embed_pending(conn, schema, embedder)
                if n:
                    total += n
                    click.echo(f"embedded {n} chunks of {schema} ({total} in all)", err=True)
            if not follow:
                break
            time.sleep(poll)
    finally:
        conn.close()
    click.echo(f"done: {total} chunks embedded", err=True)
