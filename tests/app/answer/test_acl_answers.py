"""ACL property tests: for random documents, ACLs, users and questions, nothing the user cannot
read ever reaches the answer, its citations or sources, a streamed event, the prompt, the
answer-log row or a log record.

Every document carries distinctive secret tokens (in its text and title); a user who cannot
read a document must never see its tokens anywhere. Questions sometimes name a secret token
outright (an attacker who knows what to ask for), which BM25 would match exactly.
"""
from __future__ import annotations

import json
import re
import logging
import shutil
import tempfile
from pathlib import Path

from answer_fixtures import collect, doc, make_rig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb_chatbot.app.generators.fake import FakeGenerator
from kb_chatbot.core.types import Principal

TOPICS = ["vacation", "expense", "laptop", "parking", "salary", "launch"]
PRINCIPALS = ["public", "group:eng", "group:hr", "user:bob@acme.example", "user:carol"]

doc_spec = st.tuples(st.sampled_from(TOPICS), st.sets(st.sampled_from(PRINCIPALS), max_size=3))
user_spec = st.tuples(st.sampled_from(["bob", "carol", "dave", "anonymous"]), st.sets(st.sampled_from(["eng", "hr", "sales"]), max_size=2))


def principal(name: str, groups: set[str]) -> Principal:
    if name == "anonymous":
        return Principal.anonymous()
    return Principal(name, f"{name}@acme.example" if name == "bob" else None, tuple(sorted(groups)))


def secrets_of(i: int) -> tuple[str, str]:
    return f"ZQX{i:02d}TEXT", f"ZQX{i:02d}TITLE"


def make_docs(specs):
    docs = []
    for i, (topic, acl) in enumerate(specs):
        body, title = secrets_of(i)
        text = (f"# {topic.title()} rules\nThe {topic} policy code is {body}. "
                f"Every {topic} request needs approval from a manager. The {topic} budget resets in January.")
        docs.append(doc(f"d{i}", text, sorted(acl), title=f"{topic.title()} {title}"))
    return docs


class LeakyRetriever:
    """A broken retriever that ignores the ACL: the service's own check must catch it."""

    def __init__(self, inner):
        self.inner = inner

    def retrieve(self, query, *, user, top_k):
        everyone = Principal("bob", "bob@acme.example", ("eng", "hr"))
        carol = Principal("carol")
        hits = self.inner.retrieve(query, user=everyone, top_k=top_k) + self.inner.retrieve(query, user=carol, top_k=top_k)
        seen, out = set(), []
        for h in hits:
            if h.chunk.id not in seen:
                seen.add(h.chunk.id)
                out.append(h)
        return out


def check_no_leak(rig, specs, user, question, caplog, replies=()):
    caplog.clear()
    rig.generator.calls.clear()  # earlier users' prompts are not this user's
    rig.generator.replies.clear()
    rig.generator.replies.extend(replies)
    events, ans = collect(rig.service, question, user)
    forbidden = []
    for i, (_topic, acl) in enumerate(specs):
        if not user.can_read(frozenset(acl)):
            forbidden += secrets_of(i)
    row = rig.log.get_answer(ans.answer_id)
    visible = {
        "events": " ".join(e.text for e in events),
        "answer": json.dumps(ans.to_dict(), ensure_ascii=False),
        "sources": " ".join(h.prompt_text + h.chunk.text + h.doc_title for h in ans.sources),
        "prompts": " ".join(m.content for call in rig.generator.calls for m in call),
        "log_row": json.dumps(row, ensure_ascii=False),
        "log_records": " ".join(r.getMessage() for r in caplog.records),
    }
    for where, text in visible.items():
        text = text.replace(question, "")  # the asker's own words may name a secret
        for quoted in re.findall(r"'([^']+)'", text):  # ... and be quoted back ("nothing about 'X'")
            if quoted in question:
                text = text.replace(f"'{quoted}'", "")
        for s in forbidden:
            assert s not in text, f"secret {s} of an unreadable document leaked into {where}"
    for h in ans.sources:
        assert user.can_read(rig.index.store.document_acl(h.chunk.doc_id))
    return ans


def _question(data, specs):
    topic = data.draw(st.sampled_from(TOPICS), label="topic")
    ask_secret = data.draw(st.booleans(), label="ask_secret")
    q = f"What is the {topic} policy code?"
    if ask_secret and specs:
        q += " Is it " + secrets_of(data.draw(st.integers(0, len(specs) - 1), label="secret_of"))[0] + "?"
    return q


REPLIES = st.sampled_from([(), ("Per the sources [1][2][3][4][5][6][7][8][9].",), ("Nothing cited here.", "Still nothing.")])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(specs=st.lists(doc_spec, min_size=1, max_size=6), users=st.lists(user_spec, min_size=1, max_size=3),
       data=st.data())
def test_answers_never_contain_unreadable_content(specs, users, data, caplog):
    caplog.set_level(logging.DEBUG)
    root = Path(tempfile.mkdtemp(prefix="acl-"))
    try:
        rig = make_rig(root, make_docs(specs))
        for name, groups in users:
            user = principal(name, groups)
            check_no_leak(rig, specs, user, _question(data, specs), caplog, data.draw(REPLIES, label="replies"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(specs=st.lists(doc_spec, min_size=2, max_size=6), users=st.lists(user_spec, min_size=1, max_size=3),
       data=st.data())
def test_a_leaky_retriever_is_caught_by_the_service(specs, users, data, caplog):
    caplog.set_level(logging.DEBUG)
    root = Path(tempfile.mkdtemp(prefix="acl-"))
    try:
        base = make_rig(root, make_docs(specs))
        rig = make_rig(root, make_docs(specs), retriever=LeakyRetriever(base.retriever))
        for name, groups in users:
            user = principal(name, groups)
            check_no_leak(rig, specs, user, _question(data, specs), caplog, data.draw(REPLIES, label="replies"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_leaky_retriever_drop_is_logged_without_content(tmp_path, caplog):
    specs = [("vacation", {"group:hr"}), ("vacation", {"public"})]
    base = make_rig(tmp_path, make_docs(specs))
    rig = make_rig(tmp_path, make_docs(specs), retriever=LeakyRetriever(base.retriever), generator=FakeGenerator())
    caplog.set_level(logging.DEBUG)
    ans = check_no_leak(rig, specs, Principal("dave"), "What is the vacation policy code?", caplog)
    assert "ZQX01TEXT" in ans.text  # the readable one still answers
    assert any("acl_violation" in r.getMessage() for r in caplog.records)
