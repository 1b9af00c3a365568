"""Settings: YAML + KB_* env overrides, validated; errors name the file and the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from kb_chatbot.core.errors import ConfigError
from kb_chatbot.core.settings import load_settings
from kb_chatbot.core.types import Principal

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "kb.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_repo_config_is_valid_and_paths_resolve_against_its_folder():
    s = load_settings(REPO / "kb.yaml")
    assert [src.name for src in s.sources] == ["acme-wiki", "acme-slack", "acme-drive"]
    assert s.sources[0].path == REPO / "data" / "sample" / "wiki"
    assert s.data_dir == REPO / "data" / "runtime"
    assert s.server.host == "127.0.0.1"
    assert s.server.auth.users_file == REPO / "data" / "sample" / "users.yaml"


def test_env_overrides_nested_fields(tmp_path, monkeypatch):
    cfg = write(tmp_path, "generator:\n  backend: llamacpp\n  threads: 1\n")
    monkeypatch.setenv("KB_GENERATOR__BACKEND", "fake")
    monkeypatch.setenv("KB_SERVER__PORT", "8123")
    s = load_settings(cfg)
    assert s.generator.backend == "fake"
    assert s.generator.threads == 1  # untouched fields of the section survive
    assert s.server.port == 8123


def test_bad_value_names_the_field_and_the_file(tmp_path):
    cfg = write(tmp_path, "retrieval:\n  top_k: 0\n")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    assert "retrieval.top_k" in str(e.value)
    assert str(cfg) in str(e.value)


def test_unknown_setting_is_rejected_by_name(tmp_path):
    cfg = write(tmp_path, "generator:\n  backnd: fake\n")
    with pytest.raises(ConfigError, match=r"generator\.backnd: unknown setting"):
        load_settings(cfg)


def test_bad_env_value_names_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv("KB_SERVER__PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_settings(write(tmp_path, "{}\n"))


def test_cross_field_rules(tmp_path):
    with pytest.raises(ConfigError, match="overlap_tokens must be smaller"):
        load_settings(write(tmp_path, "chunking:\n  chunk_tokens: 64\n  overlap_tokens: 64\n"))
    with pytest.raises(ConfigError, match="generator.openai.base_url"):
        load_settings(write(tmp_path, "generator:\n  backend: openai\n"))
    dup = "sources:\n" + "  - {name: a, type: wiki, path: x}\n" * 2
    with pytest.raises(ConfigError, match="repeated: a"):
        load_settings(write(tmp_path, dup))
    with pytest.raises(ConfigError, match="cron must have 5 fields"):
        load_settings(write(tmp_path, "schedule:\n  cron: '0 2 * *'\n"))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "sources: [\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"))


def test_principals():
    alice = Principal("Alice", email="Alice@Acme.example", groups=("Engineering",))
    assert alice.principals() == {"public", "user:alice", "user:alice@acme.example", "group:engineering",
                                  "domain:acme.example"}  # Drive's "anyone at acme.example"
    assert "domain:acme.example" not in Principal("bob").principals()  # no e-mail, no domain
    assert alice.can_read(frozenset({"group:engineering"}))
    assert not alice.can_read(frozenset())
    assert Principal.anonymous().principals() == {"public"}
