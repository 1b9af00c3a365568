"""Who asks, and what came before: the asker of `kb ask` (from the users file) and the earlier
turns of a conversation (a JSON list of messages). Shared by the cold path (`kb ask`) and the
warm one (`kb serve`'s socket, app/kb/warm.py)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from kb_chatbot.core.errors import ConfigError
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
    return history_from(data, str(p))


def history_from(data, where: str) -> list[Message]:
    """Validate a JSON list of ``{"role", "content"}`` messages (``where`` names it in errors)."""
    if not isinstance(data, list):
        raise click.BadParameter(f"{where}: expected a JSON list of {{role, content}} objects", param_hint="--history-file")
    out = []
    for i, m in enumerate(data):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant") or not isinstance(m.get("content"), str):
            raise click.BadParameter(
                f"{where}: item {i} must be {{\"role\": \"user\"|\"assistant\", \"content\": \"...\"}}",
                param_hint="--history-file")
        out.append(Message(m["role"], m["content"]))
    return out
