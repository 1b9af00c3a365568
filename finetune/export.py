"""The adapter folder: PEFT files, ``kb_adapter.json`` metadata, the loss plot, a GGUF LoRA.

One folder serves both backends: ``generator.adapter: <folder>`` with ``backend: transformers``
loads ``adapter_model.safetensors`` + ``adapter_config.json`` through PEFT; with
``backend: llamacpp`` the generator picks the folder's one ``.gguf`` file, a LoRA adapter in
llama.cpp's format (``general.type=adapter``, ``adapter.type=lora``, ``adapter.lora.alpha``,
tensors ``blk.N.attn_q.weight.lora_a`` / ``.lora_b``), applied on top of the base GGUF the
adapter was trained from. The GGUF writer mirrors llama.cpp's ``convert_lora_to_gguf.py``:
names mapped with gguf's ``TensorNameMap``, A as (r, in) and B as (out, r), and for the llama
architecture the q/k rows of B permuted the way the base conversion permutes q/k weights.
"""
from __future__ import annotations

import json
import logging
import re
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from kb_chatbot.core.errors import ConfigError, KBError

log = logging.getLogger(__name__)

METADATA_FILE = "kb_adapter.json"
LOSS_PLOT = "loss.png"
GGUF_NAME = "adapter-lora-f32.gguf"
#: HF ``model_type`` -> gguf architecture name, for the architectures whose layout we know.
GGUF_ARCHS = {"llama": "llama", "qwen2": "qwen2"}
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<base>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "gguf"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def save_adapter(model: Any, out: Path, *, cfg: Any, base: Any, manifest: dict[str, Any],
                 curve: Sequence[tuple[int, float]], eval_loss: float | None, facts: dict[str, Any]) -> Path:
    """Save the PEFT adapter, its metadata, the loss plot and (if the base allows) a GGUF LoRA."""
    out = Path(out)
    model.save_pretrained(str(out))
    meta: dict[str, Any] = {
        "format": "kb-adapter/1",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "base_model": {"name": cfg.base_model, "model_id": base.model_id, "file": str(base.source_file),
                       "sha256": base.sha256, "hf_dir": str(base.hf_dir)},
        "data": {"dir": str(cfg.data_dir), "data_hash": manifest.get("data_hash"), "counts": manifest.get("counts")},
        "config": cfg.model_dump(mode="json"),
        "config_hash": cfg.config_hash(),
        "metrics": {
            "train_loss_curve": [[int(s), round(float(v), 5)] for s, v in curve],
            "final_train_loss": round(float(curve[-1][1]), 5) if curve else None,
            "eval_loss": None if eval_loss is None else round(float(eval_loss), 5),
            "base_eval_loss": facts.get("base_eval_loss"),
        },
        "training": facts,
        "versions": _versions(),
        "files": {"peft": "adapter_model.safetensors", "gguf_lora": None},
    }
    try:
        gguf_path = export_gguf_lora(out, base.hf_dir)
        meta["files"]["gguf_lora"] = gguf_path.name
    except (ConfigError, KBError) as e:  # the PEFT adapter is still usable with backend transformers
        log.warning("finetune gguf_export=skipped reason=%r", str(e))
        meta["files"]["gguf_lora_error"] = str(e)
    write_metadata(out, meta)
    if curve:
        plot_loss(curve, out / LOSS_PLOT, eval_loss=eval_loss, base_eval_loss=facts.get("base_eval_loss"),
                  title=f"{cfg.name}: LoRA on {base.model_id}")
    log.info("finetune adapter_saved=%s steps=%s eval_loss=%s", out, facts.get("steps"), eval_loss)
    return out


def write_metadata(out: Path, meta: dict[str, Any]) -> Path:
    path = Path(out) / METADATA_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_metadata(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / METADATA_FILE
    if not path.is_file():
        raise KBError(f"{adapter_dir} has no {METADATA_FILE}: not an adapter from `kb finetune train`")
    return json.loads(path.read_text(encoding="utf-8"))


def plot_loss(curve: Sequence[tuple[int, float]], path: Path, *, eval_loss: float | None = None,
              base_eval_loss: float | None = None, title: str = "training loss") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s, _ in curve]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, [v for _, v in curve], marker="." if len(curve) < 60 else None, label="train loss (assistant tokens)")
    if base_eval_loss is not None:
        ax.axhline(base_eval_loss, color="tab:gray", linestyle=":", label=f"held-out loss, base {base_eval_loss:.3f}")
    if eval_loss is not None:
        ax.axhline(eval_loss, color="tab:orange", linestyle="--", label=f"held-out loss, tuned {eval_loss:.3f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --- GGUF LoRA ------------------------------------------------------------------------------


def _permute(w: Any, n_head: int, n_head_kv: int | None) -> Any:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf.py ``LlamaModel.permute``)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def export_gguf_lora(adapter_dir: Path, base_hf_dir: Path, out_name: str = GGUF_NAME) -> Path:
    """Write the PEFT adapter in ``adapter_dir`` as a llama.cpp GGUF LoRA next to it."""
    import gguf
    import numpy as np

    adapter_dir, base_hf_dir = Path(adapter_dir), Path(base_hf_dir)
    acfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    mcfg = json.loads((base_hf_dir / "config.json").read_text(encoding="utf-8"))
    model_type = mcfg.get("model_type")
    if model_type not in GGUF_ARCHS:
        raise ConfigError(
            f"GGUF LoRA export knows the architectures {', '.join(sorted(GGUF_ARCHS))}, not {model_type!r}; "
            "serve this adapter with generator.backend: transformers"
        )
    if acfg.get("use_rslora") or acfg.get("use_dora"):
        raise ConfigError("GGUF LoRA export supports plain LoRA only (no rsLoRA/DoRA)")
    arch_name = GGUF_ARCHS[model_type]
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch_name)
    n_layers = int(mcfg["num_hidden_layers"])
    n_head = int(mcfg["num_attention_heads"])
    n_kv = int(mcfg.get("num_key_value_heads") or n_head)
    names = gguf.get_tensor_name_map(arch, n_layers)

    tensors = _load_lora_tensors(adapter_dir)
    pairs: dict[str, dict[str, Any]] = {}
    for key, arr in tensors.items():
        m = _LORA_KEY.match(key)
        if not m:
            raise KBError(f"{adapter_dir}: unexpected tensor {key!r} in the adapter (only LoRA A/B are exported)")
        pairs.setdefault(m.group("base"), {})[m.group("ab")] = arr
    writer = gguf.GGUFWriter(str(adapter_dir / (out_name + ".tmp")), arch_name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(acfg["lora_alpha"]))
    count = 0
    for base_name in sorted(pairs):
        ab = pairs[base_name]
        if set(ab) != {"A", "B"}:
            raise KBError(f"{adapter_dir}: LoRA {base_name} lacks its {'A' if 'A' not in ab else 'B'} matrix")
        hf_name = base_name + ".weight"
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ConfigError(f"no llama.cpp tensor name for {hf_name} ({arch_name}); "
                              "train with other lora.target_modules or serve with backend transformers")
        a = np.ascontiguousarray(ab["A"], dtype=np.float32)  # (r, in)
        b = np.ascontiguousarray(ab["B"], dtype=np.float32)  # (out, r)
        if arch_name == "llama" and base_name.endswith("q_proj"):
            b = np.ascontiguousarray(_permute(b, n_head, n_head))
        elif arch_name == "llama" and base_name.endswith("k_proj"):
            b = np.ascontiguousarray(_permute(b, n_head, n_kv))
        writer.add_tensor(gguf_name + ".lora_a", a)
        writer.add_tensor(gguf_name + ".lora_b", b)
        count += 1
    if not count:
        raise KBError(f"{adapter_dir}: the adapter holds no LoRA tensors")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    target = adapter_dir / out_name
    (adapter_dir / (out_name + ".tmp")).replace(target)
    log.info("finetune gguf_lora=%s arch=%s modules=%d", target, arch_name, count)
    return target


def _load_lora_tensors(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's tensors as float32 numpy arrays (through torch: numpy has no bfloat16)."""
    import torch
    from safetensors.torch import load_file

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise KBError(f"{adapter_dir}: adapter_model.safetensors missing")
    return {k: v.to(torch.float32).numpy() for k, v in load_file(str(path)).items()}
