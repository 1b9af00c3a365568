"""Drive connector: a folder export of docx, pptx, xlsx, pdf, txt/md, csv and html files.

One document per file, id ``<source>:<relative/posix/path>``. Who may read a file comes
from the optional permissions sidecar (see :mod:`kb_chatbot.ingest.parsers.permissions`), else the
source's ``default_acl``. :class:`FileTreeConnector` is the shared folder-walking base that
the wiki connector reuses.
"""
from __future__ import annotations

import fnmatch
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import quote

from kb_chatbot.core.errors import ParseError, SourceError
from kb_chatbot.core.types import Document, IngestFailure, SourceType
from kb_chatbot.ingest.parsers import FORMATS, Parsed, parse_file
from kb_chatbot.ingest.parsers.permissions import AccessError, PermissionMap

log = logging.getLogger(__name__)


#: Characters of text one document may have (~2,000 chunks); a 50 MB log file is refused
#: with a clear reason instead of keeping the chunker busy for minutes.
MAX_TEXT_CHARS = 5_000_000
#: Plain-text formats: a file of more than 4 x MAX_TEXT_CHARS bytes is refused unread (a 50 MB
#: log used to be read and decoded whole, 1.8 GB at peak, only to be refused).
TEXT_FORMATS = frozenset({"text", "markdown", "csv", "html"})


class NoText(ParseError):
    """The file parsed but holds no text: reported, not indexed."""


class FileTreeConnector:
    """Walks a folder, parses each supported file, yields one Document per file.

    Subclasses set ``source_type`` and ``extensions`` and may refine title, uri and ACL.
    A file that cannot be parsed is recorded in ``failures`` and the walk goes on.
    """

    source_type: SourceType = "drive"
    extensions: frozenset[str] = frozenset(FORMATS)
    #: Folder names never descended into (besides hidden ones).
    skip_dirs: frozenset[str] = frozenset({"node_modules", "__pycache__"})

    def __init__(
        self,
        path: str | Path,
        *,
        source: str,
        base_url: str | None = None,
        permissions_file: str | None = "permissions.json",
        default_acl: str = "public",
        exclude: Sequence[str] = (),
        parser: Callable[..., Parsed] | None = None,
    ) -> None:
        #: parse(path, rel) -> Parsed: in-process by default; make_connector passes an
        #: :class:`kb_chatbot.ingest.parsers.isolated.IsolatedParser` (a child process with limits)
        self.parser = parser
        self.root = Path(path).expanduser()
        #: glob patterns of relative paths that are not read ("reference/**", "*.tmp.md")
        self.exclude = tuple(exclude)
        if not self.root.exists():
            raise SourceError(
                f"{self.source_type} folder not found: {self.root}; check sources[].path in kb.yaml"
            )
        if not self.root.is_dir():
            raise SourceError(
                f"{self.source_type} source is not a folder: {self.root}; check sources[].path in kb.yaml"
            )
        self.source = source
        self.base_url = base_url
        self.permissions_file = (permissions_file or "").strip().replace("\\", "/") or None
        sidecar = self.root / self.permissions_file if self.permissions_file else None
        self.permissions = PermissionMap.load(sidecar, default_acl)
        self.failures: list[IngestFailure] = []
        #: files read that hold no text to index: reported, not failures
        self.skipped: list[IngestFailure] = []

    # -- walking -------------------------------------------------------------------------

    def files(self) -> list[tuple[Path, str]]:
        """``(path, relative posix path)`` of every file this source reads, sorted."""
        out: list[tuple[Path, str]] = []
        self.symlinks: list[str] = []
        self.bad_names: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):  # links to folders are not followed
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in self.skip_dirs)
            for name in sorted(filenames):
                path = Path(dirpath) / name
                rel = path.relative_to(self.root).as_posix()
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:  # a name in another encoding (Latin-1 from an old share)
                    # indexed under the name with its odd bytes written as \xNN: valid text for the
                    # index and the report, and what `ls --quoting-style=escape` shows on disk
                    rel = os.fsencode(rel).decode("utf-8", "backslashreplace")
                    self.bad_names.append(rel)
                if name.startswith((".", "~")) or name.endswith(("~", ".tmp")):
                    continue  # hidden, Office lock files (~$x.docx), editor backups
                if rel == self.permissions_file:
                    continue
                if any(fnmatch.fnmatchcase(rel, pat) for pat in self.exclude):
                    log.debug("excluded file skipped source=%s path=%s", self.source, rel)
                    continue
                if path.is_symlink():  # its name would choose the format and the ACL of any file
                    self.symlinks.append(rel)
                    continue
                if path.suffix.lower() not in self.extensions:
                    log.debug("unsupported file skipped source=%s path=%s", self.source, rel)
                    continue
                out.append((path, rel))
        return out

    def expected_count(self) -> int | None:
        return len(self.files())

    def documents(self) -> Iterator[Document]:
        self.failures.clear()
        self.skipped.clear()
        files = self.files()
        for key in self.permissions.unmatched_keys(rel for _, rel in files):
            self._fail(self.permissions_file or "permissions.json",
                       f"permissions entry {key!r} matches no file (a typo or a moved file?); fix or remove it",
                       None, keep=True)
        for rel in self.bad_names:
            log.info("file name is not valid UTF-8, indexed as source=%s path=%s", self.source, rel)
        for rel in self.symlinks:
            self._fail(rel, "symbolic link skipped: only regular files inside the source folder are read",
                       f"{self.source}:{rel}", drop=True)
        try:
            yield from self._documents(files)
        finally:
            close = getattr(self.parser, "close", None)
            if close is not None:
                close()  # the parser worker, if one started

    def _documents(self, files: list[tuple[Path, str]]) -> Iterator[Document]:
        for path, rel in files:
            doc_id = f"{self.source}:{rel}"
            try:
                doc = self.document(path, rel)
            except NoText as e:  # reported; an older version with text is gone like a deleted file
                self.skipped.append(IngestFailure(path=rel, reason=e.reason, report_only=True))
                continue
            except AccessError as e:  # the access list is unreadable: any older version goes too
                self._fail(rel, e.reason, doc_id, drop=True)
                continue
            except ParseError as e:  # the older version stays only while its ACL is unchanged
                self._fail(rel, e.reason, doc_id, acl=self.acl_without_parse(rel))
                continue
            except Exception as e:  # a parser bug or odd file must not end the run
                log.debug("parser crashed source=%s path=%s", self.source, rel, exc_info=True)
                self._fail(rel, f"unexpected error while reading ({type(e).__name__}: {e})", doc_id,
                           acl=self.acl_without_parse(rel))
                continue
            if doc is not None:
                yield doc

    def _fail(self, rel: str, reason: str, doc_id: str | None, *, drop: bool = False,
              acl: frozenset[str] | None = None, keep: bool = False) -> None:
        """Record a failure. Fail closed: unless ``keep`` (a failure that says nothing about any
        document's access), an older version survives only with ``acl`` equal to its stored ACL."""
        log.warning("file skipped source=%s path=%s reason=%s", self.source, rel, reason)
        if not keep and not drop and acl is None:
            drop = True  # the file's access cannot be known now
        self.failures.append(IngestFailure(path=rel, reason=reason, doc_id=doc_id, drop=drop, keep_if_acl=acl,
                                           report_only=keep and doc_id is None))

    def acl_without_parse(self, rel: str) -> frozenset[str] | None:
        """The ACL ``rel`` has now, when it can be known without reading the file (the sidecar
        or the default); None when the file itself may say (a wiki page's front matter)."""
        return self.permissions.acl_for(rel)

    # -- one file ------------------------------------------------------------------------

    def document(self, path: Path, rel: str) -> Document | None:
        """The Document for one file, or None when it has no text (logged at debug)."""
        try:
            st = path.stat()
            mtime, size = st.st_mtime, st.st_size
        except OSError as e:
            raise ParseError(rel, f"cannot read file: {e.strerror or e}") from None
        fmt = FORMATS.get(path.suffix.lower(), ("", "", ""))[2]
        if fmt in TEXT_FORMATS and size > 4 * MAX_TEXT_CHARS:  # UTF-8 has at most 4 bytes a character
            raise ParseError(rel, f"{size / 2**20:.0f} MB of text, more than the {MAX_TEXT_CHARS / 1_000_000:g} million "
                                  "characters a document may have: not indexed (split it)")
        parsed = self.parser(path, rel) if self.parser is not None else parse_file(path)
        if not parsed.text.strip():
            raise NoText(rel, "no text to index (an empty file, a scanned PDF without a text layer, "
                              "a workbook without cells)")
        if len(parsed.text) > MAX_TEXT_CHARS:
            raise ParseError(rel, f"{len(parsed.text) / 1_000_000:.1f} million characters of text, more than the "
                                  f"{MAX_TEXT_CHARS / 1_000_000:g} million a document may have: not indexed (split it)")
        metadata = {"path": rel, **parsed.metadata, **self.extra_metadata(parsed)}
        return Document(
            id=f"{self.source}:{rel}",
            source=self.source,
            source_type=self.source_type,
            title=self.title(path, parsed),
            uri=self.uri(path, rel, parsed),
            updated_at=parsed.updated_at or datetime.fromtimestamp(mtime, tz=timezone.utc),
            text=parsed.text,
            acl=self.acl(rel, parsed),
            sections=parsed.sections,
            metadata=metadata,
        )

    def title(self, path: Path, parsed: Parsed) -> str:
        """Drive files are known by their file name (what the Drive UI shows); a name that is not
        valid UTF-8 has its odd bytes written as \\xNN."""
        return os.fsencode(path.name).decode("utf-8", "backslashreplace")

    def uri(self, path: Path, rel: str, parsed: Parsed) -> str:
        if self.base_url:
            return self.base_url.rstrip("/") + "/" + quote(rel)
        return path.resolve().as_uri()

    def acl(self, rel: str, parsed: Parsed) -> frozenset[str]:
        return self.permissions.acl_for(rel)

    def extra_metadata(self, parsed: Parsed) -> dict[str, Any]:
        return {}


class DriveConnector(FileTreeConnector):
    """A Drive folder export; sharing comes only from the sidecar (never from file content)."""

    source_type: SourceType = "drive"
