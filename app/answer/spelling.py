"""Spelling correction of a question against the knowledge base's own vocabulary.

Real users type 'how do i conect to the vpn from hom?', 'comands', 'servises', 'Howw',
'Normaandy', 'Robett's army': the premise and subject checks then found "nothing about
'conect'" and declined questions the knowledge base answers. A word of the question that no
readable chunk writes (and no common word of the language) is replaced by the closest way the
knowledge base writes a near word (Norvig's noisy channel, with the candidates from the
index): the words one edit away whose index term (the FTS5 Porter stem) a chunk holds, plus,
for words of 8+ letters, the terms within two edits (rapidfuzz); their written forms are read
from chunks the asker may read. The fewest edits win; on a tie a doubled letter typed once or
twice ('cary' -> 'carry', not 'car'; 'usee' -> 'use', not 'user'), then the more frequent word,
in English (``wordfreq``) and in the knowledge base ('whwt' -> 'what', not 'wwt'; 'modeo' ->
'model', not 'mode'); near-equal ones by the question's words beside them, as the sources
write them ('annual leav' -> 'annual leave', though they write 'lead' as often). A question's
mistyped first word is a question word when one is an edit away ('Whar' -> 'What', not the
'War' a history writes). The corrected question is what retrieval, the checks and the prompt get,
and the page says "Showing results for …".

A common word of the language is never corrected (the embedder's word list and ``wordfreq``
say which: 'worms' stays 'worms' in a question about a duck's food, so the subject check still
sees it missing); a rare one is only when a doubled letter or the knowledge base's own near word
says it was mistyped ('rued' -> 'ruled', 'tthe' -> 'the'). A capitalised word inside a sentence
is a name: it is corrected only into a name the knowledge base writes capitalised ('Normaandy'
-> 'Normandy', 'Cypruq' -> 'Cyprus'), never into a common word ('the TTS Gold plan' is not
'old'). A possessive is corrected without its "'s" ('Robett's' -> 'Robert's'). Fails closed: a
correction is only ever a word found in a chunk the asker may read, so a correction never
reveals a hidden document's words. A 3-letter word English hardly knows is corrected only by
a letter put back, two swapped or a keyboard neighbour ('wrk' -> 'work'); one it knows a
little and the sources do not write, the same way into a far commoner word ('hom' -> 'home').
Left alone: shorter words, words with a digit, an inner capital or all capitals ('VPN', 'iOS',
'GS-15').
"""
from __future__ import annotations

import logging
import math
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

from kb_chatbot.core.text import KEYBOARD_NEIGHBOURS, STOPWORDS

log = logging.getLogger(__name__)

_WORD = re.compile(r"(?<![\w'])([A-Za-z]+)('s|s'|')?(?![\w'])")
MIN_LETTERS = 4
#: A lower-case word of 3 letters that English hardly knows (Zipf below this: 'tme' 2.0, 'hte'
#: 2.3; but 'mus' 3.0, 'ssl', 'api' more) is corrected too, only by the letter it lost, two
#: letters swapped or a keyboard neighbour, into a common word the asker's sources write
#: ('wrk' -> 'work', 'hte' -> 'the').
SHORT_ZIPF = 2.5
#: A 3-letter word English knows a little (Zipf from SHORT_ZIPF to COMMON_ZIPF: 'hom' 2.8, 'cna'
#: 2.8, 'wth' 2.9) that no readable chunk writes is corrected the same way, only into a word at
#: least this much commoner (1,000x: 'hom' -> 'home', 5.8): "how do i conect to the vpn from hom?".
SHORT_COMMONER = 2.5
#: Index terms within two edits looked at per unknown long word (their written forms are read from chunks).
CANDIDATES = 40
#: Words of this many letters may have two edits; shorter ones one.
LONG_WORD = 8
#: A word this common in English (``wordfreq``'s Zipf: log10 of uses per billion words;
#: 'worms' 3.8, 'serviced' 3.3) is never a typo; a rarer one ('rued' 1.7, 'conquerer' 1.6) may
#: be, when the knowledge base writes a near word; typos mostly score 0-2.5 ('wass', 'inyo').
COMMON_ZIPF = 3.0
#: ... and a rarer word is corrected only into a word this much more frequent (Zipf plus log10
#: of the knowledge base's chunks holding it): 'rued' (1.7) -> 'ruled' (4.3).
RARER = 1.0
#: The prior of a correction: its Zipf frequency in English plus this times log10 of the chunks
#: holding it (a knowledge base's own words weigh more: 'Nomans' -> 'Normans', not 'Romans')...
KB_WEIGHT = 2.0
#: ... plus this for a doubled letter typed single or twice ('cary' -> 'carry', not 'car'; but
#: 'tass' -> 'task', not a rare 'tas').
DOUBLED_BONUS = 1.5
#: ... minus this for each letter typed as one not next to it on the keyboard.
FAR_KEY = 1.5
#: Near-equal corrections (the same edits, priors within this) are told apart by the question's
#: neighbouring words: the one the asker's sources write beside them wins ('annual leav' is
#: 'annual leave', not the 'lead' a handbook writes a little more often), as a noisy channel
#: with a bigram model would.
CONTEXT_MARGIN = 1.0
#: A word at least this common in English whose index term the knowledge base holds is another
#: form of a word it writes ('computations', 'besiege'), not a typo.
INFLECTION_ZIPF = 2.0
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
#: A mistyped first word of a question is a question word when one is an edit away: 'Whar' is
#: 'What', 'Wbere' 'Where', 'Hiw' 'How', though a knowledge base about wars writes 'War',
#: 'Were' and 'His' far more often than questions do (SQuAD's typo copy, ``kb eval spelling``).
#: They are the language's words, not the knowledge base's: offering them reveals nothing.
QUESTION_WORDS = frozenset({"what", "where", "when", "which", "who", "whom", "whose", "why", "how"})


@dataclass(frozen=True)
class Spelling:
    text: str
    #: (as typed, as corrected), in question order
    fixes: tuple[tuple[str, str], ...] = ()


@lru_cache(maxsize=65536)
def zipf(word: str) -> float:
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en")


def _fold(text: str) -> str:
    """Accents dropped ('Jumièges' is 'Jumieges': people type names without them)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _undoubled(word: str) -> str:
    return re.sub(r"(.)\1+", r"\1", word)


def _far_keys(typed: str, meant: str) -> int:
    """Letters of ``meant`` typed as another letter not next to it on the keyboard: an unlikely
    slip ('Nomans' is 'Normans' with the 'r' dropped rather than 'Romans' with 'R' typed 'N')."""
    from rapidfuzz.distance import Levenshtein

    return sum(1 for op, i, j in Levenshtein.editops(meant, typed).as_list()
               if op == "replace" and typed[j] not in KEYBOARD_NEIGHBOURS.get(meant[i], ""))


def _edits1(word: str) -> set[str]:
    """Every string one deletion, transposition, substitution or insertion from ``word``."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    return ({a + b[1:] for a, b in splits if b}
            | {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
            | {a + c + b[1:] for a, b in splits if b for c in _ALPHABET}
            | {a + c + b for a, b in splits for c in _ALPHABET})


def _starts_sentence(text: str, at: int) -> bool:
    before = text[:at].rstrip()
    return not before or before[-1] in ".?!:\"'(“"


def _shape(word: str) -> str | None:
    """'lower', 'title' (a capitalised word: a name inside a sentence) or None (left alone:
    codes, acronyms, inner capitals). 'HHow' at the start of a sentence is 'How' typed with
    the capital doubled."""
    if word.islower():
        return "lower"
    rest = word[2:] if len(word) > 2 and word[0] == word[1] and word[0].isupper() else word[1:]
    if word[0].isupper() and rest.islower():
        return "title"
    return None


class SpellChecker:
    """``vocabulary()``: the index's terms -> chunk counts; ``stems(words)``: the index
    tokenizer's term of each word; ``surface(word, principals)``: how the term of a word is
    written in chunks the principals may read, as written (case kept), with counts (empty when
    they may read none); ``dictionary(word)``: a word of the language (the embedder's word list)."""

    def __init__(self, vocabulary: Callable[[], dict[str, int]], stems: Callable[[Sequence[str]], list[str]],
                 surface: Callable[[str, frozenset[str]], dict[str, int]],
                 dictionary: Callable[[str], bool] | None = None,
                 phrases: Callable[[str, frozenset[str]], int] | None = None):
        self.vocabulary = vocabulary
        self.stems = stems
        self.surface = surface
        self.dictionary = dictionary
        #: chunks the principals may read that write a phrase (``Store.phrase_chunk_count``)
        self.phrases = phrases

    def correct(self, question: str, principals: frozenset[str]) -> Spelling:
        try:
            return self._correct(question, principals)
        except Exception as e:  # a speller failure keeps the question as typed
            log.warning("spelling failed error=%r", e)
            return Spelling(question)

    def _correct(self, question: str, principals: frozenset[str]) -> Spelling:
        vocab = None
        fixes: list[tuple[str, str]] = []
        out, pos = [], 0
        matches = list(_WORD.finditer(question))
        for k, m in enumerate(matches):
            word = m.group(1)
            at_start = _starts_sentence(question, m.start())
            shape = _shape(word)
            if shape is None or len(word) < MIN_LETTERS - 1:
                continue
            name = shape == "title" and not at_start  # a name: corrected only into a name
            fixed = self._question_word(word.lower()) if at_start else None
            if fixed is None:
                short = len(word) < MIN_LETTERS
                if short and (name or zipf(word) >= COMMON_ZIPF):
                    continue
                if vocab is None:
                    vocab = self.vocabulary()
                    if not vocab:
                        return Spelling(question)
                context = tuple(w.group(1).lower() for w in (matches[k - 1] if k else None,
                                                                 matches[k + 1] if k + 1 < len(matches) else None)
                                if w is not None and w.group(1).lower() not in STOPWORDS)
                fixed = (self._fix_short(word.lower(), principals) if short
                         else self._fix(word.lower(), vocab, principals, name, context))
            if fixed is None:
                continue
            if word[0].isupper():  # 'Howw' -> 'How', 'HHow' -> 'How', 'Nrmans' -> 'Normans'
                fixed = fixed[0].upper() + fixed[1:]
            out.append(question[pos:m.start(1)] + fixed)
            pos = m.end(1)
            fixes.append((m.group(0), fixed + (m.group(2) or "")))
        if not fixes:
            return Spelling(question)
        out.append(question[pos:])
        text = "".join(out)
        log.info("spelling fixes=%d", len(fixes))
        return Spelling(text, tuple(fixes))

    def _question_word(self, word: str) -> str | None:
        """The question word a sentence's mistyped first word was meant to be, or None: one
        edit away, the nearest on the keyboard, then the commonest ('whre' -> 'where')."""
        if word in QUESTION_WORDS or zipf(word) >= COMMON_ZIPF or self.dictionary is not None and self.dictionary(word):
            return None
        near = _edits1(word) & QUESTION_WORDS
        return max(near, key=lambda w: (-_far_keys(word, w), zipf(w))) if near else None

    def _forms(self, word: str, principals: frozenset[str]) -> dict[str, tuple[int, int]]:
        """How the index term of ``word`` is written in readable chunks: lower-case form ->
        (times written, times written capitalised)."""
        forms: dict[str, tuple[int, int]] = {}
        for form, n in self.surface(word, principals).items():
            low = form.lower()
            total, caps = forms.get(low, (0, 0))
            forms[low] = (total + n, caps + (n if form[:1].isupper() else 0))
        return forms

    def _fix(self, word: str, vocab: dict[str, int], principals: frozenset[str], name: bool,
             context: tuple[str, ...] = ()) -> str | None:
        """The knowledge base's word ``word`` was meant to be, or None (kept as typed).
        ``context``: the question's content words beside it (for :data:`CONTEXT_MARGIN`)."""
        from rapidfuzz import distance, process

        if zipf(word) >= COMMON_ZIPF or self.dictionary is not None and self.dictionary(word):
            # a common word ('worms', 'Gold') is the subject asked about, never a typo; unless a
            # letter typed twice or once makes a far commoner word the asker's sources write
            # ('thee' -> 'the', 'cary' -> 'carry')
            slips = {word[:i] + word[i + 1:] for i in range(len(word) - 1) if word[i] == word[i + 1]}
            slips |= {word[:i] + word[i] + word[i:] for i in range(len(word))}
            slips = {w for w in slips if zipf(w) >= zipf(word) + RARER and self._readable(w, principals, name)}
            return max(slips, key=zipf) if slips else None
        [stem] = self.stems([word])
        if stem in vocab and (zipf(word) >= INFLECTION_ZIPF or word in {_fold(f) for f in self._forms(word, principals)}):
            return None  # the knowledge base writes it so (accents aside: 'Jumieges'), or another
            # form of it that English knows ('computations' of a source saying 'computational')
        limit = 2 if len(word) >= LONG_WORD else 1
        options: list[tuple[int, float, str]] = []
        forms: dict[str, dict[str, tuple[int, int]]] = {}

        def offer(form: str, term: str, n: int, caps: int) -> None:
            if name and (caps * 2 < n or len(form) < MIN_LETTERS):
                return  # a name is corrected only into a name ('Gold' is never 'old', 'Acme' never 'Ace')
            d = distance.Levenshtein.distance(word, form)
            if 0 < d <= limit:
                prior = zipf(form) + KB_WEIGHT * math.log10(1 + vocab.get(term, 0)) - FAR_KEY * _far_keys(word, form)
                if _undoubled(word) == _undoubled(form):  # a doubled letter typed single or twice
                    prior += DOUBLED_BONUS  # is the likeliest slip ('cary' -> 'carry', not 'car')
                options.append((d, -prior, form))

        near = sorted(_edits1(word))
        for e, t in zip(near, self.stems(near)):
            if t not in vocab:
                continue
            written = forms[t] = forms.get(t) or self._forms(e, principals)  # asked by the word: a
            # term need not be its own stem ('employe', of 'employees', stems again to 'employ')
            if written and e not in written and zipf(e) >= INFLECTION_ZIPF:
                # a form of a word the asker's sources write ('invaade' -> 'invade' where they say 'invaded')
                offer(e, t, sum(n for n, _ in written.values()), sum(c for _, c in written.values()))
        if limit > 1:
            for t, _d, _i in process.extract(stem, list(vocab), scorer=distance.Levenshtein.distance,
                                             score_cutoff=limit + 1, limit=CANDIDATES):
                if t not in forms:
                    forms[t] = self._forms(t, principals)
        for t, written in forms.items():
            for form, (n, caps) in written.items():
                offer(form, t, n, caps)
        if not options:
            return None
        best = min(options)
        close = [o for o in options if o[0] == best[0] and o[1] - best[1] <= CONTEXT_MARGIN]
        # the index matches stems ('dos' is 'do'), so function words have no context to read
        if (context and self.phrases is not None and len(close) > 1
                and not {o[2] for o in close} & STOPWORDS
                and not set(self.stems([o[2] for o in close])) & STOPWORDS):
            seen = {o[2]: sum(self.phrases(f"{a} {b}", principals) for n in context
                              for a, b in ((n, o[2]), (o[2], n))) for o in close}
            if max(seen.values()) > 0:
                best = min(close, key=lambda o: (-seen[o[2]], o))
        if zipf(word) >= INFLECTION_ZIPF and -best[1] < zipf(word) + RARER:
            return None  # a rare word of the language ('rued') stays unless the near word is far commoner
        return best[2]

    def _fix_short(self, word: str, principals: frozenset[str]) -> str | None:
        """A 3-letter word English hardly knows: the commonest word (Zipf >= 3) the asker's
        sources write that it becomes by one letter put back, two letters swapped or a letter
        typed as its keyboard neighbour ('arw' -> 'are', not 'raw'); other edits are too many
        from 3 letters ('sso' would be 'so', 'sse', 'ssl', ...)."""
        if self.dictionary is not None and self.dictionary(word):
            return None
        known = zipf(word) >= SHORT_ZIPF  # a word English knows a little ('hom' 2.8, 'cna' 2.8)
        if known and self._readable(word, principals, False):
            return None  # ... that the asker's sources write: theirs, not a typo
        near = {word[:i] + c + word[i:] for i in range(len(word) + 1) for c in _ALPHABET}
        near |= {word[:i] + word[i + 1] + word[i] + word[i + 2:] for i in range(len(word) - 1)}
        near |= {word[:i] + c + word[i + 1:] for i in range(len(word)) for c in KEYBOARD_NEIGHBOURS.get(word[i], "")}
        near = {w for w in near if w != word and zipf(w) >= COMMON_ZIPF and self._readable(w, principals, False)}
        best = max(near, key=zipf) if near else None
        if best is not None and known and zipf(best) < zipf(word) + SHORT_COMMONER:
            return None  # only into a far commoner word ('hom' -> 'home' 5.8)
        return best

    def _readable(self, form: str, principals: frozenset[str], name: bool) -> bool:
        """A chunk the asker may read writes ``form`` (capitalised, for a name)."""
        n, caps = self._forms(form, principals).get(form, (0, 0))
        return n > 0 and (not name or caps * 2 >= n)
