"""The OpenVINO model: exported once on this machine from the transformers folder, no download.

packaged GGUF → ``kb models prepare --hf``'s transformers folder → optimum-intel's OpenVINO export
(``--task text-generation-with-past``: a stateful IR with its KV cache inside; int8 weights by
default, the format that kept llama.cpp's answers and check verdicts in the bake-off) →
``<models_dir>/openvino/<model_id>-<weights>/``.

The exporter (optimum-intel with nncf) pins other versions of transformers and huggingface-hub
than this project, so it runs in its own venv, made once from the package registry (torch, the
CPU build, first) under the user's cache folder and shared by every checkout: ~1.6 GB, about a
minute to install from a local mirror. ``KB_OPENVINO_EXPORTER=/path/to/python`` uses an existing
one instead. Only the runtime (``openvino``) is a dependency of the application itself.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from kb_chatbot.app.generators.model_files import ModelRef, _file_lock, hf_folder_for
from kb_chatbot.core.errors import ModelNotFoundError

log = logging.getLogger(__name__)

#: Weight formats the export offers (int8: the bake-off's equal answers; int4: faster, changed 4/8).
WEIGHTS = ("int8", "int4")
#: The exporter's venv, in install order (torch first: the CPU build, never the CUDA one).
EXPORTER_PINS = (
    ("torch==2.13.0",),
    ("optimum-intel[openvino]==2.2.0", "optimum==2.3.0", "nncf==3.4.0", "openvino==2026.4.1",
     "openvino-tokenizers==2026.4.1.0", "transformers==5.5.4", "huggingface-hub==1.21.0", "torch==2.13.0"),
)
_lock = threading.Lock()

Say = Callable[[str], None]


def openvino_dir(ref: ModelRef, models_dir: Path, weights: str = "int8") -> Path:
    return Path(models_dir) / "openvino" / f"{ref.model_id}-{weights}"


def is_exported(folder: Path) -> bool:
    return (folder / "openvino_model.xml").is_file() and (folder / "kb-source.json").is_file()


def exported_folder(ref: ModelRef, models_dir: Path, weights: str = "int8") -> Path | None:
    """The exported folder for ``ref`` when it is there (nothing is converted)."""
    folder = openvino_dir(ref, models_dir, weights)
    return folder if is_exported(folder) else None


def export_openvino(ref: ModelRef, models_dir: Path, weights: str = "int8", *, say: Say | None = None) -> Path:
    """The exported OpenVINO folder for ``ref``, made now if missing (minutes, once)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, not {weights!r}")
    say = say or (lambda m: log.info("%s", m))
    target = openvino_dir(ref, models_dir, weights)
    if is_exported(target):
        return target
    root = target.parent
    with _lock, _file_lock(root, target.name):
        if is_exported(target):
            return target
        say(f"transformers folder for {ref.model_id} (converted from the GGUF once: 1-2 min)...")
        hf = hf_folder_for(ref, Path(models_dir))
        python = exporter_python(say)
        tmp = root / f".{target.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [python, "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model", str(hf),
               "--task", "text-generation-with-past", "--weight-format", weights, str(tmp)]
        say(f"exporting {ref.model_id} to OpenVINO {weights} (1.5B: ~2-4 min on 2 cores)...")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode or not (tmp / "openvino_model.xml").is_file():
                tail = "\n".join(proc.stdout.strip().splitlines()[-8:])
                raise ModelNotFoundError(
                    f"the OpenVINO export of {hf} failed (exit {proc.returncode}):\n{tail}\n"
                    "the answer model stays on llama.cpp (generator.backend: auto); see docs/BENCH.md"
                )
            meta = {"model_id": ref.model_id, "weights": weights, "source": str(hf),
                    "exporter": _pins_text(), "seconds": round(time.perf_counter() - t0, 1),
                    "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (tmp / "kb-source.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            shutil.rmtree(target, ignore_errors=True)  # a partial folder without kb-source.json
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("model=%s exported_openvino=%s seconds=%.1f path=%s", ref.model_id, weights, time.perf_counter() - t0, target)
    return target


def exporter_python(say: Say | None = None) -> str:
    """The exporter venv's python: ``KB_OPENVINO_EXPORTER``, or the cached venv (made if missing)."""
    given = os.environ.get("KB_OPENVINO_EXPORTER")
    if given:
        if not Path(given).is_file():
            raise ModelNotFoundError(f"KB_OPENVINO_EXPORTER={given} is not a file: point it at a venv's python")
        return given
    say = say or (lambda m: log.info("%s", m))
    venv = _cache_root() / f"openvino-exporter-{hashlib.sha256(_pins_text().encode()).hexdigest()[:12]}"
    python = venv / "bin" / "python"
    done = venv / ".kb-complete"
    if done.is_file() and python.is_file():
        return str(python)
    with _file_lock(venv.parent, venv.name):
        if done.is_file() and python.is_file():
            return str(python)
        say(f"making the exporter venv {venv} (once; ~1.6 GB from the package registry)...")
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)], "create the exporter venv")
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q", "install"]
        for group in EXPORTER_PINS:
            _run(pip + list(group), f"install {' '.join(group)} into {venv}")
        # optimum-intel pulls torchvision, whose registry build is not the CPU torch's: importing
        # it fails ("operator torchvision::nms does not exist") and takes transformers down with
        # it. A text model's export never needs it.
        _run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], f"remove torchvision from {venv}")
        done.write_text(_pins_text() + "\n", encoding="utf-8")
    return str(python)


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        tail = "\n".join(proc.stdout.strip().splitlines()[-6:])
        raise ModelNotFoundError(f"cannot {what} (exit {proc.returncode}):\n{tail}")


def _pins_text() -> str:
    return " ; ".join(" ".join(g) for g in EXPORTER_PINS)


def _cache_root() -> Path:
    base = os.environ.get("KB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kb-chatbot")
    return Path(base)
