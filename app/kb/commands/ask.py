"""``kb ask``: answer one question from the command line, as a given user."""
from __future__ import annotations

import json
import logging
import sys

import click

from kb_chatbot.app.kb.asker import read_history, resolve_user
from kb_chatbot.core.errors import IndexError_, KBError


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
@click.option("--cold", is_flag=True,
              help="Answer in this process even when a `kb serve` is running (it would answer at once).")
@click.pass_context
def ask(ctx: click.Context, question: str, username: str | None, groups: str | None, history_file: str | None,
        as_json: bool, as_events: bool, cold: bool) -> None:
    """Answer QUESTION from the knowledge base, with citations, as --user would see it.

    When a `kb serve` with the same settings runs on this machine, it answers (its models are
    loaded already); otherwise this process loads them first."""
    from kb_chatbot.app.kb.settings import get_settings
    from kb_chatbot.app.kb.warm import ask_warm, event_dict

    if logging.getLogger().level > logging.DEBUG:  # no INFO lines inside the streamed answer (-v shows them)
        for name in ("kb_chatbot.app.answer", "kb_chatbot.app.generators", "kb_chatbot.index", "kb_chatbot.ingest"):
            logging.getLogger(name).setLevel(logging.WARNING)
    settings = get_settings(ctx)
    user = resolve_user(settings, username, groups)  # a bad --user fails here, before anything loads
    history = read_history(history_file)
    if not question.strip():
        raise click.BadParameter("the question is empty", param_hint="QUESTION")
    events = None if cold else ask_warm(settings, question, username, groups,
                                        [{"role": m.role, "content": m.content} for m in history])
    if events is None:
        from kb_chatbot.app.kb.services import build_services

        if not cold and sys.stderr.isatty() and not as_json and not as_events:
            click.secho("[no `kb serve` answering here: loading the models (start `kb serve` for answers "
                        "without this wait)]", fg="bright_black", err=True)
        services = build_services(settings)
        if not services.has_index:
            raise IndexError_(f"no index yet in {settings.index_dir}: run `kb reindex` first")
        events = (event_dict(ev) for ev in services.answer_service.stream(question, user=user, history=history))
    answer = None
    # Only the verified answer goes to stdout. The draft streams to the terminal's stderr, dim
    # and labelled, as progress: a terminal cannot take back a printed line, and a draft may
    # hold a sentence the checks then remove (the invented "$5,000 deductible" of a plan that
    # does not exist was printed before the abstention replaced it).
    live = sys.stderr.isatty() and not as_json
    drafting = False
    for ev in events:
        kind = ev["event"]
        if kind == "error":  # from the server: what the cold path would have raised
            raise KBError(f"kb serve: {ev['text']}")
        if as_events and kind != "token":  # the raw draft is never printed: it may not survive its check
            click.echo(json.dumps(ev, ensure_ascii=False), nl=True)
            sys.stdout.flush()
        if kind == "answer":
            answer = ev
        elif as_json or as_events:
            continue
        elif kind == "discard":
            if drafting:
                click.secho("  [discarded: not supported by the sources]", fg="bright_black", err=True)
            drafting = False
        elif kind == "status":
            if drafting:
                click.echo("", err=True)
                drafting = False
            click.secho(f"[{ev['text']}]", fg="bright_black", err=True)
        elif kind == "token" and live:
            if not drafting:
                click.secho("[draft, being checked] ", fg="bright_black", err=True, nl=False)
                drafting = True
            click.secho(ev["text"], fg="bright_black", err=True, nl=False)
    if answer is None:
        raise KBError("the answer stream ended without an answer (did `kb serve` stop?)")
    if as_events:
        return
    answer.pop("event")
    if as_json:
        click.echo(json.dumps(answer, indent=2, ensure_ascii=False))
        return
    if drafting:
        click.echo("", err=True)
    if answer.get("showing_results_for"):
        click.secho(f"Showing results for: {answer['showing_results_for']}", fg="bright_black")
    click.echo(_terminal(answer["answer"]))
    if answer["citations"]:
        click.echo("\nSources:")
        for c in answer["citations"]:
            where = f" ({c['location']})" if c.get("location") else ""
            click.echo(f"  [{c['n']}] {c['title']}{where}\n      {c['uri']}")
            if c.get("quote"):
                click.secho(f"      “{c['quote'][:200]}”", fg="bright_black")
    t = answer["timings"]
    first = f", first token {t['first_token']:.1f} s" if "first_token" in t else ""
    click.echo(
        f"\nconfidence {answer['confidence']:.2f} · route {answer['route']}"
        f"{' · corrected' if answer['corrected'] else ''} · {t.get('total', 0.0):.1f} s{first} · model {answer['model']}"
    )


def _terminal(text: str) -> str:
    """The answer for a terminal: commands and code (``inline`` and fenced blocks) in cyan,
    without the markdown fences; plain text as it is."""
    import re

    def block(m: re.Match) -> str:
        return "\n".join(click.style("    " + line, fg="cyan") for line in m.group(1).strip("\n").splitlines())

    text = re.sub(r"```[^\n]*\n(.*?)```", block, text, flags=re.S)
    return re.sub(r"`([^`\n]+)`", lambda m: click.style(m.group(1), fg="cyan"), text)

