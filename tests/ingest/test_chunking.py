"""Chunker: exact offsets, token limits, structure-first splitting, deterministic ids."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb_chatbot.core.settings import EmbeddingConfig, load_settings
from kb_chatbot.core.types import Chunk, Document, Section
from kb_chatbot.index.embedder import count_words, load_tokenizer
from kb_chatbot.ingest.chunking import Chunker, _align, make_chunker

# the autouse conftest fixture only chdirs to tmp_path: safe to share across examples
PROPS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def make_doc(text: str, sections=(), doc_id: str = "wiki:test.md") -> Document:
    return Document(
        id=doc_id,
        source="test",
        source_type="wiki",
        title="Test",
        uri="https://wiki.example/test",
        updated_at=datetime(2024, 1, 1, tzinfo=timezone.utc),
        text=text,
        acl=frozenset({"public"}),
        sections=tuple(sections),
    )


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return load_tokenizer(EmbeddingConfig())


# --- random documents -----------------------------------------------------------------

_vocab = st.sampled_from(
    ["the", "PTO", "policy", "on-call", "VPN", "x", "données", "日本語", "🙂", "a.b", "25", "days.", "Mr.", "—"]
)
_unicode_word = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
_long_word = st.integers(min_value=40, max_value=900).flatmap(
    lambda n: st.sampled_from(["z", "日", "ab", "é"]).map(lambda c: c * n)
)
_word = st.one_of(_vocab, _vocab, _unicode_word, _long_word)
_sep = st.sampled_from([" ", " ", " ", " ", "\n", "\n\n", ". ", "\t", "  ", "\u00a0", "\n\n\n"])
_paragraph = st.lists(st.tuples(_word, _sep), max_size=60).map(lambda ws: "".join(w + s for w, s in ws))
_heading = st.lists(_vocab, min_size=1, max_size=4).map(lambda ws: "# " + " ".join(ws) + "\n\n")
_section_text = st.tuples(st.one_of(st.just(""), _heading), _paragraph).map("".join)
_location = st.fixed_dictionaries(
    {
        "page": st.one_of(st.none(), st.integers(1, 3)),
        "slide": st.one_of(st.none(), st.integers(1, 2)),
        "heading_path": st.lists(st.sampled_from(["A", "B", "C"]), max_size=3).map(tuple),
        "slack_ts": st.one_of(st.none(), st.sampled_from(["1700000000.000100", "1700000001.000200"])),
    }
)


@st.composite
def documents(draw, repeat: int = 1) -> Document:
    """A document with random sections; some text between sections belongs to none."""
    gaps = st.sampled_from(["", "", "\n", "gap text "])
    parts = draw(st.lists(st.tuples(_section_text, _location, gaps), max_size=6))
    text, sections = "", []
    for body, loc, gap in parts:
        text += gap
        body = body * repeat
        sections.append(Section(len(text), len(text) + len(body), **loc))
        text += body
    text += draw(st.sampled_from(["", "\n", "trailing words"]))
    return make_doc(text, sections)


def normalised_sections(doc: Document) -> list[Section]:
    """The doc's sections plus the uncovered stretches (what the chunker works on)."""
    return Chunker(count_words)._sections(doc)


def check_invariants(doc: Document, chunks: list[Chunk], count, limit: int, merged: bool) -> None:
    text = doc.text
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert isinstance(c, Chunk)
        assert c.doc_id == doc.id
        assert 0 <= c.start < c.end <= len(text)
        assert text[c.start : c.end] == c.text
        assert c.text.strip() and c.text == c.text.strip()
        assert count(c.text) <= limit, (count(c.text), limit, c.text[:80])
    assert len({c.id for c in chunks}) == len(chunks)
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)

    # nothing lost: every non-whitespace character is in some chunk
    covered = bytearray(len(text))
    for c in chunks:
        covered[c.start : c.end] = b"\x01" * (c.end - c.start)
    lost = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert not lost, f"characters not in any chunk at {lost[:5]}: {text[lost[0]:lost[0] + 20]!r}"

    # structure: a chunk stays inside one section, or (merging) inside sections that share
    # page/slide/sheet, and its heading path is a prefix of each of theirs
    secs = normalised_sections(doc)
    for c in chunks:
        touched = [s for s in secs if s.start < c.end and c.start < s.end]
        assert touched
        if not merged:
            assert len(touched) == 1 and touched[0].start <= c.start and c.end <= touched[0].end
        first = touched[0]
        for s in touched:
            assert (s.page, s.slide, s.sheet) == (c.page, c.slide, c.sheet)
            assert s.heading_path[: len(c.heading_path)] == c.heading_path
        assert c.slack_ts == first.slack_ts
        if len(touched) == 1:
            assert c.heading_path == first.heading_path


@PROPS
@given(doc=documents(), limit=st.integers(8, 80), overlap_frac=st.floats(0, 0.9), merge=st.booleans())
def test_properties_word_counter(doc, limit, overlap_frac, merge):
    overlap = int(limit * overlap_frac)
    chunker = Chunker(count_words, chunk_tokens=limit, overlap_tokens=overlap, merge_sections=merge)
    chunks = chunker.chunk(doc)
    check_invariants(doc, chunks, count_words, limit, merge)
    again = Chunker(count_words, chunk_tokens=limit, overlap_tokens=overlap, merge_sections=merge).chunk(doc)
    assert [c.id for c in again] == [c.id for c in chunks]
    assert again == chunks


@settings(PROPS, max_examples=30)
@given(doc=documents(repeat=3), limit=st.sampled_from([32, 100, 510]), merge=st.booleans())
def test_properties_minilm_tokenizer(doc, limit, merge, minilm_tokenizer, caplog):
    caplog.set_level(logging.WARNING, logger="kb_chatbot.ingest.chunking")
    chunker = Chunker(minilm_tokenizer, chunk_tokens=limit, overlap_tokens=limit // 8, merge_sections=merge)
    chunks = chunker.chunk(doc)

    def with_specials(t: str) -> int:  # what the model sees: [CLS] ... [SEP]
        return len(minilm_tokenizer(t)["input_ids"])

    check_invariants(doc, chunks, with_specials, limit + 2, merge)
    assert [c.id for c in chunker.chunk(doc)] == [c.id for c in chunks]
    assert "not alignable" not in caplog.text


def superadditive(text: str) -> int:
    """Joined pieces count more than the sum of their parts (as subword merges can), so the
    splitter's own bookkeeping overshoots and the chunker must hard-split."""
    n = count_words(text)
    return n + n * n // 16


@settings(PROPS, max_examples=50)
@given(doc=documents(), limit=st.integers(8, 60), merge=st.booleans())
def test_properties_oversized_pieces_are_hard_split(doc, limit, merge):
    chunks = Chunker(superadditive, chunk_tokens=limit, overlap_tokens=limit // 4, merge_sections=merge).chunk(doc)
    check_invariants(doc, chunks, superadditive, limit, merge)


# --- examples -------------------------------------------------------------------------


def test_long_text_gets_full_overlapping_chunks_under_512_tokens(minilm_tokenizer):
    sentences = [
        f"Rule {i}: the on-call engineer acknowledges page {i} within {i % 15 + 5} minutes."
        for i in range(400)
    ]
    text = " ".join(sentences)
    chunks = Chunker(minilm_tokenizer, 510, 64).chunk(make_doc(text))
    sizes = [len(minilm_tokenizer(c.text)["input_ids"]) for c in chunks]
    assert len(chunks) >= 4
    assert max(sizes) <= 512
    assert min(sizes[:-1]) > 400  # chunks are filled, not fragments
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end  # overlap between neighbours
    assert all(c.text.endswith(".") for c in chunks)  # cut after a full stop, not mid-sentence


def test_no_overlap_when_zero():
    text = " ".join(f"w{i}" for i in range(500))
    chunks = Chunker(count_words, 50, 0).chunk(make_doc(text))
    for a, b in zip(chunks, chunks[1:]):
        assert b.start > a.end
        assert not text[a.end : b.start].strip()


def test_enormous_word_is_hard_split(minilm_tokenizer):
    word = "日本" * 1500  # CJK characters are one token each: 3000 tokens, no spaces
    doc = make_doc(f"Intro line.\n\n{word}\n\nOutro line.")
    chunks = Chunker(minilm_tokenizer, 510, 32).chunk(doc)
    assert all(len(minilm_tokenizer.tokenize(c.text)) <= 510 for c in chunks)
    assert "".join(c.text for c in chunks if "日" in c.text).count("日") >= 1500
    assert chunks[0].text.startswith("Intro") and chunks[-1].text.endswith("Outro line.")


def test_section_metadata_and_no_crossing_between_pages():
    page1, page2 = "Refunds take 5 days. " * 3, "Returns need a receipt. " * 3
    text = page1 + page2
    sections = [Section(0, len(page1), page=1), Section(len(page1), len(text), page=2)]
    chunks = Chunker(count_words, 200, 10).chunk(make_doc(text, sections))
    assert [(c.page, c.text) for c in chunks] == [(1, page1.strip()), (2, page2.strip())]
    assert chunks[0].location() == "page 1"


def test_small_sections_merge_with_common_heading_prefix_and_first_slack_ts():
    msgs = ["alice: the deploy is at 5pm", "bob: ok, I will watch the dashboards", "carol: thanks"]
    text, sections = "", []
    for i, m in enumerate(msgs):
        span = (len(text), len(text) + len(m))
        sections.append(Section(*span, heading_path=("Ops", f"m{i}"), slack_ts=f"17000000{i}.0001"))
        text += m + "\n"
    merged = Chunker(count_words, 100, 10).chunk(make_doc(text, sections))
    assert len(merged) == 1
    assert merged[0].heading_path == ("Ops",)
    assert merged[0].slack_ts == "170000000.0001"
    assert merged[0].text == text.strip()

    separate = Chunker(count_words, 100, 10, merge_sections=False).chunk(make_doc(text, sections))
    assert [c.text for c in separate] == msgs
    assert [c.slack_ts for c in separate] == [s.slack_ts for s in sections]
    assert separate[1].heading_path == ("Ops", "m1")


def test_sections_merge_only_while_they_fit():
    parts = [" ".join(["word"] * 30) for _ in range(4)]
    text = "\n\n".join(parts)
    sections, pos = [], 0
    for p in parts:
        sections.append(Section(pos, pos + len(p), heading_path=("H",)))
        pos += len(p) + 2
    chunks = Chunker(count_words, 65, 5).chunk(make_doc(text, sections))
    assert len(chunks) == 2
    assert all(count_words(c.text) == 60 for c in chunks)


def test_text_outside_sections_is_still_chunked():
    text = "Title line\n\nBody under heading.\n\nFooter note"
    body_start = text.index("Body")
    doc = make_doc(text, [Section(body_start, body_start + len("Body under heading."), heading_path=("Body",))])
    chunks = Chunker(count_words, 100, 0, merge_sections=False).chunk(doc)
    assert [c.text for c in chunks] == ["Title line", "Body under heading.", "Footer note"]
    assert [c.heading_path for c in chunks] == [(), ("Body",), ()]


def test_overlapping_and_out_of_range_sections_are_clipped(caplog):
    text = "alpha beta gamma delta"
    doc = make_doc(text, [Section(6, 16, page=2), Section(0, 11, page=1), Section(15, 999, page=3)])
    with caplog.at_level(logging.WARNING, logger="kb_chatbot.ingest.chunking"):
        chunks = Chunker(count_words, 100, 0).chunk(doc)
    assert "sections clipped" in caplog.text and "wiki:test.md" in caplog.text
    assert [(c.text, c.page) for c in chunks] == [("alpha beta", 1), ("gamma", 2), ("delta", 3)]


def test_empty_and_whitespace_documents_give_no_chunks():
    chunker = Chunker(count_words, 50, 5)
    assert chunker.chunk(make_doc("")) == []
    assert chunker.chunk(make_doc(" \n\n\t ", [Section(0, 3, page=1)])) == []


def test_ids_depend_on_document_and_position():
    a = Chunker(count_words, 50, 5).chunk(make_doc("same text here", doc_id="wiki:a.md"))
    b = Chunker(count_words, 50, 5).chunk(make_doc("same text here", doc_id="wiki:b.md"))
    c = Chunker(count_words, 50, 5).chunk(make_doc("  same text here", doc_id="wiki:a.md"))
    assert len({a[0].id, b[0].id, c[0].id}) == 3
    assert len(a[0].id) == 32


def test_align_places_pieces_in_repetitive_text():
    text = "x x x x x x"
    # overlapping pieces; str.find from the previous start would leave the tail uncovered
    assert _align(text, ["x x x", "x x x", "x x x"]) is not None
    starts = _align(text, ["x x x", "x x x", "x x x"])
    assert starts[0] == 0 and starts[-1] + 5 == len(text)
    assert _align(text, ["x x x", "y"]) is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="overlap_tokens"):
        Chunker(count_words, 50, 50)
    with pytest.raises(ValueError, match="chunk_tokens"):
        Chunker(count_words, 0, 0)
    with pytest.raises(TypeError, match="tokenizer or a function"):
        Chunker(42)


def test_make_chunker_uses_the_embedders_tokenizer(minilm_tokenizer):
    chunker = make_chunker(load_settings(None))
    assert chunker.chunk_tokens == 510 and chunker.overlap_tokens == 64
    assert chunker.fingerprint == "v1:hf:all-MiniLM-L6-v2:510:64:merge"  # no install path in it
    assert Chunker(minilm_tokenizer).counter_name == f"hf:{type(minilm_tokenizer).__name__}:30522"
    assert chunker.count_tokens("on-call rotation") == len(minilm_tokenizer.tokenize("on-call rotation"))

    capped = make_chunker(load_settings(None, embedding={"max_seq_length": 256}))
    assert capped.chunk_tokens == 254  # never longer than the model reads

    hashed = load_settings(None, embedding={"model": "hash"}, chunking={"chunk_tokens": 100, "overlap_tokens": 10})
    fake = make_chunker(hashed)
    assert fake.count_tokens is count_words and fake.chunk_tokens == 100
    assert fake.fingerprint != chunker.fingerprint


def test_a_repetitive_log_is_chunked_quickly_and_completely():
    """A log of identical lines places every piece at every line: the aligner keeps a bounded
    set of positions (it used to run > 10 minutes and 3.5 GB on a 4 MB log)."""
    import time

    line = "2026-11-30T10:00:00Z GET /api/health 200 0.002s user=svc-monitor\n"
    doc = make_doc(line * 8000)  # 520 kB
    t = time.monotonic()
    chunks = Chunker(count_words, chunk_tokens=120, overlap_tokens=16).chunk(doc)
    assert time.monotonic() - t < 60  # generous: it takes about a second
    covered = sorted((c.start, c.end) for c in chunks)
    assert covered[0][0] == 0 and covered[-1][1] == len(doc.text.rstrip())
    # no gap but whitespace between chunks: no text lost
    assert all(b[0] <= a[1] or not doc.text[a[1]:b[0]].strip() for a, b in zip(covered, covered[1:]))
    assert all(doc.text[c.start:c.end] == c.text for c in chunks)
