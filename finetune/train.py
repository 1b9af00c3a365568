"""LoRA / QLoRA supervised fine-tuning with PEFT and the transformers ``Trainer``.

One code path for both devices: on CUDA the base loads in 4-bit nf4 through bitsandbytes
(QLoRA: ``prepare_model_for_kbit_training``), on CPU in bf16 (or fp32); a LoRA adapter is
trained on top and only its weights get gradients. The loss covers the assistant's reply
only: :func:`encode_example` labels the tokens after the chat template's generation prompt
(the answer and its end-of-turn token) and sets every prompt token to -100. TRL's SFTTrainer
would need ``{% generation %}`` markers in the chat template for assistant-only loss (neither
SmolLM2's nor Qwen2.5's has them) plus the datasets/pyarrow stack, for what is ~30 lines here.

Checkpoints (adapter + optimizer + scheduler + RNG) go to ``<output_dir>/checkpoints`` every
``save_steps``; ``resume=True`` continues from the newest one. The finished adapter is saved
to ``output_dir`` with ``kb_adapter.json`` (see :mod:`kb_chatbot.finetune.export`) and ``loss.png``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from kb_chatbot.core.errors import ConfigError, KBError
from kb_chatbot.core.settings import GeneratorConfig, Settings
from kb_chatbot.finetune.config import TrainConfig

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
CHECKPOINTS = "checkpoints"
RUN_FILE = "kb_run.json"  # config + data hashes of the run the checkpoints belong to


# --- examples -> token ids with assistant-only labels ---------------------------------------


def encode_example(tokenizer: Any, messages: Sequence[dict[str, str]]) -> dict[str, list[int]]:
    """``input_ids``/``labels`` for one chat example; only the last assistant turn is labelled.

    The prompt is rendered exactly as at inference (chat template with the generation prompt,
    no extra special tokens: :class:`kb_chatbot.app.generators.hf.HFGenerator` does the same), the reply
    is the rest of the fully rendered conversation up to and including the end-of-turn token.
    Prompt and reply are tokenized separately, so the boundary is exact.
    """
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a training example must end with an assistant message")
    prompt = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(list(messages), tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently inside the full conversation; "
                         "assistant-only labels cannot be derived for this model")
    reply = full[len(prompt):].rstrip()  # ends with the end-of-turn token (e.g. <|im_end|>)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    if not r_ids:
        raise ValueError("the assistant reply is empty")
    return {"input_ids": p_ids + r_ids, "labels": [IGNORE_INDEX] * len(p_ids) + r_ids}


def read_examples(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file written by ``kb finetune build-data``; bad lines are named."""
    if not path.is_file():
        raise KBError(f"training data not found: {path} (run `kb finetune build-data` first)")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            msgs = row["messages"]
            if not isinstance(msgs, list) or not all({"role", "content"} <= set(m) for m in msgs):
                raise ValueError("messages must be a list of {role, content}")
        except (ValueError, KeyError, TypeError) as e:
            raise KBError(f"{path}:{i}: not a training example ({e})") from None
        rows.append(row)
    return rows


def encode_all(tokenizer: Any, rows: Sequence[dict[str, Any]], seq_len: int) -> tuple[list[dict[str, list[int]]], int]:
    """Encoded examples that fit in ``seq_len`` tokens, and how many were left out as too long."""
    out, too_long = [], 0
    for row in rows:
        enc = encode_example(tokenizer, row["messages"])
        if len(enc["input_ids"]) > seq_len:
            too_long += 1
            continue
        out.append(enc)
    return out, too_long


class Collator:
    """Right-pads a batch; padding has attention 0 and label -100."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# --- model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseModelInfo:
    model_id: str
    hf_dir: Path
    source_file: Path  # the GGUF (or the HF folder's weights) the hash covers
    sha256: str


def base_model_info(cfg: TrainConfig, settings: Settings) -> BaseModelInfo:
    """Resolve ``base_model`` like ``generator.model`` and convert a GGUF once into an HF folder."""
    from kb_chatbot.app.generators.model_files import hf_folder_for, resolve_model

    ref = resolve_model(GeneratorConfig(model=cfg.base_model), settings.models_dir, base_dir=settings.config_dir)
    hf_dir = hf_folder_for(ref, settings.models_dir)
    source = ref.gguf_path or _weights_file(hf_dir)
    return BaseModelInfo(ref.model_id, hf_dir, source, weights_sha256(source))


def _weights_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise ConfigError(f"base_model: no *.safetensors or *.bin weights in {folder}")
    return files[0]


def weights_sha256(path: Path) -> str:
    """sha256 of a weights file; reuses a ``<file>.sha256`` sidecar newer than the file."""
    from kb_chatbot.app.generators.model_files import sha256_file

    side = path.with_name(path.name + ".sha256")
    try:
        if side.stat().st_mtime >= path.stat().st_mtime:
            return side.read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError):
        pass
    return sha256_file(path)


def pick_precision(cfg: TrainConfig) -> tuple[str, bool]:
    """(dtype name, nf4?) for this machine and config."""
    import torch

    cuda = torch.cuda.is_available()
    nf4 = cfg.quantization == "nf4" or (cfg.quantization == "auto" and cuda)
    if cfg.dtype != "auto":
        return cfg.dtype, nf4
    if cuda:
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp32"), nf4
    return "bf16", nf4  # CPU: AMX/AVX512-BF16 make bf16 much faster than fp32 here (STACK.md)


def load_model(cfg: TrainConfig, hf_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(peft model, tokenizer, facts) with a fresh LoRA adapter on the frozen base."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    dtype_name, nf4 = pick_precision(cfg)
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if nf4:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if dtype_name == "bf16" else torch.float32,
        )
        kwargs["device_map"] = {"": 0} if cuda else "cpu"
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), **kwargs)
    if cuda and not nf4:
        model = model.to("cuda")
    checkpointing = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else nf4
    if nf4:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.config.use_cache = False
    n_layers = int(model.config.num_hidden_layers)
    top = cfg.lora.top_layers
    if top is not None and top > n_layers:
        raise ConfigError(f"lora.top_layers {top} is more than the model's {n_layers} layers")
    targets = cfg.lora.target_modules
    if top and targets == "all-linear":  # PEFT takes layers_to_transform with module names only
        targets = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                          if isinstance(mod, torch.nn.Linear) and ".layers." in name})
    lcfg = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=targets, bias="none", task_type="CAUSAL_LM",
        layers_to_transform=list(range(n_layers - top, n_layers)) if top else None,
    )
    try:
        model = get_peft_model(model, lcfg)
    except ValueError as e:
        raise ConfigError(f"lora.target_modules {cfg.lora.target_modules!r} do not fit this model: {e}") from None
    trainable, total = model.get_nb_trainable_parameters()
    facts = {"dtype": dtype_name, "nf4": nf4, "device": "cuda" if cuda else "cpu",
             "gradient_checkpointing": bool(checkpointing), "trainable_params": int(trainable),
             "total_params": int(total)}
    log.info("finetune model=%s %s", hf_dir.name, " ".join(f"{k}={v}" for k, v in facts.items()))
    return model, tok, facts


# --- the run ----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    loss_curve: list[tuple[int, float]]
    eval_loss: float | None
    seconds: float
    facts: dict[str, Any] = field(default_factory=dict)


def _data_manifest(data_dir: Path) -> dict[str, Any]:
    from kb_chatbot.finetune.data import MANIFEST

    path = data_dir / MANIFEST
    if not path.is_file():
        raise KBError(f"no {MANIFEST} in {data_dir}: run `kb finetune build-data` first")
    return json.loads(path.read_text(encoding="utf-8"))


def _check_resume(out: Path, run: dict[str, Any], resume: bool) -> str | None:
    """The checkpoint to resume from (None: start fresh). Refuses a checkpoint of another run."""
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = out / CHECKPOINTS
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if not resume:
        if ckpt_dir.exists():
            log.info("finetune fresh_start=1 removing_checkpoints=%s", ckpt_dir)
            shutil.rmtree(ckpt_dir)
        return None
    if last is None:
        log.warning("finetune resume=1 but no checkpoint in %s: starting from step 0", ckpt_dir)
        return None
    saved = json.loads((out / RUN_FILE).read_text(encoding="utf-8")) if (out / RUN_FILE).is_file() else {}
    for key in ("config_hash", "data_hash", "base_sha256"):
        if saved.get(key) != run[key]:
            raise ConfigError(
                f"cannot resume from {last}: its {key.replace('_', ' ')} differs from this run's "
                f"(was {saved.get(key)}, now {run[key]}); run without --resume to start over"
            )
    return last


def train(cfg: TrainConfig, settings: Settings, *, resume: bool = False, callbacks: Sequence[Any] = (),
          progress: bool = True) -> TrainResult:
    """Train a LoRA adapter on ``<data_dir>/train.jsonl``; returns where it was saved and its curve."""
    cfg = cfg.resolved(settings.data_dir)
    out = Path(cfg.output_dir)  # type: ignore[arg-type]
    manifest = _data_manifest(cfg.data_dir)
    base = base_model_info(cfg, settings)
    run = {"config_hash": cfg.config_hash(), "data_hash": manifest["data_hash"], "base_sha256": base.sha256}
    out.mkdir(parents=True, exist_ok=True)
    last = _check_resume(out, run, resume)
    run_file = out / RUN_FILE
    if last and run_file.is_file():  # keep what the interrupted run measured before its first step
        run["base_eval_loss"] = json.loads(run_file.read_text(encoding="utf-8")).get("base_eval_loss")
    run_file.write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")

    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # harmless CPU-kernel warning
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    model, tok, facts = load_model(cfg, base.hf_dir)
    train_rows = read_examples(cfg.data_dir / "train.jsonl")
    train_set, too_long = encode_all(tok, train_rows, cfg.seq_len)
    if not train_set:
        raise KBError(f"no training example fits in seq_len={cfg.seq_len} tokens "
                      f"({too_long} too long): raise seq_len or build data with fewer sources")
    heldout_path = cfg.data_dir / "heldout.jsonl"
    eval_set: list[dict[str, list[int]]] = []
    if cfg.eval_loss and heldout_path.is_file():
        eval_set, _ = encode_all(tok, read_examples(heldout_path), cfg.seq_len)
        eval_set = eval_set[: cfg.eval_max_examples] if cfg.eval_max_examples else eval_set
    facts.update(train_examples=len(train_set), too_long=too_long, eval_examples=len(eval_set),
                 label_tokens=sum(sum(1 for x in e["labels"] if x != IGNORE_INDEX) for e in train_set))
    log.info("finetune data train=%d too_long=%d eval=%d seq_len=%d", len(train_set), too_long, len(eval_set), cfg.seq_len)

    args = TrainingArguments(
        output_dir=str(out / CHECKPOINTS),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a share of the total steps
        lr_scheduler_type=cfg.lr_scheduler,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="no",
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=facts["dtype"] == "bf16" and facts["device"] == "cuda",
        use_cpu=facts["device"] == "cpu",
        dataloader_num_workers=0,
        report_to=[],
        disable_tqdm=not progress,
        remove_unused_columns=False,
        optim="adamw_torch",
        max_grad_norm=1.0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=Collator(tok.pad_token_id),
                      callbacks=list(callbacks))
    base_eval_loss = run.get("base_eval_loss")
    if eval_set and last is None:  # the fresh adapter is a no-op (B = 0): this is the base model's loss
        base_eval_loss = float(trainer.evaluate(eval_dataset=eval_set)["eval_loss"])
        run_file.write_text(json.dumps({**run, "base_eval_loss": base_eval_loss}, indent=2) + "\n", encoding="utf-8")
        log.info("finetune base_eval_loss=%.4f", base_eval_loss)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - t0
    curve = [(int(h["step"]), float(h["loss"])) for h in trainer.state.log_history if "loss" in h]
    for step, loss in curve:
        if not math.isfinite(loss):
            raise KBError(f"training diverged: loss {loss} at step {step}; lower learning_rate")
    eval_loss = None
    if eval_set:
        eval_loss = float(trainer.evaluate(eval_dataset=eval_set)["eval_loss"])
    steps = int(trainer.state.global_step)
    facts.update(steps=steps, seconds=round(seconds, 1), base_eval_loss=base_eval_loss,
                 seconds_per_step=round(seconds / max(1, steps - _step_of(last)), 2), resumed_from=last)

    from kb_chatbot.finetune.export import save_adapter

    save_adapter(model, out, cfg=cfg, base=base, manifest=manifest, curve=curve, eval_loss=eval_loss, facts=facts)
    return TrainResult(out, steps, curve, eval_loss, seconds, facts)


def _step_of(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    try:
        return int(Path(checkpoint).name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0
