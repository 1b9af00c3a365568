"""``kb reindex`` / ``kb status`` with an API source from kb.yaml: the summary with API calls,
``--full``, a clear one-line failure and exit code for a rejected token, status without a path."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kb_chatbot.app.kb.cli import main
from tests.live.fakeapi import FakeSlack

TOKEN = "xoxb-cli-test-token-42"


@pytest.fixture
def slack():
    fake = FakeSlack(TOKEN)
    fake.add_user("UA", "Alice", "alice@acme.example")
    fake.add_channel("C1", "general")
    fake.post("C1", "1700000000.000100", "UA", "The espresso machine is descaled on Mondays.")
    yield fake
    fake.close()


def _config(tmp_path, fake) -> str:
    cfg = tmp_path / "kb.yaml"
    cfg.write_text("data_dir: data\nembedding: {model: hash}\nchunking: {chunk_tokens: 64, overlap_tokens: 8}\n"
                   f"sources:\n  - {{name: acme-slack, type: slack-api, url: '{fake.url}/api/'}}\n")
    return str(cfg)


def test_reindex_an_api_source_then_full_then_a_rejected_token(tmp_path, slack, monkeypatch):
    cfg = _config(tmp_path, slack)
    monkeypatch.setenv("KB_SECRET_ACME_SLACK", TOKEN)
    r = CliRunner().invoke(main, ["--config", cfg, "reindex", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "slack-api" in r.output and "api acme-slack:" in r.output and TOKEN not in r.output
    r = CliRunner().invoke(main, ["--config", cfg, "reindex", "--json"])
    report = json.loads(r.output)
    assert report["generation"] is None and report["chunks_embedded"] == 0
    slack.delete("C1", "1700000000.000100")
    slack.post("C1", "1600000000.000100", "UA", "A message older than any watermark.")  # only a full read sees it
    r = CliRunner().invoke(main, ["--config", cfg, "reindex", "--json"])
    inc = json.loads(r.output)["sources"][0]
    assert inc["deleted"] == 1 and inc["added"] == 0  # the deletion is in the range re-read; the old post is not
    r = CliRunner().invoke(main, ["--config", cfg, "reindex", "--json", "--full"])
    assert json.loads(r.output)["sources"][0]["added"] == 1  # read whole again: the old post is in
    r = CliRunner().invoke(main, ["--config", cfg, "status"])
    assert r.exit_code == 0 and "acme-slack" in r.output, r.output
    monkeypatch.setenv("KB_SECRET_ACME_SLACK", "xoxb-revoked-token-0")
    r = CliRunner().invoke(main, ["--config", cfg, "reindex", "--no-progress"])
    assert r.exit_code != 0
    assert "Slack rejected the token (invalid_auth)" in r.output and "KB_SECRET_ACME_SLACK" in r.output
    assert "Traceback" not in r.output


def test_a_live_source_without_its_required_fields_is_a_config_error(tmp_path):
    cfg = tmp_path / "kb.yaml"
    cfg.write_text("sources:\n  - {name: wiki, type: confluence}\n")
    r = CliRunner().invoke(main, ["--config", str(cfg), "status"])
    assert r.exit_code != 0 and "url" in r.output
