"""Specific facts in a sentence, normalised so that the same fact written two ways compares equal.

A *fact* is what a reader would act on and what a small model invents most often: money
("$2,000" = "2,000 dollars" = "USD 2000"), percentages ("15%" = "15 percent"), dates
("March 9, 2027" = "9 March 2027" = "2027-03-09"), other numbers ("ten days" = "10 days"),
proper names and identifiers ("Wi-Fi" = "WiFi", "CSCO", "Q4_K_M"), and quoted strings.

The answer pipeline requires every fact of an answer sentence to occur in the source it cites
(:func:`missing_facts`); the eval compares the facts of an answer with those of the reference
answer (``kb_chatbot.eval.verdict``). Plain code, no model: it is fast, deterministic and cannot be talked
into anything.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Literal

from kb_chatbot.core.text import FILLER_WORDS

FactKind = Literal["money", "percent", "date", "number", "name", "quote"]


@dataclass(frozen=True)
class Fact:
    kind: FactKind
    #: The normalised value: a float for money/percent/number, "YYYY-MM-DD" with "??" for
    #: unknown parts for a date, lower-case word tokens joined by spaces for a name or quote.
    value: float | str
    #: The text as written (for messages).
    text: str
    #: The word after a number ("days", "weeks"), lower-case, singular; "" when none.
    unit: str = ""


_MONTHS = {m: i for i, m in enumerate(
    "january february march april may june july august september october november december".split(), 1)}
_MONTHS.update({m[:3]: i for m, i in list(_MONTHS.items())})
_MONTHS["sept"] = 9
_MONTH_RE = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
             r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?")

_SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if w != "_"}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_SHORT_SCALES = {"k": 1_000, "m": 1_000_000, "mm": 1_000_000, "bn": 1_000_000_000, "b": 1_000_000_000}
_NUMBER_WORD = "|".join(sorted(list(_SMALL) + list(_TENS), key=len, reverse=True))
_CURRENCY_WORDS = r"(?:dollars?|usd|us\$|euros?|eur|pounds?|gbp)"

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_SCALE = r"(?:\s?(?:k|m|mm|bn|b)\b|\s(?:hundred|thousand|million|billion)\b)"
_MONEY = re.compile(
    rf"(?:(?P<cur>[$€£]|\b(?:usd|eur|gbp)\s?)(?P<n1>{_NUM})(?P<s1>{_SCALE})?"
    rf"|\b(?P<n2>{_NUM})(?P<s2>{_SCALE})?\s?{_CURRENCY_WORDS}\b)",
    re.IGNORECASE,
)
_PERCENT = re.compile(rf"\b(?P<n>{_NUM})\s?(?:%|percent\b|per cent\b|pct\b)", re.IGNORECASE)
_DATE_MDY = re.compile(rf"\b(?P<m>{_MONTH_RE})\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?(?:,?\s+(?P<y>\d{{4}}))?\b", re.I)
_DATE_DMY = re.compile(rf"\b(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<m>{_MONTH_RE})(?:,?\s+(?P<y>\d{{4}}))?\b", re.I)
_DATE_MY = re.compile(rf"\b(?P<m>{_MONTH_RE})\s+(?:of\s+)?(?P<y>\d{{4}})\b", re.I)
_DATE_ISO = re.compile(r"\b(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})\b")
_DATE_US = re.compile(r"\b(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4})\b")
_NUMBER = re.compile(
    rf"(?<![\w.])(?P<n>{_NUM})(?P<s>{_SCALE})?(?:st|nd|rd|th)?(?![\w])"
    rf"|\b(?P<w>(?:{_NUMBER_WORD})(?:[- ](?:{_NUMBER_WORD}))?)(?:\s(?P<ws>hundred|thousand|million|billion))?\b",
    re.IGNORECASE,
)
_UNIT = re.compile(r"\s*(?:-\s*)?([a-z]+)", re.IGNORECASE)
_QUOTE = re.compile(r"[\"“”‘’`]([^\"“”‘’`\n]{2,80})[\"“”‘’`]")
#: A Slack channel or a handle ("#tts-bowling", "@kb-admins"); not an e-mail's "@", not a URL's "#".
_HANDLE = re.compile(r"(?<![\w/.&#@])[#@][A-Za-z][\w.-]*[A-Za-z0-9]")
# any script's letters ("Fécamp", "Zürich" are one name each, not "F" and "Z")
_WORDISH = re.compile(r"[^\W_][\w&'.@/+-]*[^\W_]|[^\W_]")
_MARKER = re.compile(r"\[\d+(?:\s*[,;]\s*\d+)*\]")
#: Words written capitalised that are not names (sentence starters, pronouns, answers).
_NOT_NAMES = FILLER_WORDS | frozenset(
    "yes no however therefore also please note according based each every both first second third "
    "finally additionally furthermore overall instead otherwise "
    "am pm et pt ct mt utc gmt est edt pst pdt".split())  # clock and time-zone words
#: Number words that are too common to count as a claimed quantity ("one of the", "a").
_WEAK_NUMBER_WORDS = frozenset({"one", "zero"})


def _fold(text: str) -> str:
    """Lower case, accents removed, typographic dashes and quotes made plain."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return (text.replace("\u2010", "-").replace("\u2011", "-").replace("\u2013", "-").replace("\u2014", "-")
            .replace("\u2019", "'").replace("\u00a0", " ").lower())


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def _scale(s: str | None) -> float:
    if not s:
        return 1.0
    s = s.strip().lower()
    return float(_SHORT_SCALES.get(s) or _SCALES.get(s) or 1)


def words_to_number(text: str) -> int | None:
    """'twenty-five' -> 25, 'ten' -> 10; None when ``text`` is not a number word."""
    total = 0
    for part in re.split(r"[- ]", text.lower()):
        if part in _SMALL:
            total += _SMALL[part]
        elif part in _TENS:
            total += _TENS[part]
        else:
            return None
    return total


def _unit_after(text: str, end: int) -> str:
    m = _UNIT.match(text, end)
    if not m:
        return ""
    w = m.group(1).lower()
    if w in FILLER_WORDS or w in ("and", "or", "to", "of"):
        return ""
    return w[:-1] if w.endswith("s") and len(w) > 3 else w


def _date_value(y: str | None, m: str | int | None, d: str | None) -> str | None:
    month = m if isinstance(m, int) else (_MONTHS.get(m.lower().rstrip(".")) if m and not m.isdigit() else
                                          (int(m) if m else None))
    if month is not None and not 1 <= month <= 12:
        return None
    day = int(d) if d else None
    if day is not None and not 1 <= day <= 31:
        return None
    return f"{y or '????'}-{month:02d}-{day:02d}" if month and day else (f"{y or '????'}-{month:02d}-??" if month else None)


def extract_facts(text: str, *, weak_numbers: bool = False) -> list[Fact]:
    """The specific facts in ``text``, in order. Citation markers ``[n]`` are ignored.

    ``weak_numbers`` also returns "one"/"zero" as numbers (for the source side of a check,
    where recall matters; an answer's "one of the options" is not a claimed quantity).
    """
    text = _MARKER.sub(" ", text)
    out: list[Fact] = []
    taken: list[tuple[int, int]] = []

    def free(a: int, b: int) -> bool:
        return all(b <= s or a >= e for s, e in taken)

    def add(f: Fact, a: int, b: int) -> None:
        out.append(f)
        taken.append((a, b))

    for m in _MONEY.finditer(text):
        n, s = (m.group("n1"), m.group("s1")) if m.group("n1") else (m.group("n2"), m.group("s2"))
        add(Fact("money", _num(n) * _scale(s), m.group(0).strip()), m.start(), m.end())
    for m in _PERCENT.finditer(text):
        if free(m.start(), m.end()):
            add(Fact("percent", _num(m.group("n")), m.group(0).strip()), m.start(), m.end())
    for pattern in (_DATE_ISO, _DATE_US, _DATE_MDY, _DATE_DMY, _DATE_MY):
        for m in pattern.finditer(text):
            if not free(m.start(), m.end()):
                continue
            g = m.groupdict()
            value = _date_value(g.get("y"), g.get("m"), g.get("d"))
            if value:
                add(Fact("date", value, m.group(0).strip()), m.start(), m.end())
    for m in _NUMBER.finditer(text):
        if not free(m.start(), m.end()):
            continue
        if m.group("n"):
            value = _num(m.group("n")) * _scale(m.group("s"))
        else:
            w = m.group("w")
            base = words_to_number(w)
            if base is None or (not weak_numbers and w.lower() in _WEAK_NUMBER_WORDS and not m.group("ws")):
                continue
            value = base * _scale(m.group("ws"))
        add(Fact("number", value, m.group(0).strip(), _unit_after(text, m.end())), m.start(), m.end())
    for m in _HANDLE.finditer(text):  # "#tts-bowling", "@kb-admins": a channel or handle is a name
        if free(m.start(), m.end()) and _tokens(m.group(0)):
            add(Fact("name", " ".join(_tokens(m.group(0))), m.group(0)), m.start(), m.end())
    for m in _QUOTE.finditer(text):
        inner = m.group(1).strip()
        if len(inner.split()) <= 12 and _tokens(inner):
            add(Fact("quote", " ".join(_tokens(inner)), inner), m.start(), m.end())
    out.extend(_names(text, taken))
    return out


def _sentence_starts(text: str) -> set[int]:
    starts = {0}
    for m in re.finditer(r"(?:[.!?:;]\s+|\n\s*(?:[-*•]\s*|\d+[.)]\s*)?|^\s*[-*•]\s*|\(\s*)", text):
        starts.add(m.end())
    return starts


def _is_name_token(tok: str, at_start: bool) -> bool:
    if not any(c.isalpha() for c in tok):
        return False
    core = tok.strip("'.")
    low = core.lower()
    has_digit = any(c.isdigit() for c in core)
    inner_caps = any(c.isupper() for c in core[1:])
    if core.isupper() and len([c for c in core if c.isalpha()]) >= 2:
        return low not in ("i", "ok") and low not in _NOT_NAMES
    if has_digit or inner_caps or "_" in core:
        return True  # identifiers: Q4_K_M, v2, iPhone, ProMat
    if not core[:1].isupper():
        return False
    if at_start or low in _NOT_NAMES:
        return False
    return True


def _names(text: str, taken: list[tuple[int, int]]) -> list[Fact]:
    """Capitalised runs ("Gold", "ProMat Chicago") and identifiers ("CSCO", "Q4_K_M", "v2")."""
    starts = _sentence_starts(text)
    out: list[Fact] = []
    run: list[re.Match[str]] = []

    def flush() -> None:
        if run:
            phrase = text[run[0].start():run[-1].end()]
            out.append(Fact("name", " ".join(_tokens(phrase)), phrase))
            run.clear()

    prev_end = -1
    for m in _WORDISH.finditer(text):
        tok = m.group(0)
        inside = any(s <= m.start() < e for s, e in taken)
        is_name = not inside and _is_name_token(tok, m.start() in starts)
        gap = text[prev_end:m.start()] if prev_end >= 0 else ""
        if is_name and run and gap.strip() == "":
            run.append(m)
        else:
            flush()
            if is_name:
                run.append(m)
        prev_end = m.end()
    flush()
    return [f for f in out if f.value]


@lru_cache(maxsize=4096)
def _tokens_cached(text: str) -> tuple[str, ...]:
    folded = _fold(text)
    folded = re.sub(r"(?<=[a-z0-9])[-_.'/](?=[a-z0-9])", "", folded)  # Wi-Fi = WiFi, Q4_K_M = Q4KM
    return tuple(re.findall(r"[a-z0-9]+", folded))


def _tokens(text: str) -> list[str]:
    return list(_tokens_cached(text))


def _strip_plural(tokens: Iterable[str]) -> list[str]:
    return [t[:-1] if len(t) > 3 and t.endswith("s") else t for t in tokens]


class SourceFacts:
    """What a source text contains, prepared once for many fact lookups."""

    def __init__(self, text: str):
        self.text = text
        self._joined = " " + " ".join(_strip_plural(_tokens(text))) + " "
        # hyphens as spaces too: "Wi-Fi" in the answer, "Wi Fi" in the source
        spaced = re.findall(r"[a-z0-9]+", _fold(text))
        self._joined_spaced = " " + " ".join(_strip_plural(spaced)) + " "
        facts = extract_facts(text, weak_numbers=True)
        self.numbers = {round(float(f.value), 6) for f in facts if f.kind in ("money", "percent", "number")}
        # a year written alone is a number too; a date's parts are numbers as well
        for f in facts:
            if f.kind == "date":
                y, mo, d = str(f.value).split("-")
                if y != "????":
                    self.numbers.add(float(y))
                if d != "??":
                    self.numbers.add(float(d))
        self.dates = [str(f.value) for f in facts if f.kind == "date"]

    def has_phrase(self, phrase_tokens: Iterable[str]) -> bool:
        toks = _strip_plural(phrase_tokens)
        if not toks:
            return True
        needle = " " + " ".join(toks) + " "
        return needle in self._joined or needle in self._joined_spaced

    def has(self, fact: Fact) -> bool:
        if fact.kind in ("money", "percent", "number"):
            return round(float(fact.value), 6) in self.numbers
        if fact.kind == "date":
            return any(_date_compatible(str(fact.value), d) for d in self.dates)
        return self.has_phrase(str(fact.value).split())


def _date_compatible(claimed: str, found: str) -> bool:
    """Every part the claim states (year, month, day) is stated the same in ``found``."""
    for c, f in zip(claimed.split("-"), found.split("-")):
        if "?" in c:
            continue
        if "?" in f or c != f:
            return False
    return True


def missing_facts(sentence: str, sources: Iterable[str] | SourceFacts) -> list[Fact]:
    """Facts of ``sentence`` that none of ``sources`` states (empty: every fact is there)."""
    if isinstance(sources, SourceFacts):
        prepared = [sources]
    else:
        prepared = [s if isinstance(s, SourceFacts) else SourceFacts(s) for s in sources]
    return [f for f in extract_facts(sentence) if not any(p.has(f) for p in prepared)]


def same_fact(a: Fact, b: Fact) -> bool:
    """The two facts state the same thing (kinds that carry a number compare by value)."""
    numeric = ("money", "percent", "number")
    if a.kind in numeric and b.kind in numeric:
        return round(float(a.value), 6) == round(float(b.value), 6)
    if a.kind == "date" and b.kind == "date":
        return _date_compatible(str(a.value), str(b.value)) or _date_compatible(str(b.value), str(a.value))
    if a.kind in ("name", "quote") and b.kind in ("name", "quote"):
        ta, tb = _strip_plural(str(a.value).split()), _strip_plural(str(b.value).split())
        return " ".join(ta) in " ".join(tb) or " ".join(tb) in " ".join(ta)
    return False


def phrase_tokens(text: str) -> list[str]:
    """Lower-case word tokens with hyphens and underscores inside words removed."""
    return _tokens(text)
