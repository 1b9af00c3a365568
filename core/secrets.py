"""Secrets of the API sources: read from the environment or a private file, never logged.

``read_secret(src)`` looks in the environment variable ``src.secret_env()`` first, then in
``src.secrets_file``: a YAML mapping of source names to ``{token: ...}`` (or to the token
itself) that only its owner may read (mode 0600; a group- or world-readable file is refused,
as ssh does with a private key). The values read are registered with :class:`RedactSecrets`,
a logging filter that the CLI installs on its handlers: a token that reaches a log line (an
SDK's debug output of a request, an exception's text) is printed as ``[secret]``.
"""
from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

from kb_chatbot.core.errors import SourceError

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
MASK = "[secret]"


def register(value: str) -> None:
    """Mask ``value`` in every log line from now on (values shorter than 6 characters are not
    masked: they would blank ordinary words)."""
    if value and len(value) >= 6:
        with _LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    with _LOCK:
        values = sorted(_SECRETS, key=len, reverse=True)
    for v in values:
        if v in text:
            text = text.replace(v, MASK)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites a record whose formatted message contains a registered secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _SECRETS:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it
            return True
        clean = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Put the filter on every handler of ``logger`` (default: the root logger)."""
    logger = logger or logging.getLogger()
    for h in logger.handlers:
        if not any(isinstance(f, RedactSecrets) for f in h.filters):
            h.addFilter(RedactSecrets())


def _check_private(path: Path, source: str) -> None:
    try:
        st = path.stat()
    except OSError as e:
        raise SourceError(f"source {source}: secrets file {path} cannot be read ({e.strerror or e}); "
                          "check sources[].secrets_file") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SourceError(f"source {source}: secrets file {path} is readable by other users "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`")


def read_secret(src: Any, key: str = "token") -> str:
    """The secret of source ``src`` (a SourceConfig); SourceError saying where to put it when
    there is none. The value never appears in the message."""
    env = src.secret_env()
    value = os.environ.get(env, "").strip()
    if not value and src.secrets_file is not None:
        import yaml

        path = Path(src.secrets_file)
        _check_private(path, src.name)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise SourceError(f"source {src.name}: secrets file {path} is not valid YAML "
                              f"({type(e).__name__}); fix it") from None
        entry = data.get(src.name) if isinstance(data, dict) else None
        if isinstance(entry, dict):
            entry = entry.get(key)
        value = str(entry).strip() if isinstance(entry, (str, int)) else ""
    if not value:
        where = f" or under {src.name}: {{{key}: ...}} in {src.secrets_file}" if src.secrets_file else ""
        raise SourceError(f"source {src.name}: no credentials: set the environment variable {env}{where} "
                          f"(see docs/connectors/{src.type}.md)")
    register(value)
    return value
