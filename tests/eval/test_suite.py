"""`kb eval suite`: several sets (JSONL over a folder, SQuAD whose paragraphs become the corpus)
and their typo copies, one table and one plot; the sample keeps unanswerable questions."""
from __future__ import annotations

import json

from click.testing import CliRunner

from kb_chatbot.app.kb.cli import main
from kb_chatbot.eval.questions import EvalQuestion, load_questions
from kb_chatbot.eval.suite import sample
from kb_chatbot.eval.typos import perturb_word, typo_copy

SQUAD = {"version": "v2.0", "data": [{"title": "Harbours", "paragraphs": [
    {"context": "The harbour of Dunmore was built in 1821 by the engineer Alexander Nimmo.",
     "qas": [{"id": "s1", "question": "Who built the harbour of Dunmore?", "is_impossible": False,
              "answers": [{"text": "Alexander Nimmo", "answer_start": 52}]},
             {"id": "s2", "question": "Who destroyed the harbour of Dunmore in 1821?", "is_impossible": True,
              "answers": [], "plausible_answers": [{"text": "Alexander Nimmo", "answer_start": 52}]}]},
    {"context": "Ferries to the islands leave twice a day in summer.",
     "qas": [{"id": "s3", "question": "How often do ferries leave in summer?", "is_impossible": False,
              "answers": [{"text": "twice a day", "answer_start": 29}]}]}]}]}


def test_a_suite_runs_each_set_and_its_typo_copy(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pto.md").write_text("# Paid time off\n\nEvery employee gets 25 days of paid time off per year.\n")
    (tmp_path / "q.jsonl").write_text(json.dumps(
        {"id": "pto", "question": "How many days of paid time off do employees get?",
         "expected_answer": "25 days.", "expected_sources": [{"file": "pto.md"}]}) + "\n" + json.dumps(
        {"id": "moon", "question": "Where is the moon base cafeteria?", "answerable": False}) + "\n")
    (tmp_path / "squad.json").write_text(json.dumps(SQUAD))
    (tmp_path / "kb.yaml").write_text("data_dir: runtime\nembedding:\n  model: hash\ngenerator:\n  backend: fake\n")
    (tmp_path / "suite.yaml").write_text(
        "sets:\n"
        "  - {name: tiny, questions: q.jsonl, config: kb.yaml, corpus_name: docs, corpus_path: docs}\n"
        "  - {name: harbours, questions: squad.json, config: kb.yaml, corpus_name: harbours}\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["-c", str(tmp_path / "kb.yaml"), "eval", "suite", str(tmp_path / "suite.yaml"),
                                    "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    suite = json.loads((out / "suite.json").read_text())
    assert list(suite["sets"]) == ["tiny", "tiny~typo", "harbours", "harbours~typo"]
    assert suite["sets"]["harbours"]["n"] == 3 and suite["sets"]["harbours"]["n_unanswerable"] == 1
    assert (out / "suite.png").stat().st_size > 0 and "| harbours~typo |" in (out / "suite.md").read_text()
    # the SQuAD paragraphs were indexed as the corpus: the answerable question's paragraph was found
    rec = json.loads((out / "harbours" / "results.json").read_text())
    [run] = rec["retrieval"].values()
    assert run["summary"]["file"]["hit@5"] == 1.0
    typo = json.loads((out / "harbours~typo" / "results.json").read_text())
    [arun] = typo["answers"].values()
    assert all(r["id"].endswith("~typo") for r in arun["records"])
    # a change that can only touch typo copies is judged on them alone
    res = CliRunner().invoke(main, ["-c", str(tmp_path / "kb.yaml"), "eval", "suite", str(tmp_path / "suite.yaml"),
                                    "--only", "harbours~typo,tiny", "--out", str(tmp_path / "only"), "-q"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert list(json.loads((tmp_path / "only" / "suite.json").read_text())["sets"]) == ["tiny", "tiny~typo",
                                                                                       "harbours~typo"]
    res = CliRunner().invoke(main, ["-c", str(tmp_path / "kb.yaml"), "eval", "suite", str(tmp_path / "suite.yaml"),
                                    "--only", "nowhere~typo", "-q"])
    assert res.exit_code != 0 and "nowhere" in res.output


def test_the_sample_keeps_unanswerable_questions_and_typos_are_seeded(tmp_path):
    qs = [EvalQuestion(f"a{i}", f"question number {i} about leave", "x", answerable=i % 10 != 0) for i in range(100)]
    picked = sample(qs, 30, seed=3)
    assert len(picked) == 30 and sum(not q.answerable for q in picked) == 10  # a third, though 10% in the set
    assert picked == sample(qs, 30, seed=3) and picked != sample(qs, 30, seed=4)
    copy = typo_copy(qs[:20], seed=1)
    assert copy == typo_copy(qs[:20], seed=1)
    assert all(c.question != q.question and c.metadata["clean_question"] == q.question for c, q in zip(copy, qs))
    import random

    rng = random.Random(0)
    edits = {perturb_word("connect", rng) for _ in range(200)}
    assert "conect" in edits and "connnect" in edits and any(len(e) == 7 and e != "connect" for e in edits)


def test_squad_questions_and_corpus(tmp_path):
    from kb_chatbot.eval.questions import write_squad_corpus

    (tmp_path / "squad.json").write_text(json.dumps(SQUAD))
    qs = load_questions(tmp_path / "squad.json")
    assert [(q.id, q.answerable, q.expected_files) for q in qs] == [
        ("s1", True, ("harbours-p01.md",)), ("s2", False, ()), ("s3", True, ("harbours-p02.md",))]
    folder = write_squad_corpus(tmp_path / "squad.json", tmp_path / "corpus")
    assert sorted(p.name for p in folder.iterdir()) == ["harbours-p01.md", "harbours-p02.md"]


def test_spelling_figures_count_restored_words_wrong_fixes_and_changed_clean_questions():
    from kb_chatbot.eval.spelling import spelling_figures

    qs = [EvalQuestion("v", "How many vacation days do employees get per year?", "25 days."),
          EvalQuestion("r", "Where are receipts for travel expenses submitted?", "In Concur.")]
    typed = {t.question: t.metadata["clean_question"] for seed in (1, 2) for t in typo_copy(qs, seed=seed)}
    as_typed = spelling_figures(qs, lambda text: text, seeds=(1, 2))
    assert as_typed.typo_words > 0 and as_typed.restored == as_typed.wrong_fixes == as_typed.clean_changed == 0
    perfect = spelling_figures(qs, lambda text: typed.get(text, text), seeds=(1, 2))
    assert perfect.restored == perfect.typo_words == as_typed.typo_words and perfect.wrong_fixes == 0
    # a speller that turns 'days' into 'dogs' everywhere: a wrong fix in each copy, a clean question changed
    dogs = spelling_figures(qs, lambda text: typed.get(text, text).replace("days", "dogs"), seeds=(1, 2))
    assert dogs.wrong_fixes == 2 and dogs.clean_changed == 1 and {w[1:] for w in dogs.wrong} == {("dogs", "days")}
    # a question that misspells a word itself ('recepits'), fixed as in its clean copy: not a wrong fix
    own = [EvalQuestion("o", "Where are recepits for travel expenses submitted?", "In Concur.")]
    fixed = spelling_figures(own, lambda text: text.replace("recepits", "receipts"), seeds=(1, 2))
    assert fixed.own_fixes >= 1 and fixed.wrong_fixes == 0 and fixed.clean_changed == 1
    assert {o[1:] for o in fixed.own} == {("receipts", "recepits")}


def test_kb_eval_spelling_reports_each_set_against_its_own_index(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pto.md").write_text("# Paid time off\n\nEvery employee gets twenty days of paid vacation per year. "
                                 "Receipts for travel expenses are submitted in Concur within thirty days.\n")
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(q) for q in [
        {"id": "pto", "question": "How many days of paid vacation does every employee get?", "expected_answer": "20"},
        {"id": "receipts", "question": "Where are receipts for travel expenses submitted?", "expected_answer": "Concur"},
    ]) + "\n")
    (tmp_path / "kb.yaml").write_text("data_dir: runtime\nembedding:\n  model: hash\ngenerator:\n  backend: fake\n")
    (tmp_path / "suite.yaml").write_text(
        "sets:\n  - {name: tiny, questions: q.jsonl, config: kb.yaml, corpus_name: docs, corpus_path: docs}\n")
    out = tmp_path / "spelling.json"
    res = CliRunner().invoke(main, ["-c", str(tmp_path / "kb.yaml"), "eval", "spelling", str(tmp_path / "suite.yaml"),
                                    "--seeds", "1,2,3,4,5,6", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    tiny = json.loads(out.read_text())["sets"]["tiny"]
    assert tiny["typo_words"] > 0 and tiny["restored"] > 0 and tiny["clean_changed"] == 0
    assert "| tiny | 2 |" in res.output


def test_kb_eval_compare_shows_figures_before_after_and_every_changed_answer(tmp_path):
    """A change is judged by reading what it changed: `kb eval compare` puts each set's figures
    side by side (human labels applied to both runs, worse ones marked) and lists the answers
    whose text changed, flagging the shown ones nobody has read."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pto.md").write_text("# Paid time off\n\nEvery employee gets 25 days of paid time off per year.\n")
    (tmp_path / "q.jsonl").write_text(json.dumps(
        {"id": "pto", "question": "How many days of paid time off do employees get?",
         "expected_answer": "25 days.", "expected_sources": [{"file": "pto.md"}]}) + "\n")
    (tmp_path / "kb.yaml").write_text("data_dir: runtime\nembedding:\n  model: hash\ngenerator:\n  backend: fake\n")
    (tmp_path / "suite.yaml").write_text(
        "sets:\n  - {name: tiny, questions: q.jsonl, config: kb.yaml, corpus_name: docs, corpus_path: docs}\n")
    before = tmp_path / "before"
    res = CliRunner().invoke(main, ["-c", str(tmp_path / "kb.yaml"), "eval", "suite", str(tmp_path / "suite.yaml"),
                                    "--no-typos", "--out", str(before), "-q"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    results = json.loads((before / "tiny" / "results.json").read_text())
    [run] = results["answers"].values()
    [rec] = run["records"]
    assert not rec["abstained"] and rec["final_verdict"] == "correct"
    # the "after" run: the same question answered otherwise, and a human read it as wrong
    rec["answer"] = "Employees get 30 days of paid time off [1]."
    rec["answer_key"] = "after-key"
    (tmp_path / "after" / "tiny").mkdir(parents=True)
    (tmp_path / "after" / "tiny" / "results.json").write_text(json.dumps(results))
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"id": "pto", "answer_key": "after-key", "verdict": "wrong"}) + "\n")
    out = tmp_path / "cmp.md"
    res = CliRunner().invoke(main, ["-c", str(tmp_path / "kb.yaml"), "eval", "compare", str(before),
                                    str(tmp_path / "after"), "--labels", str(labels), "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    text = out.read_text()
    assert "| tiny | 1.00 → **0.00** ▼" in text  # answered right, worse
    assert "tiny: answered right 1.00 → 0.00" in text and "**tiny pto** (answerable): correct → wrong" in text
    assert "after: Employees get 30 days" in text and "(not read yet)" not in text
    assert out.with_suffix(".png").stat().st_size > 0
    cmp = json.loads(out.with_suffix(".json").read_text())
    assert [c["id"] for c in cmp["changed"]] == ["pto"] and cmp["unlabelled"] == []
    # without the label the changed answer is flagged as not read yet
    res = CliRunner().invoke(main, ["eval", "compare", str(before), str(tmp_path / "after")])
    assert res.exit_code == 0 and "(not read yet)" in res.output and "Shown answers no human has read yet: 1" in res.output
    res = CliRunner().invoke(main, ["eval", "compare", str(tmp_path / "nothing"), str(before)])
    assert res.exit_code != 0 and "not a suite run folder" in res.output
