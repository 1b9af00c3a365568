"""Who may read which file: the permissions sidecar of a file-tree source (Drive, wiki).

``<root>/permissions.json`` maps relative file paths, or folder prefixes ending in ``/``,
to readers, like Drive sharing::

    {"hr/compensation-2026.xlsx": {"users": ["carol@acme.example"], "groups": ["people-ops"]},
     "finance/": {"groups": ["finance"]},
     "policies/": {"public": true}}

The most specific key wins: the file itself, else its deepest listed folder (``"/"`` is the
whole tree). Files with no entry get the source's default policy: ``public`` (everyone)
or ``deny`` (nobody). A malformed sidecar stops the source with a SourceError: guessing
would risk showing a restricted file to everyone.
"""
from __future__ import annotations

import json
import logging
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from kb_chatbot.core.errors import ParseError, SourceError
from kb_chatbot.core.types import PUBLIC, group_principal, user_principal

log = logging.getLogger(__name__)

DefaultAcl = Literal["public", "deny"]
_ENTRY_KEYS = {"users", "groups", "public"}


def default_principals(default_acl: str) -> frozenset[str]:
    if default_acl == "public":
        return frozenset({PUBLIC})
    if default_acl == "deny":
        return frozenset()
    raise SourceError(f"default_acl must be 'public' or 'deny', got {default_acl!r}")


@dataclass(frozen=True)
class PermissionMap:
    """Sidecar entries (normalised keys -> principals) plus the default for unlisted files."""

    default: frozenset[str]
    files: dict[str, frozenset[str]] = field(default_factory=dict)
    folders: dict[str, frozenset[str]] = field(default_factory=dict)  # "a/b/" or "" (root)
    origin: str | None = None

    @classmethod
    def load(cls, path: Path | None, default_acl: str = "public") -> "PermissionMap":
        """Read the sidecar at ``path`` (absent file: only the default applies)."""
        default = default_principals(default_acl)
        if path is None or not path.exists():
            return cls(default=default)
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError) as e:
            raise SourceError(f"permissions file {path}: cannot be read ({e}); fix or remove it") from None
        except json.JSONDecodeError as e:
            raise SourceError(
                f"permissions file {path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                "fix or remove it"
            ) from None
        return cls.from_mapping(data, default=default, origin=str(path))

    @classmethod
    def from_mapping(cls, data: Any, *, default: frozenset[str], origin: str = "permissions") -> "PermissionMap":
        if not isinstance(data, dict):
            raise SourceError(f"permissions file {origin}: the top level must be an object of path -> entry")
        files: dict[str, frozenset[str]] = {}
        folders: dict[str, frozenset[str]] = {}
        for raw_key, entry in data.items():
            key = _normalise_key(raw_key)
            principals = _entry_principals(entry, where=f"permissions file {origin}: entry {raw_key!r}")
            if key == "" or key.endswith("/"):
                folders[key] = principals
            else:
                files[key] = principals
        return cls(default=default, files=files, folders=folders, origin=origin)

    def acl_for(self, rel_path: str) -> frozenset[str]:
        """Principals who may read ``rel_path`` (posix, relative to the source root). Keys and
        paths compare after Unicode NFC normalisation and case folding ("HR/Bands.xlsx" in the
        sidecar covers "hr/bands.xlsx" on disk, and a decomposed "é" matches a composed one)."""
        rel_path = _fold_path(rel_path)
        if rel_path in self.files:
            return self.files[rel_path]
        parts = rel_path.split("/")[:-1]
        for depth in range(len(parts), -1, -1):
            prefix = "/".join(parts[:depth]) + "/" if depth else ""
            if prefix in self.folders:
                return self.folders[prefix]
        return self.default

    def unmatched_keys(self, rel_paths: Iterable[str]) -> list[str]:
        """Sidecar keys that match no file: usually a typo or a moved file (logged by callers)."""
        rels = {_fold_path(r) for r in rel_paths}
        out = [k for k in self.files if k not in rels]
        out += [k for k in self.folders if k and not any(r.startswith(k) for r in rels)]
        return sorted(out)


def _normalise_key(key: Any) -> str:
    if not isinstance(key, str):
        raise SourceError(f"permissions key {key!r} must be a string path")
    k = key.strip().replace("\\", "/")
    while k.startswith("./"):
        k = k[2:]
    k = k.lstrip("/")
    return _fold_path(k)


def _fold_path(path: str) -> str:
    return unicodedata.normalize("NFC", path).casefold()


def _entry_principals(entry: Any, *, where: str) -> frozenset[str]:
    if not isinstance(entry, dict):
        raise SourceError(f"{where}: must be an object with users, groups and/or public")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise SourceError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (allowed: users, groups, public)")
    out: set[str] = set()
    public = entry.get("public", False)
    if not isinstance(public, bool):
        raise SourceError(f"{where}: 'public' must be true or false, got {public!r}")
    if public:
        out.add(PUBLIC)
    for name, make in (("users", user_principal), ("groups", group_principal)):
        values = entry.get(name, [])
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
            raise SourceError(f"{where}: '{name}' must be a list of non-empty strings")
        out.update(make(v) for v in values)
    return frozenset(out)


class AccessError(ParseError):
    """A page's own access list is unreadable. Connectors report it without a doc id, so
    sync drops any previously indexed (possibly more open) version instead of keeping it."""


def access_principals(value: Any, *, path: str) -> frozenset[str]:
    """A page's own ``access:`` front-matter list: ``public``, ``user:<email>``,
    ``group:<name>`` (a bare email means that user). Anything else is a ParseError, so a
    typo never makes a restricted page public."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list):
        raise AccessError(path, "front matter 'access' must be a list like [group:hr, user:carol@acme.example]")
    out: set[str] = set()
    for v in values:
        s = str(v).strip() if isinstance(v, str) else ""
        low = s.lower()
        if low == PUBLIC:
            out.add(PUBLIC)
        elif low.startswith("user:") and s[5:].strip():
            out.add(user_principal(s[5:]))
        elif low.startswith("group:") and s[6:].strip():
            out.add(group_principal(s[6:]))
        elif "@" in s and ":" not in s:
            out.add(user_principal(s))
        else:
            raise AccessError(
                path, f"front matter 'access' entry {v!r} is not 'public', 'user:<email>' or 'group:<name>'"
            )
    return frozenset(out)
