"""Local stand-ins for the Slack Web API, Confluence REST API and Google Drive API v3, served on
127.0.0.1 for the real SDKs to talk to (no internet here, and none needed by the tests).

Each fake keeps the service's state in plain dicts that a test changes between two syncs
(post a reply, archive a channel, restrict a page, unshare a file, remove a group member), and
answers with the JSON documented in the service's API reference: cursor / start+limit /
pageToken pagination with small pages, the error bodies, 429 with ``Retry-After``, expired
tokens. Every request is logged as (method, endpoint) so tests count the calls a sync made.
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse


class Reply:
    def __init__(self, status: int = 200, body: Any = None, headers: dict[str, str] | None = None,
                 raw: bytes | None = None, content_type: str = "application/json"):
        self.status, self.body, self.headers, self.raw, self.content_type = status, body, headers or {}, raw, content_type


class FakeService:
    """A threaded HTTP server on 127.0.0.1; subclasses implement :meth:`route`."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.log: list[str] = []
        #: endpoint -> replies to send first (e.g. a 429), consumed one per request
        self.faults: dict[str, list[Reply]] = {}
        self.lock = threading.RLock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a: Any) -> None:
                pass

            def _serve(self, verb: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                with service.lock:
                    reply = service.dispatch(verb, unquote(url.path), query, body, {k.title(): v for k, v in self.headers.items()})
                data = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def dispatch(self, verb: str, path: str, query: dict[str, str], body: bytes, headers: dict[str, str]) -> Reply:
        endpoint = self.endpoint(verb, path)
        self.calls[endpoint] += 1
        self.log.append(endpoint)
        queued = self.faults.get(endpoint)
        if queued:
            return queued.pop(0)
        return self.route(endpoint, verb, path, query, body, headers)

    def endpoint(self, verb: str, path: str) -> str:
        return path

    def route(self, endpoint: str, verb: str, path: str, query: dict[str, str], body: bytes,
              headers: dict[str, str]) -> Reply:
        raise NotImplementedError

    def reset_calls(self) -> None:
        self.calls.clear()
        self.log.clear()


# --- Slack ------------------------------------------------------------------------------


class FakeSlack(FakeService):
    """The Slack Web API methods the connector uses (api.slack.com/methods), form-encoded POSTs
    with ``Authorization: Bearer``; errors are HTTP 200 with ``{"ok": false, "error": ...}``,
    rate limits HTTP 429 with ``Retry-After``. Pages hold 2 items (``limit`` is honoured up to it)."""

    PAGE = 2

    def __init__(self, token: str = "xoxb-test-token-123456") -> None:
        self.token = token
        self.expired = False
        self.users: list[dict[str, Any]] = []
        self.channels: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}
        super().__init__()

    # test helpers
    def add_user(self, uid: str, name: str, email: str | None) -> None:
        profile = {"display_name": name, "real_name": name}
        if email:
            profile["email"] = email
        self.users.append({"id": uid, "name": name.lower(), "profile": profile, "deleted": False, "is_bot": False})

    def add_channel(self, cid: str, name: str, *, private: bool = False, members: list[str] = (),
                    bot_member: bool = True) -> None:
        self.channels[cid] = {"id": cid, "name": name, "is_channel": not private, "is_group": private,
                              "is_private": private, "is_archived": False, "is_member": bot_member,
                              "members": list(members)}
        self.messages.setdefault(cid, [])

    def post(self, cid: str, ts: str, user: str, text: str, thread_ts: str | None = None,
             broadcast: bool = False) -> None:
        m: dict[str, Any] = {"type": "message", "ts": ts, "user": user, "text": text}
        if thread_ts:
            m["thread_ts"] = thread_ts
            if broadcast:
                m["subtype"] = "thread_broadcast"
        self.messages[cid].append(m)

    def edit(self, cid: str, ts: str, text: str, edit_ts: str) -> None:
        for m in self.messages[cid]:
            if m["ts"] == ts:
                m["text"], m["edited"] = text, {"user": m["user"], "ts": edit_ts}

    def delete(self, cid: str, ts: str) -> None:
        self.messages[cid] = [m for m in self.messages[cid] if m["ts"] != ts]

    # the API
    def endpoint(self, verb: str, path: str) -> str:
        return path.rsplit("/", 1)[-1]

    def _page(self, items: list[Any], params: dict[str, str], key: str, extra: dict[str, Any] | None = None) -> Reply:
        start = int(params.get("cursor") or 0)
        limit = min(int(params.get("limit") or self.PAGE), self.PAGE)
        part = items[start:start + limit]
        nxt = str(start + limit) if start + limit < len(items) else ""
        return Reply(body={"ok": True, key: part, **(extra or {}), "response_metadata": {"next_cursor": nxt}})

    def _thread_view(self, cid: str, m: dict[str, Any]) -> dict[str, Any]:
        replies = [r for r in self.messages[cid] if r.get("thread_ts") == m["ts"] and r["ts"] != m["ts"]]
        out = dict(m)
        if replies:
            out["thread_ts"] = m["ts"]
            out["reply_count"] = len(replies)
            out["latest_reply"] = max(r["ts"] for r in replies)
        return out

    def route(self, endpoint, verb, path, query, body, headers) -> Reply:
        params = {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
        params.update(query)
        if headers.get("Authorization") != f"Bearer {self.token}":
            return Reply(body={"ok": False, "error": "invalid_auth"})
        if self.expired:
            return Reply(body={"ok": False, "error": "token_expired"})
        if endpoint == "auth.test":
            return Reply(body={"ok": True, "url": "https://acme.slack.com/", "team": "Acme", "user_id": "UBOT"})
        if endpoint == "users.list":
            return self._page(self.users, params, "members")
        if endpoint == "conversations.list":
            types = set((params.get("types") or "public_channel").split(","))
            chans = [{k: v for k, v in c.items() if k != "members"} for c in self.channels.values()
                     if ("private_channel" if c["is_private"] else "public_channel") in types
                     and (not c["is_private"] or c["is_member"])]  # private: only those the bot is in
            if params.get("exclude_archived") in ("true", "1", "True"):
                chans = [c for c in chans if not c["is_archived"]]
            return self._page(chans, params, "channels")
        cid = params.get("channel", "")
        chan = self.channels.get(cid)
        if chan is None or (chan["is_private"] and not chan["is_member"]):
            return Reply(body={"ok": False, "error": "channel_not_found"})
        if endpoint == "conversations.members":
            return self._page(chan["members"], params, "members")
        if not chan["is_member"]:
            return Reply(body={"ok": False, "error": "not_in_channel"})
        if endpoint == "conversations.history":
            oldest = float(params.get("oldest") or 0)
            top = [self._thread_view(cid, m) for m in self.messages[cid]
                   if (not m.get("thread_ts") or m["thread_ts"] == m["ts"] or m.get("subtype") == "thread_broadcast")
                   and float(m["ts"]) > oldest]
            top.sort(key=lambda m: float(m["ts"]), reverse=True)  # newest first, as documented
            return self._page(top, params, "messages", {"has_more": False})
        if endpoint == "conversations.replies":
            ts = params.get("ts", "")
            parent = next((m for m in self.messages[cid] if m["ts"] == ts), None)
            if parent is None:
                return Reply(body={"ok": False, "error": "thread_not_found"})
            thread = [self._thread_view(cid, parent)] + sorted(
                (r for r in self.messages[cid] if r.get("thread_ts") == ts and r["ts"] != ts),
                key=lambda r: float(r["ts"]))
            return self._page(thread, params, "messages", {"has_more": False})
        return Reply(body={"ok": False, "error": "unknown_method"})


# --- Confluence -------------------------------------------------------------------------


class FakeConfluence(FakeService):
    """Confluence Data Center REST API v1 (developer.atlassian.com/server/confluence/rest):
    ``start``/``limit`` pages with ``_links.next``, ``Authorization: Bearer <PAT>``, 401 on a bad
    token. Pages of 2. Users are named by ``username`` (Data Center)."""

    PAGE = 2

    def __init__(self, token: str = "confluence-pat-987654", *, cloud_user: str | None = None) -> None:
        self.token = token
        #: Cloud flavour: basic auth with this account e-mail and the API token, users known by
        #: accountId and e-mail (no username), group members at rest/api/group/member?name=
        self.cloud_user = cloud_user
        self.spaces: dict[str, dict[str, Any]] = {}
        self.pages: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, list[str]] = {}
        super().__init__()

    def add_space(self, key: str, *, users: list[str] = (), groups: list[str] = (), anonymous: bool = False) -> None:
        self.spaces[key] = {"users": list(users), "groups": list(groups), "anonymous": anonymous}

    def add_page(self, pid: str, space: str, title: str, body: str, *, parent: str | None = None,
                 users: list[str] = (), groups: list[str] = (), when: str = "2026-11-01T10:00:00.000Z") -> None:
        self.pages[pid] = {"id": pid, "space": space, "title": title, "body": body, "parent": parent,
                           "version": 1, "when": when, "users": list(users), "groups": list(groups),
                           "status": "current", "attachments": []}

    def edit_page(self, pid: str, body: str, when: str) -> None:
        p = self.pages[pid]
        p["body"], p["when"], p["version"] = body, when, p["version"] + 1

    def add_attachment(self, pid: str, aid: str, name: str, data: bytes) -> None:
        self.pages[pid]["attachments"].append({"id": aid, "title": name, "data": data, "version": 1})

    # the API
    def endpoint(self, verb: str, path: str) -> str:
        parts = path.strip("/").split("/")
        if parts[:1] == ["wiki"]:
            parts = parts[1:]
        if parts[:1] == ["download"]:
            return "download"
        if parts[:3] == ["rest", "api", "space"]:
            return "space" if len(parts) > 3 else "spaces"
        if parts[:3] == ["rest", "api", "group"]:
            return "group.members"
        if parts[:3] == ["rest", "api", "content"]:
            if len(parts) == 3:
                return "pages"
            if parts[3] == "search":
                return "search"
            return "attachments" if parts[-1] == "attachment" else "page"
        return path

    def _user(self, name: str) -> dict[str, Any]:
        if self.cloud_user:
            return {"type": "known", "accountId": f"5b10-{name}", "email": f"{name}@acme.example",
                    "displayName": name.title(), "accountType": "atlassian"}
        return {"type": "known", "username": name, "userKey": f"key-{name}", "displayName": name.title()}

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.cloud_user:
            import base64

            want = base64.b64encode(f"{self.cloud_user}:{self.token}".encode()).decode()
            return headers.get("Authorization") == f"Basic {want}"
        return headers.get("Authorization") == f"Bearer {self.token}"

    def _paged(self, items: list[Any], query: dict[str, str], path: str) -> Reply:
        start, limit = int(query.get("start") or 0), min(int(query.get("limit") or self.PAGE), self.PAGE)
        part = items[start:start + limit]
        links: dict[str, str] = {"base": self.url}
        if start + limit < len(items):
            links["next"] = f"{path}?start={start + limit}&limit={limit}"
        return Reply(body={"results": part, "start": start, "limit": limit, "size": len(part), "_links": links})

    def _ancestors(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        chain: list[dict[str, Any]] = []
        parent = p["parent"]
        while parent:
            chain.insert(0, {"id": parent, "type": "page", "title": self.pages[parent]["title"]})
            parent = self.pages[parent]["parent"]
        return chain

    def _content(self, p: dict[str, Any], body: bool = False) -> dict[str, Any]:
        out = {"id": p["id"], "type": "page", "status": p["status"], "title": p["title"],
               "version": {"number": p["version"], "when": p["when"]},
               "ancestors": self._ancestors(p),
               "restrictions": {"read": {"operation": "read", "restrictions": {
                   "user": {"results": [self._user(u) for u in p["users"]], "size": len(p["users"])},
                   "group": {"results": [{"type": "group", "name": g} for g in p["groups"]], "size": len(p["groups"])},
               }}},
               "_links": {"webui": f"/display/{p['space']}/{p['title'].replace(' ', '+')}"}}
        if body:
            out["body"] = {"storage": {"value": p["body"], "representation": "storage"}}
        return out

    def route(self, endpoint, verb, path, query, body, headers) -> Reply:
        if not self._authorized(headers):
            return Reply(401, {"statusCode": 401, "message": "This request requires authentication"})
        parts = path.strip("/").split("/")
        if parts[:1] == ["wiki"]:  # Cloud serves the REST API under /wiki
            parts = parts[1:]
        if endpoint == "spaces":
            return self._paged([{"key": k, "name": k, "type": "global"} for k in self.spaces], query, path)
        if endpoint == "space":
            key = parts[3]
            sp = self.spaces.get(key)
            if sp is None:
                return Reply(404, {"statusCode": 404, "message": f"No space with key : {key}"})
            return Reply(body={"key": key, "name": key, "permissions": [
                {"operation": {"operation": "read", "targetType": "space"}, "anonymousAccess": sp["anonymous"],
                 "subjects": {"user": {"results": [self._user(u) for u in sp["users"]], "size": len(sp["users"])},
                              "group": {"results": [{"type": "group", "name": g} for g in sp["groups"]],
                                        "size": len(sp["groups"])}}},
                {"operation": {"operation": "administer", "targetType": "space"}, "anonymousAccess": False,
                 "subjects": {"user": {"results": [self._user("admin")], "size": 1}}},
            ]})
        if endpoint == "group.members":
            name = query.get("name", "") if parts[3] == "member" else parts[3]
            if name not in self.groups:
                return Reply(404, {"statusCode": 404, "message": "group not found"})
            return self._paged([self._user(u) for u in self.groups[name]], query, path)
        if endpoint == "pages":
            items = [self._content(p) for p in self.pages.values()
                     if p["space"] == query.get("spaceKey") and p["status"] == query.get("status", "current")]
            return self._paged(items, query, path)
        if endpoint == "search":
            import re

            cql = query.get("cql", "")
            space = re.search(r'space = "([^"]+)"', cql).group(1)
            since = re.search(r'lastmodified >= "([^"]+)"', cql)
            items = [self._content(p, body=True) for p in self.pages.values()
                     if p["space"] == space and p["status"] == "current"
                     and (since is None or p["when"][:16].replace("T", " ") >= since.group(1))]
            return self._paged(items, query, path)
        if endpoint in ("page", "attachments"):
            p = self.pages.get(parts[3])
            if p is None or p["status"] != "current":
                return Reply(404, {"statusCode": 404, "message": "No content found with id"})
            if endpoint == "page":
                return Reply(body=self._content(p, body=True))
            atts = [{"id": a["id"], "type": "attachment", "title": a["title"], "version": {"number": a["version"]},
                     "_links": {"download": f"/download/attachments/{p['id']}/{a['title']}?version={a['version']}"}}
                    for a in p["attachments"]]
            return self._paged(atts, query, path)
        if endpoint == "download":
            p = self.pages[parts[2]]  # /download/attachments/<page>/<name>
            a = next(a for a in p["attachments"] if a["title"] == parts[3])
            return Reply(raw=a["data"], content_type="application/octet-stream")
        return Reply(404, {"message": "not found"})


# --- Google Drive -------------------------------------------------------------------------


class FakeGoogle(FakeService):
    """Google's OAuth token endpoint (the service-account JWT grant), Drive API v3 and the Admin
    SDK Directory members.list (developers.google.com/drive/api/reference/rest/v3): pageToken
    pagination with pages of 2, a change log read by ``changes.list``, ``Authorization: Bearer``."""

    PAGE = 2
    ACCESS = "ya29.fake-access-token-abcdef"

    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, list[str]] = {}
        self.changes: list[dict[str, Any]] = []
        self.revoked = False
        self.assertions: list[str] = []
        super().__init__()

    def _touch(self, fid: str, removed: bool = False) -> None:
        self.changes.append({"fileId": fid, "removed": removed})

    def add_file(self, fid: str, name: str, mime: str, content: bytes, perms: list[dict[str, Any]],
                 modified: str = "2026-11-01T10:00:00.000Z") -> None:
        import hashlib

        self.files[fid] = {"id": fid, "name": name, "mimeType": mime, "modifiedTime": modified,
                           "webViewLink": f"https://docs.google.com/d/{fid}", "trashed": False,
                           "content": content, "perms": perms}
        if not mime.startswith("application/vnd.google-apps."):
            self.files[fid].update(md5Checksum=hashlib.md5(content).hexdigest(), size=str(len(content)))
        self._touch(fid)

    def modify(self, fid: str, content: bytes, modified: str) -> None:
        import hashlib

        f = self.files[fid]
        f["content"], f["modifiedTime"] = content, modified
        if "md5Checksum" in f:
            f.update(md5Checksum=hashlib.md5(content).hexdigest(), size=str(len(content)))
        self._touch(fid)

    def set_perms(self, fid: str, perms: list[dict[str, Any]]) -> None:
        self.files[fid]["perms"] = perms  # a sharing change: the file shows in the change log
        self._touch(fid)

    def trash(self, fid: str) -> None:
        self.files[fid]["trashed"] = True
        self._touch(fid)

    def endpoint(self, verb: str, path: str) -> str:
        if path == "/token":
            return "token"
        p = path.strip("/").split("/")
        if p[:3] == ["admin", "directory", "v1"]:
            return "members.list"
        if p[:2] == ["drive", "v3"]:
            rest = p[2:]
            if rest == ["changes", "startPageToken"]:
                return "changes.getStartPageToken"
            if rest == ["changes"]:
                return "changes.list"
            if rest == ["files"]:
                return "files.list"
            if len(rest) == 3 and rest[2] == "permissions":
                return "permissions.list"
            if len(rest) == 3 and rest[2] == "export":
                return "files.export"
            if len(rest) == 2:
                return "files.get"
        return path

    def _meta(self, f: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in f.items() if k not in ("content", "perms")}

    def _page(self, items: list[Any], query: dict[str, str], key: str, extra: dict[str, Any] | None = None) -> Reply:
        start = int(query.get("pageToken") or 0)
        part = items[start:start + self.PAGE]
        body: dict[str, Any] = {key: part}
        if start + self.PAGE < len(items):
            body["nextPageToken"] = str(start + self.PAGE)
        elif extra:
            body.update(extra)
        return Reply(body=body)

    def route(self, endpoint, verb, path, query, body, headers) -> Reply:
        if endpoint == "token":
            form = parse_qs(body.decode())
            self.assertions.append((form.get("assertion") or [""])[0])
            if self.revoked:
                return Reply(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
            return Reply(body={"access_token": self.ACCESS, "expires_in": 3600, "token_type": "Bearer"})
        if headers.get("Authorization") != f"Bearer {self.ACCESS}":
            return Reply(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials."}})
        p = path.strip("/").split("/")
        if endpoint == "members.list":
            group = p[4]
            if group not in self.groups:
                return Reply(404, {"error": {"code": 404, "message": "Resource Not Found: groupKey"}})
            return self._page([{"email": m, "type": "USER", "role": "MEMBER", "status": "ACTIVE"}
                               for m in self.groups[group]], query, "members")
        if endpoint == "changes.getStartPageToken":
            return Reply(body={"startPageToken": str(len(self.changes) + 1)})
        if endpoint == "changes.list":
            # the token is the 1-based position in the change log; pages continue with "<token>:<offset>"
            token = query.get("pageToken", "1")
            base, _, off = token.partition(":")
            log = self.changes[int(base) - 1:]
            start = int(off or 0)
            part = log[start:start + self.PAGE]
            out = []
            for c in part:
                f = self.files.get(c["fileId"])
                item = {"changeType": "file", "fileId": c["fileId"], "removed": c["removed"] or f is None}
                if f is not None and not item["removed"]:
                    item["file"] = self._meta(f)
                out.append(item)
            resp: dict[str, Any] = {"changes": out}
            if start + self.PAGE < len(log):
                resp["nextPageToken"] = f"{base}:{start + self.PAGE}"
            else:
                resp["newStartPageToken"] = str(len(self.changes) + 1)
            return Reply(body=resp)
        if endpoint == "files.list":
            items = [self._meta(f) for f in self.files.values() if not f["trashed"]]
            return self._page(items, query, "files")
        f = self.files.get(p[3]) if len(p) > 3 else None
        if f is None:
            return Reply(404, {"error": {"code": 404, "message": "File not found"}})
        if endpoint == "permissions.list":
            return self._page([{"id": f"p{i}", "kind": "drive#permission", **perm} for i, perm in enumerate(f["perms"])],
                              query, "permissions")
        if endpoint == "files.export":
            return Reply(raw=f["content"], content_type=query.get("mimeType", "application/octet-stream"))
        if endpoint == "files.get":
            if query.get("alt") == "media":
                return Reply(raw=f["content"], content_type=f["mimeType"])
            return Reply(body=self._meta(f))
        return Reply(404, {"error": {"code": 404, "message": "not found"}})


_PEM: list[str] = []


def write_service_account_key(path: Any, token_uri: str) -> Any:
    """A Google service-account JSON key (a real RSA key, made once per test session) whose
    ``token_uri`` is the fake's token endpoint; written mode 0600, as the docs ask."""
    from pathlib import Path

    if not _PEM:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _PEM.append(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode())
    path = Path(path)
    path.write_text(json.dumps({"type": "service_account", "project_id": "acme-kb", "private_key_id": "k1",
                                "private_key": _PEM[0], "client_email": "kb@acme-kb.iam.gserviceaccount.com",
                                "client_id": "1", "token_uri": token_uri}))
    path.chmod(0o600)
    return path


def docx_bytes(heading: str, text: str) -> bytes:
    """A real .docx (python-docx) with one heading and one paragraph."""
    import io

    import docx

    d = docx.Document()
    d.add_heading(heading, level=1)
    d.add_paragraph(text)
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()
