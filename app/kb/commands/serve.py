"""``kb serve``: the chat page on http://127.0.0.1:7860 (host and port from the settings)."""
from __future__ import annotations

import ipaddress
import logging

import click

from kb_chatbot.core.settings import answer_slots
from kb_chatbot.app.kb.settings import get_settings

log = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def index_is_empty(settings) -> bool:
    from kb_chatbot.index.generation import generations_for

    return generations_for(settings).current() is None


@click.command(
    epilog="""\b
Examples:
  kb serve                               # http://127.0.0.1:7860, logins from server.auth.users_file
  kb serve --port 8080 --no-ingest
  KB_GENERATOR__BACKEND=fake kb serve    # no model: for trying the page
\b
Logins: `kb users add NAME`. With server.auth.mode: header the page trusts the
reverse proxy's user/email/groups headers: listen on 127.0.0.1 only, behind that proxy.
""",
)
@click.option("--host", default=None, help="Interface to listen on (default: server.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: server.port, 7860).")
@click.option("--no-ingest", is_flag=True, help="Do not ingest the configured sources when the index is empty.")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, no_ingest: bool) -> None:
    """Start the chat page: ingest first if the index is empty, load the models, serve."""
    settings = get_settings(ctx)
    host = host or settings.server.host
    port = port or settings.server.port
    auth = settings.server.auth
    if auth.mode == "header" and not _is_loopback(host):
        log.warning("auth_mode=header host=%s: the page trusts identity headers, so it must only be reachable "
                    "through the reverse proxy that sets them (listen on 127.0.0.1)", host)
    if auth.mode == "none":
        log.warning("auth_mode=none: every visitor is anonymous and sees public documents only")

    directory = None
    if auth.mode == "users_file":  # fail now, before any slow step, if the users file is bad
        from kb_chatbot.app.auth import UserDirectory

        directory = UserDirectory.from_config(auth)
        log.info("users_file=%s users=%d", auth.users_file, len(directory.users))

    sources = [s for s in settings.sources if s.enabled]
    if index_is_empty(settings) and sources and not no_ingest:
        from kb_chatbot.ingest.sync import sync_sources
        from kb_chatbot.app.kb.progress import TqdmProgress

        click.echo(f"The index is empty: ingesting {len(sources)} source(s) first "
                   "(skip with --no-ingest)…", err=True)
        with TqdmProgress() as bars:
            report = sync_sources(settings, sources, progress=bars)
        click.echo(f"Ingest done: {report.documents_total} documents, {report.chunks_total} chunks.", err=True)

    from kb_chatbot.app.kb.services import build_services
    from kb_chatbot.app.web.app import WarmUp, asgi_app, build_app

    services = build_services(settings)
    warmup = WarmUp(services).start()  # models load now, in the background; the page says so
    demo = build_app(services, settings, warmup=warmup, directory=directory)
    url = f"http://{host}:{port}/"
    log.info("serving url=%s auth_mode=%s concurrency=%d generator=%s/%s model_id=%s", url, auth.mode,
             answer_slots(settings.server, settings.generator), settings.generator.backend, settings.generator.model,
             getattr(services.generator, "model_id", "?"))
    click.echo(f"Chat page: {url}  (Ctrl+C to stop)", err=True)
    import uvicorn

    from kb_chatbot.app.kb.warm import LocalAnswerServer

    # `kb ask` on this machine, as this account, is answered by this warm process (app/kb/warm.py)
    local = LocalAnswerServer(settings, services, demo.kb_controller.line).start()
    app = asgi_app(demo, settings.model_copy(update={"server": settings.server.model_copy(
        update={"host": host, "port": port})}), directory)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        if local is not None:
            local.close()
