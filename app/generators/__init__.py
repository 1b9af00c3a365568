"""Generator backends behind :class:`kb_chatbot.core.protocols.Generator`, and the factory that picks one.

One module per backend (``llamacpp``, ``hf`` for transformers, ``openai_compat``, ``fake``),
each imported only when chosen, so importing this package stays cheap (no llama_cpp, torch or
openai import until a backend is used). Model files live in :mod:`kb_chatbot.app.generators.model_files`.
"""
from __future__ import annotations

from pathlib import Path

from kb_chatbot.core.errors import ConfigError
from kb_chatbot.core.protocols import Generator
from kb_chatbot.core.settings import GeneratorConfig, OpenAIEndpoint
from kb_chatbot.app.generators.base import configure_threads, resolve_threads

__all__ = ["make_escalation_generator", "make_generator"]


def make_generator(cfg: GeneratorConfig, models_dir: Path, *, base_dir: Path | None = None) -> Generator:
    """The backend named by ``generator.backend``. Models load lazily, on first use or ``warm_up()``.

    ``base_dir`` resolves a relative ``generator.model`` path (pass ``settings.config_dir``).
    """
    threads = resolve_threads(cfg.threads)
    configure_threads(threads)
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
    if cfg.backend == "llamacpp":
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
    if cfg.backend == "transformers":
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


def make_escalation_generator(endpoint: OpenAIEndpoint) -> Generator:
    """A generator for an OpenAI-compatible server (the escalation model, or backend openai)."""
    from kb_chatbot.app.generators.openai_compat import OpenAIGenerator

    return OpenAIGenerator(
        base_url=endpoint.base_url,
        model=endpoint.model,
        api_key=endpoint.api_key,
        timeout=endpoint.timeout_s,
    )
