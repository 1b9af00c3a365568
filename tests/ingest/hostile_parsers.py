"""Parsers that misbehave on purpose, run by the isolated parser's worker in the tests."""
from __future__ import annotations

import time
from pathlib import Path

from kb_chatbot.ingest.parsers.builder import Parsed


def spin(path: Path) -> Parsed:
    """A parser stuck on a file (a loop in a PDF's page tree)."""
    while True:
        time.sleep(0.05)


def balloon(path: Path) -> Parsed:
    """A parser that inflates the file (a decompression bomb): grows until something stops it."""
    chunks = []
    while True:
        chunks.append(bytearray(64 * 1024 * 1024))


def fine(path: Path) -> Parsed:
    return Parsed(text=path.read_text(encoding="utf-8"), sections=())
