"""Slack through the Web API (slack_sdk): the conversations a bot token can read, kept in step
by watermark, with each conversation's members as its readers.

Documents are made exactly as from an export (:mod:`kb_chatbot.ingest.connectors.slack`): one per thread,
one per channel window, a line and a Section per message, same ids.

Each sync:

- ``auth.test`` (the token works), ``users.list`` (names and emails: readers are
  ``user:<email>``), ``conversations.list`` (the types in ``slack_types``; public and
  private channels by default, DMs and group DMs opt-in; archived ones included so their
  documents can be removed);
- per private conversation ``conversations.members``: its readers; a member who left loses
  access at this sync, with no message changed (an ACL update, nothing re-embedded);
- per conversation ``conversations.history`` from ``min(newest message seen,
  now - slack_lookback_days)``, floored to a window: new messages, edits and deletions in that
  range reach the index; a thread parent whose ``reply_count``/``latest_reply`` (or its own
  edit) changed since the last sync gets ``conversations.replies``, so a late reply to a thread
  of the last ``slack_lookback_days`` updates that thread; a reply broadcast to the channel
  re-reads its thread however old;
- an archived conversation, one the bot left or can no longer see: its documents are removed.

HTTP 429 is retried after the ``Retry-After`` the API sends (slack_sdk's
``RateLimitErrorRetryHandler``), 5xx and connection errors with back-off, up to
``api_retries`` times. A rejected token (``invalid_auth``, ``token_expired``, ...) fails the
source with the fix, and its indexed documents stay as they were. Not mirrored: the reply to
an edited reply of a thread older than the lookback (a full re-read, ``kb reindex --full``,
picks it up), files' contents (their names are kept), Slack Connect guests' access beyond
conversation membership.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping

from kb_chatbot.core.errors import SourceError
from kb_chatbot.core.secrets import read_secret
from kb_chatbot.core.types import Document
from kb_chatbot.ingest.connectors.live import LiveConnector
from kb_chatbot.ingest.connectors.slack import SlackConnector, _Conversation, _ts_float

log = logging.getLogger(__name__)

#: Errors that mean the token, not the request, is wrong: the whole source fails.
TOKEN_ERRORS = frozenset({"invalid_auth", "not_authed", "token_expired", "token_revoked", "account_inactive",
                          "no_permission", "org_login_required", "ekm_access_denied", "team_access_not_granted"})
_KIND = {"public_channel": "public", "private_channel": "private", "mpim": "mpim", "im": "dm"}
PAGE = 200


class SlackApiConnector(LiveConnector, SlackConnector):
    """See the module docstring."""

    source_type = "slack"

    def __init__(self, src: Any, *, client: Any = None):
        LiveConnector.__init__(self, src)
        # SlackConnector's document builders need only these (no export folder here)
        self.window_hours = src.slack_window_hours
        self.base_url = (src.base_url or "https://slack.com/").rstrip("/") + "/"
        self._base_from_config = bool(src.base_url)
        self._client = client

    # --- the API ------------------------------------------------------------------------

    def client(self) -> Any:
        if self._client is None:
            from slack_sdk import WebClient
            from slack_sdk.http_retry.builtin_handlers import (
                ConnectionErrorRetryHandler, RateLimitErrorRetryHandler, ServerErrorRetryHandler)

            kwargs: dict[str, Any] = {"token": read_secret(self.src), "timeout": int(self.src.api_timeout_s)}
            if self.src.url:
                kwargs["base_url"] = self.src.url.rstrip("/") + "/"
            n = self.src.api_retries
            kwargs["retry_handlers"] = [ConnectionErrorRetryHandler(max_retry_count=n),
                                        RateLimitErrorRetryHandler(max_retry_count=n),
                                        ServerErrorRetryHandler(max_retry_count=n)]
            self._client = WebClient(**kwargs)
        return self._client

    def api(self, method: str, **params: Any) -> dict[str, Any]:
        """One Web API call (counted); a token problem or a missing scope is a SourceError."""
        from slack_sdk.errors import SlackApiError, SlackRequestError

        self.count(method)
        try:
            resp = self.client().api_call(method, http_verb="POST", data=params)
            return dict(resp.data) if isinstance(resp.data, dict) else {}
        except SlackApiError as e:
            data = e.response.data if isinstance(e.response.data, dict) else {}
            err = str(data.get("error") or e.response.status_code)
            if err in TOKEN_ERRORS:
                raise SourceError(
                    f"source {self.source}: Slack rejected the token ({err}); create a new bot token "
                    f"(docs/connectors/slack-api.md) and set it in {self.src.secret_env()}") from None
            if err == "missing_scope":
                raise SourceError(
                    f"source {self.source}: the Slack token lacks the scope {data.get('needed') or '?'} "
                    f"for {method}; add it to the app (docs/connectors/slack-api.md) and reinstall it") from None
            if e.response.status_code == 429:
                raise SourceError(f"source {self.source}: Slack kept rate-limiting {method} after "
                                  f"{self.src.api_retries} retries; run the sync later") from None
            raise _CallError(method, err) from None
        except (SlackRequestError, OSError) as e:
            raise SourceError(f"source {self.source}: cannot reach Slack ({type(e).__name__}: {e}); "
                              "check the network or sources[].url") from None

    def pages(self, method: str, key: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a cursor-paginated list method."""
        cursor = ""
        while True:
            data = self.api(method, **params, limit=PAGE, **({"cursor": cursor} if cursor else {}))
            yield from (x for x in data.get(key) or [] if isinstance(x, (dict, str)))
            cursor = str((data.get("response_metadata") or {}).get("next_cursor") or "")
            if not cursor:
                return

    # --- one sync -----------------------------------------------------------------------

    def _read(self) -> Iterator[Document]:
        auth = self.api("auth.test")
        if not self._base_from_config and auth.get("url"):
            self.base_url = str(auth["url"]).rstrip("/") + "/"
        names, emails, bots = self._users()
        convs = self._conversations()
        channel_names = {c["id"]: str(c.get("name") or c["id"]) for c in convs if _kind(c) == "public"}
        known: dict[str, Any] = self._state.get("conversations") or {}
        self._state = {"conversations": {}}
        read: set[str] = set()
        for c in convs:
            cid = str(c["id"])
            if c.get("is_archived"):
                n = self.remove_prefix(f"{self.source}:{cid}:")
                log.info("slack conversation archived channel_id=%s removed=%d", cid, n)
                continue
            kind = _kind(c)
            if kind in ("public", "private") and c.get("is_member") is False:
                self.remove_prefix(f"{self.source}:{cid}:")
                if kind == "public":
                    self.skip(cid, f"#{c.get('name')}: the bot is not in this channel; invite it "
                                   "(/invite @bot) to index it")
                continue
            try:
                members = None if kind == "public" else [str(m) for m in self.pages("conversations.members", "members",
                                                                                    channel=cid)]
                if kind == "dm" and c.get("user"):
                    members = sorted(set(members or []) | {str(c["user"])})
                conv = _Conversation(id=cid, name=str(c.get("name") or cid), kind=kind, members=members)
                acl = self._acl(conv, emails)
                yield from self._conversation(conv, acl, known.get(cid) or {}, names, bots, channel_names)
                read.add(cid)
            except _CallError as e:
                # its documents keep their indexed version; sync sees the channel id in the reason
                self.fail(f"#{c.get('name') or cid}", f"{e}; channel_id={cid}: its indexed documents are kept", None)
                if cid in known:
                    self._state["conversations"][cid] = known[cid]
        listed = {str(c["id"]) for c in convs if not c.get("is_archived")}
        for doc_id in list(self._indexed):  # a conversation that is gone, or no longer visible
            cid = doc_id[len(self.source) + 1:].split(":", 1)[0]
            if cid not in listed:
                self.remove(doc_id)

    def _users(self) -> tuple[dict[str, str], dict[str, str], set[str]]:
        names: dict[str, str] = {}
        emails: dict[str, str] = {}
        bots: set[str] = set()
        for u in self.pages("users.list", "members"):
            if not isinstance(u, dict) or not u.get("id"):
                continue
            uid = str(u["id"])
            profile = u.get("profile") or {}
            names[uid] = str(profile.get("display_name") or profile.get("real_name") or u.get("real_name")
                             or u.get("name") or uid).strip() or uid
            if profile.get("email") and not u.get("deleted"):
                emails[uid] = str(profile["email"])
            if u.get("is_bot") or uid == "USLACKBOT":
                bots.add(uid)
        return names, emails, bots

    def _conversations(self) -> list[dict[str, Any]]:
        types = ",".join(self.src.slack_types)
        return [c for c in self.pages("conversations.list", "channels", types=types, exclude_archived=False)
                if isinstance(c, dict) and c.get("id")]

    def _conversation(self, conv: _Conversation, acl: frozenset[str], known: Mapping[str, Any],
                      names: Mapping[str, str], bots: set[str], channel_names: Mapping[str, str]) -> Iterator[Document]:
        prefix = f"{self.source}:{conv.id}:"
        width = self.window_hours * 3600
        full = self.full_read or not known
        oldest = 0.0 if full else min(float(known.get("latest") or 0.0),
                                      time.time() - self.src.slack_lookback_days * 86400)
        oldest = oldest // width * width
        history = [m for m in self.pages("conversations.history", "messages", channel=conv.id,
                                         **({"oldest": f"{oldest:.6f}"} if oldest > 0 else {}))
                   if isinstance(m, dict) and m.get("ts")]
        old_threads: Mapping[str, Any] = known.get("threads") or {}
        threads: dict[str, list[Any]] = {}
        refetch: set[str] = set()
        for m in history:
            ts, parent = str(m["ts"]), str(m.get("thread_ts") or "")
            if parent == ts and int(m.get("reply_count") or 0) > 0:
                mark = [int(m.get("reply_count") or 0), str(m.get("latest_reply") or ""),
                        str((m.get("edited") or {}).get("ts") or "")]
                threads[ts] = mark
                if full or old_threads.get(ts) != mark:
                    refetch.add(ts)
        for m in history:  # a reply broadcast to the channel, of a thread started before `oldest`
            parent = str(m.get("thread_ts") or "")
            if parent and parent != str(m["ts"]) and parent not in threads:
                refetch.add(parent)
        # thread messages come from conversations.replies, and only for the threads re-read
        messages = {str(m["ts"]): m for m in history
                    if not m.get("thread_ts") or str(m["thread_ts"]) in refetch
                    or (str(m["thread_ts"]) == str(m["ts"]) and str(m["ts"]) not in threads)}
        for parent in sorted(refetch):
            try:
                for r in self.pages("conversations.replies", "messages", channel=conv.id, ts=parent):
                    if isinstance(r, dict) and r.get("ts"):
                        messages[str(r["ts"])] = r
            except _CallError as e:
                if e.error != "thread_not_found":
                    raise
        ordered = sorted(messages.values(), key=lambda m: _ts_float(m["ts"]))
        docs = list(self._conversation_documents(conv, self._label(conv, names), acl, ordered, names, bots,
                                                 channel_names))
        produced = {d.id for d in docs}
        yield from docs
        for doc_id in [d for d in self._indexed if d.startswith(prefix) and d not in produced]:
            key = doc_id[len(prefix):]
            if full:
                continue  # a full read: sync removes what was not yielded
            scanned = (_ts_float(key) >= oldest and key not in threads) if "." in key else _window_start(key) >= oldest
            if scanned:
                self.remove(doc_id)  # deleted at the source (or left empty by deletions)
            else:
                self.set_acl(doc_id, acl)  # not re-read: only its readers may have changed
        latest = max([_ts_float(m["ts"]) for m in history] + [float(known.get("latest") or 0.0)])
        horizon = time.time() - (self.src.slack_lookback_days + 1) * 86400
        kept = {ts: v for ts, v in old_threads.items() if _ts_float(ts) >= horizon and ts not in threads}
        self._state["conversations"][conv.id] = {"latest": latest,
                                                 "threads": {**kept, **{t: v for t, v in threads.items()
                                                                       if _ts_float(t) >= horizon}}}


class _CallError(Exception):
    """A Slack API error about one call (not the token): the item fails, the source goes on."""

    def __init__(self, method: str, error: str):
        super().__init__(f"Slack {method} failed: {error}")
        self.error = error


def _kind(c: Mapping[str, Any]) -> str:
    if c.get("is_im"):
        return "dm"
    if c.get("is_mpim"):
        return "mpim"
    if c.get("is_private") or c.get("is_group"):
        return "private"
    return "public"


def _window_start(label: str) -> float:
    fmt = "%Y-%m-%dT%H" if "T" in label else "%Y-%m-%d"
    try:
        return datetime.strptime(label, fmt).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return 0.0

