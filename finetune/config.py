"""The training config: one YAML file (``finetune/configs/*.yaml``), validated by pydantic.

Relative ``data_dir`` / ``output_dir`` paths are resolved against the settings' ``data_dir``
(the runtime state folder), so the same YAML works for every checkout; absolute paths are kept.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kb_chatbot.core.errors import ConfigError
from kb_chatbot.core.settings import format_validation_error, read_yaml_mapping

#: Where `kb finetune build-data` writes and `train` reads, under settings.data_dir.
DEFAULT_DATA = Path("finetune/data")
#: Where adapters go, under settings.data_dir (``<name>`` is the config's ``name``).
DEFAULT_ADAPTERS = Path("finetune/adapters")


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=8, ge=1, le=256)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    #: Module names (``q_proj``, ``v_proj``…) or "all-linear" (every linear layer but the head).
    target_modules: list[str] | Literal["all-linear"] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    #: Adapt only the last N transformer layers (None: all). Gradients then stop at the lowest
    #: adapted layer, so a CPU step skips the backward pass through the layers below it.
    top_layers: int | None = Field(default=None, ge=1)

    @field_validator("target_modules")
    @classmethod
    def _not_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("target_modules must name at least one module (or be 'all-linear')")
        return v


class TrainConfig(BaseModel):
    """Everything that shapes a training run. ``config_hash()`` covers it for resume checks."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="adapter", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    #: "default" (Qwen2.5-Coder-1.5B), "smollm2-135m", a .gguf file or a transformers folder.
    base_model: str = "default"
    data_dir: Path = DEFAULT_DATA
    output_dir: Path | None = None
    lora: LoraSettings = Field(default_factory=LoraSettings)
    learning_rate: float = Field(default=2e-4, gt=0, le=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    warmup_ratio: float = Field(default=0.03, ge=0.0, lt=1.0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    #: Examples longer than this many tokens (prompt + answer) are left out, never truncated:
    #: a truncated prompt would teach the model to cite sources it never saw.
    seq_len: int = Field(default=768, ge=64, le=32768)
    batch_size: int = Field(default=2, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    epochs: float = Field(default=1.0, gt=0, le=10)
    #: Stop after this many optimizer steps (overrides epochs when set).
    max_steps: int | None = Field(default=None, ge=1)
    seed: int = 0
    save_steps: int = Field(default=25, ge=1)
    save_total_limit: int = Field(default=2, ge=1)
    logging_steps: int = Field(default=1, ge=1)
    #: Compute the held-out loss at the end (one forward pass per held-out example).
    eval_loss: bool = True
    #: Cap on held-out examples used for the eval loss (CPU time); None = all.
    eval_max_examples: int | None = Field(default=64, ge=1)
    #: auto: 4-bit nf4 QLoRA on CUDA, none on CPU. "nf4" on CPU works (bitsandbytes) but is no faster.
    quantization: Literal["auto", "nf4", "none"] = "auto"
    #: Weights dtype when not quantized: auto = bf16 (CPU with AMX, CUDA), fp32 otherwise.
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    gradient_checkpointing: bool | None = None  # None: on for nf4 (QLoRA), off otherwise
    threads: int = Field(default=1, ge=1)

    def resolved(self, data_root: Path) -> "TrainConfig":
        """A copy with ``data_dir``/``output_dir`` made absolute against ``data_root``."""
        data_root = Path(data_root)
        data = self.data_dir if self.data_dir.is_absolute() else data_root / self.data_dir
        out = self.output_dir or DEFAULT_ADAPTERS / self.name
        out = out if out.is_absolute() else data_root / out
        return self.model_copy(update={"data_dir": data.resolve(), "output_dir": out.resolve()})

    def config_hash(self) -> str:
        """sha256 of the settings that change the weights (paths, threads, logging excluded)."""
        d = self.model_dump(mode="json", exclude={"data_dir", "output_dir", "threads", "logging_steps",
                                                  "save_steps", "save_total_limit", "eval_max_examples", "eval_loss"})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def load_train_config(path: str | Path | None, **overrides) -> TrainConfig:
    """Read a YAML training config; unknown or invalid fields raise :class:`ConfigError` naming them."""
    data: dict = {}
    origin = "defaults"
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"training config not found: {p} (see finetune/configs/*.yaml)")
        data = read_yaml_mapping(p, "training settings")
        origin = str(p)
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    try:
        return TrainConfig(**data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin, "training config")) from None
