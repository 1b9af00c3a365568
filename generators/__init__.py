"""Generator backends behind :class:`core.protocols.Generator`; pick one with :func:`make_generator`.

Backend classes are exported lazily so importing this package stays cheap (no llama_cpp,
torch or openai import until a backend is used).
"""
from __future__ import annotations

from typing import Any

from app.generators.base import GeneratorBase, make_escalation_generator, make_generator

__all__ = [
    "GeneratorBase",
    "HFGenerator",
    "LlamaCppGenerator",
    "OpenAIGenerator",
    "make_escalation_generator",
    "make_generator",
]

_LAZY = {
    "HFGenerator": "app.generators.hf",
    "LlamaCppGenerator": "app.generators.llamacpp",
    "OpenAIGenerator": "app.generators.openai_compat",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'app.generators' has no attribute {name!r}")
