"""``kb users``: manage the chat page's logins (the users file, bcrypt password hashes)."""
from __future__ import annotations

from pathlib import Path

import click

from kb_chatbot.core.errors import ConfigError
from kb_chatbot.app.kb.settings import get_settings


def _users_file(ctx: click.Context, override: str | None) -> Path:
    if override:
        return Path(override)
    settings = get_settings(ctx)
    path = settings.server.auth.users_file
    if path is None:
        raise ConfigError(
            "server.auth.users_file is not set in the config; set it or pass --file PATH"
        )
    return Path(path)


@click.group(
    epilog="""\b
Examples:
  kb users add alice --email alice@acme.example --groups engineering
  kb users add admin --groups admins          # members of 'admins' see the admin tab
  kb users list
""",
)
def users() -> None:
    """Manage chat page logins (server.auth.mode: users_file)."""


@users.command("add")
@click.argument("name")
@click.option("--email", default=None, help="Email address; documents shared with it become readable.")
@click.option("--groups", default="", help="Comma-separated groups, e.g. engineering,security.")
@click.option("--display-name", default=None, help="Name shown in the page.")
@click.option("--file", "users_file", type=click.Path(dir_okay=False), default=None,
              help="Users file (default: server.auth.users_file from the config).")
@click.option("--password", envvar="KB_NEW_USER_PASSWORD", default=None, hidden=True,
              help="Password (scripts only; prefer the prompt). Env: KB_NEW_USER_PASSWORD.")
@click.pass_context
def add(ctx: click.Context, name: str, email: str | None, groups: str, display_name: str | None,
        users_file: str | None, password: str | None) -> None:
    """Add user NAME, or change an existing user's password, email and groups.

    Prompts for the password twice and stores only its bcrypt hash.
    """
    from kb_chatbot.app.auth import USERNAME_RE, UserRecord, hash_password, load_users, save_users

    if not USERNAME_RE.match(name):
        raise click.BadParameter("use letters, digits, '_', '.', '@', '-' (max 64)", param_hint="NAME")
    if email is not None and "@" not in email:
        raise click.BadParameter(f"not an email address: {email!r}", param_hint="--email")
    path = _users_file(ctx, users_file)
    existing = load_users(path) if path.is_file() else {}
    if password is None:
        password = click.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True)
    try:
        pw_hash = hash_password(password)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="password") from None
    old = existing.get(name.lower())
    record = UserRecord(
        username=name,
        password_hash=pw_hash,
        email=email if email is not None else (old.email if old else None),
        display_name=display_name if display_name is not None else (old.display_name if old else None),
        groups=tuple(g.strip() for g in groups.split(",") if g.strip()) if groups or not old else old.groups,
    )
    existing[name.lower()] = record
    save_users(path, existing)
    click.echo(f"{'updated' if old else 'added'} user {name} in {path}")


@users.command("list")
@click.option("--file", "users_file", type=click.Path(dir_okay=False), default=None,
              help="Users file (default: server.auth.users_file from the config).")
@click.pass_context
def list_users(ctx: click.Context, users_file: str | None) -> None:
    """List users with their email and groups (never the hashes)."""
    from kb_chatbot.app.auth import ADMIN_GROUP, load_users

    path = _users_file(ctx, users_file)
    records = load_users(path)
    admins: set[str] = set()
    if users_file is None:
        admins = {a.lower() for a in get_settings(ctx).server.auth.admins}
    if not records:
        click.echo(f"no users in {path}")
        return
    rows = [("USER", "EMAIL", "GROUPS", "ADMIN")]
    for u in records.values():
        admin = u.username.lower() in admins or ADMIN_GROUP in {g.lower() for g in u.groups}
        rows.append((u.username, u.email or "-", ",".join(u.groups) or "-", "yes" if admin else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
