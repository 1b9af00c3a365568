"""Generator backends behind :class:`kb_chatbot.core.protocols.Generator`, and the factory that picks one.

One module per backend (``llamacpp``, ``openvino``, ``hf`` for transformers, ``openai_compat``, ``fake``),
each imported only when chosen, so importing this package stays cheap (no llama_cpp, torch or
openai import until a backend is used). Model files live in :mod:`kb_chatbot.app.generators.model_files`.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from kb_chatbot.core.errors import ConfigError
from kb_chatbot.core.protocols import Generator
from kb_chatbot.core.settings import GeneratorConfig, OpenAIEndpoint
from kb_chatbot.app.generators.base import configure_threads, resolve_threads

__all__ = ["choose_backend", "make_escalation_generator", "make_generator"]

log = logging.getLogger(__name__)


def make_generator(cfg: GeneratorConfig, models_dir: Path, *, base_dir: Path | None = None) -> Generator:
    """The backend named by ``generator.backend``. Models load lazily, on first use or ``warm_up()``.

    ``base_dir`` resolves a relative ``generator.model`` path (pass ``settings.config_dir``).
    """
    threads = resolve_threads(cfg.threads)
    configure_threads(threads, cfg.thread_wait)
    if cfg.backend == "fake":
        from kb_chatbot.app.generators.fake import FakeGenerator

        return FakeGenerator()
    if cfg.backend == "openai":
        if cfg.openai is None:  # the settings validator already refuses this
            raise ConfigError("generator.openai: backend 'openai' needs base_url and model")
        if cfg.adapter is not None:
            raise ConfigError(
                "generator.adapter: the openai backend cannot load a local adapter; serve the "
                "merged model on the server (e.g. vLLM --enable-lora) or use backend transformers"
            )
        return make_escalation_generator(cfg.openai)

    from kb_chatbot.app.generators.model_files import resolve_model

    ref = resolve_model(cfg, Path(models_dir), base_dir=base_dir)
    backend, why = choose_backend(cfg, ref, Path(models_dir))
    if cfg.backend == "auto":
        log.info("generator.backend auto -> %s (%s)", backend, why)
    if backend == "openvino":
        from kb_chatbot.app.generators.openvino import OpenVINOGenerator
        from kb_chatbot.app.generators.openvino_export import exported_folder

        if cfg.adapter is not None:
            raise ConfigError(
                "generator.adapter: the openvino backend runs the exported base model; merge the "
                "adapter first (kb finetune export) or use backend llamacpp / transformers"
            )
        folder = ref.path if _is_openvino_folder(ref.path) else exported_folder(ref, Path(models_dir))
        if folder is None:
            raise ConfigError(
                f"generator.backend: openvino needs the exported model of {ref.model_id}: run "
                "`kb models prepare --openvino` (once, a few minutes), or set generator.backend: auto"
            )
        return OpenVINOGenerator(folder, threads=threads, n_ctx=cfg.context_tokens,
                                 model_id=f"{ref.model_id}@openvino-{_weights_of(folder)}")
    if backend == "llamacpp":
        from kb_chatbot.app.generators.llamacpp import LlamaCppGenerator

        if ref.gguf_path is None:
            raise ConfigError(
                f"generator.model: {ref.path} is a Hugging Face folder; the llamacpp backend needs a "
                "GGUF file (set generator.backend: transformers, or point generator.model at a .gguf)"
            )
        return LlamaCppGenerator(
            ref.gguf_path,
            n_threads=threads,
            n_ctx=cfg.context_tokens,
            lora_path=cfg.adapter,
            model_id=ref.model_id,
        )
    if backend == "transformers":
        from kb_chatbot.app.generators.hf import HFGenerator

        return HFGenerator(
            ref,
            models_dir=Path(models_dir),
            threads=threads,
            adapter=cfg.adapter,
            load_in_4bit=cfg.load_in_4bit,
            context_tokens=cfg.context_tokens,
        )
    raise ConfigError(f"generator.backend: unknown backend {cfg.backend!r}")  # pragma: no cover


def choose_backend(cfg: GeneratorConfig, ref, models_dir: Path, *, flags: frozenset[str] | None = None) -> tuple[str, str]:
    """(backend, why) for a local model: ``generator.backend`` itself unless it is "auto".

    "auto" takes OpenVINO where it is faster (a CPU with AMX: through the whole service the first
    checked sentence in 0.82x llama.cpp's time, docs/BENCH.md) and the model is exported and no
    adapter is set; elsewhere llama.cpp for a GGUF (on AMD EPYC OpenVINO read prompts only
    1.4-1.6x as fast and changed answers) and transformers for an HF folder.
    """
    if cfg.backend != "auto":
        return cfg.backend, "configured"
    from kb_chatbot.app.generators.openvino_export import exported_folder
    from kb_chatbot.core.cpu import cpu_flags

    flags = cpu_flags() if flags is None else flags
    fallback = "llamacpp" if ref.gguf_path is not None else "transformers"
    if "amx_int8" not in flags:
        return fallback, "no AMX on this CPU (OpenVINO was worth it only with AMX: on AMD EPYC it changed answers)"
    if cfg.adapter is not None:
        return fallback, "an adapter is set (the OpenVINO export is the base model)"
    if not importlib.util.find_spec("openvino"):
        return fallback, "AMX, but the openvino package is not installed (scripts/setup.sh installs it)"
    if not _is_openvino_folder(ref.path) and exported_folder(ref, models_dir) is None:
        return fallback, "AMX, but the model is not exported: `kb models prepare --openvino` makes answers ~1.25x faster here"
    return "openvino", "AMX and an exported model"


def _is_openvino_folder(path: Path) -> bool:
    return path.is_dir() and (path / "openvino_model.xml").is_file()


def _weights_of(folder: Path) -> str:
    import json

    try:
        return json.loads((folder / "kb-source.json").read_text(encoding="utf-8"))["weights"]
    except (OSError, ValueError, KeyError):
        return "ir"


def make_escalation_generator(endpoint: OpenAIEndpoint) -> Generator:
    """A generator for an OpenAI-compatible server (the escalation model, or backend openai)."""
    from kb_chatbot.app.generators.openai_compat import OpenAIGenerator

    return OpenAIGenerator(
        base_url=endpoint.base_url,
        model=endpoint.model,
        api_key=endpoint.api_key,
        timeout=endpoint.timeout_s,
    )
