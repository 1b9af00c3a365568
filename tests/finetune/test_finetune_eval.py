"""Fast tests: the eval metrics of one answer, the report writer, the training config."""
from __future__ import annotations

import json

import pytest

from kb_chatbot.app.answer.prompts import ABSTAIN_TEXT
from kb_chatbot.core.errors import ConfigError
from kb_chatbot.finetune.config import load_train_config


def test_score_answer_metrics():
    from kb_chatbot.finetune.evaluate import score_answer

    row = {"kind": "answerable", "reference": "Employees earn 22 days of PTO per year [2].",
           "gold_sources": [2], "source_chunk_ids": ["a", "b", "c"]}
    good = score_answer(row, "Employees earn 22 days of PTO per year [2].")
    assert good["token_f1"] == 1.0 and good["gold_cited"] and good["citation_precision"] == 1.0
    wrong = score_answer(row, "Employees earn 22 days [1][2].")
    assert wrong["citation_precision"] == 0.5 and wrong["citation_recall"] == 1.0 and 0 < wrong["token_f1"] < 1
    un = {"kind": "unanswerable", "reference": ABSTAIN_TEXT, "gold_sources": [], "source_chunk_ids": ["a"]}
    assert score_answer(un, ABSTAIN_TEXT)["abstained"] is True
    assert score_answer(un, "It is 22 days [1].")["abstained"] is False


def _results(f1s, abstained, gold):
    return [{"text": "x", "token_f1": f, "abstained": a, "cited": [], "citation_precision": None,
             "citation_recall": None, "gold_cited": g, "first_token_s": 0.1, "total_s": 0.5, "tokens": 5}
            for f, a, g in zip(f1s, abstained, gold)]


def test_summary_comparison_and_report_files(tmp_path):
    from kb_chatbot.finetune.evaluate import compare, summarize, write_report

    rows = [{"kind": "answerable"}] * 3 + [{"kind": "unanswerable"}] * 2
    base = _results([0.2, 0.5, 0.0, None, None], [False, False, True, False, False], [False, True, False, None, None])
    tuned = _results([0.9, 0.5, 0.8, None, None], [False, False, False, True, False], [True, True, True, None, None])
    sb, st = summarize(rows, base), summarize(rows, tuned)
    assert sb["token_f1"] == pytest.approx(0.7 / 3) and st["token_f1"] == pytest.approx(2.2 / 3)
    assert sb["false_refusal"] == pytest.approx(1 / 3) and st["false_refusal"] == 0.0
    assert sb["refusal_unanswerable"] == 0.0 and st["refusal_unanswerable"] == 0.5
    assert sb["gold_cited"] == pytest.approx(1 / 3) and st["gold_cited"] == 1.0
    cmp = compare(base, tuned)
    assert (cmp["token_f1"]["wins"], cmp["token_f1"]["losses"], cmp["token_f1"]["ties"]) == (2, 0, 1)
    assert cmp["right_behaviour"]["wins"] == 3 and cmp["right_behaviour"]["losses"] == 0
    report = {"adapter": "/x/a", "adapter_name": "a", "base_model": "m", "backend": "transformers", "max_tokens": 8,
              "base": {"summary": sb}, "tuned": {"summary": st}, "comparison": cmp,
              "examples": [{"kind": "answerable", "question": "q?", "reference": "r [1].", "base": "b", "tuned": "t"}]}
    paths = write_report(report, tmp_path, "a")
    md = paths["md"].read_text()
    assert "| answer token F1 (answerable) | 0.233 | 0.733 | +0.500 |" in md
    assert "tuned better on 2, worse on 0, tied on 1" in md
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert json.loads(paths["json"].read_text())["tuned"]["summary"]["gold_cited"] == 1.0


def test_train_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("base_model: smollm2-135m\nlora: {r: 8, alhpa: 16}\nlearning_rate: -1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_train_config(bad)
    msg = str(e.value)
    assert str(bad) in msg and "lora.alhpa: unknown setting" in msg and "learning_rate" in msg
    with pytest.raises(ConfigError, match="not found"):
        load_train_config(tmp_path / "missing.yaml")


def test_shipped_configs_load_and_resolve_paths(tmp_path):
    from pathlib import Path

    import kb_chatbot.finetune.config as module  # (``finetune`` itself may resolve to this tests folder)

    root = Path(module.__file__).parent / "configs"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {"default.yaml", "smollm2-cpu.yaml"} <= set(names)
    for p in root.glob("*.yaml"):
        cfg = load_train_config(p).resolved(tmp_path)
        assert cfg.output_dir == (tmp_path / "finetune" / "adapters" / cfg.name).resolve()
        assert cfg.data_dir == (tmp_path / "finetune" / "data").resolve()
    a = load_train_config(root / "default.yaml")
    assert a.config_hash() == a.model_copy(update={"threads": 4}).config_hash()
    assert a.config_hash() != a.model_copy(update={"learning_rate": 1e-5}).config_hash()
