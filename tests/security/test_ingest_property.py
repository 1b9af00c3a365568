"""Randomized: ingest edge cases (broken front matter, bad access entries, parse failures after
an access change, symlinks, users removed from groups) followed by questions from random users
through the real sync and answer service. Whatever happens, a user never sees the secret of a
page they cannot read now: not in the answer, a citation, a card, a streamed event, a log, or
(for an admin) the admin tab's status and failed-files views."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb_chatbot.app.answer.log import AnswerLog
from kb_chatbot.app.answer.service import KnowledgeAnswerService
from kb_chatbot.core.settings import Settings, SourceConfig
from kb_chatbot.core.types import Principal
from kb_chatbot.app.generators.fake import FakeGenerator
from kb_chatbot.index.embedder import HashEmbedder
from kb_chatbot.index.generation import open_index
from kb_chatbot.index.retriever import HybridRetriever
from kb_chatbot.ingest.report import status_info
from kb_chatbot.ingest.sync import sync_sources

GROUPS = ["hr", "eng"]
#: What a page's front matter says about access, and who may then read it (None: nobody,
#: because the page must not be indexed).
ACCESS = {
    "none": ("", {"*"}),
    "hr": ("access: [group:hr]\n", {"group:hr"}),
    "eng": ("access: [group:eng]\n", {"group:eng"}),
    "bad_entry": ("access: [hr]\n", set()),
    "broken_yaml": ("title: HR: bands\naccess: [group:hr]\n", set()),
    "alias": ("a: &x [1]\nb: *x\naccess: [group:hr]\n", set()),
}
page = st.tuples(st.sampled_from(sorted(ACCESS)), st.booleans())  # (access, is a symlink)
user = st.tuples(st.sampled_from(["ann", "ben", "anonymous"]), st.sets(st.sampled_from(GROUPS), max_size=2))


def _write(root: Path, i: int, access: str, link: bool, outside: Path) -> None:
    front, _ = ACCESS[access]
    body = f"---\ntitle: Page {i}\n{front}---\nPolicy {i} topic ZQS{i}SECRET details about leave.\n" if front else \
        f"# Page {i}\nPolicy {i} topic ZQS{i}SECRET details about leave.\n"
    target = root / f"p{i}-zqf{i}name.md"  # the file name is secret too (admin views show paths)
    if target.is_symlink() or target.exists():
        target.unlink()
    if link:
        real = outside / f"p{i}.txt"
        real.write_text(body, encoding="utf-8")
        os.symlink(real, target)
    else:
        target.write_text(body, encoding="utf-8")


def _readers(access: str, link: bool) -> set[str] | None:
    if link:
        return None
    readers = ACCESS[access][1]
    return readers or None


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(before=st.lists(page, min_size=2, max_size=4), after_seed=st.randoms(use_true_random=False),
       users=st.lists(user, min_size=1, max_size=2), drop_group=st.booleans())
def test_no_leak_after_any_ingest_edge_case(before, after_seed, users, drop_group):
    tmp = Path(tempfile.mkdtemp())
    try:
        root, outside = tmp / "wiki", tmp / "outside"
        root.mkdir()
        outside.mkdir()
        s = Settings(data_dir=tmp / "data", embedding={"model": "hash"}, retrieval={"context_filter": False},
                     answer={"self_correction": False}, chunking={"chunk_tokens": 64, "overlap_tokens": 0})
        src = SourceConfig(name="w", type="wiki", path=root)
        for i, (access, link) in enumerate(before):
            _write(root, i, access, link, outside)
        sync_sources(s, [src], embedder=HashEmbedder())
        # a second state: every page may change its access or become a link; one may vanish
        after = [(after_seed.choice(sorted(ACCESS)), after_seed.random() < 0.2) for _ in before]
        for i, (access, link) in enumerate(after):
            _write(root, i, access, link, outside)
        sync_sources(s, [src], embedder=HashEmbedder())
        index = open_index(s)
        service = KnowledgeAnswerService(HybridRetriever(index, HashEmbedder(), s.retrieval), FakeGenerator(),
                                         HashEmbedder(), s, AnswerLog(s.app_db),
                                         acl_lookup=lambda d: index.store.document_acl(d))
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logging.getLogger().addHandler(handler)
        try:
            for name, groups in users:
                if drop_group:
                    groups = set()  # removed from every group since the last sync
                who = Principal.anonymous() if name == "anonymous" else Principal(name, None, tuple(sorted(groups)))
                mine = {"*"} | {f"group:{g}" for g in groups} if name != "anonymous" else {"*"}
                q = "What are the details about leave policy topics?"
                events = list(service.stream(q, user=who))
                ans = events[-1].answer
                seen = json.dumps(ans.to_dict()) + "".join(e.text for e in events) + \
                    "".join(h.chunk.text + h.doc_title for h in ans.sources)
                logs = "\n".join(r.getMessage() for r in records)
                admin = Principal(who.username, None, who.groups, is_admin=True)
                admin_view = json.dumps(status_info(s, reader=admin)).lower()
                for i, (access, link) in enumerate(after):
                    readers = _readers(access, link)
                    if readers is None or not (readers & mine):
                        token = f"ZQS{i}SECRET"
                        assert token not in seen, (token, access, link, who, ans.text)
                        assert token not in logs, token
                        assert f"zqf{i}name" not in admin_view, (i, access, link, who)
        finally:
            logging.getLogger().removeHandler(handler)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
