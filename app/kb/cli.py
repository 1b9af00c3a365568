"""The ``kb`` command: kb's own subcommands plus those other packages plug in (entry points).

Subcommands load lazily (click's documented LazyGroup pattern) so ``kb --help`` and
``kb status`` start in well under a second: torch and sentence-transformers are imported
only by the commands that need them.
"""
from __future__ import annotations

import importlib
import logging
import sys

import click

from kb_chatbot.core.errors import KBError

#: name -> "module:attribute" of a click command or group.
SUBCOMMANDS = {
    "ingest": "kb_chatbot.app.kb.commands.ingest:ingest",
    "reindex": "kb_chatbot.app.kb.commands.ingest:reindex",
    "status": "kb_chatbot.app.kb.commands.ingest:status",
    "schedule": "kb_chatbot.app.kb.commands.ingest:schedule",
    "embed-worker": "kb_chatbot.app.kb.commands.ingest:embed_worker",
    "ask": "kb_chatbot.app.kb.commands.ask:ask",
    "serve": "kb_chatbot.app.kb.commands.serve:serve",
    "users": "kb_chatbot.app.kb.commands.users:users",
    "models": "kb_chatbot.app.kb.commands.models:models",
}
#: Entry-point group through which packages layered above kb (eval, finetune) add commands.
PLUGIN_GROUP = "kb_chatbot.commands"


def _plugins() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP)}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(SUBCOMMANDS) | set(_plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name) or _plugins().get(name)
        if target:
            module, attr = target.split(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:  # an optional dependency missing
                return _unavailable(name, str(e))
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KBError as e:  # expected failures: one clear message, no traceback
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(2)


def _unavailable(name: str, reason: str) -> click.Command:
    """A stand-in that keeps ``kb --help`` working and explains why ``name`` cannot run."""

    def fail() -> None:
        raise click.ClickException(f"command {name!r} is unavailable: {reason}")

    return click.Command(name, callback=fail, help=f"(unavailable: {reason})")


@click.group(
    cls=LazyGroup,
    epilog="""\b
Examples:
  kb ingest wiki data/sample/wiki --source-name acme-wiki
  kb reindex                         # every source in kb.yaml
  kb status
  kb ask "How many vacation days do I get?" --user alice
  kb serve                           # chat page on http://127.0.0.1:7860
""",
)
@click.option(
    "--config", "-c", envvar="KB_CONFIG", type=click.Path(dir_okay=False), default=None,
    help="Settings YAML (default: ./kb.yaml). Env: KB_CONFIG.",
)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@click.version_option(package_name="kb-chatbot")
@click.pass_context
def main(ctx: click.Context, config: str | None, verbose: bool) -> None:
    """Internal knowledge chatbot: ingest wiki, Slack and Drive; answer with citations."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    from kb_chatbot.core.secrets import install_redaction

    install_redaction()  # an API token that reaches a log line is printed as [secret]
    for noisy in ("httpx", "urllib3", "bitsandbytes", "sentence_transformers", "faiss", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pypdf warns about every malformed cross-reference of real-world PDFs; the text is fine.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    ctx.obj = {"config": config}


if __name__ == "__main__":
    main()
