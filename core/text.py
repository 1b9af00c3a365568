"""Sentence splitting and content words: the small text tools the answer logic shares.

Deliberately simple and dependency-free: chunks are short (<= 512 tokens) and answers
shorter; a regex splitter that respects abbreviations, decimals and list/heading lines is
enough, and it keeps character offsets so trimmed text is a faithful extract.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

#: Function words (the classic English list): the keyword search drops them from queries.
STOPWORDS = frozenset("""
a about above after again all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here
hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that
the their theirs them themselves then there these they this those through to too under until up very was
we were what when where which while who whom why will with would you your yours yourself yourselves
""".split())
#: Words that carry no topic in a question or an answer, on top of the function words:
#: ignored when comparing a question with a source.
FILLER_WORDS = STOPWORDS | frozenset(
    """also done either else ever every get gets got let like may might much must one per please
    shall upon us whose within without yes tell know need want find say said anyone someone
    something thing things many way use used using""".split()
)

def _keyboard_neighbours(rows: tuple[str, ...] = ("qwertyuiop", "asdfghjkl", "zxcvbnm")) -> dict[str, str]:
    out: dict[str, str] = {}
    for r, row in enumerate(rows):
        for c, ch in enumerate(row):
            near = [row[c + d] for d in (-1, 1) if 0 <= c + d < len(row)]
            for rr in (r - 1, r + 1):
                if 0 <= rr < len(rows):
                    near += [rows[rr][cc] for cc in (c - 1, c, c + 1) if 0 <= cc < len(rows[rr])]
            out[ch] = "".join(dict.fromkeys(near))
    return out


#: Letters next to each letter on a QWERTY keyboard (same row and the rows above and below):
#: the typos of the eval's typo copies and the speller's likeliest slips.
KEYBOARD_NEIGHBOURS: dict[str, str] = _keyboard_neighbours()

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'_-]*")
#: Sentence end: . ! ? (optionally closed by quotes/brackets) then space and an upper-case
#: letter, digit, quote, bracket or markdown marker.
_PUNCT_END = re.compile(r"(?<=[.!?])[\"')\]*]*[ \t]+(?=[A-Z0-9\"'(\[*#-])")
_NEWLINES = re.compile(r"[ \t]*\n[ \t\n]*")
_ABBREV = re.compile(r"\b(?:e\.g|i\.e|etc|vs|mr|mrs|ms|dr|inc|ltd|no|approx|dept|st)\.$", re.IGNORECASE)
_INITIALS = re.compile(r"(?:^|[\s(])(?:[A-Z]\.){1,3}$")  # "D.C.", "U.S.", "J." before a name

#: A Slack-export line ``name (YYYY-MM-DD HH:MM): text`` always starts a new sentence.
_SLACK_LINE = re.compile(r"[\w.@-]+ \(\d{4}-\d{2}-\d{2} \d{2}:\d{2}\):")
#: What starts a block line: a heading, a quote, a table row, a list item ("- ", "* ", "1. ") or a
#: rule. A list marker needs the space after it: "**gw-7.vpn.acme.example** and picks …" and
#: "-5 degrees" go on the sentence before them.
_BLOCK_START = re.compile(r"(?:#{1,6}(?:\s|$)|[>|]|[*+-](?:\s|$)|(?:-{3,}|\*{3,}|_{3,})\s*$|\d+[.)]\s)")


@dataclass(frozen=True)
class Span:
    text: str
    start: int
    end: int


def _hard_newline(text: str, m: re.Match) -> bool:
    """A line break ends a sentence unless it is a soft wrap inside a paragraph.

    Soft wrap (hard-wrapped markdown, "runs for 72 hours\nbefore the rollout"): one line break,
    the line before is plain prose not ending in . ! ? : or |, and the next line goes on in
    lower case. Headings, list items, table rows, Slack messages and blank lines all break.
    """
    if m.group(0).count("\n") > 1:
        return True
    line_start = text.rfind("\n", 0, m.start()) + 1
    prev = text[line_start : m.start()].strip()
    nxt = text[m.end() : m.end() + 80]
    if not prev or prev.endswith((".", "!", "?", ":", "|")) or _BLOCK_START.match(prev):
        return True
    if _SLACK_LINE.match(nxt) or _BLOCK_START.match(nxt):
        return True
    return not (nxt[:1].islower() or nxt[:1] in "(`\"'*")


def ends_with_abbreviation(text: str) -> bool:
    """True when ``text`` ends with an abbreviation ("e.g.", "No.", "D.C.") rather than a
    sentence: the full stop does not end the sentence."""
    text = text.rstrip()
    return bool(_ABBREV.search(text) or _INITIALS.search(text))


def sentence_spans(text: str) -> list[Span]:
    """Sentences (and list/heading/table lines) of ``text`` with their character offsets."""
    cuts: list[tuple[int, int]] = []
    for m in _PUNCT_END.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        if _ABBREV.search(text[line_start : m.start()].rstrip()):
            continue  # "e.g. Foo": not a sentence end
        cuts.append((m.start(), m.end()))
    cuts += [(m.start(), m.end()) for m in _NEWLINES.finditer(text) if _hard_newline(text, m)]
    spans: list[Span] = []
    pos = 0
    for a, b in sorted(cuts):
        if a < pos:
            continue
        _add(spans, text, pos, a)
        pos = b
    _add(spans, text, pos, len(text))
    return spans


def _add(spans: list[Span], text: str, start: int, end: int) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        spans.append(Span(text[start:end], start, end))


def split_sentences(text: str) -> list[str]:
    return [s.text for s in sentence_spans(text)]


def words(text: str) -> list[str]:
    return [w.lower().strip("'_-") for w in _WORD.findall(text)]


def content_words(text: str) -> set[str]:
    """Lower-cased words that carry meaning (no stop words, no 1-letter tokens), crudely stemmed."""
    out = {_stem(w) for w in words(text) if len(w) > 1 and w not in FILLER_WORDS}
    return {w for w in out if w not in FILLER_WORDS}  # "uses" -> "use" is a stop word too


def _stem(w: str) -> str:
    for suf in ("'s", "ies", "es", "s"):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            return w[: -len(suf)] + ("y" if suf == "ies" else "")
    return w


def overlap(a: str, b: str) -> float:
    """Fraction of ``a``'s content words that occur in ``b`` (0 when ``a`` has none)."""
    wa = content_words(a)
    if not wa:
        return 0.0
    return len(wa & content_words(b)) / len(wa)
