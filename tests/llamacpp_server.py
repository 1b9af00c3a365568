"""A real OpenAI-compatible server for tests: llama-cpp-python's own (``python -m llama_cpp.server``)
with the packaged SmolLM2-135M under three names, on 127.0.0.1 only.

- ``answer``: the answer model (chat completions, streaming, stop strings, logprobs);
- ``escalate``: the same weights under a second name, as the escalation model;
- ``embed``: the same weights as an embedding model (``/v1/embeddings``, 576-dim). A causal
  model's GGUF names no pooling, and llama.cpp then returns one vector per token; the
  ``llama.pooling_type=int:1`` metadata override makes it mean-pool, as an embedding model's
  GGUF says itself.

The test starts it and stops it; its log is kept for failure messages.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LlamaCppServer:
    proc: subprocess.Popen
    url: str  # the OpenAI base URL, ".../v1"
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def requests(self, path: str) -> int:
        """How many requests the server logged for ``path`` ("/v1/embeddings")."""
        return sum(f'"POST {path} HTTP' in line for line in self.log().splitlines())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(workdir: Path, *, threads: int = 1) -> LlamaCppServer:
    from kb_chatbot.app.generators.model_files import smollm2_gguf_path

    gguf = str(smollm2_gguf_path())
    port = _free_port()
    common = {"model": gguf, "n_threads": threads, "verbose": False, "seed": 7}
    config = {"host": "127.0.0.1", "port": port, "models": [
        {**common, "model_alias": "answer", "n_ctx": 4096},
        {**common, "model_alias": "escalate", "n_ctx": 4096},
        {**common, "model_alias": "embed", "n_ctx": 512, "embedding": True,
         "kv_overrides": ["llama.pooling_type=int:1"]},
    ]}
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "llamacpp-server.json"
    cfg_path.write_text(json.dumps(config, indent=1))
    log_path = workdir / "llamacpp-server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", str(cfg_path)],
                                stdout=log, stderr=subprocess.STDOUT)
    server = LlamaCppServer(proc, f"http://127.0.0.1:{port}/v1", log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}:\n{server.log()[-3000:]}")
        try:
            with urllib.request.urlopen(server.url + "/models", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"llama_cpp.server did not answer within {START_TIMEOUT_S} s:\n{server.log()[-3000:]}")
