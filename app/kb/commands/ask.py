"""``kb ask``: answer one question from the command line, as a given user."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from kb_chatbot.core.errors import ConfigError, IndexError_
from kb_chatbot.core.types import Message, Principal


def resolve_user(settings, username: str | None, groups: str | None) -> Principal:
    """The Principal for ``--user``: from the users file when there is one; ``--groups`` adds groups."""
    extra = tuple(g.strip() for g in (groups or "").split(",") if g.strip())
    if not username:
        return Principal("anonymous") if not extra else Principal("cli", groups=extra)
    auth = settings.server.auth
    users_file = auth.users_file
    if users_file is not None and Path(users_file).is_file():
        from kb_chatbot.app.auth import UserDirectory

        principal = UserDirectory.from_config(auth).principal_for(username)
        if principal.is_anonymous:
            raise ConfigError(f"--user {username!r} is not in the users file {users_file} (see `kb users list`)")
    else:
        principal = Principal(username=username.strip().lower())
    if extra:
        principal = Principal(principal.username, principal.email, tuple(dict.fromkeys(principal.groups + extra)),
                              principal.display_name, principal.is_admin)
    return principal


def read_history(path: str | None) -> list[Message]:
    """A JSON list of ``{"role": "user"|"assistant", "content": "..."}`` (earlier turns)."""
    if not path:
        return []
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise click.BadParameter(f"{p}: cannot read a JSON list of messages ({e})", param_hint="--history-file")
    if not isinstance(data, list):
        raise click.BadParameter(f"{p}: expected a JSON list of {{role, content}} objects", param_hint="--history-file")
    out = []
    for i, m in enumerate(data):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant") or not isinstance(m.get("content"), str):
            raise click.BadParameter(
                f"{p}: item {i} must be {{\"role\": \"user\"|\"assistant\", \"content\": \"...\"}}", param_hint="--history-file"
            )
        out.append(Message(m["role"], m["content"]))
    return out


@click.command(
    epilog="""\b
Examples:
  kb ask "How many vacation days do I get?" --user alice
  kb ask "What is the launch date of Falcon?" --user bob --json
  kb ask "How do I connect to the VPN?" --user bob --json-events   # sources first, then the answer
  kb ask "and for contractors?" --user carol --history-file chat.json
  KB_GENERATOR__BACKEND=fake kb ask "expense limit for meals" --groups finance
"""
)
@click.argument("question")
@click.option("--user", "-u", "username", envvar="KB_ASK_USER", default=None,
              help="Ask as this user (from the users file); anonymous users read only public documents.")
@click.option("--groups", default=None, help="Comma-separated extra groups for the user (admin testing).")
@click.option("--history-file", type=click.Path(dir_okay=False), default=None,
              help='Earlier turns: a JSON list of {"role": "user"|"assistant", "content": "..."}.')
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON (no streaming).")
@click.option("--json-events", "as_events", is_flag=True,
              help="Print each event as one JSON line as it happens: sources (within about a second), "
                   "status, verified text, then the answer.")
@click.pass_context
def ask(ctx: click.Context, question: str, username: str | None, groups: str | None, history_file: str | None,
        as_json: bool, as_events: bool) -> None:
    """Answer QUESTION from the knowledge base, with citations, as --user would see it."""
    from kb_chatbot.app.kb.services import build_services
    from kb_chatbot.app.kb.settings import get_settings

    if logging.getLogger().level > logging.DEBUG:  # no INFO lines inside the streamed answer (-v shows them)
        for name in ("kb_chatbot.app.answer", "kb_chatbot.app.generators", "kb_chatbot.index", "kb_chatbot.ingest"):
            logging.getLogger(name).setLevel(logging.WARNING)
    settings = get_settings(ctx)
    user = resolve_user(settings, username, groups)
    history = read_history(history_file)
    services = build_services(settings)
    if not services.has_index:
        raise IndexError_(f"no index yet in {settings.index_dir}: run `kb reindex` first")
    if not question.strip():
        raise click.BadParameter("the question is empty", param_hint="QUESTION")
    service = services.answer_service
    answer = None
    # Only the verified answer goes to stdout. The draft streams to the terminal's stderr, dim
    # and labelled, as progress: a terminal cannot take back a printed line, and a draft may
    # hold a sentence the checks then remove (the invented "$5,000 deductible" of a plan that
    # does not exist was printed before the abstention replaced it).
    live = sys.stderr.isatty() and not as_json
    drafting = False
    for ev in service.stream(question, user=user, history=history):
        if as_events and ev.kind != "token":  # the raw draft is never printed: it may not survive its check
            click.echo(json.dumps(_event_dict(ev), ensure_ascii=False), nl=True)
            sys.stdout.flush()
        if ev.kind == "answer":
            answer = ev.answer
        elif as_json or as_events:
            continue
        elif ev.kind == "discard":
            if drafting:
                click.secho("  [discarded: not supported by the sources]", fg="bright_black", err=True)
            drafting = False
        elif ev.kind == "status":
            if drafting:
                click.echo("", err=True)
                drafting = False
            click.secho(f"[{ev.text}]", fg="bright_black", err=True)
        elif ev.kind == "token" and live:
            if not drafting:
                click.secho("[draft, being checked] ", fg="bright_black", err=True, nl=False)
                drafting = True
            click.secho(ev.text, fg="bright_black", err=True, nl=False)
    assert answer is not None
    if as_events:
        return
    if as_json:
        click.echo(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    if drafting:
        click.echo("", err=True)
    if answer.showing_for:
        click.secho(f"Showing results for: {answer.showing_for}", fg="bright_black")
    click.echo(_terminal(answer.text))
    if answer.citations:
        click.echo("\nSources:")
        for c in answer.citations:
            where = f" ({c.location})" if c.location else ""
            click.echo(f"  [{c.n}] {c.title}{where}\n      {c.uri}")
            if c.quote:
                click.secho(f"      “{c.quote[:200]}”", fg="bright_black")
    t = answer.timings
    first = f", first token {t['first_token']:.1f} s" if "first_token" in t else ""
    click.echo(
        f"\nconfidence {answer.confidence:.2f} · route {answer.route}"
        f"{' · corrected' if answer.corrected else ''} · {t.get('total', 0.0):.1f} s{first} · model {answer.model_id}"
    )


def _event_dict(ev) -> dict:
    """One streamed event as JSON: {"event": kind, ...}."""
    if ev.kind == "answer":
        return {"event": "answer", **ev.answer.to_dict()}
    if ev.kind == "sources":
        return {"event": "sources", "sources": [c.to_dict() for c in ev.sources]}
    return {"event": ev.kind, "text": ev.text}


def _terminal(text: str) -> str:
    """The answer for a terminal: commands and code (``inline`` and fenced blocks) in cyan,
    without the markdown fences; plain text as it is."""
    import re

    def block(m: re.Match) -> str:
        return "\n".join(click.style("    " + line, fg="cyan") for line in m.group(1).strip("\n").splitlines())

    text = re.sub(r"```[^\n]*\n(.*?)```", block, text, flags=re.S)
    return re.sub(r"`([^`\n]+)`", lambda m: click.style(m.group(1), fg="cyan"), text)

