"""Progress bars for the command line: the ingest reports progress through a callback, and
only this layer draws it (tqdm on stderr, one bar per source)."""
from __future__ import annotations

import sys
from typing import Any


class TqdmProgress:
    """An ``kb_chatbot.ingest.sync.ProgressFn`` that draws one tqdm bar per source. Use as a context
    manager (or call :meth:`close`) so the last bar is finished."""

    def __init__(self, *, enabled: bool = True, unit: str = "doc"):
        self.enabled = enabled
        self.unit = unit
        self._bar: Any = None
        self._source: str | None = None

    def __call__(self, source: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if source != self._source:
            from tqdm import tqdm

            self.close()
            self._source = source
            self._bar = tqdm(total=total, desc=source, unit=self.unit, file=sys.stderr, leave=True,
                             dynamic_ncols=True)
        if done > self._bar.n:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._source = None

    def __enter__(self) -> "TqdmProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
