"""Confluence (Cloud or Data Center) through atlassian-python-api and the REST API v1.

Per sync, per space (``spaces``, or every space the account sees, ``GET rest/api/space``):

- ``GET rest/api/space/{key}?expand=permissions``: who may view the space (users, groups,
  anonymous access);
- ``GET rest/api/content?spaceKey=..&type=page&status=current`` with each page's version,
  ancestors and read restrictions (one paged listing): pages gone from it (deleted, trashed,
  moved out of the space) are removed; pages whose version changed are re-read;
- ``GET rest/api/content/search`` with the CQL ``space = KEY and type = page and lastmodified
  >= "<watermark - 1 day>"`` and ``expand=body.storage``: the changed pages' bodies (a page the
  search misses is read alone, ``GET rest/api/content/{id}``);
- of every group named in a permission or a restriction, its members
  (``rest/api/group/{name}/member``; on Cloud ``rest/api/group/member?name=``), at every sync.

A page is readable by whoever may view the space **and** passes the read restriction of the
page **and** of each of its ancestors (Confluence's inherited view restrictions); groups are
expanded to their members, so the ACL is a set of ``user:<email>`` (Cloud, when the account's
email is visible) and ``user:<username>`` (Data Center). A restriction, a space permission
or a group membership that changes reaches the index at the next sync with no page change; a
user Confluence names only by an account id matches nobody (fail closed). Anonymous access to
the space, with no restriction on the way, gives ``public``.

The body (storage format, XHTML) goes through the wiki HTML parser, headings kept; the
attachments of a changed page (PDF and Office files) through the Drive parsers, each a
document with the page's readers, id ``{source}:page:{id}:att:{attachment id}``. Not mirrored:
comments, blog posts, page history, Cloud's per-page "edit" restrictions (they do not limit
reading), attachments changed without their page changing (until the page changes).
"""
from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any, Iterator, Mapping

from kb_chatbot.core.errors import ParseError, SourceError
from kb_chatbot.core.secrets import read_secret
from kb_chatbot.core.types import PUBLIC, Document, user_principal
from kb_chatbot.ingest.connectors.live import LiveConnector, parse_time
from kb_chatbot.ingest.parsers import FORMATS

log = logging.getLogger(__name__)

PAGE = 50
LISTING_EXPAND = "version,ancestors,restrictions.read.restrictions.user,restrictions.read.restrictions.group"
#: Attachments parsed (by file extension); others are listed in the report as skipped.
ATTACHMENT_SUFFIXES = frozenset({".pdf", ".docx", ".pptx", ".xlsx", ".csv", ".txt", ".md", ".html"})


class ConfluenceConnector(LiveConnector):
    source_type = "wiki"

    def __init__(self, src: Any, *, parser: Any = None, client: Any = None):
        super().__init__(src, parser=parser)
        self.url = str(src.url).rstrip("/")
        self.cloud = src.cloud if src.cloud is not None else ".atlassian.net" in self.url
        self._client = client
        self._members: dict[str, frozenset[str]] = {}

    # --- the API ------------------------------------------------------------------------

    def client(self) -> Any:
        if self._client is None:
            from atlassian import Confluence

            token = read_secret(self.src)
            common: dict[str, Any] = dict(timeout=self.src.api_timeout_s)
            if self.cloud:
                if not self.src.username:
                    raise SourceError(f"source {self.source}: Confluence Cloud needs username (the account email "
                                      "that owns the API token) in kb.yaml")
                self._client = Confluence(url=self.url, username=self.src.username, password=token, cloud=True,
                                          **common)
            else:
                self._client = Confluence(url=self.url, token=token, cloud=False, **common)
            self._client.session.mount(self.url, _retrying_adapter(self.src.api_retries))
        return self._client

    def get(self, endpoint: str, path: str, **params: Any) -> Any:
        """One REST call (counted under ``endpoint``); a rejected token is a SourceError."""
        from requests import HTTPError, RequestException

        self.count(endpoint)
        try:
            return self.client().get(path, params=params or None, advanced_mode=False)
        except HTTPError as e:
            status = e.response.status_code if e.response is not None else 0
            if status == 401 or (status == 403 and endpoint in ("space", "spaces")):
                raise SourceError(
                    f"source {self.source}: Confluence refused the credentials (HTTP {status}); create a new "
                    f"token (docs/connectors/confluence.md) and set it in {self.src.secret_env()}") from None
            if status == 429:
                raise SourceError(f"source {self.source}: Confluence kept rate-limiting after "
                                  f"{self.src.api_retries} retries; run the sync later") from None
            raise _CallError(endpoint, status, str(e).splitlines()[0][:200] if str(e) else "") from None
        except RequestException as e:
            raise SourceError(f"source {self.source}: cannot reach Confluence at {self.url} "
                              f"({type(e).__name__}); check sources[].url and the network") from None

    def paged(self, endpoint: str, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        start = 0
        while True:
            data = self.get(endpoint, path, **params, start=start, limit=PAGE) or {}
            results = [r for r in data.get("results") or [] if isinstance(r, dict)]
            yield from results
            if not (data.get("_links") or {}).get("next") or not results:
                return
            start += len(results)

    # --- one sync -----------------------------------------------------------------------

    def _read(self) -> Iterator[Document]:
        self._members = {}
        old_pages: Mapping[str, Any] = self._state.get("pages") or {}
        watermark = self._state.get("watermark")
        spaces = self._spaces()
        pages_state: dict[str, Any] = {}
        newest = watermark
        seen_spaces: set[str] = set()
        for key in spaces:
            space = self.get("space", f"rest/api/space/{key}", expand="permissions")
            if not isinstance(space, dict) or "permissions" not in space:
                raise SourceError(f"source {self.source}: the space permissions of {key} are not visible to this "
                                  "account; it needs to administer the space (docs/connectors/confluence.md)")
            seen_spaces.add(key)
            space_readers = self._space_readers(space)
            listing = {str(p["id"]): p for p in self.paged("pages", "rest/api/content", spaceKey=key, type="page",
                                                            status="current", expand=LISTING_EXPAND)}
            restrictions = {pid: self._restriction(p) for pid, p in listing.items()}
            changed = {pid for pid, p in listing.items()  # edited, new, or moved here from another space
                       if self.full_read or (old_pages.get(pid) or {}).get("v") != _version(p)
                       or (old_pages.get(pid) or {}).get("space") != key}
            bodies = self._bodies(key, watermark, changed)
            for pid, page in listing.items():
                acl = self._acl(space_readers, restrictions, page)
                doc_id = f"{self.source}:page:{pid}"
                entry = {"v": _version(page), "space": key, "att": (old_pages.get(pid) or {}).get("att") or {}}
                when = str((page.get("version") or {}).get("when") or "")
                newest = max(newest or when, when) if when else newest
                if pid in changed:
                    body = bodies.get(pid)
                    if body is None:
                        try:
                            body = self._body(pid)
                        except _CallError as e:
                            self.fail(page.get("title") or pid, f"page {pid} not read ({e}); it is tried again "
                                      "at the next sync", doc_id, drop=True)
                            continue
                    doc = self._page_document(key, pid, page, body, acl)
                    if doc is not None:
                        yield doc
                    yield from self._attachments(pid, page, acl, entry)
                else:
                    self.set_acl(doc_id, acl)
                    for d in [d for d in self._indexed if d.startswith(doc_id + ":att:")]:
                        self.set_acl(d, acl)
                pages_state[pid] = entry
        # pages in no listing (deleted, trashed, in a space no longer listed or readable), with
        # their attachments; a page moved between spaces is in the other space's listing
        for doc_id in list(self._indexed):
            pid = doc_id[len(self.source) + len(":page:"):].split(":", 1)[0]
            if pid not in pages_state:
                self.remove(doc_id)
        self._state = {"watermark": newest, "pages": pages_state}

    def _spaces(self) -> list[str]:
        if self.src.spaces:
            return list(self.src.spaces)
        return [str(s["key"]) for s in self.paged("spaces", "rest/api/space") if s.get("key")]

    def _bodies(self, key: str, watermark: str | None, changed: set[str]) -> dict[str, str]:
        """Storage-format bodies of the pages changed since the watermark (one CQL search)."""
        if not changed:
            return {}
        cql = f'space = "{key}" and type = page'
        if watermark and not self.full_read:
            since = parse_time(watermark) - timedelta(days=1)  # CQL compares minutes in the server's zone
            cql += f' and lastmodified >= "{since.strftime("%Y-%m-%d %H:%M")}"'
        out: dict[str, str] = {}
        for r in self.paged("search", "rest/api/content/search", cql=cql, expand="body.storage,version"):
            pid = str(r.get("id"))
            if pid in changed:
                out[pid] = str(((r.get("body") or {}).get("storage") or {}).get("value") or "")
        return out

    def _body(self, pid: str) -> str:
        data = self.get("page", f"rest/api/content/{pid}", expand="body.storage,version") or {}
        return str(((data.get("body") or {}).get("storage") or {}).get("value") or "")

    # --- permissions --------------------------------------------------------------------

    def _user(self, u: Mapping[str, Any]) -> set[str]:
        out: set[str] = set()
        if u.get("email"):
            out.add(user_principal(str(u["email"])))
        if u.get("username"):
            out.add(user_principal(str(u["username"])))
        return out

    def members(self, group: str) -> frozenset[str]:
        if group not in self._members:
            path = "rest/api/group/member" if self.cloud else f"rest/api/group/{group}/member"
            params = {"name": group} if self.cloud else {}
            people: set[str] = set()
            for u in self.paged("group.members", path, **params):
                people |= self._user(u)
            self._members[group] = frozenset(people)
        return self._members[group]

    def _subjects(self, subjects: Mapping[str, Any]) -> set[str]:
        out: set[str] = set()
        for u in ((subjects.get("user") or {}).get("results") or []):
            if isinstance(u, dict):
                out |= self._user(u)
        for g in ((subjects.get("group") or {}).get("results") or []):
            if isinstance(g, dict) and g.get("name"):
                out |= self.members(str(g["name"]))
        return out

    def _space_readers(self, space: Mapping[str, Any]) -> frozenset[str] | None:
        """Who may view the space; None: anyone (anonymous access)."""
        readers: set[str] = set()
        for perm in space.get("permissions") or []:
            op = perm.get("operation") or {}
            if op.get("operation") != "read" or op.get("targetType") != "space":
                continue
            if perm.get("anonymousAccess"):
                return None
            readers |= self._subjects(perm.get("subjects") or {})
        return frozenset(readers)

    def _restriction(self, page: Mapping[str, Any]) -> frozenset[str] | None:
        """The page's own read restriction as readers; None when it has none."""
        read = ((page.get("restrictions") or {}).get("read") or {}).get("restrictions") or {}
        users = (read.get("user") or {}).get("results") or []
        groups = (read.get("group") or {}).get("results") or []
        if not users and not groups:
            return None
        return frozenset(self._subjects(read))

    def _acl(self, space_readers: frozenset[str] | None, restrictions: Mapping[str, frozenset[str] | None],
             page: Mapping[str, Any]) -> frozenset[str]:
        allowed: frozenset[str] | None = space_readers
        chain = [str(a.get("id")) for a in page.get("ancestors") or [] if isinstance(a, dict)] + [str(page["id"])]
        for pid in chain:
            if pid not in restrictions:  # an ancestor this account cannot list: fail closed
                return frozenset()
            r = restrictions[pid]
            if r is not None:
                allowed = r if allowed is None else allowed & r
        return frozenset({PUBLIC}) if allowed is None else allowed

    # --- documents ----------------------------------------------------------------------

    def _page_document(self, space: str, pid: str, page: Mapping[str, Any], body: str, acl: frozenset[str]) -> Document | None:
        title = str(page.get("title") or pid)
        try:
            parsed = self.parse_bytes(f"<html><body>{body}</body></html>".encode("utf-8"), title, ".html")
        except ParseError as e:
            self.fail(title, e.reason, f"{self.source}:page:{pid}", drop=True)
            return None
        if not parsed.text.strip():
            self.skip(title, "no text to index (an empty page)")
            self.remove(f"{self.source}:page:{pid}")
            return None
        webui = str((page.get("_links") or {}).get("webui") or f"/pages/viewpage.action?pageId={pid}")
        return Document(
            id=f"{self.source}:page:{pid}", source=self.source, source_type="wiki", title=title,
            uri=self.url + webui, updated_at=parse_time((page.get("version") or {}).get("when")),
            text=parsed.text, acl=acl, sections=parsed.sections,
            metadata={"space": space, "page_id": pid, "version": _version(page)},
        )

    def _attachments(self, pid: str, page: Mapping[str, Any], acl: frozenset[str],
                     entry: dict[str, Any]) -> Iterator[Document]:
        prefix = f"{self.source}:page:{pid}:att:"
        old: Mapping[str, Any] = entry.get("att") or {}
        now: dict[str, Any] = {}
        try:
            listed = list(self.paged("attachments", f"rest/api/content/{pid}/child/attachment", expand="version"))
        except _CallError as e:
            self.fail(f"{page.get('title')} attachments", str(e), None)
            entry["att"] = dict(old)
            return
        for a in listed:
            aid, name = str(a.get("id")), str(a.get("title") or "")
            suffix = PurePosixPath(name).suffix.lower()
            doc_id = prefix + aid
            if suffix not in ATTACHMENT_SUFFIXES or suffix not in FORMATS:
                continue
            version = _version(a)
            now[aid] = version
            if not self.full_read and old.get(aid) == version and doc_id in self._indexed:
                self.set_acl(doc_id, acl)
                continue
            link = str((a.get("_links") or {}).get("download") or "")
            try:
                self.count("attachment.download")
                data = self.client().get(link.lstrip("/"), not_json_response=True)
                parsed = self.parse_bytes(data or b"", name, suffix)
            except ParseError as e:
                self.fail(name, e.reason, doc_id, drop=True)
                continue
            except Exception as e:  # a download or parser failure: this attachment only
                self.fail(name, f"attachment not read ({type(e).__name__}); tried again when the page changes",
                          doc_id, drop=True)
                now.pop(aid, None)
                continue
            if not parsed.text.strip():
                continue
            yield Document(
                id=doc_id, source=self.source, source_type="wiki", title=f"{page.get('title')} / {name}",
                uri=self.url + link, updated_at=parse_time((a.get("version") or {}).get("when")),
                text=parsed.text, acl=acl, sections=parsed.sections,
                metadata={"page_id": pid, "attachment": name, **parsed.metadata},
            )
        for d in [d for d in self._indexed if d.startswith(prefix) and d[len(prefix):] not in now]:
            self.remove(d)
        entry["att"] = now


def _retrying_adapter(retries: int) -> Any:
    """requests' adapter with urllib3 retries: 429 and 5xx after ``Retry-After`` (else
    exponential back-off, at most 120 s a wait), connection errors ``retries`` times too.
    (atlassian-python-api's own ``backoff_and_retry`` retries a refused connection forever.)"""
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    return HTTPAdapter(max_retries=Retry(
        total=retries, connect=retries, read=retries, status=retries, allowed_methods=None,
        status_forcelist=[429, 500, 502, 503, 504], backoff_factor=1.0, backoff_max=120,
        respect_retry_after_header=True, raise_on_status=False))


class _CallError(Exception):
    def __init__(self, endpoint: str, status: int, message: str):
        super().__init__(f"Confluence {endpoint} failed: HTTP {status} {message}".strip())
        self.status = status


def _version(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("version") or {}).get("number") or 0)
    except (TypeError, ValueError):
        return 0

