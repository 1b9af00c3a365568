"""Runs the real ``kb`` command with crash-test hooks injected (tests/ingest/test_crash.py).

The runtime code reads no test variables: this driver wraps ``kb_chatbot.ingest.sync.sync_sources`` so
that every call gets an ``on_stage`` hook, then runs ``kb_chatbot.app.kb.cli.main`` with the given arguments.
``CRASH_PAUSE_AT=<stage>`` prints ``CRASH_STAGE <stage>`` and sleeps, so the test's kill -9
lands exactly there; ``CRASH_SLOW_EMBED_MS`` sleeps after each embedded batch.
"""
from __future__ import annotations

import functools
import os
import sys
import time

import kb_chatbot.ingest.sync

PAUSE_AT = os.environ.get("CRASH_PAUSE_AT", "")
SLOW_EMBED_S = float(os.environ.get("CRASH_SLOW_EMBED_MS", "0") or 0) / 1000.0


def on_stage(stage: str) -> None:
    if stage == "embedding" and SLOW_EMBED_S:
        time.sleep(SLOW_EMBED_S)
    if stage == PAUSE_AT:
        print(f"CRASH_STAGE {stage}", file=sys.stderr, flush=True)
        time.sleep(120)


_real = kb_chatbot.ingest.sync.sync_sources
kb_chatbot.ingest.sync.sync_sources = functools.partial(_real, on_stage=on_stage)

if __name__ == "__main__":
    from kb_chatbot.app.kb.cli import main

    sys.argv[0] = "kb"
    main()
