"""Settings for one ``kb`` invocation, loaded once and shared by its subcommands."""
from __future__ import annotations

import click


def get_settings(ctx: click.Context):
    """Load settings once per invocation (``--config`` / ``KB_CONFIG``, else ./kb.yaml)."""
    from kb_chatbot.core.settings import load_settings

    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    root.obj = obj
    if "settings" not in obj:
        obj["settings"] = load_settings(obj.get("config"))
        # before any model loads: libgomp reads how its threads wait only once (torch brings it)
        from kb_chatbot.app.generators.base import configure_threads, resolve_threads

        g = obj["settings"].generator
        configure_threads(resolve_threads(g.threads), g.thread_wait)
    return obj["settings"]
