"""The checks on an answer, one module each, behind one small interface (:mod:`.base`).

Before generation (the question against what was retrieved):
    premise      a name, number or identifier of the question that no readable source contains
Each sentence of a draft, cheapest first (:class:`SentenceGate`):
    vacuity      states nothing beyond the question and pointers ("see [2]"), or announces a
                 command it does not show ("use the following command:")
    code         its commands and code are verbatim in the source it cites (then their own evidence)
    facts        its amounts, dates, numbers, names are in the source it cites (or it is re-cited)
    support      the answer model's own yes/no "does source [n] state this?" on its KV cache
The answer as a whole (:class:`AnswerGate`):
    asked_kind   a fee, number or time asked for is stated
    answers_question  the answer model's yes/no "does the reply answer exactly this question?"
    subject      the cited sources mention the question's rare words (counted over what the
                 asker may read), names and digit numbers

:class:`Verifier` runs the sentence and answer gates; the answer service uses only this
package's names below, never one check's module.
"""
from kb_chatbot.app.answer.checks.base import (AnswerGate, CheckContext, SentenceCheck, SentenceGate,
                                               Verification)
from kb_chatbot.app.answer.checks.premise import MissingTerm, missing_terms, nothing_about
from kb_chatbot.app.answer.checks.subject import SubjectCheck, not_in_cited
from kb_chatbot.app.answer.checks.verifier import CheckMode, Verifier, unsupported_claims

__all__ = ["AnswerGate", "CheckContext", "CheckMode", "MissingTerm", "SentenceCheck", "SentenceGate", "SubjectCheck",
           "Verification", "Verifier", "missing_terms", "not_in_cited", "nothing_about", "unsupported_claims"]
