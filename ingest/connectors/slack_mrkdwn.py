"""Slack message markup to plain text: mrkdwn control sequences and rich-text blocks.

Slack stores message text with three kinds of escapes (api.slack.com/reference/surfaces/formatting):

- control sequences in angle brackets: ``<@U123>`` (user), ``<#C123|general>`` (channel),
  ``<!here>`` (special mention), ``<!subteam^S1|@team>`` (user group),
  ``<!date^1392734382^{date}|Feb 18>`` (date with fallback), ``<https://x|label>`` (link);
- ``&amp;``, ``&lt;``, ``&gt;`` for the three characters that markup uses;
- everything else is literal text (``*bold*`` and friends are left as typed: they read fine).

Rendering turns a user id into ``@Name`` (the caller's lookup; unknown ids stay raw),
a channel into ``#name``, a labelled link into ``label (url)`` and unescapes the rest.
Names inserted from the lookups are never unescaped again, so a name containing ``&lt;``
stays as written.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

# A control sequence cannot contain '<' or '>' (Slack escapes them in text).
_CONTROL = re.compile(r"<([^<>]*)>")
_SPECIAL = {"here": "@here", "channel": "@channel", "everyone": "@everyone", "group": "@group"}
_SCHEMES = ("mailto:", "tel:", "https://", "http://")


def unescape(text: str) -> str:
    """Undo Slack's three escapes; ``&amp;`` last so ``&amp;lt;`` becomes the literal ``&lt;``."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _render_control(body: str, users: Mapping[str, str], channels: Mapping[str, str]) -> str:
    target, sep, label = body.partition("|")
    label = unescape(label) if sep else ""
    if target.startswith("@"):  # user: <@U123> or <@U123|name>
        uid = target[1:]
        return "@" + (users.get(uid) or label or uid)
    if target.startswith("#"):  # channel: <#C123> or <#C123|general>
        cid = target[1:]
        return "#" + (channels.get(cid) or label or cid)
    if target.startswith("!"):
        command = target[1:]
        if command in _SPECIAL:
            return _SPECIAL[command]
        if label:  # <!subteam^S1|@team>, <!date^...|fallback>
            return label
        if command.startswith("subteam^"):
            return "@" + command.split("^", 1)[1]
        return "@" + command
    url = unescape(target)
    if not label or label == url:
        return url
    bare = url
    for scheme in _SCHEMES:
        if bare.startswith(scheme):
            bare = bare[len(scheme):]
            break
    if label in (bare, bare.rstrip("/")):
        return label  # <mailto:a@b.c|a@b.c>, <tel:123|123>: the label already says it
    return f"{label} ({url})"


def render_mrkdwn(
    text: str, users: Mapping[str, str] | None = None, channels: Mapping[str, str] | None = None
) -> str:
    """Slack mrkdwn ``text`` as plain text.

    ``users`` maps user ids to display names, ``channels`` channel ids to names.

    >>> render_mrkdwn("<@U1> see <#C2|general> &amp; <https://x.example|docs>", {"U1": "Ann"})
    '@Ann see #general & docs (https://x.example)'
    """
    users = users or {}
    channels = channels or {}
    out: list[str] = []
    pos = 0
    for m in _CONTROL.finditer(text):
        out.append(unescape(text[pos : m.start()]))
        out.append(_render_control(m.group(1), users, channels))
        pos = m.end()
    out.append(unescape(text[pos:]))
    return "".join(out)


# --- rich-text blocks ---------------------------------------------------------------------
# Newer exports carry ``blocks`` beside ``text``; the text field is normally complete, so blocks
# are only rendered when a message has no text (e.g. some app and workflow posts).


def _render_element(el: Mapping[str, Any], users: Mapping[str, str], channels: Mapping[str, str]) -> str:
    kind = el.get("type")
    if kind == "text":
        return str(el.get("text", ""))
    if kind == "link":
        url = str(el.get("url", ""))
        label = el.get("text")
        return f"{label} ({url})" if label and label != url else url
    if kind == "user":
        uid = str(el.get("user_id", ""))
        return "@" + (users.get(uid) or uid)
    if kind == "channel":
        cid = str(el.get("channel_id", ""))
        return "#" + (channels.get(cid) or cid)
    if kind == "broadcast":
        return "@" + str(el.get("range", "here"))
    if kind == "usergroup":
        return "@" + str(el.get("usergroup_id", ""))
    if kind == "emoji":
        return f":{el.get('name', '')}:"
    if kind == "date":
        return str(el.get("fallback", ""))
    if kind in ("rich_text_section", "rich_text_preformatted", "rich_text_quote"):
        inner = "".join(_render_element(e, users, channels) for e in el.get("elements", []) or [])
        if kind == "rich_text_preformatted":
            return f"```{inner}```"
        if kind == "rich_text_quote":
            return "> " + inner.replace("\n", "\n> ")
        return inner
    if kind == "rich_text_list":
        items = [_render_element(e, users, channels) for e in el.get("elements", []) or []]
        ordered = el.get("style") == "ordered"
        return "\n".join(f"{i}. {t}" if ordered else f"- {t}" for i, t in enumerate(items, 1))
    return ""


def render_blocks(
    blocks: Any, users: Mapping[str, str] | None = None, channels: Mapping[str, str] | None = None
) -> str:
    """Plain text of a message's ``blocks`` (rich_text, section and context blocks)."""
    users = users or {}
    channels = channels or {}
    parts: list[str] = []
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "rich_text":
            text = "\n".join(
                _render_element(e, users, channels) for e in block.get("elements", []) or []
                if isinstance(e, Mapping)
            )
        elif kind == "section":
            text_obj = block.get("text") or {}
            text = str(text_obj.get("text", "")) if isinstance(text_obj, Mapping) else ""
            if isinstance(text_obj, Mapping) and text_obj.get("type") == "mrkdwn":
                text = render_mrkdwn(text, users, channels)
        elif kind == "context":
            text = " ".join(
                render_mrkdwn(str(e.get("text", "")), users, channels) if e.get("type") == "mrkdwn"
                else str(e.get("text", ""))
                for e in block.get("elements", []) or [] if isinstance(e, Mapping)
            )
        else:
            text = ""
        if text.strip():
            parts.append(text.strip())
    return "\n".join(parts)
