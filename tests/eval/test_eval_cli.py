"""End to end: `kb eval` on a tiny corpus with the hash embedder and the fake generator."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kb_chatbot.app.kb.cli import main

QUESTIONS = [
    {"id": "pto", "question": "How many days of paid time off do employees get?",
     "expected_answer": "25 days of paid time off per year.", "expected_sources": [{"file": "pto.md"}],
     "keywords": ["25 days"]},
    {"id": "vpn", "question": "Which VPN client does the company use?", "expected_answer": "WireGuard [vpn.md]."},
    {"id": "laptop", "question": "How often are laptops refreshed?",
     "expected_answer": "Every three years [handbook.pdf#page=1]."},
    {"id": "expense", "question": "When are expense reports due after travel?",
     "expected_answer": "Within 30 days of travel.", "source_path": "handbook.pdf", "page": 2},
    {"id": "salary", "question": "What is the salary band for staff engineers?",
     "expected_answer": "Band E5.", "expected_sources": ["restricted/bands.md"]},
    {"id": "moon", "question": "Where is the moon base cafeteria?", "expected_answer": "", "answerable": False},
]


@pytest.fixture
def project(tmp_path):
    fpdf = pytest.importorskip("fpdf")
    docs = tmp_path / "docs"
    (docs / "restricted").mkdir(parents=True)
    (docs / "pto.md").write_text("# Paid time off\n\nEvery employee gets 25 days of paid time off per year. "
                                 "Unused days carry over up to 5 days.\n")
    (docs / "vpn.md").write_text("# VPN\n\nThe company VPN client is WireGuard. Install it from the IT portal.\n")
    (docs / "restricted" / "bands.md").write_text("# Salary bands\n\nStaff engineers are in salary band E5.\n")
    (docs / "permissions.json").write_text(json.dumps({"restricted/": {"groups": ["people-ops"]}}))
    pdf = fpdf.FPDF()
    for text in ("Laptops are refreshed every three years by the IT team.",
                 "Expense reports are due within 30 days of travel."):
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.multi_cell(0, 10, text)
    pdf.output(str(docs / "handbook.pdf"))
    q = tmp_path / "q.jsonl"
    q.write_text("\n".join(json.dumps(x) for x in QUESTIONS) + "\n")
    base = "data_dir: runtime\nembedding:\n  model: hash\ngenerator:\n  backend: fake\n"
    (tmp_path / "kb.yaml").write_text(base)
    (tmp_path / "kb-bm25.yaml").write_text(base + "retrieval:\n  mode: bm25\n  context_filter: false\n")
    return tmp_path


def _run(project, *args):
    res = CliRunner().invoke(main, ["-c", str(project / "kb.yaml"), "eval", str(project / "q.jsonl"),
                                    "--corpus-name", "tiny", "--corpus-path", str(project / "docs"), "-q", *args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def test_eval_with_baselines_writes_json_markdown_and_plots(project):
    out = project / "out"
    res = _run(project, "--baselines", "--out", str(out))
    for name in ("results.json", "report.md", "calibration.jsonl", "retrieval.png", "answers.png",
                 "reliability.png", "latency.png"):
        assert (out / name).is_file(), name
    assert not (out / "results.partial.json").exists()  # only an interrupted run leaves it
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "results.json").read_text())
    assert result["meta"]["questions"] == 6 and result["meta"]["answerable"] == 5
    assert result["corpus"][next(iter(result["corpus"]))]["documents"] == 4
    assert set(result["retrieval"]) == {"bm25", "dense", "hybrid", "hybrid + context filter"}
    bm25 = result["retrieval"]["bm25"]
    assert bm25["summary"]["n"] == 5 and bm25["summary"]["n_page"] == 2
    # the exact words are in one document each: BM25 ranks it first (restricted one too:
    # the eval principal reads every document)
    assert bm25["summary"]["file"]["hit@1"] == 1.0
    salary = next(r for r in bm25["records"] if r["id"] == "salary")
    assert salary["retrieved"][0][0] == "tiny:restricted/bands.md"
    expense = next(r for r in bm25["records"] if r["id"] == "expense")
    assert expense["retrieved"][0] == ["tiny:handbook.pdf", 2] and expense["rank_page"] == 1
    assert len(result["answers"]) == 3  # the config, the context filter flipped, self-correction flipped
    config_run = next(v for k, v in result["answers"].items() if k.endswith("(config)"))
    s = config_run["summary"]
    assert s["n"] == 6 and s["abstention_unanswerable"] == 1.0
    moon = next(r for r in config_run["records"] if r["id"] == "moon")
    assert moon["abstained"] and moon["correct"]
    pto = next(r for r in config_run["records"] if r["id"] == "pto")
    assert pto["citations"][0][0] == "tiny:pto.md" and pto["citation_precision_file"] == 1.0
    assert pto["keyword_recall"] == 1.0 and pto["token_f1"] > 0.5
    assert {"retrieve", "first_token", "total"} <= set(s["latency"])
    md = (out / "report.md").read_text()
    assert "| bm25 | 5 | 1.000 |" in md and "## Answers" in md
    assert "hybrid + context filter" in res.output


def test_eval_ab_and_incremental_corpus(project):
    out = project / "ab"
    _run(project, "--compare-config", str(project / "kb-bm25.yaml"), "--limit", "4", "--out", str(out))
    result = json.loads((out / "results.json").read_text())
    assert result["meta"]["answer_subset"] == 4
    assert set(result["retrieval"]) == {"A: hybrid + context filter", "B: bm25"}
    assert set(result["answers"]) == {"A: config", "B: config"}
    ab = result["ab"]
    assert {"reciprocal_rank_file", "context_recall"} == set(ab["retrieval"])
    assert {"token_f1", "similarity", "correct", "latency_total"} == set(ab["answers"])
    assert ab["retrieval"]["reciprocal_rank_file"]["n"] == 5
    assert (out / "ab.png").is_file()
    assert "## A/B" in (out / "report.md").read_text()
    # one index for both (only retrieval settings differ), reused by a second run: nothing re-embedded
    assert len(result["corpus"]) == 1
    _run(project, "--retrieval-only", "--out", str(project / "again"))
    again = json.loads((project / "again" / "results.json").read_text())
    corpus = next(iter(again["corpus"].values()))
    assert corpus["chunks_embedded"] == 0 and corpus["chunks"] == next(iter(result["corpus"].values()))["chunks"]
    assert again["answers"] == {}


def test_eval_unknown_source_names_the_configured_ones(project):
    res = CliRunner().invoke(main, ["-c", str(project / "kb.yaml"), "eval", str(project / "q.jsonl"),
                                    "--corpus-name", "nope"])
    assert res.exit_code == 2
    assert "unknown source 'nope'" in res.output
