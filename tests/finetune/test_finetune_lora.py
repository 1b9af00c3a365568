"""LoRA on the real SmolLM2-135M (CPU, a few steps): assistant-only labels, frozen base, moving
adapter, metadata, resume, and the adapter served by both generator backends."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kb_chatbot.core.types import GenParams, Message
from kb_chatbot.finetune.config import load_train_config
from kb_chatbot.finetune.data import BuildOptions, build_dataset
from kb_chatbot.finetune.train import IGNORE_INDEX, encode_example

from conftest import build_index, sample_docs, settings_with_models

pytestmark = pytest.mark.slow

CFG = {
    "name": "t-adapter", "base_model": "smollm2-135m", "seq_len": 640, "batch_size": 1, "max_steps": 6,
    "save_steps": 3, "learning_rate": 2e-3, "warmup_ratio": 0.0, "lr_scheduler": "constant",
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    "quantization": "none", "dtype": "fp32", "eval_max_examples": 2,
}


def _config(tmp: Path, **over):
    path = tmp / "train.yaml"
    import yaml

    path.write_text(yaml.safe_dump({**CFG, **over}), encoding="utf-8")
    return load_train_config(path)


@pytest.fixture(scope="module")
def rig(tmp_path_factory, smol_models_dir):
    """A hash-index KB, its training data, and settings whose models_dir holds SmolLM2."""
    root = tmp_path_factory.mktemp("ft")
    settings = settings_with_models(root, smol_models_dir)
    build_index(settings, sample_docs())
    build_dataset(settings, BuildOptions(out_dir=settings.data_dir / "finetune" / "data", top_k=2,
                                         questions_per_chunk=2, seed=1))
    return settings, root


class Watch:
    """A TrainerCallback that snapshots base and adapter weights at the start and end of training."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kw):
                outer.before = {n: p.detach().clone() for n, p in model.named_parameters()}
                outer.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

            def on_train_end(self, args, state, control, model=None, **kw):
                outer.after = {n: p.detach().clone() for n, p in model.named_parameters()}

        self.callback = CB()


@pytest.fixture(scope="module")
def trained(rig):
    from kb_chatbot.finetune.train import train

    settings, root = rig
    watch = Watch()
    result = train(_config(root), settings, callbacks=[watch.callback], progress=False)
    return settings, root, result, watch


def test_only_assistant_tokens_are_labelled(smol_hf):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smol_hf))
    msgs = [{"role": "system", "content": "Answer from the sources."},
            {"role": "user", "content": "Earlier question?"},
            {"role": "assistant", "content": "An earlier answer that must not be trained on [1]."},
            {"role": "user", "content": "Sources: ...\nQuestion: How many PTO days?"},
            {"role": "assistant", "content": "Employees earn 22 days [1]."}]
    enc = encode_example(tok, msgs)
    ids, labels = enc["input_ids"], enc["labels"]
    assert len(ids) == len(labels)
    first = next(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
    assert all(x == IGNORE_INDEX for x in labels[:first])
    assert labels[first:] == ids[first:]  # the whole tail is the reply: nothing after it is masked in
    assert tok.decode(ids[first:]) == "Employees earn 22 days [1].<|im_end|>"
    # the prompt part is exactly what the transformers backend feeds the model at inference
    prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    assert ids[:first] == tok(prompt, add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="assistant"):
        encode_example(tok, msgs[:-1])


def test_base_frozen_adapter_moves_loss_finite(trained):
    _, _, result, watch = trained
    assert result.steps == 6
    assert watch.trainable and all("lora_" in n for n in watch.trainable)
    base = [n for n in watch.before if n not in watch.trainable]
    assert len(base) > 100
    for n in base:  # bitwise equal
        assert watch.before[n].dtype == watch.after[n].dtype
        assert bool((watch.before[n] == watch.after[n]).all()), n
    moved = [n for n in watch.trainable if "lora_B" in n and not bool((watch.before[n] == watch.after[n]).all())]
    assert len(moved) == len([n for n in watch.trainable if "lora_B" in n])  # every B left its zero init
    assert [s for s, _ in result.loss_curve] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(v) and v > 0 for _, v in result.loss_curve)
    assert result.eval_loss is not None and math.isfinite(result.eval_loss)


def test_adapter_folder_and_metadata(trained):
    from kb_chatbot.app.generators.model_files import sha256_file, smollm2_gguf_path

    settings, _, result, _ = trained
    out = result.output_dir
    for name in ("adapter_model.safetensors", "adapter_config.json", "kb_adapter.json", "loss.png",
                 "adapter-lora-f32.gguf"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "kb_adapter.json").read_text())
    manifest = json.loads((settings.data_dir / "finetune" / "data" / "manifest.json").read_text())
    assert meta["base_model"]["sha256"] == sha256_file(smollm2_gguf_path())
    assert meta["base_model"]["model_id"] == "smollm2-135m-instruct-q4_1"
    assert meta["data"]["data_hash"] == manifest["data_hash"]
    assert meta["config"]["lora"]["r"] == 8 and meta["config_hash"]
    assert len(meta["metrics"]["train_loss_curve"]) == 6 and meta["metrics"]["eval_loss"] is not None
    assert math.isfinite(meta["metrics"]["base_eval_loss"])  # held-out loss before the first step
    assert meta["files"]["gguf_lora"] == "adapter-lora-f32.gguf"
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _heldout_prompt(settings) -> list[Message]:
    rows = [json.loads(x) for x in (settings.data_dir / "finetune" / "data" / "heldout.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["kind"] == "answerable")
    return [Message(m["role"], m["content"]) for m in row["messages"][:-1]]


def test_hf_generator_loads_adapter_by_config_and_output_changes(trained):
    from kb_chatbot.app.generators import make_generator
    from kb_chatbot.app.generators.hf import HFGenerator

    settings, _, result, _ = trained
    msgs = _heldout_prompt(settings)
    params = GenParams(max_tokens=24)
    cfg = settings.generator.model_copy(update={"backend": "transformers", "model": "smollm2-135m",
                                                "adapter": result.output_dir})
    tuned = make_generator(cfg, settings.models_dir)
    assert isinstance(tuned, HFGenerator) and tuned.adapter == result.output_dir
    base = make_generator(cfg.model_copy(update={"adapter": None}), settings.models_dir)
    out_tuned = tuned.complete(msgs, params)
    out_base = base.complete(msgs, params)
    assert out_tuned and out_base and out_tuned != out_base


def test_resume_continues_where_interrupted(rig):
    """2 steps, an interruption, resume to 4 == 4 steps straight (same adapter weights)."""
    import torch
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from kb_chatbot.finetune.train import train

    settings, root = rig

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= 2:
                control.should_training_stop = True

    over = dict(max_steps=4, save_steps=2, eval_loss=False)
    cut = _config(root, name="t-resume", **over)
    train(cut, settings, callbacks=[StopAt()], progress=False)
    out = Path(settings.data_dir / "finetune" / "adapters" / "t-resume")
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    resumed = train(cut, settings, resume=True, progress=False)
    assert resumed.steps == 4 and resumed.facts["resumed_from"].endswith("checkpoint-2")
    assert [s for s, _ in resumed.loss_curve] == [1, 2, 3, 4]
    straight = train(_config(root, name="t-straight", **over), settings, progress=False)
    a = load_file(str(resumed.output_dir / "adapter_model.safetensors"))
    b = load_file(str(straight.output_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # a checkpoint from another config is refused
    from kb_chatbot.core.errors import ConfigError

    other = _config(root, name="t-resume", learning_rate=1e-4, **over)
    with pytest.raises(ConfigError, match="cannot resume"):
        train(other, settings, resume=True, progress=False)


def _llama(lora: Path | None):
    import llama_cpp

    from kb_chatbot.app.generators.model_files import smollm2_gguf_path

    return llama_cpp.Llama(model_path=str(smollm2_gguf_path()), n_ctx=1024, n_threads=1, verbose=False,
                           logits_all=True, lora_path=str(lora) if lora else None)


def test_llamacpp_loads_gguf_lora_and_output_changes(trained):
    pytest.importorskip("llama_cpp")
    from kb_chatbot.app.generators import make_generator

    settings, _, result, _ = trained
    msgs = _heldout_prompt(settings)
    params = GenParams(max_tokens=24)
    cfg = settings.generator.model_copy(update={"backend": "llamacpp", "model": "smollm2-135m",
                                                "adapter": result.output_dir, "context_tokens": 2048})
    tuned = make_generator(cfg, settings.models_dir)
    assert tuned.lora_path.name == "adapter-lora-f32.gguf"
    base = make_generator(cfg.model_copy(update={"adapter": None}), settings.models_dir)
    assert tuned.complete(msgs, params) != base.complete(msgs, params)


@pytest.mark.parametrize("module,min_corr", [("v_proj", 0.9), ("q_proj", 0.5)])
def test_gguf_lora_layout_matches_peft(trained, smol_hf, tmp_path, module, min_corr):
    """llama.cpp's logit change from the GGUF adapter tracks PEFT's change from the same adapter.

    The adapter is amplified (B x 20) and limited to one module so the effect stands far above
    the quantization noise; q_proj checks llama.cpp's q/k row permutation (without it, ~ -0.2)."""
    pytest.importorskip("llama_cpp")
    import shutil

    import numpy as np
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from kb_chatbot.finetune.export import export_gguf_lora

    _, _, result, _ = trained
    ad = tmp_path / "amp"
    shutil.copytree(result.output_dir, ad, ignore=shutil.ignore_patterns("checkpoints", "*.gguf"))
    t = load_file(str(ad / "adapter_model.safetensors"))
    t = {k: (v * 20 if module in k else torch.zeros_like(v)) if "lora_B" in k else v for k, v in t.items()}
    save_file(t, str(ad / "adapter_model.safetensors"), metadata={"format": "pt"})
    gguf = export_gguf_lora(ad, smol_hf)
    text = "<|im_start|>user\nWhat is the VPN gateway hostname?<|im_end|>\n<|im_start|>assistant\n"

    def ll(lora):
        llm = _llama(lora)
        toks = llm.tokenize(text.encode(), add_bos=False, special=True)
        llm.eval(toks)
        return np.array(llm.scores[: len(toks)]), toks

    lb, toks = ll(None)
    la, _ = ll(gguf)
    model = AutoModelForCausalLM.from_pretrained(str(smol_hf), dtype=torch.float32)
    ids = torch.tensor([toks])
    with torch.no_grad():
        hb = model(ids).logits[0].numpy()
        ha = PeftModel.from_pretrained(model, str(ad))(ids).logits[0].numpy()
    corr = np.corrcoef((la - lb).ravel(), (ha - hb).ravel())[0, 1]
    assert corr > min_corr, corr


def test_llamacpp_refuses_a_peft_only_folder(trained, tmp_path):
    import shutil

    from kb_chatbot.app.generators import make_generator
    from kb_chatbot.core.errors import ConfigError

    settings, _, result, _ = trained
    peft_only = tmp_path / "peft-only"
    shutil.copytree(result.output_dir, peft_only, ignore=shutil.ignore_patterns("checkpoints", "*.gguf"))
    cfg = settings.generator.model_copy(update={"backend": "llamacpp", "model": "smollm2-135m", "adapter": peft_only})
    with pytest.raises(ConfigError, match="backend: transformers"):
        make_generator(cfg, settings.models_dir)


def test_finetune_eval_writes_table_plot_json(trained, tmp_path):
    from kb_chatbot.finetune.evaluate import evaluate_adapter

    settings, _, result, _ = trained
    report, paths = evaluate_adapter(result.output_dir, settings, limit=3, max_tokens=16, out_dir=tmp_path / "rep")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    md = paths["md"].read_text()
    assert "| answer token F1 (answerable) |" in md and "first token s p50" in md
    data = json.loads(paths["json"].read_text())
    assert data["base"]["summary"]["n"] == 3 == len(data["examples"])
    assert data["tuned"]["summary"]["latency_total_s"]["p50"] > 0


def test_cli_train_export_eval(rig, tmp_path):
    """`kb finetune train | export | eval` end to end through click (1 step, 1 example)."""
    import yaml
    from click.testing import CliRunner

    from kb_chatbot.app.kb.cli import main

    settings, root = rig
    kb_yaml = tmp_path / "kb.yaml"
    kb_yaml.write_text(yaml.safe_dump({
        "data_dir": str(settings.data_dir), "embedding": {"model": "hash"}, "generator": {"backend": "fake"},
        "sources": [{"name": "t", "type": "wiki", "path": str(root)}]}), encoding="utf-8")
    cfg = _config(tmp_path, name="t-cli", eval_loss=False)
    cfg_file = tmp_path / "cli.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"output_dir"})), encoding="utf-8")
    run = CliRunner()
    res = run.invoke(main, ["-c", str(kb_yaml), "finetune", "train", "--config", str(cfg_file), "--max-steps", "1"])
    assert res.exit_code == 0, res.output
    adapter = settings.data_dir / "finetune" / "adapters" / "t-cli"
    assert "steps: 1" in res.output and f"generator.adapter: {adapter}" in res.output
    (adapter / "adapter-lora-f32.gguf").unlink()
    res = run.invoke(main, ["-c", str(kb_yaml), "finetune", "export", "--adapter", str(adapter)])
    assert res.exit_code == 0, res.output
    assert (adapter / "adapter-lora-f32.gguf").is_file()
    res = run.invoke(main, ["-c", str(kb_yaml), "finetune", "eval", "--adapter", str(adapter), "--limit", "1",
                            "--max-tokens", "8"])
    assert res.exit_code == 0, res.output
    assert (settings.data_dir / "reports" / "finetune" / "t-cli.md").is_file()
    res = run.invoke(main, ["-c", str(kb_yaml), "finetune", "train", "--config", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "training config not found" in res.output


def test_top_layers_adapts_only_the_last_layers(smol_hf, tmp_path):
    """lora.top_layers: adapters in the last N layers only ("all-linear" spelled out as module
    names, which PEFT needs for layers_to_transform); no gradient reaches the layers below."""
    import torch

    from kb_chatbot.core.errors import ConfigError
    from kb_chatbot.finetune.train import load_model

    cfg = _config(tmp_path, lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear",
                                  "top_layers": 2})
    model, tok, facts = load_model(cfg, smol_hf)
    n = model.base_model.model.config.num_hidden_layers
    adapted = {int(name.split(".layers.")[1].split(".")[0]) for name, p in model.named_parameters()
               if p.requires_grad}
    assert adapted == {n - 2, n - 1}
    kinds = {name.split(".lora_")[0].rsplit(".", 1)[1] for name, p in model.named_parameters() if p.requires_grad}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    ids = torch.tensor([tok("Where do visitors park?")["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    lower = model.base_model.model.model.layers[0].self_attn.q_proj.weight
    assert lower.grad is None
    with pytest.raises(ConfigError, match="top_layers"):
        load_model(_config(tmp_path, lora={"top_layers": n + 1}), smol_hf)
