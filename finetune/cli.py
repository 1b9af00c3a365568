"""``kb finetune build-data | train | eval | export``: tune the SLM on the knowledge base.

Heavy modules (torch, transformers, peft) are imported inside the commands.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from kb_chatbot.app.kb.settings import get_settings

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


@click.group(
    epilog="""\b
Examples:
  kb finetune build-data                              # questions from the indexed public chunks
  kb finetune build-data --questions extractive --max-docs 50
  kb finetune build-data --teacher-url http://gpu-box:8000/v1 --teacher-model Qwen2.5-7B-Instruct
  kb finetune train --config finetune/configs/smollm2-cpu.yaml
  kb finetune train --config finetune/configs/smollm2-cpu.yaml --resume   # after an interruption
  kb finetune eval --adapter data/runtime/finetune/adapters/smollm2-cpu
  kb finetune export --adapter data/runtime/finetune/adapters/smollm2-cpu  # GGUF LoRA for llama.cpp
\b
Serve the adapter: set generator.adapter to the adapter folder in kb.yaml (backend transformers
loads the PEFT files; backend llamacpp loads the folder's GGUF LoRA on the same base model).
""",
)
def finetune() -> None:
    """Fine-tune the answer model (LoRA / QLoRA) on the knowledge base and user feedback."""


def _bar(label: str):
    """A (callback, bar) pair: click progress bar on stderr driven by progress(done, total)."""
    state: dict = {"bar": None, "last": 0}

    def progress(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = click.progressbar(length=max(total, 1), label=label, file=sys.stderr)
            state["bar"].__enter__()
        state["bar"].update(done - state["last"])
        state["last"] = done
        if done >= total:
            state["bar"].__exit__(None, None, None)

    return progress


@finetune.command("build-data")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: <data_dir>/finetune/data).")
@click.option("--max-docs", type=click.IntRange(min=1), default=None, help="Use at most N documents (seeded sample).")
@click.option("--questions", type=click.Choice(["auto", "extractive", "slm", "teacher"]), default="auto",
              show_default=True,
              help="Who writes questions: auto = teacher if given, else the configured SLM (extractive for the "
                   "fake backend); every rejected model question falls back to extractive.")
@click.option("--teacher-url", envvar="KB_TEACHER_URL", default=None,
              help="OpenAI-compatible base URL of a teacher model (env KB_TEACHER_URL).")
@click.option("--teacher-model", envvar="KB_TEACHER_MODEL", default=None, help="Teacher model name (env KB_TEACHER_MODEL).")
@click.option("--teacher-api-key", envvar="KB_TEACHER_API_KEY", default=None, help="Env KB_TEACHER_API_KEY.")
@click.option("--per-chunk", "per_chunk", type=click.IntRange(1, 5), default=1, show_default=True,
              help="Extractive questions per chunk.")
@click.option("--unanswerable-ratio", type=click.FloatRange(0, 1), default=0.35, show_default=True)
@click.option("--heldout", "heldout_share", type=click.FloatRange(0, 0.9), default=0.2, show_default=True,
              help="Share of documents held out for evaluation.")
@click.option("--top-k", type=click.IntRange(1, 20), default=None,
              help="Sources per prompt (default: retrieval.top_k, as served).")
@click.option("--include-restricted", is_flag=True,
              help="Also use restricted documents (each example built as one reader of its document). "
                   "The adapter then holds restricted facts: serve it only to people who may read them all.")
@click.option("--no-feedback", is_flag=True, help="Leave out thumbs-up/corrected answers from the answer log.")
@click.option("--verify", type=click.Choice(["facts", "slm", "off"]), default="facts", show_default=True,
              help="Keep an answer only if the answer service's verifier passes it: its text gates (facts), "
                   "and the model's support check (slm, one model call per sentence).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def build_data(ctx: click.Context, out_dir: Path | None, max_docs: int | None, questions: str, teacher_url: str | None,
               teacher_model: str | None, teacher_api_key: str | None, per_chunk: int, unanswerable_ratio: float,
               heldout_share: float, top_k: int | None, include_restricted: bool, no_feedback: bool, verify: str,
               seed: int) -> None:
    """Training examples in the answering prompt format, split by document into train / held-out.

    \b
    Examples:
      kb finetune build-data
      kb finetune build-data --questions extractive --per-chunk 2 --top-k 3
    """
    from kb_chatbot.core.settings import OpenAIEndpoint
    from kb_chatbot.finetune.config import DEFAULT_DATA
    from kb_chatbot.finetune.data import BuildOptions, build_dataset

    settings = get_settings(ctx)
    if bool(teacher_url) != bool(teacher_model):
        raise click.UsageError("--teacher-url and --teacher-model go together")
    teacher = OpenAIEndpoint(base_url=teacher_url, model=teacher_model, api_key=teacher_api_key) if teacher_url else None
    opts = BuildOptions(
        out_dir=(out_dir or settings.data_dir / DEFAULT_DATA).resolve(), max_docs=max_docs,
        questions_per_chunk=per_chunk, unanswerable_ratio=unanswerable_ratio, heldout_share=heldout_share,
        seed=seed, include_restricted=include_restricted, questions=questions,  # type: ignore[arg-type]
        teacher=teacher, top_k=top_k, feedback=not no_feedback, verify=verify,  # type: ignore[arg-type]
    )
    report = build_dataset(settings, opts, progress=_bar("writing questions"))
    c = report.counts
    click.echo(f"train: {c['train']} examples {c['train_kinds']} from {c['train_documents']} documents")
    click.echo(f"held-out: {c['heldout']} examples {c['heldout_kinds']} from {c['heldout_documents']} documents")
    click.echo(f"questions: {c.get('question_mode')} {c.get('question_origins')}")
    click.echo(f"answers kept by the verifier ({verify}): {c.get('replies_verified', 0)}, "
               f"left out: {c.get('replies_failed_verification', 0)}")
    for note in report.notes:
        click.secho(f"note: {note}", fg="yellow", err=True)
    click.echo(f"data hash: {report.data_hash}")
    click.echo(f"written to {report.out_dir} in {report.seconds:.1f} s")


@finetune.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_CONFIG,
              show_default=True, help="Training config YAML.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the output folder.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Override max_steps.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Override output_dir.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Override data_dir.")
@click.pass_context
def train(ctx: click.Context, config_path: Path, resume: bool, max_steps: int | None, output_dir: Path | None,
          data_dir: Path | None) -> None:
    """Train a LoRA adapter (QLoRA nf4 on CUDA, bf16 LoRA on CPU) on the built data.

    \b
    Examples:
      kb finetune train --config finetune/configs/smollm2-cpu.yaml
      kb finetune train --config finetune/configs/default.yaml --resume
    """
    from kb_chatbot.finetune.config import load_train_config
    from kb_chatbot.finetune.train import train as run_train

    settings = get_settings(ctx)
    cfg = load_train_config(config_path, max_steps=max_steps,
                            output_dir=output_dir.resolve() if output_dir else None,
                            data_dir=data_dir.resolve() if data_dir else None)
    result = run_train(cfg, settings, resume=resume)
    curve = result.loss_curve
    first, last = (curve[0][1], curve[-1][1]) if curve else (None, None)
    click.echo(f"steps: {result.steps} in {result.seconds:.0f} s ({result.facts.get('seconds_per_step')} s/step)")
    click.echo(f"train loss: {first} -> {last}; held-out loss: {result.eval_loss}")
    click.echo(f"adapter: {result.output_dir}")
    click.echo(f"serve it: generator.adapter: {result.output_dir}")


@finetune.command("eval")
@click.option("--adapter", "adapter_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Default: the data the adapter was trained on (its held-out split).")
@click.option("--backend", type=click.Choice(["transformers", "llamacpp"]), default="transformers", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate the first N held-out examples.")
@click.option("--max-tokens", type=click.IntRange(min=8), default=96, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Default: generator.threads.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Default: <data_dir>/reports/finetune.")
@click.pass_context
def eval_cmd(ctx: click.Context, adapter_dir: Path, data_dir: Path | None, backend: str, limit: int | None,
             max_tokens: int, threads: int | None, out_dir: Path | None) -> None:
    """Base vs tuned on the held-out split: answer F1, citations, refusals, latency.

    \b
    Examples:
      kb finetune eval --adapter data/runtime/finetune/adapters/smollm2-cpu
      kb finetune eval --adapter DIR --backend llamacpp --limit 20
    """
    from kb_chatbot.finetune.evaluate import METRIC_LABELS, evaluate_adapter

    settings = get_settings(ctx)
    bars = {}

    def progress(label: str, done: int, total: int) -> None:
        if label not in bars:
            bars[label] = _bar(f"{label:>5}")
        bars[label](done, total)

    from kb_chatbot.app.generators.base import resolve_threads

    report, paths = evaluate_adapter(adapter_dir, settings, data_dir=data_dir, backend=backend, limit=limit,
                                     max_tokens=max_tokens, threads=threads or resolve_threads(settings.generator.threads),
                                     out_dir=out_dir, progress=progress)
    b, t = report["base"]["summary"], report["tuned"]["summary"]
    for key, label in METRIC_LABELS.items():
        bv, tv = b.get(key), t.get(key)
        click.echo(f"{label:45s} base {_f(bv)}  tuned {_f(tv)}")
    click.echo(f"report: {paths['md']}\nplot:   {paths['png']}\njson:   {paths['json']}")


@finetune.command()
@click.option("--adapter", "adapter_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_context
def export(ctx: click.Context, adapter_dir: Path) -> None:
    """(Re)write the adapter folder's GGUF LoRA for the llamacpp backend.

    \b
    Example:
      kb finetune export --adapter data/runtime/finetune/adapters/smollm2-cpu
    """
    from kb_chatbot.finetune.export import export_gguf_lora, read_metadata, write_metadata

    meta = read_metadata(adapter_dir)
    path = export_gguf_lora(adapter_dir, Path(meta["base_model"]["hf_dir"]))
    meta.setdefault("files", {})["gguf_lora"] = path.name
    meta["files"].pop("gguf_lora_error", None)
    write_metadata(adapter_dir, meta)
    click.echo(f"GGUF LoRA: {path} (base: {meta['base_model']['file']})")
    click.echo(json.dumps({"generator": {"backend": "llamacpp", "model": meta["base_model"]["name"],
                                         "adapter": str(Path(adapter_dir).resolve())}}))


def _f(v) -> str:
    return "  n/a" if v is None else f"{v:.3f}"
