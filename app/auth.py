"""Who is asking: the users file (bcrypt hashes), trusted proxy headers, or nobody.

Three modes (``server.auth.mode``):

* ``users_file``: a YAML file of users with bcrypt password hashes; the chat page shows
  Gradio's login form and :meth:`UserDirectory.verify` checks the password.
* ``header``: a trusted reverse proxy (oauth2-proxy, an SSO gateway) has already logged the
  user in and passes the name, email and groups in request headers. The app then believes
  those headers blindly, so it must listen ONLY where the proxy can reach it (127.0.0.1 or a
  private socket) and the proxy must strip these headers from client requests.
* ``none``: everyone is anonymous and sees public documents only.

The users file::

    users:
      - username: alice
        email: alice@acme.example
        display_name: Alice Liddell
        groups: [engineering]
        password_hash: $2b$12$...        # `kb users add alice` writes this
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from kb_chatbot.core.errors import ConfigError
from kb_chatbot.core.settings import AuthConfig
from kb_chatbot.core.types import Principal

log = logging.getLogger(__name__)

#: Members of this group are admins, besides the names listed in ``server.auth.admins``.
ADMIN_GROUP = "admins"
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
#: A valid hash of a random password: unknown users cost as much time as wrong passwords,
#: so response times do not reveal which user names exist.
_DUMMY_HASH = "$2b$12$Znne0K5CfjEEad/G49b7buc1faiP8HXWjWluDan1Dl.HtpP01/pdy"


@dataclass(frozen=True)
class UserRecord:
    username: str
    password_hash: str = field(repr=False)
    email: str | None = None
    display_name: str | None = None
    groups: tuple[str, ...] = ()

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"username": self.username}
        if self.email:
            out["email"] = self.email
        if self.display_name:
            out["display_name"] = self.display_name
        out["groups"] = list(self.groups)
        out["password_hash"] = self.password_hash
        return out


def hash_password(password: str, *, rounds: int = 12) -> str:
    import bcrypt

    if not password:
        raise ValueError("the password must not be empty")
    if len(password.encode("utf-8")) > 72:
        raise ValueError("the password is longer than bcrypt's 72-byte limit")
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=rounds)).decode("ascii")


def verify_password(password: str, password_hash: str) -> bool:
    """True when ``password`` matches the bcrypt ``password_hash``; False for a malformed hash."""
    import bcrypt

    pw = password.encode("utf-8")
    if len(pw) > 72:  # bcrypt 5 raises instead of truncating
        return False
    try:
        return bcrypt.checkpw(pw, password_hash.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return False


def _entry_error(path: Path, i: int, entry: Any, msg: str) -> ConfigError:
    name = entry.get("username") if isinstance(entry, dict) else None
    where = f"entry {i + 1}" + (f" ({name!r})" if name else "")
    return ConfigError(f"{path}: users {where}: {msg}")


def _parse_groups(path: Path, i: int, entry: dict, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [g for g in raw.split(",")]
    if not isinstance(raw, list) or not all(isinstance(g, str) for g in raw):
        raise _entry_error(path, i, entry, "'groups' must be a list of group names")
    return tuple(g.strip() for g in raw if g.strip())


def load_users(path: str | Path) -> dict[str, UserRecord]:
    """Read the users file. Keys are lower-cased user names (logins are case-insensitive).

    Raises ConfigError naming the file and the bad entry.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"users file not found: {path} (create it with `kb users add NAME`, or set "
            "server.auth.users_file / server.auth.mode in kb.yaml)"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("users", []), list):
        raise ConfigError(f"{path}: expected a mapping with a 'users:' list")
    users: dict[str, UserRecord] = {}
    for i, entry in enumerate(data.get("users") or []):
        if not isinstance(entry, dict):
            raise _entry_error(path, i, entry, "must be a mapping with username and password_hash")
        unknown = set(entry) - {"username", "email", "display_name", "groups", "password_hash"}
        if unknown:
            raise _entry_error(path, i, entry, f"unknown field(s) {', '.join(sorted(unknown))}")
        name = entry.get("username")
        if not isinstance(name, str) or not USERNAME_RE.match(name):
            raise _entry_error(path, i, entry, "'username' is missing or has characters other "
                               "than letters, digits, '_', '.', '@', '-'")
        pw_hash = entry.get("password_hash")
        if not isinstance(pw_hash, str) or not pw_hash.startswith("$2"):
            raise _entry_error(path, i, entry, "'password_hash' must be a bcrypt hash "
                               f"(set one with `kb users add {name}`)")
        email = entry.get("email")
        if email is not None and (not isinstance(email, str) or "@" not in email):
            raise _entry_error(path, i, entry, f"'email' is not an email address: {email!r}")
        key = name.lower()
        if key in users:
            raise _entry_error(path, i, entry, f"user {name!r} appears twice")
        users[key] = UserRecord(
            username=name,
            password_hash=pw_hash,
            email=email.strip() if isinstance(email, str) else None,
            display_name=str(entry["display_name"]) if entry.get("display_name") else None,
            groups=_parse_groups(path, i, entry, entry.get("groups")),
        )
    return users


def save_users(path: str | Path, users: Mapping[str, UserRecord]) -> None:
    """Write the users file atomically (a temp file renamed over the old one)."""
    import os
    import tempfile

    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(
        {"users": [u.to_yaml() for u in users.values()]}, sort_keys=False, allow_unicode=True
    )
    header = "# Chat page logins. Add or change one with `kb users add NAME`; hashes are bcrypt.\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(header + body)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_admin(username: str, email: str | None, groups: tuple[str, ...], admins: list[str]) -> bool:
    names = {a.strip().lower() for a in admins}
    if username.lower() in names or (email and email.lower() in names):
        return True
    return ADMIN_GROUP in {g.lower() for g in groups}


class Backoff:
    """Consecutive failures per key (a user name, a client address) -> how long it must wait:
    nothing for the first ``free_failures``, then 2 s, 4 s, 8 s … at most ``lock_max_s``."""

    def __init__(self, free_failures: int, lock_max_s: float = 900.0, clock: Callable[[], float] = time.monotonic):
        self.free_failures = free_failures
        self.lock_max_s = lock_max_s
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (failures, locked until)
        self._lock = threading.Lock()

    def wait_for(self, key: str) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        with self._lock:
            _n, until = self._failures.get(key, (0, 0.0))
        return max(0.0, until - self.clock())

    def record(self, key: str, ok: bool) -> None:
        with self._lock:
            if ok:
                self._failures.pop(key, None)
                return
            n = self._failures.get(key, (0, 0.0))[0] + 1
            wait = 0.0 if n < self.free_failures else min(self.lock_max_s, 2.0 ** (n - self.free_failures + 1))
            self._failures[key] = (n, self.clock() + wait)
            if len(self._failures) > 100_000:  # bounded memory under a spray of keys
                now = self.clock()
                self._failures = {k: v for k, v in self._failures.items() if v[1] > now}


class UserDirectory:
    """The users file turned into password checks and Principals."""

    #: Consecutive failed logins of one user before each further try waits (doubling from
    #: 2 s, at most LOCK_MAX_S): guessing stays slow, and no bcrypt work is spent meanwhile.
    FREE_FAILURES = 5
    LOCK_MAX_S = 900.0

    def __init__(self, users: Mapping[str, UserRecord], admins: list[str] | None = None,
                 path: str | Path | None = None):
        self.users = {k.lower(): v for k, v in users.items()}
        self.admins = list(admins or [])
        self.path = Path(path) if path is not None else None
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()
        self._backoff = Backoff(self.FREE_FAILURES, self.LOCK_MAX_S)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, auth: AuthConfig) -> "UserDirectory":
        if auth.users_file is None:
            raise ConfigError("server.auth.users_file must be set when server.auth.mode is users_file")
        return cls(load_users(auth.users_file), auth.admins, path=auth.users_file)

    # --- the users file is re-read when it changes (removed users lose access at once) ----
    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat() if self.path is not None else None
        except OSError:
            return None
        return (st.st_mtime, st.st_size) if st is not None else None

    def refresh(self) -> None:
        """Reload the users file if it changed (checked at most once a second)."""
        if self.path is None or time.monotonic() - self._checked < 1.0:
            return
        self._checked = time.monotonic()
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            users = load_users(self.path)
        except ConfigError as e:  # a broken edit: nobody logs in until it is fixed (fail closed)
            log.error("users_file_unreadable path=%s error=%s; all logins refused", self.path, e)
            users = {}
        with self._lock:
            self.users = {k.lower(): v for k, v in users.items()}
            self._stamp = stamp
        log.info("users_file_reloaded path=%s users=%d", self.path, len(self.users))

    # --- logins ---------------------------------------------------------------------------
    async def verify_async(self, username: str, password: str) -> bool:
        """Gradio's ``auth=`` callable: bcrypt runs in a worker thread, never on the event loop
        (six wrong logins used to slow every other request 30x), behind a per-user backoff."""
        import asyncio

        return await asyncio.to_thread(self.verify, username, password)

    def locked_for(self, username: str) -> float:
        """Seconds until ``username`` may try again (0: now)."""
        return self._backoff.wait_for((username or "").strip().lower())

    def _record(self, key: str, ok: bool) -> None:
        self._backoff.record(key, ok)

    def verify(self, username: str, password: str) -> bool:
        """True when the password matches (and the user is not backing off)."""
        self.refresh()
        key = (username or "").strip().lower()
        if self.locked_for(key) > 0:
            log.warning("login_denied user=%r reason=backoff seconds=%.0f", username, self.locked_for(key))
            return False
        ok = self._check(username, password)
        self._record(key, ok)
        return ok

    def _check(self, username: str, password: str) -> bool:
        user = self.users.get((username or "").strip().lower())
        if user is None:
            verify_password(password or "", _DUMMY_HASH)  # same cost as a real check
            log.info("login_denied user=%r reason=unknown_user", username)
            return False
        ok = verify_password(password or "", user.password_hash)
        log.info("login_%s user=%s", "ok" if ok else "denied", user.username)
        return ok

    def principal_for(self, username: str | None) -> Principal:
        """The Principal of a logged-in user; anonymous when the name is unknown or empty
        (a user removed from the file since logging in is anonymous from the next request)."""
        self.refresh()
        user = self.users.get((username or "").strip().lower())
        if user is None:
            return Principal.anonymous()
        return Principal(
            username=user.username.lower(),
            email=user.email,
            groups=user.groups,
            display_name=user.display_name,
            is_admin=_is_admin(user.username, user.email, user.groups, self.admins),
        )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Starlette headers are case-insensitive already; a plain dict may not be.
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for k, v in headers.items():
            if k.lower() == lowered:
                value = v
                break
    value = (value or "").strip()
    return value or None


def from_trusted_proxy(headers: Mapping[str, str], auth: AuthConfig, client_host: str | None) -> bool:
    """True when the request came through the configured proxy: its address is in
    ``trusted_proxies``, or it carries ``proxy_secret``. Anything else is a client that may
    have written identity headers itself."""
    if auth.proxy_secret:
        given = _header(headers, auth.proxy_secret_header) or ""
        if hmac.compare_digest(given.encode(), auth.proxy_secret.encode()):
            return True
    if client_host and auth.trusted_proxies:
        try:
            addr = ipaddress.ip_address(client_host)
        except ValueError:
            return False
        return any(addr in ipaddress.ip_network(n, strict=False) for n in auth.trusted_proxies)
    return False


def principal_from_headers(headers: Mapping[str, str], auth: AuthConfig, client_host: str | None = None) -> Principal:
    """The Principal a trusted reverse proxy vouches for (``server.auth.mode: header``).

    The user header holds a login or an email; the groups header a comma-separated list.
    No user header, or a request that did not come through the trusted proxy, means
    anonymous (public documents only).
    """
    if not from_trusted_proxy(headers, auth, client_host):
        if _header(headers, auth.user_header) or _header(headers, auth.groups_header):
            log.warning("identity_headers_ignored client=%s reason=not_from_trusted_proxy", client_host)
        return Principal.anonymous()
    user = _header(headers, auth.user_header)
    email = _header(headers, auth.email_header)
    if user is None and email is None:
        return Principal.anonymous()
    if user is None:
        user = email.split("@", 1)[0]
    if email is None and "@" in user:
        email = user
    username = user.lower()
    if username == Principal.anonymous().username:
        return Principal.anonymous()  # nobody may claim the anonymous user's name
    groups = tuple(
        g.strip() for g in re.split(r"[,;]", _header(headers, auth.groups_header) or "") if g.strip()
    )
    return Principal(
        username=username,
        email=email.lower() if email else None,
        groups=groups,
        is_admin=_is_admin(username, email, groups, auth.admins),
    )


def header_user(auth: AuthConfig):
    """A FastAPI dependency for Gradio's ``auth_dependency``: requests without the user header
    get 401 rather than a page, so a mis-configured proxy fails loudly."""

    def dependency(request) -> str | None:
        client = getattr(getattr(request, "client", None), "host", None)
        if not from_trusted_proxy(request.headers, auth, client):
            return None
        return _header(request.headers, auth.user_header) or _header(request.headers, auth.email_header)

    return dependency
