"""Each answer check as a unit, through the one interface (gates take a SentenceCheck and a
CheckContext, answer gates the list), and the verifier's order: cheapest first, stop at the
first failure, the model asked only about sentences whose facts hold."""
from __future__ import annotations

from kb_chatbot.app.answer.checks import CheckContext, SentenceCheck, SubjectCheck, Verifier
from kb_chatbot.app.answer.checks.asked_kind import AskedKindGate
from kb_chatbot.app.answer.checks.facts import FactsGate
from kb_chatbot.app.answer.checks.premise import missing_terms
from kb_chatbot.app.answer.checks.support import SupportGate
from kb_chatbot.app.answer.checks.vacuity import VacuityGate
from kb_chatbot.app.answer.citations import extract_citations
from kb_chatbot.app.generators.fake import FakeGenerator
from kb_chatbot.core.types import Chunk, Hit, Principal

HITS = [
    Hit(Chunk(id="c1", doc_id="d1", ordinal=0, text="The Silver plan deductible is $1,500 per person.", start=0, end=48),
        "Benefits", "https://wiki/1", "t", "wiki", score=1.0),
    Hit(Chunk(id="c2", doc_id="d2", ordinal=0, text="Transit passes cost $120 a month and are reimbursed.", start=0, end=51),
        "Commuting", "https://wiki/2", "t", "wiki", score=0.9),
]


def sentence(text: str) -> SentenceCheck:
    s = extract_citations(text, HITS).sentences[0]
    return SentenceCheck(s, s.cited)


def ctx(question: str) -> CheckContext:
    return CheckContext(question, HITS)


def test_vacuity_gate_fails_pointers_and_passes_statements():
    c = VacuityGate().check(sentence("The deductible is listed in [1]."), ctx("What is the deductible?"))
    assert not c.passed and c.vacuous and c.gate == "vacuity"
    ok = sentence("The deductible is $1,500 per person [1].")
    assert VacuityGate().check(ok, ctx("What is the deductible?")) is ok


def test_facts_gate_recites_a_wrong_marker_and_fails_an_invented_amount():
    moved = FactsGate().check(sentence("Transit passes cost $120 a month [1]."), ctx("What do transit passes cost?"))
    assert moved.passed and moved.recited and moved.sources == (2,)
    bad = FactsGate().check(sentence("The deductible is $2,500 [1]."), ctx("What is the deductible?"))
    assert not bad.passed and bad.gate == "facts" and [f.text for f in bad.missing] == ["$2,500"]


def test_facts_gate_cites_a_second_source_that_holds_the_rest_of_the_facts():
    """The sample company's "how do i conect to the vpn from hom?": the app's name from the VPN
    page, the page's name from the onboarding page, the sentence citing only the latter."""
    hits = [Hit(Chunk(id="o", doc_id="o", ordinal=0, text="2. Install the VPN client described on the VPN page.",
                      start=0, end=52), "New Joiner Onboarding", "https://wiki/onboarding", "t", "wiki", score=1.0),
            Hit(Chunk(id="v", doc_id="v", ordinal=0, text="Acme packages WireGuard as the AcmeTunnel app.",
                      start=0, end=46), "VPN and Remote Access", "https://wiki/vpn", "t", "wiki", score=0.9),
            Hit(Chunk(id="p", doc_id="p", ordinal=0, text="Parking costs $5 a day.", start=0, end=23),
                "Parking", "https://wiki/parking", "t", "wiki", score=0.5)]
    s = extract_citations("Install the AcmeTunnel app, as the New Joiner Onboarding page says [1].", hits).sentences[0]
    joined = FactsGate().check(SentenceCheck(s, s.cited), CheckContext("How do I connect to the VPN?", hits))
    assert joined.passed and joined.recited and joined.sources == (1, 2)
    from kb_chatbot.app.answer.checks.base import joined as joined_text

    # both sources are cited in the answer, so the reader finds each fact behind a marker
    assert joined_text([joined]) == "Install the AcmeTunnel app, as the New Joiner Onboarding page says [1][2]."
    s = extract_citations("Install the AcmeTunnel app for $7 a day, says New Joiner Onboarding [1].", hits).sentences[0]
    bad = FactsGate().check(SentenceCheck(s, s.cited), CheckContext("How do I connect to the VPN?", hits))
    assert not bad.passed  # "$7" is in no source: joining sources never excuses a missing fact


def test_support_gate_asks_the_model_and_fails_below_the_cut():
    gen = FakeGenerator(yes=[0.2])
    c = SupportGate(gen).check(sentence("The deductible is $1,500 per person [1]."), ctx("What is the deductible?"))
    assert not c.passed and c.gate == "support" and c.support == 0.2
    c = SupportGate(FakeGenerator(yes=[0.9])).check(sentence("The deductible is $1,500 [1]."), ctx("Deductible?"))
    assert c.passed and c.support == 0.9


def test_asked_kind_gate_fails_an_answer_without_the_amount_asked_for():
    checks = [sentence("Transit passes are reimbursed [2].")]
    out = AskedKindGate().check(checks, ctx("How much do transit passes cost?"))
    assert not out[0].passed and out[0].vacuous and out[0].gate == "asked_kind"
    checks = [sentence("Transit passes cost $120 a month [2].")]
    assert AskedKindGate().check(checks, ctx("How much do transit passes cost?")) == checks


def test_verifier_stops_at_the_first_failing_gate():
    gen = FakeGenerator(yes=[0.9])  # one answer only: a second question to the model would fail
    v = Verifier(gen, mode="slm").verify("The deductible is $9,999 [1]. The deductible is $1,500 per person [1].",
                                         HITS, question="What is the deductible?")
    assert [c.gate for c in v.checks] == ["facts", ""]
    assert v.checks[0].support is None and v.checks[1].support == 0.9
    assert v.text == "The deductible is $1,500 per person [1]."


def test_subject_check_counts_over_what_the_asker_may_read():
    seen = []

    def count(word, principals):
        seen.append(principals)
        return 0 if word == "juice" else 500

    subject = SubjectCheck(count, lambda principals: 1000)
    user = Principal("bob", groups=("eng",))
    assert subject.off_subject("How much juice is delivered?", HITS, {1}, user) == ["juice"]
    assert all(p == user.principals() for p in seen)
    assert SubjectCheck(count, lambda p: 1000, enabled=False).off_subject("juice?", HITS, {1}, user) == []

    def broken(word, principals):
        raise RuntimeError("store gone")
    assert SubjectCheck(broken, lambda p: 1000).off_subject("How much juice?", HITS, {1}, user) == []


def test_premise_names_what_no_source_holds():
    assert [m.label for m in missing_terms("What is the Gold plan deductible?", HITS)] == ["Gold plan"]
    assert missing_terms("What is the Silver plan deductible?", HITS) == []


def test_subject_check_tolerates_word_forms_and_typos():
    from kb_chatbot.app.answer.checks.subject import off_subject_terms

    hit = Hit(Chunk(id="c9", doc_id="d9", ordinal=0, text="Prerequisite: a service account for the operator.",
                    start=0, end=50), "Install", "https://docs/9", "t", "wiki", score=1.0)
    rare = lambda w: 0  # noqa: E731  every word is rare
    assert off_subject_terms("What are the prerequisites of the servise account?", [hit], rare, 1000) == []
    assert off_subject_terms("What are the licence terms?", [hit], rare, 1000) == ["licence", "terms"]


def test_answers_question_gate_fails_what_answers_another_question():
    from kb_chatbot.app.answer.checks.answers_question import AnswersQuestionGate
    from kb_chatbot.app.answer.prompts import build_messages

    q = "How much do transit passes cost?"
    context = CheckContext(q, HITS, build_messages(q, HITS))
    gen = FakeGenerator(yes=[0.1])
    out = AnswersQuestionGate(gen, 0.3).check([sentence("The Silver plan deductible is $1,500 per person [1].")], context)
    assert not out[0].passed and out[0].gate == "answers_question"
    asked = gen.yes_calls[0][-1].content
    assert f'answer exactly this question, and not a related one: "{q}"' in asked and "Reply: The Silver plan" in asked
    assert gen.yes_calls[0][0].content == context.messages[0].content  # the answer prompt's prefix: KV cache reused
    ok = AnswersQuestionGate(FakeGenerator(yes=[0.8]), 0.3).check([sentence("Transit passes cost $120 a month [2].")],
                                                                   context)
    assert ok[0].passed


DOC_HITS = [
    Hit(Chunk(id="d1", doc_id="docs1", ordinal=0, text="To download the packages, run:\n\n    oc adm release mirror "
              "--to-dir=/mirror quay.io/ocp:4.14\n\nThe operator needs OpenShift 4.12 or later.", start=0, end=120),
        "Mirroring", "https://docs/1", "t", "wiki", score=1.0),
    Hit(Chunk(id="d2", doc_id="docs2", ordinal=0, text="Set spec.replicas: 3 in the CR to scale out.", start=0, end=44),
        "Scaling", "https://docs/2", "t", "wiki", score=0.9),
]


def test_code_copied_from_the_source_is_its_own_evidence_and_invented_code_fails():
    def verify(text, question):
        from kb_chatbot.app.answer.checks import Verifier

        gen = FakeGenerator(yes=[0.01] * 5)  # the model would reject everything: code must not need it
        return Verifier(gen, mode="slm").verify(text, DOC_HITS, question=question)

    q = "What command downloads the packages?"
    v = verify("To download the packages, run this command [1]:\n```\noc adm release mirror --to-dir=/mirror "
               "quay.io/ocp:4.14\n```", q)
    assert v.status == "ok" and "oc adm release mirror" in v.text and len(v.checks) == 1
    v = verify("Run `oc adm release mirror --all` [1].", q)
    assert v.status == "none" and v.checks[0].gate == "code"
    v = verify("Set `spec.replicas: 3` in the CR [1].", "Which property scales out the operator?")
    assert v.status == "ok" and "[2]" in v.text  # the code is in [2]: re-cited there


def test_an_announcement_without_the_command_is_vacuous_and_code_questions_need_code():
    from kb_chatbot.app.answer.checks import Verifier
    from kb_chatbot.app.answer.checks.asked_kind import asked_kind, states_kind

    v = Verifier(None, mode="facts").verify("To download the packages, use the following command [1]:", DOC_HITS,
                                            question="How do I download the packages?")
    assert v.status == "vacuous" and v.checks[0].gate == "vacuity"
    assert asked_kind("Which OpenShift versions are required?") == "code"
    assert asked_kind("What command downloads the packages?") == "code"
    assert not states_kind("Use the operator in the console.", "code")
    assert states_kind("OpenShift 4.12 or later.", "code") and states_kind("Run `kb reindex`.", "code")
    v = Verifier(None, mode="facts").verify("Use the operator in the console [1].", DOC_HITS,
                                            question="Which OpenShift versions are required?")
    assert v.status == "vacuous" and v.checks[0].gate == "asked_kind"


def test_a_sentence_that_only_names_the_page_is_vacuous():
    vpn = [Hit(Chunk(id="v1", doc_id="vpn", ordinal=0, text="Open AcmeTunnel and sign in with single sign-on.",
                     start=0, end=48, heading_path=("Connecting",)), "VPN and Remote Access", "https://wiki/vpn", "t",
               "wiki", score=1.0)]
    q = "how do i connect to the vpn from home?"
    pointer = sentence_for("To connect to the VPN from home, follow the instructions in the VPN and Remote Access "
                           "section of the VPN and Remote Access document [1].", vpn)
    out = VacuityGate().check(pointer, CheckContext(q, vpn))
    assert not out.passed and out.vacuous
    real = sentence_for("Open AcmeTunnel and sign in with single sign-on [1].", vpn)
    assert VacuityGate().check(real, CheckContext(q, vpn)).passed


def sentence_for(text: str, hits) -> SentenceCheck:
    s = extract_citations(text, hits).sentences[0]
    return SentenceCheck(s, s.cited)


def test_a_dangling_announcement_is_trimmed_from_a_sentence_that_states_its_fact():
    from kb_chatbot.app.answer.checks import Verifier

    fmla = [Hit(Chunk(id="f1", doc_id="fmla", ordinal=0, text="You can request up to 12 weeks of unpaid leave per 12 "
                      "month period for the following:\n\n- the birth of a child\n- a serious health condition",
                      start=0, end=120), "FMLA", "https://wiki/fmla", "t", "wiki", score=1.0)]
    q = "How much unpaid leave does FMLA give me in a 12-month period?"
    # the full stop after the colon (as the marker leaves it) hid the announcement before
    c = VacuityGate().check(sentence_for("You can request up to 12 weeks of unpaid leave per 12 month period for "
                                         "the following: [1].", fmla), CheckContext(q, fmla))
    assert c.passed and c.sentence.claim == "You can request up to 12 weeks of unpaid leave per 12 month period."
    assert c.sentence.text == "You can request up to 12 weeks of unpaid leave per 12 month period [1]."
    v = Verifier(None, mode="facts").verify("You can request up to 12 weeks of unpaid leave per 12 month period for "
                                            "the following: [1].", fmla, question=q)
    assert v.status == "ok" and v.text == "You can request up to 12 weeks of unpaid leave per 12 month period [1]."
    # nothing of its own left: still fails, with or without the full stop
    for text in ("To download the packages, use the following command: [1].",
                 "To download the packages, use the following command: [1]"):
        out = Verifier(None, mode="facts").verify(text, DOC_HITS, question="How do I download the packages?")
        assert out.status == "vacuous" and out.checks[0].gate == "vacuity", text
    # a colon that introduces what follows in the same sentence is not an announcement
    assert VacuityGate().check(sentence_for("The allowance is: 12 weeks per year [1].", fmla),
                               CheckContext(q, fmla)).passed
