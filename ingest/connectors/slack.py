"""Slack workspace export (folder or .zip) to Documents: one per thread, one per channel window.

Export layout (Slack "standard export"): ``channels.json`` (public channels), ``groups.json``
(private channels), ``mpims.json`` (group DMs), ``dms.json`` (DMs), ``users.json`` and one
folder per conversation with ``YYYY-MM-DD.json`` day files. Channel and group-DM folders are
named by the conversation's name, DM folders by its id. A zip may hold the export under one
top-level folder. Zip members are read in place.

What becomes a Document:

- a thread (parent ``thread_ts == ts`` plus every reply carrying that ``thread_ts``, wherever
  its day file is) is one document, id ``{source}:{channel_id}:{thread_ts}``;
- every other message is grouped per conversation and UTC time window of ``window_hours``
  (24 = one calendar day), id ``{source}:{channel_id}:{YYYY-MM-DD}`` (or ``...THH`` for
  windows shorter than a day);
- a reply broadcast to the channel (``thread_broadcast``) appears once, inside its thread.

Each message is one line ``Name (YYYY-MM-DD HH:MM): text`` and one Section (``slack_ts`` =
the message ts), so chunks split at message boundaries and cite a message.

Dropped as noise: system subtypes (joins, leaves, topic/purpose/name changes, archive,
pins, integrations added), every ``bot_message`` and every message from a ``users.json``
user with ``is_bot``; tombstoned, hidden and deleted messages; messages left empty after
rendering. Edited messages hold their final text in the export and are kept as such.

ACL: public channels ``{"public"}``. Private channels, group DMs and DMs: the conversation's
``members``, each as ``user:<email>`` (when users.json has one) and always ``user:slack:<id>``.
A non-public conversation without a members list gets an empty ACL (nobody) and a warning.
A folder of day files that no listing names has unknown readers: it is skipped and reported.
"""
from __future__ import annotations

import json
import logging
import math
import re
import zipfile
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from kb_chatbot.core.errors import SourceError
from kb_chatbot.core.types import PUBLIC, Document, IngestFailure, Section, user_principal
from kb_chatbot.ingest.connectors.slack_mrkdwn import render_blocks, render_mrkdwn

log = logging.getLogger(__name__)

DAY_FILE = re.compile(r"^\d{4}-\d{2}-\d{2}\.json$")
LISTINGS = (("channels.json", "public"), ("groups.json", "private"), ("mpims.json", "mpim"), ("dms.json", "dm"))

#: Subtypes that are system notices or integrations, never knowledge.
NOISE_SUBTYPES = frozenset({
    "bot_message", "bot_add", "bot_remove", "bot_enable", "bot_disable",
    "channel_join", "channel_leave", "group_join", "group_leave",
    "channel_topic", "channel_purpose", "channel_name", "group_topic", "group_purpose", "group_name",
    "channel_archive", "channel_unarchive", "group_archive", "group_unarchive",
    "channel_convert_to_private", "channel_convert_to_public", "channel_posting_permissions",
    "pinned_item", "unpinned_item", "reminder_add", "reminder_delete", "joiner_notification",
    "joiner_notification_for_inviter", "slackbot_response", "tombstone", "app_conversation_leave",
    "sh_room_created", "huddle_thread",
})
TOMBSTONE_TEXT = "This message was deleted."


@dataclass
class _Conversation:
    id: str
    name: str  # channel/group-DM name; the id for DMs
    kind: str  # public | private | mpim | dm
    members: list[str] | None


@dataclass
class _Bucket:
    """The messages of one future Document."""

    key: str  # thread_ts, or the window label
    thread_ts: str | None
    messages: list[dict[str, Any]] = field(default_factory=list)


def _ts_float(ts: Any) -> float:
    """Seconds since the epoch from a Slack ts; 0.0 for anything that is not a finite time
    within datetime's range ("1e400", "nan" and garbage must not fail the whole source)."""
    try:
        value = float(ts)
    except (TypeError, ValueError):
        return 0.0
    if not math.isfinite(value) or not 0.0 <= value < 253402300800.0:  # up to year 9999
        return 0.0
    return value


def _utc(ts: Any) -> datetime:
    return datetime.fromtimestamp(_ts_float(ts), tz=timezone.utc)


class _Export:
    """Read access to an export folder or zip, with every conversation's day files indexed
    once (a zip's member list is scanned one time, not once per conversation)."""

    def __init__(self, path: Path):
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        if path.is_dir():
            names = [p.relative_to(path).as_posix() for p in path.iterdir() if p.is_file()]
            names += [f"{d.name}/{f.name}" for d in path.iterdir() if d.is_dir()
                      for f in d.iterdir() if DAY_FILE.match(f.name)]
        else:
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as e:
                raise SourceError(f"{path}: not a Slack export folder or a readable .zip ({e})") from None
            names = [n for n in self._zip.namelist() if not n.endswith("/")]
        self.prefix = self._find_prefix(names)
        self.days: dict[str, list[str]] = defaultdict(list)  # folder -> sorted day file names
        for name in names:
            if not name.startswith(self.prefix):
                continue
            parts = name[len(self.prefix):].split("/")
            if len(parts) == 2 and DAY_FILE.match(parts[1]):
                self.days[parts[0]].append(parts[1])
        for files in self.days.values():
            files.sort()

    @staticmethod
    def _find_prefix(names: list[str]) -> str:
        """Exports are often zipped (or unzipped) inside one extra top-level folder."""
        top = {n for n in names if "/" not in n}
        if top & {n for n, _ in LISTINGS} or "users.json" in top:
            return ""
        for n in names:
            head, _, rest = n.partition("/")
            if rest in {name for name, _ in LISTINGS} and not head.startswith(("__MACOSX", ".")):
                return head + "/"
        return ""

    def read_text(self, rel: str) -> str | None:
        """Text of a file in the export, None when absent (OSError when unreadable)."""
        if self._zip is not None:
            try:
                return self._zip.read(self.prefix + rel).decode("utf-8")
            except KeyError:
                return None
        p = self.path / rel
        return p.read_text(encoding="utf-8") if p.is_file() else None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _find_subfolder_export(path: Path) -> Path:
    """An unzipped folder holding the export one level down is read from there."""
    if path.is_dir() and not any((path / n).is_file() for n, _ in LISTINGS):
        subdirs = [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(("__MACOSX", "."))]
        if len(subdirs) == 1 and any((subdirs[0] / n).is_file() for n, _ in LISTINGS):
            return subdirs[0]
    return path


@contextmanager
def _open_export(path: Path) -> Iterator[_Export]:
    export = _Export(_find_subfolder_export(path))
    try:
        yield export
    finally:
        export.close()


class SlackConnector:
    """Reads a Slack export; see the module docstring for what becomes a Document."""

    source_type = "slack"

    def __init__(self, path: str | Path, *, source: str = "slack", base_url: str | None = None,
                 window_hours: int = 24):
        self.path = Path(path).expanduser()
        self.source = source
        self.base_url = (base_url or "https://slack.com/").rstrip("/") + "/"
        if window_hours < 1:
            raise ValueError(f"window_hours must be at least 1, got {window_hours}")
        self.window_hours = window_hours
        self.failures: list[IngestFailure] = []
        #: Read, nothing to index (a missing users.json, a listed conversation without day files).
        self.skipped: list[IngestFailure] = []
        if not self.path.exists():
            raise SourceError(f"{self.path}: Slack export not found (a folder or .zip is expected)")
        with _open_export(self.path) as export:
            if export.read_text("channels.json") is None and not export.days:
                raise SourceError(
                    f"{self.path}: not a Slack export (no channels.json and no <channel>/<date>.json "
                    "folders); export the workspace from Slack's admin page and point at the folder or .zip"
                )

    def expected_count(self) -> int | None:
        """Unknown until every day file is read (threads span files), so None."""
        return None

    # --- reading the export -------------------------------------------------------------

    def _read_json(self, export: _Export, rel: str) -> Any:
        """Parsed JSON of a listing file, None if absent; a corrupt one stops the source."""
        try:
            text = export.read_text(rel)
            return None if text is None else json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise SourceError(
                f"{self.path}: {rel} is not valid JSON ({e}); re-export the workspace or fix the file"
            ) from None

    def _load_users(self, export: _Export) -> tuple[dict[str, str], dict[str, str], set[str]]:
        """(user id -> display name, user id -> email, ids of bots) from users.json."""
        data = self._read_json(export, "users.json")
        names: dict[str, str] = {}
        emails: dict[str, str] = {}
        bots: set[str] = set()
        if data is None:
            log.warning("slack users.json missing path=%s: user ids are kept as raw ids", self.path)
            self.skipped.append(IngestFailure(
                path="users.json", report_only=True,
                reason="missing: authors are shown as raw user ids and private conversations are readable "
                       "only by those ids (no emails); include users.json in the export"))
            return names, emails, bots
        if not isinstance(data, list):
            raise SourceError(f"{self.path}: users.json must be a list of users")
        for u in data:
            if not isinstance(u, dict) or not u.get("id"):
                continue
            uid = str(u["id"])
            profile = u.get("profile") or {}
            name = (profile.get("display_name") or profile.get("real_name") or u.get("real_name")
                    or u.get("name") or uid)
            names[uid] = str(name).strip() or uid
            if profile.get("email"):
                emails[uid] = str(profile["email"])
            if u.get("is_bot") or uid == "USLACKBOT":
                bots.add(uid)
        return names, emails, bots

    def _load_conversations(self, export: _Export) -> list[_Conversation]:
        by_id: dict[str, _Conversation] = {}
        for filename, kind in LISTINGS:
            data = self._read_json(export, filename)
            if data is None:
                continue
            if not isinstance(data, list):
                raise SourceError(f"{self.path}: {filename} must be a list of conversations")
            for c in data:
                if not isinstance(c, dict) or not c.get("id"):
                    continue
                conv_kind = kind
                if kind == "public" and (c.get("is_private") or c.get("is_mpim")):
                    conv_kind = "mpim" if c.get("is_mpim") else "private"  # never widen access
                members = c.get("members")
                conv = _Conversation(
                    id=str(c["id"]), name=str(c.get("name") or c["id"]), kind=conv_kind,
                    members=[str(m) for m in members] if isinstance(members, list) else None,
                )
                if conv.id not in by_id or by_id[conv.id].kind == "public":
                    by_id[conv.id] = conv
        return list(by_id.values())

    def _read_conversation(self, export: _Export, folder: str, conv: _Conversation) -> list[dict[str, Any]]:
        """All messages of a conversation, edits applied and deletions removed, oldest first."""
        by_ts: dict[str, dict[str, Any]] = {}
        for day in export.days[folder]:
            rel = f"{folder}/{day}"
            try:
                data = json.loads(export.read_text(rel) or "")
                if not isinstance(data, list):
                    raise ValueError("expected a list of messages")
            except (ValueError, UnicodeDecodeError, OSError) as e:
                reason = (f"unreadable day file ({e}); channel_id={conv.id}: its threads may span "
                          "other days, so keep this channel's previously indexed documents")
                log.warning("slack day file skipped path=%s channel_id=%s reason=%s", rel, conv.id, e)
                self.failures.append(IngestFailure(path=rel, reason=reason, doc_id=None))
                continue
            for m in data:
                if not isinstance(m, dict):
                    continue
                subtype = m.get("subtype")
                if subtype == "message_changed" and isinstance(m.get("message"), dict):
                    m = m["message"]
                elif subtype == "message_deleted":
                    by_ts.pop(str(m.get("deleted_ts")), None)
                    continue
                if m.get("ts") is None:
                    continue
                by_ts[str(m["ts"])] = m
        return sorted(by_ts.values(), key=lambda m: _ts_float(m["ts"]))

    # --- building documents -------------------------------------------------------------

    def documents(self) -> Iterator[Document]:
        self.failures.clear()
        self.skipped.clear()
        with _open_export(self.path) as export:
            names, emails, bots = self._load_users(export)
            convs = self._load_conversations(export)
            # <#C123> without a label is named from public channels only: a private channel's
            # name is not shown to people outside it
            channel_names = {c.id: c.name for c in convs if c.kind == "public"}
            folders = {c.id: c.name if c.name in export.days else c.id for c in convs}
            claims: defaultdict[str, list[str]] = defaultdict(list)
            for conv in convs:
                claims[folders[conv.id]].append(conv.id)
            listed: set[str] = set()
            for conv in convs:
                folder = folders[conv.id]
                if folder not in export.days:
                    log.info("slack conversation without day files channel_id=%s name=%s", conv.id, conv.name)
                    self.skipped.append(IngestFailure(
                        path=folder, report_only=True,
                        reason=f"listed in the export's {conv.kind} conversations, but it has no folder of day "
                               "files: nothing indexed (no messages in the export's date range, or the folder "
                               "was lost)"))
                    continue
                listed.add(folder)
                if len(claims[folder]) > 1:  # whose members may read it is ambiguous: skip it
                    if claims[folder][0] == conv.id:
                        reason = f"folder claimed by several conversations ({', '.join(claims[folder])}): not indexed"
                        log.warning("slack ambiguous folder skipped folder=%s", folder)
                        self.failures.append(IngestFailure(path=folder, reason=reason, doc_id=None))
                    continue
                messages = self._read_conversation(export, folder, conv)
                acl = self._acl(conv, emails)
                label = self._label(conv, names)
                yield from self._conversation_documents(conv, label, acl, messages, names, bots, channel_names)
            for folder in sorted(set(export.days) - listed):
                reason = ("day files of a conversation that channels.json, groups.json, mpims.json "
                          "and dms.json do not list: its readers are unknown, so it was not indexed")
                log.warning("slack unlisted conversation skipped folder=%s", folder)
                self.failures.append(IngestFailure(path=folder, reason=reason, doc_id=None))

    def _acl(self, conv: _Conversation, emails: Mapping[str, str]) -> frozenset[str]:
        if conv.kind == "public":
            return frozenset({PUBLIC})
        if not conv.members:
            log.warning("slack conversation without members channel_id=%s kind=%s: readable by nobody",
                        conv.id, conv.kind)
            return frozenset()
        acl: set[str] = set()
        for uid in conv.members:
            acl.add(user_principal(f"slack:{uid}"))
            if uid in emails:
                acl.add(user_principal(emails[uid]))
        return frozenset(acl)

    @staticmethod
    def _label(conv: _Conversation, names: Mapping[str, str]) -> str:
        if conv.kind in ("public", "private"):
            return f"#{conv.name}"
        people = list(dict.fromkeys(names.get(u, u) for u in conv.members or []))
        who = ", ".join(people) if people else conv.name
        return f"DM {who}" if conv.kind == "dm" else f"Group DM {who}"

    def _conversation_documents(
        self, conv: _Conversation, label: str, acl: frozenset[str], messages: list[dict[str, Any]],
        names: Mapping[str, str], bots: set[str], channel_names: Mapping[str, str],
    ) -> Iterator[Document]:
        kept = [(m, t) for m in messages if (t := self._message_text(m, names, bots, channel_names))]
        # a thread is a thread_ts with at least one reply; a lone parent is an ordinary message
        replies = {str(m["thread_ts"]) for m, _ in kept if m.get("thread_ts") and m["thread_ts"] != m["ts"]}
        buckets: dict[str, _Bucket] = {}
        for m, text in kept:
            thread_ts = str(m["thread_ts"]) if m.get("thread_ts") else None
            if thread_ts in replies:
                bucket = buckets.setdefault(thread_ts, _Bucket(key=thread_ts, thread_ts=thread_ts))
            else:
                key = self._window_key(m["ts"])
                bucket = buckets.setdefault("w" + key, _Bucket(key=key, thread_ts=None))
            bucket.messages.append({**m, "_text": text})
        for bucket in sorted(buckets.values(), key=lambda b: min(_ts_float(m["ts"]) for m in b.messages)):
            yield self._document(conv, label, acl, bucket, names)

    def _window_key(self, ts: Any) -> str:
        width = self.window_hours * 3600
        start = datetime.fromtimestamp(_ts_float(ts) // width * width, tz=timezone.utc)
        return start.strftime("%Y-%m-%d") if self.window_hours % 24 == 0 else start.strftime("%Y-%m-%dT%H")

    def _message_text(self, m: Mapping[str, Any], names: Mapping[str, str], bots: set[str],
                      channel_names: Mapping[str, str]) -> str:
        """Rendered text of a message worth indexing, or '' for noise."""
        subtype = m.get("subtype")
        if m.get("type", "message") != "message" or m.get("hidden"):
            return ""
        if subtype in NOISE_SUBTYPES or str(subtype or "").endswith(("_join", "_leave")):
            return ""
        if m.get("user") in bots or (m.get("bot_id") and not m.get("user")):
            return ""
        raw = str(m.get("text") or "")
        if raw.strip() == TOMBSTONE_TEXT and not m.get("user"):
            return ""
        text = render_mrkdwn(raw, names, channel_names).strip()
        if not text and m.get("blocks"):
            text = render_blocks(m["blocks"], names, channel_names).strip()
        if not text:  # a shared message or unfurl with no own text: use the attachment's
            for a in m.get("attachments") or []:
                if isinstance(a, dict):
                    body = a.get("text") or a.get("fallback") or a.get("title") or ""
                    if body:
                        text = render_mrkdwn(str(body), names, channel_names).strip()
                        break
        files = [f for f in m.get("files") or [] if isinstance(f, dict) and (f.get("title") or f.get("name"))]
        file_notes = " ".join(f"[file: {f.get('title') or f.get('name')}]" for f in files)
        return " ".join(p for p in (text, file_notes) if p)

    def _author(self, m: Mapping[str, Any], names: Mapping[str, str]) -> str:
        comment = m.get("comment") if isinstance(m.get("comment"), dict) else {}
        uid = m.get("user") or comment.get("user")  # legacy file_comment: the commenter
        if uid and uid in names:
            return names[uid]
        profile = m.get("user_profile") or {}
        return str(profile.get("display_name") or profile.get("real_name") or profile.get("name")
                   or m.get("username") or uid or "unknown")

    def _document(self, conv: _Conversation, label: str, acl: frozenset[str], bucket: _Bucket,
                  names: Mapping[str, str]) -> Document:
        msgs = bucket.messages
        if bucket.thread_ts is not None:  # parent first, then replies in time order
            msgs = sorted(msgs, key=lambda m: (str(m["ts"]) != bucket.thread_ts, _ts_float(m["ts"])))
        lines: list[str] = []
        sections: list[Section] = []
        pos = 0
        updated = 0.0
        for m in msgs:
            line = f"{self._author(m, names)} ({_utc(m['ts']).strftime('%Y-%m-%d %H:%M')}): {m['_text']}"
            sections.append(Section(start=pos, end=pos + len(line), slack_ts=str(m["ts"])))
            lines.append(line)
            pos += len(line) + 1
            edited = m.get("edited") if isinstance(m.get("edited"), dict) else {}
            updated = max(updated, _ts_float(m["ts"]), _ts_float(edited.get("ts")))
        if bucket.thread_ts is not None:
            first = msgs[0]["_text"].splitlines()[0] if msgs[0]["_text"] else ""
            words = first.split()
            gist = " ".join(words[:10]) + (" …" if len(words) > 10 else "")
            title = f"{label} thread: {gist[:100]}"
            link_ts = bucket.thread_ts
        else:
            when = bucket.key if "T" not in bucket.key else bucket.key.replace("T", " ") + ":00 UTC"
            title = f"{label} {when}"
            link_ts = str(msgs[0]["ts"])
        return Document(
            id=f"{self.source}:{conv.id}:{bucket.key}",
            source=self.source,
            source_type="slack",
            title=title,
            uri=f"{self.base_url}archives/{conv.id}/p{link_ts.replace('.', '')}",
            updated_at=_utc(updated),
            text="\n".join(lines),
            acl=acl,
            sections=tuple(sections),
            metadata={
                "channel": conv.name,
                "channel_id": conv.id,
                "conversation_type": conv.kind,
                "thread_ts": bucket.thread_ts,
                "message_count": len(msgs),
            },
        )
