"""Google Drive through google-api-python-client: My Drive and shared drives, kept in step by
the changes API, with each file's sharing as its readers.

Set-up (docs/connectors/gdrive.md): a service account with domain-wide delegation for the
scopes ``drive.readonly`` and ``admin.directory.group.member.readonly``, acting as
``delegated_user``; the environment variable (or secrets file) holds the path of its JSON key.

First sync (and whenever the chunking settings change): ``changes.getStartPageToken``, then
``files.list`` over all drives (``corpora=allDrives``), and per file ``permissions.list`` and
its content: Google Docs, Sheets and Slides exported to docx, xlsx and pptx
(``files.export``), PDF and Office files downloaded (``files.get?alt=media``); all parsed by
the Drive parsers (PDFs keep their pages). Later syncs read ``changes.list`` from the stored
page token: a removed or trashed file is removed; a changed one gets ``permissions.list`` and,
when its content changed (``modifiedTime``, ``md5Checksum``), a new download; a sharing change
alone updates its readers, nothing re-embedded.

Readers: ``user`` permissions as ``user:<email>``; ``group`` permissions expanded to the
group's members with the Admin SDK (``members.list``, derived membership included) and
re-read at every sync, so someone removed from a group loses access at the next sync
(``google_groups: principal`` keeps ``group:<email>`` instead, for the users file or the
proxy's groups header); ``domain`` as ``domain:<domain>`` (any user whose email is in that
domain); ``anyone`` discoverable on the web as ``public``; "anyone with the link" only when
``link_sharing: public`` (default: ignored, fail closed). Any role (reader and up) can read.

Calls are retried ``api_retries`` times on 429 and 5xx with exponential back-off
(googleapiclient's ``num_retries``). A refused key or delegation fails the source and leaves
its documents as they were. Not mirrored: files in folders shared with a group the Admin SDK
cannot read (kept as nobody's), comments, revisions, Google Forms/Drawings/Sites, shortcuts.
"""
from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Any, Iterator, Mapping

from kb_chatbot.core.errors import ParseError, SourceError
from kb_chatbot.core.secrets import read_secret
from kb_chatbot.core.types import PUBLIC, Document, IngestFailure, domain_principal, group_principal, user_principal
from kb_chatbot.ingest.connectors.live import LiveConnector, parse_time
from kb_chatbot.ingest.parsers import FORMATS

log = logging.getLogger(__name__)

SCOPES = ["https://www.googleapis.com/auth/drive.readonly",
          "https://www.googleapis.com/auth/admin.directory.group.member.readonly"]
FILE_FIELDS = "id,name,mimeType,modifiedTime,md5Checksum,size,webViewLink,driveId,trashed"
#: Google-native types and the Office format each is exported to.
EXPORTS = {
    "application/vnd.google-apps.document": (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document", ".docx"),
    "application/vnd.google-apps.spreadsheet": (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ".xlsx"),
    "application/vnd.google-apps.presentation": (
        "application/vnd.openxmlformats-officedocument.presentationml.presentation", ".pptx"),
}
BY_MIME = {
    "application/pdf": ".pdf", "text/plain": ".txt", "text/markdown": ".md", "text/csv": ".csv",
    "text/html": ".html",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
}
#: Files larger than this are listed as skipped, not downloaded.
MAX_DOWNLOAD_BYTES = 200 * 2**20


class GoogleDriveConnector(LiveConnector):
    source_type = "drive"

    def __init__(self, src: Any, *, parser: Any = None, credentials: Any = None):
        super().__init__(src, parser=parser)
        self._credentials = credentials
        self._drive: Any = None
        self._directory: Any = None
        self._groups: dict[str, frozenset[str]] = {}

    # --- the API ------------------------------------------------------------------------

    def _creds(self) -> Any:
        if self._credentials is None:
            from google.oauth2 import service_account

            key_file = read_secret(self.src)
            if not self.src.delegated_user:
                raise SourceError(f"source {self.source}: gdrive needs delegated_user (the Workspace user the "
                                  "service account acts for) in kb.yaml")
            try:
                self._credentials = service_account.Credentials.from_service_account_file(
                    key_file, scopes=SCOPES, subject=self.src.delegated_user)
            except (OSError, ValueError, KeyError) as e:
                raise SourceError(f"source {self.source}: the service-account key named by "
                                  f"{self.src.secret_env()} cannot be read ({type(e).__name__}); download the "
                                  "JSON key again (docs/connectors/gdrive.md)") from None
        return self._credentials

    def _build(self, api: str, version: str, service_path: str) -> Any:
        from googleapiclient.discovery import build

        # an endpoint override replaces the whole base URL, service path included
        options = {"api_endpoint": self.src.url.rstrip("/") + "/" + service_path} if self.src.url else None
        return build(api, version, credentials=self._creds(), cache_discovery=False, static_discovery=True,
                     client_options=options)

    def drive(self) -> Any:
        if self._drive is None:
            self._drive = self._build("drive", "v3", "drive/v3/")
        return self._drive

    def directory(self) -> Any:
        if self._directory is None:
            self._directory = self._build("admin", "directory_v1", "")
        return self._directory

    def call(self, endpoint: str, request: Any) -> Any:
        """Execute one request (counted, retried); a refused credential is a SourceError."""
        from google.auth.exceptions import GoogleAuthError, RefreshError, TransportError
        from googleapiclient.errors import HttpError

        self.count(endpoint)
        try:
            return request.execute(num_retries=self.src.api_retries)
        except TransportError as e:
            raise SourceError(f"source {self.source}: cannot reach Google's token endpoint "
                              f"({type(e).__name__}); check the network or sources[].url") from None
        except RefreshError as e:
            reason = str(e.args[0]) if e.args else "refused"
            raise SourceError(f"source {self.source}: Google refused the service account ({reason.split(':')[0]}); "
                              "check its key, its domain-wide delegation and delegated_user "
                              "(docs/connectors/gdrive.md)") from None
        except GoogleAuthError as e:
            raise SourceError(f"source {self.source}: Google credentials failed ({type(e).__name__})") from None
        except HttpError as e:
            status = int(getattr(e.resp, "status", 0) or 0)
            if status == 401:
                raise SourceError(f"source {self.source}: Google rejected the access token (HTTP 401); check the "
                                  "service account (docs/connectors/gdrive.md)") from None
            if status == 429:
                raise SourceError(f"source {self.source}: Google kept rate-limiting after "
                                  f"{self.src.api_retries} retries; run the sync later") from None
            raise _CallError(endpoint, status, e._get_reason() if hasattr(e, "_get_reason") else "") from None
        except OSError as e:
            raise SourceError(f"source {self.source}: cannot reach Google ({type(e).__name__}: {e})") from None

    def pages(self, endpoint: str, make: Any, key: str, **params: Any) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            data = self.call(endpoint, make(**params, **({"pageToken": token} if token else {}))) or {}
            yield from (x for x in data.get(key) or [] if isinstance(x, dict))
            token = data.get("nextPageToken")
            if not token:
                return

    # --- one sync -----------------------------------------------------------------------

    def _read(self) -> Iterator[Document]:
        files = self.drive().files()
        old_files: Mapping[str, Any] = self._state.get("files") or {}
        self._groups = {}
        state_files: dict[str, Any] = {} if self.full_read else {k: dict(v) for k, v in old_files.items()}
        self._retry: list[str] = []
        if self.full_read:
            token = self.call("changes.getStartPageToken",
                              self.drive().changes().getStartPageToken(supportsAllDrives=True))["startPageToken"]
            changed = list(self.pages("files.list", files.list, "files", corpora="allDrives",
                                      includeItemsFromAllDrives=True, supportsAllDrives=True, pageSize=100,
                                      q="trashed = false", fields=f"nextPageToken, files({FILE_FIELDS})"))
        else:
            token, changed = self._changes(str(self._state.get("page_token")), state_files)
            changed += self._retries([f for f in self._state.get("retry") or [] if f not in {c["id"] for c in changed}])
        touched: set[str] = set()
        for f in changed:
            fid = str(f["id"])
            touched.add(fid)
            doc = self._file(f, state_files, old_files.get(fid) or {})
            if doc is not None:
                yield doc
        # groups are re-read at every sync: a membership change alone re-permissions files
        for fid, entry in state_files.items():
            if fid not in touched:
                self.set_acl(f"{self.source}:{fid}", self._acl(entry.get("perms") or []))
        self._state = {"page_token": token, "files": state_files, "retry": sorted(set(self._retry))}

    def _retries(self, fids: list[str]) -> list[dict[str, Any]]:
        """Files whose last read failed: the changes feed will not name them again, so their
        metadata is fetched directly (a file gone since then is removed)."""
        out = []
        for fid in fids:
            try:
                out.append(self.call("files.get", self.drive().files().get(
                    fileId=fid, supportsAllDrives=True, fields=FILE_FIELDS)))
            except _CallError as e:
                if e.status == 404:
                    self.remove(f"{self.source}:{fid}")
                else:
                    self._retry.append(fid)
        return [f for f in out if isinstance(f, dict) and f.get("id") and not f.get("trashed")]

    def _changes(self, token: str, state_files: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        changes = self.drive().changes()
        out: dict[str, dict[str, Any]] = {}
        while True:
            data = self.call("changes.list", changes.list(
                pageToken=token, includeItemsFromAllDrives=True, supportsAllDrives=True, pageSize=100,
                fields=f"nextPageToken, newStartPageToken, changes(changeType, removed, fileId, file({FILE_FIELDS}))"))
            for c in data.get("changes") or []:
                if c.get("changeType", "file") != "file" or not c.get("fileId"):
                    continue
                fid = str(c["fileId"])
                f = c.get("file") or {}
                if c.get("removed") or f.get("trashed"):
                    out.pop(fid, None)
                    state_files.pop(fid, None)
                    self.remove(f"{self.source}:{fid}")
                else:
                    out[fid] = {**f, "id": fid}
            if data.get("newStartPageToken"):
                return str(data["newStartPageToken"]), list(out.values())
            token = str(data.get("nextPageToken") or "")
            if not token:
                raise SourceError(f"source {self.source}: changes.list ended without a next page token")

    def _file(self, f: Mapping[str, Any], state_files: dict[str, Any], old: Mapping[str, Any]) -> Document | None:
        fid, name, mime = str(f["id"]), str(f.get("name") or f["id"]), str(f.get("mimeType") or "")
        doc_id = f"{self.source}:{fid}"
        suffix = EXPORTS[mime][1] if mime in EXPORTS else BY_MIME.get(mime) or PurePosixPath(name).suffix.lower()
        if suffix not in FORMATS or (mime.startswith("application/vnd.google-apps.") and mime not in EXPORTS):
            state_files.pop(fid, None)
            self.remove(doc_id)  # a file that became a type we do not read
            return None
        try:
            perms = [_perm(p) for p in self.pages(
                "permissions.list", self.drive().permissions().list, "permissions", fileId=fid,
                supportsAllDrives=True, fields="nextPageToken, permissions(id,type,role,emailAddress,domain,"
                                               "allowFileDiscovery,deleted)")
                if not p.get("deleted")]
        except _CallError as e:  # who may read it is unknown now: fail closed
            state_files.pop(fid, None)
            self._retry.append(fid)
            self.fail(name, f"sharing not readable ({e}); removed until it is, tried again at the next sync",
                      doc_id, drop=True)
            return None
        acl = self._acl(perms)
        rev = [str(f.get("modifiedTime") or ""), str(f.get("md5Checksum") or ""), str(f.get("size") or "")]
        entry = {"name": name, "rev": rev, "perms": perms}
        if not self.full_read and old.get("rev") == rev and doc_id in self._indexed:
            state_files[fid] = entry
            self.set_acl(doc_id, acl)  # only its sharing changed
            return None
        if int(f.get("size") or 0) > MAX_DOWNLOAD_BYTES:
            state_files.pop(fid, None)
            self.skip(name, f"{int(f['size']) / 2**20:.0f} MB: larger than the {MAX_DOWNLOAD_BYTES // 2**20} MB "
                            "read per file")
            self.remove(doc_id)
            return None
        try:
            if mime in EXPORTS:
                data = self.call("files.export", self.drive().files().export_media(fileId=fid, mimeType=EXPORTS[mime][0]))
            else:
                data = self.call("files.get_media", self.drive().files().get_media(fileId=fid, supportsAllDrives=True))
            parsed = self.parse_bytes(data or b"", name, suffix)
        except ParseError as e:
            state_files.pop(fid, None)
            self.fail(name, e.reason, doc_id, drop=True)
            return None
        except _CallError as e:  # retried at the next sync
            state_files.pop(fid, None)
            self._retry.append(fid)
            self.fail(name, f"not downloaded ({e}); tried again at the next sync", doc_id, drop=True)
            return None
        state_files[fid] = entry
        if not parsed.text.strip():
            self.skip(name, "no text to index")
            self.remove(doc_id)
            return None
        return Document(
            id=doc_id, source=self.source, source_type="drive", title=name,
            uri=str(f.get("webViewLink") or f"https://drive.google.com/file/d/{fid}/view"),
            updated_at=parse_time(f.get("modifiedTime")), text=parsed.text, acl=acl, sections=parsed.sections,
            metadata={"file_id": fid, "mime_type": mime, "drive_id": f.get("driveId"), **parsed.metadata},
        )

    # --- permissions --------------------------------------------------------------------

    def members(self, group: str) -> frozenset[str]:
        if group not in self._groups:
            try:
                people = {user_principal(str(m["email"])) for m in self.pages(
                    "members.list", self.directory().members().list, "members", groupKey=group,
                    includeDerivedMembership=True, maxResults=200)
                    if m.get("email") and str(m.get("type", "USER")).upper() == "USER"
                    and str(m.get("status", "ACTIVE")).upper() == "ACTIVE"}
            except _CallError as e:
                log.warning("google group not readable source=%s group=%s: its members get no access (%s)",
                            self.source, group, e)
                self.failures.append(IngestFailure(
                    path=group, report_only=True,
                    reason=f"group members not readable ({e}): the files shared with this group are not "
                           "readable by its members until it is"))
                people = set()
            self._groups[group] = frozenset(people)
        return self._groups[group]

    def _acl(self, perms: list[list[Any]]) -> frozenset[str]:
        out: set[str] = set()
        for kind, who, discoverable in perms:
            if kind == "user" and who:
                out.add(user_principal(who))
            elif kind == "group" and who:
                out |= self.members(who) if self.src.google_groups == "directory" else {group_principal(who)}
            elif kind == "domain" and who:
                out.add(domain_principal(who))
            elif kind == "anyone" and (discoverable or self.src.link_sharing == "public"):
                out.add(PUBLIC)
        return frozenset(out)


class _CallError(Exception):
    def __init__(self, endpoint: str, status: int, reason: str):
        super().__init__(f"Google {endpoint} failed: HTTP {status} {reason}".strip())
        self.status = status


def _perm(p: Mapping[str, Any]) -> list[Any]:
    """What of a permission decides who reads: [type, email or domain, discoverable]."""
    kind = str(p.get("type") or "")
    who = str(p.get("domain") if kind == "domain" else p.get("emailAddress") or "").strip().lower()
    return [kind, who, bool(p.get("allowFileDiscovery"))]

