"""Asked kind: a question that asks for a fee, a number or a time ("What fee is charged…", "How
many days…", "When…") is not answered by sentences that state none (the 1.5B model answered a
fee question with "30-60 minutes after booking", every word of it in a source). An answer gate:
when no sentence still standing states that kind of fact, they all fail as vacuous (the answer
is regenerated once, then abstains). A question for a command, a setting or a version needs
one in the answer ("use the operator in the console" answers no "which versions are required?")."""
from __future__ import annotations

import re
from typing import Literal

from kb_chatbot.app.answer.checks.base import CheckContext, SentenceCheck, failed
from kb_chatbot.app.answer.facts import extract_facts

AskedKind = Literal["money", "quantity", "time", "code"]

#: "What fee is charged…", "How much does it cost…", "What is the price of…": an amount of money.
_ASKS_MONEY = re.compile(
    r"\b(?:what|which)\s+(?:\w+\s+){0,2}(?:fee|fees|cost|costs|price|prices|charge|charges|fine|rent|premium|deductible|copay|co-pay)\b"
    r"(?!\s+(?:center|centre|code|account|category|type|structure|schedule|table|list|card|object|string|estimate))"
    r"|\bhow\s+much\b(?:\s+\w+){0,6}?\s+(?:cost|costs|charge|charged|spend|spent|reimbursed?|owe|be\s+paid|get\s+paid"
    r"|pay(?!\s+(?:period|periods|grade|scale|check|stub|day|days|rate|band|plan|leave)))\b"
    r"|\bhow\s+much\s+(?:money|is\s+the\s+(?:fee|cost|price|charge))\b",
    re.IGNORECASE,
)
#: "How many days…", "How long…", "How far in advance…", "What percentage…": a number.
_ASKS_QUANTITY = re.compile(
    r"\bhow\s+(?:many|much|long|far|old|large|big|tall|high|often)\b"
    r"|\bwhat\s+(?:percentage|percent|share|portion|fraction|proportion|number|amount)\b",
    re.IGNORECASE,
)
#: "When were the supplies delivered?", "What date…", "In what year…": a time, at the start of
#: the question only ("What happens when I …" asks for something else).
_ASKS_TIME = re.compile(
    r"^\W*(?:when\b|by\s+when\b|how\s+soon\b|(?:at|on|in|by)?\s*what\s+(?:time|date|day|year|month|week|hour)\b)",
    re.IGNORECASE,
)
#: Times written without a date or a number ("every Monday", "before the trip", "upon arrival"),
#: and the conditions that answer "When do I need a receipt?" ("if", "when").
_TEMPORAL = re.compile(
    r"\b(?:when|if|before|after|until|till|by|during|within|whenever|while|once|upon|prior|every|each|daily|weekly|"
    r"monthly|quarterly|annually|yearly|today|tomorrow|yesterday|tonight|morning|afternoon|evening|night|noon|"
    r"midnight|weekdays?|weekends?|mondays?|tuesdays?|wednesdays?|thursdays?|fridays?|saturdays?|sundays?|"
    r"spring|summer|autumn|fall|winter|year|years|month|months|week|weeks|days?|hours?|minutes?|ago|later|"
    r"soon|immediately|deadline|season|semester|quarter|start|end|beginning|now|never|always|anytime)\b",
    re.IGNORECASE,
)
_NO_CHARGE = re.compile(r"\b(?:free|no\s+(?:fee|charge|cost)s?|(?:without|at\s+no)\s+(?:charge|cost)|not\s+charged)\b", re.I)
#: Quantities written without digits ("a week", "half the rate", "twice a year", "none").
_WORDY_QUANTITY = re.compile(
    r"\b(?:none|no|half|quarter|third|once|twice|thrice|several|few|dozen|daily|weekly|monthly|quarterly|"
    r"yearly|annually|hourly|biweekly|all|every|unlimited|same\s+day|next\s+day|immediately)\b"
    r"|\ban?\s+(?:minute|hour|day|week|month|year|mile|kilometer|page|percent)\b",
    re.IGNORECASE,
)


#: "Which command…", "What version of…", "Which property sets…": the thing itself (code, a key,
#: a version number), as technical documentation states it.
_ASKS_CODE = re.compile(
    r"\b(?:what|which)\s+(?:\w+\s+){0,2}(?:command|commands|cli|flag|flags|option|property|properties|parameter|"
    r"parameters|setting|key|variable|version|versions|endpoint|url|path|port)\b"
    r"|\bwhat\s+(?:do|should|must)\s+i\s+(?:run|type|enter)\b",
    re.IGNORECASE,
)
_STATES_CODE = re.compile(r"`[^`]+`|\b\d+\.\d+(?:\.\d+)*\b|\b[\w-]+=\S+|(?<!\w)--?[a-z][\w-]*|\b\w+\.\w+[\w./-]*|"
                          r"\b[a-z]+[_-][a-z0-9_-]+\b|\b[A-Z][A-Z0-9_]{2,}\b")


def asked_kind(question: str) -> AskedKind | None:
    """The kind of fact a question asks for, when its wording says so plainly: "money" for a
    fee, cost or price; "quantity" for how many, how long, how far, what share; "time" for
    when, what date, what year; None otherwise (a yes/no, who, what, why or how question:
    anything could answer it)."""
    if _ASKS_CODE.search(question):
        return "code"
    if _ASKS_MONEY.search(question):
        return "money"
    if _ASKS_QUANTITY.search(question):
        return "quantity"
    if _ASKS_TIME.search(question):
        return "time"
    return None


def states_kind(text: str, kind: AskedKind) -> bool:
    """True when ``text`` states a fact of that kind: for money an amount ("$35", "35 dollars")
    or that there is none ("free", "no fee"); for a quantity any number, percentage, amount or
    date, or a quantity in words ("a week", "twice a year", "none"); for a time a date, a
    number (a year, "4:30 PM") or a word of time ("every Monday", "before the trip")."""
    if kind == "code":  # a span of code, a version, key=value, a --flag, a dotted or snake_case name
        return bool(_STATES_CODE.search(text))
    facts = extract_facts(text, weak_numbers=True)
    if kind == "money":  # "80% of the premium" and "65.5 cents a mile" answer how much is paid too
        return (any(f.kind in ("money", "percent") or f.unit in ("cent", "penny", "pennie") for f in facts)
                or bool(_NO_CHARGE.search(text)))
    if kind == "time":
        return any(f.kind in ("date", "number", "money", "percent") for f in facts) or bool(_TEMPORAL.search(text))
    return any(f.kind in ("money", "percent", "number", "date") for f in facts) or bool(_WORDY_QUANTITY.search(text))


class AskedKindGate:
    name = "asked_kind"

    def check(self, checks: list[SentenceCheck], ctx: CheckContext) -> list[SentenceCheck]:
        kind = asked_kind(ctx.question)
        standing = [c for c in checks if c.passed]
        if kind is None or not standing or any(states_kind(c.sentence.claim, kind) for c in standing):
            return checks
        what = {"money": "an amount of money", "quantity": "a number", "time": "a time or a date",
                "code": "a command, setting or version"}[kind]
        return [failed(c, self.name, f"the question asks for {what}; the answer states none", vacuous=True)
                if c.passed else c for c in checks]
