"""The default answer model's architecture (qwen2) through the GGUF LoRA export: an adapter in
PEFT's layout, shaped for the packaged Qwen2.5-Coder-1.5B, is written by ``export_gguf_lora``
and llama.cpp loads it over the packaged Q4_K_M file (it checks every tensor's name and shape
against the base) and answers differently; an adapter whose B matrices are zero (what training
starts from) changes nothing. No training: the weights are random, the layout is the point."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kb_chatbot.core.types import GenParams, Message

pytestmark = pytest.mark.slow

MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """(GGUF path, HF-style config) of the packaged default model."""
    pytest.importorskip("llama_cpp")
    import gguf

    from kb_chatbot.app.generators.model_files import assemble_default_model

    path = assemble_default_model(tmp_path_factory.mktemp("models"))
    meta = gguf.GGUFReader(str(path)).fields

    def val(key: str) -> int:
        f = meta[key]
        return int(f.parts[f.data[0]][0])

    cfg = {"model_type": "qwen2", "num_hidden_layers": val("qwen2.block_count"),
           "hidden_size": val("qwen2.embedding_length"), "intermediate_size": val("qwen2.feed_forward_length"),
           "num_attention_heads": val("qwen2.attention.head_count"),
           "num_key_value_heads": val("qwen2.attention.head_count_kv")}
    return path, cfg


def _shape(module: str, cfg: dict) -> tuple[int, int]:
    """(out, in) of a Qwen2 linear layer."""
    h, ff = cfg["hidden_size"], cfg["intermediate_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    return {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, h), "mlp.gate_proj": (ff, h), "mlp.up_proj": (ff, h),
            "mlp.down_proj": (h, ff)}[module]


def _adapter(folder: Path, cfg: dict, *, zero_b: bool, r: int = 4) -> Path:
    import torch
    from safetensors.torch import save_file

    from kb_chatbot.finetune.export import export_gguf_lora

    g = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for m in MODULES:
            out, inp = _shape(m, cfg)
            base = f"base_model.model.model.layers.{layer}.{m}"
            tensors[f"{base}.lora_A.weight"] = torch.randn(r, inp, generator=g) * 0.05
            tensors[f"{base}.lora_B.weight"] = (torch.zeros(out, r) if zero_b
                                                else torch.randn(out, r, generator=g) * 0.05)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": [m.split(".")[1] for m in MODULES]}))
    hf = folder.parent / "hf"
    hf.mkdir(exist_ok=True)
    (hf / "config.json").write_text(json.dumps(cfg))
    return export_gguf_lora(folder, hf)


def _answer(path: Path, adapter: Path | None) -> str:
    from kb_chatbot.app.generators import make_generator
    from kb_chatbot.core.settings import GeneratorConfig

    gen = make_generator(GeneratorConfig(backend="llamacpp", model=str(path), adapter=adapter, threads=2,
                                         context_tokens=512), path.parent)
    msgs = [Message("system", "Answer in one short sentence."),
            Message("user", "What colour is the sky on a clear day?")]
    return gen.complete(msgs, GenParams(max_tokens=12))


def test_llamacpp_loads_a_qwen2_lora_over_the_packaged_model(qwen, tmp_path):
    path, cfg = qwen
    moved = _adapter(tmp_path / "moved", cfg, zero_b=False)
    zero = _adapter(tmp_path / "zero", cfg, zero_b=True)
    base = _answer(path, None)
    assert base.strip()
    assert _answer(path, zero) == base  # B = 0: the adapter is a no-op, so names and scale are benign
    assert _answer(path, moved) != base  # every module's delta reached the model
