"""The ``kb`` command: the composition root that wires every package's subcommands.

Subcommands load lazily (click's documented LazyGroup pattern) so ``kb --help`` and
``kb status`` start in well under a second: torch and sentence-transformers are imported
only by the commands that need them.
"""
from __future__ import annotations

import importlib
import logging
import sys

import click

from core.errors import KBError

#: name -> "module:attribute" of a click command or group.
SUBCOMMANDS = {
    "ingest": "ingest.cli:ingest",
    "reindex": "ingest.cli:reindex",
    "status": "ingest.cli:status",
    "schedule": "ingest.cli:schedule",
    "ask": "app.commands.ask:ask",
    "serve": "app.commands.serve:serve",
    "users": "app.commands.users:users",
    "models": "app.commands.models:models",
    "finetune": "finetune.cli:finetune",
    "eval": "eval.cli:eval_cmd",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(SUBCOMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in SUBCOMMANDS:
            module, attr = SUBCOMMANDS[name].split(":")
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
    for noisy in ("httpx", "urllib3", "bitsandbytes", "sentence_transformers", "faiss", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pypdf warns about every malformed cross-reference of real-world PDFs; the text is fine.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    ctx.obj = {"config": config}


def get_settings(ctx: click.Context):
    """Load settings once per invocation (subcommands call this)."""
    from core.settings import load_settings

    root = ctx.find_root()
    if "settings" not in root.obj:
        root.obj["settings"] = load_settings(root.obj.get("config"))
    return root.obj["settings"]


if __name__ == "__main__":
    main()
