"""Wiki connector: a folder of markdown pages (Jekyll/Eleventy style, with YAML front matter)
and HTML pages (e.g. a Confluence HTML space export), read recursively.

Per page: title from front matter / ``<title>`` / first H1 / file name; ``updated_at`` from
front matter ``last_modified``/``date`` (else the file time); the uri uses the front-matter
``permalink`` when a ``base_url`` is set. Pages are readable per the permissions sidecar
(else ``default_acl``); a page's own ``access: [group:hr, user:carol@acme.example]`` front
matter overrides both, since the page author states it for that page.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from kb_chatbot.core.types import SourceType
from kb_chatbot.ingest.connectors.drive import FileTreeConnector
from kb_chatbot.ingest.parsers import Parsed
from kb_chatbot.ingest.parsers.permissions import access_principals

log = logging.getLogger(__name__)

_WORDS = re.compile(r"[-_]+")


class WikiConnector(FileTreeConnector):
    source_type: SourceType = "wiki"
    extensions = frozenset({".md", ".markdown", ".html", ".htm"})
    #: Static-site machinery, not pages (content collections such as _posts are read).
    skip_dirs = frozenset({"_site", "_includes", "_layouts", "_sass", "_data", "_plugins", "node_modules", "vendor"})

    def title(self, path: Path, parsed: Parsed) -> str:
        if parsed.title:
            return parsed.title
        return _WORDS.sub(" ", path.stem).strip() or path.name

    def uri(self, path: Path, rel: str, parsed: Parsed) -> str:
        permalink = parsed.front_matter.get("permalink")
        if self.base_url and isinstance(permalink, str) and permalink.strip():
            return self.base_url.rstrip("/") + "/" + permalink.strip().lstrip("/")
        return super().uri(path, rel, parsed)

    def acl_without_parse(self, rel: str) -> frozenset[str] | None:
        return None  # a page's own front matter may restrict it: unknown until it parses

    def acl(self, rel: str, parsed: Parsed) -> frozenset[str]:
        if "access" in parsed.front_matter:
            return access_principals(parsed.front_matter["access"], path=rel)
        return super().acl(rel, parsed)

    def extra_metadata(self, parsed: Parsed) -> dict[str, Any]:
        front = parsed.front_matter
        out: dict[str, Any] = {}
        for key in ("permalink", "tags", "keywords", "subtitle"):
            value = front.get(key)
            if isinstance(value, (str, int, float)) and str(value).strip():
                out[key] = str(value).strip()
            elif isinstance(value, list) and value:
                out[key] = [str(v) for v in value if isinstance(v, (str, int, float))]
        return out
