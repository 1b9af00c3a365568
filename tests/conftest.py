"""Shared test set-up: offline models, one thread, state isolated under tmp_path."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

# Before anything imports torch/transformers: no hub access, one steady thread (STACK.md).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch, tmp_path):
    """No test reads the developer's kb.yaml or KB_* variables, or writes outside tmp_path."""
    for k in list(os.environ):
        if k.startswith("KB_"):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared not found beside the checkout ({SHARED})")
    return SHARED


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture
def openai_server():
    """A local OpenAI-compatible server (tests/openai_stub.py) on 127.0.0.1."""
    from tests.openai_stub import _FakeServer

    srv = _FakeServer()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="session")
def llamacpp_server(tmp_path_factory):
    """llama-cpp-python's own OpenAI-compatible server with SmolLM2-135M (tests/llamacpp_server.py)."""
    import importlib.util

    if not importlib.util.find_spec("llama_cpp"):
        pytest.skip("llama-cpp-python is not installed")
    from tests.llamacpp_server import start

    server = start(tmp_path_factory.mktemp("llamacpp-server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smol_openvino_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M exported for the openvino backend the way `kb models prepare --openvino` does
    it (GGUF → transformers folder → optimum-intel in the exporter venv, made once per machine)."""
    from kb_chatbot.app.generators.model_files import SMOLLM2_ID, ModelRef, smollm2_gguf_path
    from kb_chatbot.app.generators.openvino_export import export_openvino

    models = tmp_path_factory.mktemp("openvino-models")
    return export_openvino(ModelRef(SMOLLM2_ID, gguf_path=smollm2_gguf_path()), models, "int8")
