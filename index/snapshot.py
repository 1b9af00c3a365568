"""What both index readers (SQLite + FAISS files, Postgres) offer besides ``snapshot()``: the
published generation's parts, each read from the snapshot current at the call."""
from __future__ import annotations

from typing import Any


class SnapshotShortcuts:
    """Mixin: needs ``snapshot()`` and the last snapshot in ``self._snap``."""

    _snap: Any

    def snapshot(self) -> Any:  # pragma: no cover - each reader has its own
        raise NotImplementedError

    def refresh(self) -> bool:
        """Reopen if the published generation changed; True if it did."""
        before = self._snap
        return self.snapshot() is not before

    @property
    def generation(self) -> str | None:
        return self.snapshot().generation

    @property
    def store(self) -> Any:
        return self.snapshot().store

    @property
    def vectors(self) -> Any:
        return self.snapshot().vectors

    @property
    def manifest(self) -> dict[str, Any]:
        return self.snapshot().manifest
