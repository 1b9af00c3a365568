"""The llama.cpp backend (llama-cpp-python): the fast CPU default for GGUF models.

The reply is generated with ``Llama.generate`` driven from here rather than through
``create_chat_completion``: that gives per-token log-probabilities and the yes/no
probability without ``logits_all=True`` (which would allocate n_ctx × vocab floats: 2.5 GB
for Qwen's 152k vocabulary at 4k context), while keeping llama.cpp's prompt-prefix reuse.
The prompt comes from the GGUF's own chat template (rendered by llama-cpp-python's
``Jinja2ChatFormatter``, as ``create_chat_completion`` would).

LoRA: llama.cpp loads GGUF LoRA adapters (``convert_lora_to_gguf.py`` output) via
``lora_path``; a PEFT folder is refused with a clear error. A merged GGUF is just a model path.
"""
from __future__ import annotations

import codecs
import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from kb_chatbot.app.generators.base import (
    GeneratorBase,
    StopFilter,
    merge_finish,
    split_continuation,
    to_dicts,
    yes_no_token_ids,
    yes_share_from_logprobs,
)
from kb_chatbot.core.errors import ConfigError, GeneratorError, ModelNotFoundError
from kb_chatbot.core.types import GenParams, Message, Token

log = logging.getLogger(__name__)

_INSTALL_HINT = (
    "the llamacpp backend needs llama-cpp-python: build it with AMX off, e.g. "
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF '
    '-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" pip install llama-cpp-python==0.3.36 '
    "(see scripts/setup.sh), or set generator.backend: transformers"
)


def resolve_lora(path: Path | None) -> Path | None:
    """The GGUF adapter file for ``path`` (a .gguf, or a folder holding exactly one)."""
    if path is None:
        return None
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
        if len(ggufs) > 1:
            raise ConfigError(
                f"generator.adapter: {path} holds several .gguf files ({', '.join(g.name for g in ggufs)}); "
                "point generator.adapter at one of them"
            )
        if (path / "adapter_config.json").is_file():
            raise ConfigError(
                f"generator.adapter: {path} is a PEFT adapter folder, which llama.cpp cannot load; "
                "export it as a GGUF LoRA adapter (convert_lora_to_gguf.py) or a merged GGUF model "
                "(kb finetune export), or use generator.backend: transformers"
            )
    raise ConfigError(f"generator.adapter: {path} is not a GGUF LoRA adapter file or a folder with one")


class LlamaCppGenerator(GeneratorBase):
    continues_assistant = True  # the reply so far is appended after the generation prompt

    def __init__(
        self,
        model_path: Path,
        n_threads: int = 1,
        n_ctx: int = 4096,
        lora_path: Path | None = None,
        model_id: str | None = None,
        *,
        seed: int = 0,
    ):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelNotFoundError(f"GGUF model not found: {self.model_path} (run `kb models prepare`)")
        self.lora_path = resolve_lora(lora_path)
        base_id = model_id or self.model_path.stem.lower()
        self.model_id = f"{base_id}+{self.lora_path.stem}" if self.lora_path else base_id
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.seed = seed
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()  # a llama.cpp context serves one sequence at a time
        self._llm: Any = None
        self._formatter: Any = None
        self._yes_no: tuple[list[int], list[int]] | None = None

    # --- loading ------------------------------------------------------------------------

    def warm_up(self) -> None:
        self._load()

    def _load(self) -> Any:
        if self._llm is not None:
            return self._llm
        with self._load_lock:
            if self._llm is None:
                self._llm = self._load_now()
        return self._llm

    def _load_now(self) -> Any:
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as e:
            raise ModelNotFoundError(_INSTALL_HINT) from e
        t0 = time.perf_counter()
        try:
            llm = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                lora_path=str(self.lora_path) if self.lora_path else None,
                seed=self.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as e:
            what = f"LoRA adapter {self.lora_path} with " if self.lora_path else ""
            raise GeneratorError(f"llama.cpp cannot load {what}{self.model_path}: {e}") from e
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise GeneratorError(
                f"{self.model_path.name} has no chat template in its GGUF metadata "
                "(a base model?): use an instruct/chat model"
            )
        self._formatter = Jinja2ChatFormatter(
            template=template, eos_token=_piece(llm, llm.token_eos()), bos_token=_piece(llm, llm.token_bos())
        )
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._is_eog = lambda t: bool(llama_cpp.llama_vocab_is_eog(self._vocab, t))
        log.info(
            "model=%s backend=llamacpp threads=%d n_ctx=%d lora=%s load_s=%.1f",
            self.model_id, self.n_threads, self.n_ctx, self.lora_path, time.perf_counter() - t0,
        )
        return llm

    def _prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        llm = self._load()
        messages, reply_start = split_continuation(messages)
        resp = self._formatter(messages=to_dicts(messages))
        add_bos = not getattr(resp, "added_special", False) and llm.token_bos() >= 0
        text = resp.prompt
        bos = _piece(llm, llm.token_bos()) if llm.token_bos() >= 0 else ""
        if bos and text.startswith(bos):  # the template wrote BOS itself
            add_bos = False
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        if reply_start:  # the assistant turn is open (generation prompt); its text so far follows
            tokens += llm.tokenize(reply_start.encode("utf-8"), add_bos=False, special=False)
        return tokens

    def count_tokens(self, text: str) -> int:
        llm = self._load()
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    # --- generation ---------------------------------------------------------------------

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[Token]:
        return merge_finish(self._stream(messages, params))

    def _stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[Token]:
        llm = self._load()
        prompt = self._prompt_tokens(messages)
        room = self.n_ctx - len(prompt)
        if room <= 0:
            raise GeneratorError(
                f"the prompt is {len(prompt)} tokens, more than generator.context_tokens={self.n_ctx}; "
                "shorten the sources or raise context_tokens"
            )
        max_new = min(params.max_tokens, room)
        recorder = _LogitsRecorder() if params.logprobs else None
        stops = StopFilter(params.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        finish = "length"
        n_new = 0
        pending_lp: float | None = None
        t0 = time.perf_counter()
        with self._run_lock:
            llm.set_seed(params.seed)
            tokens = llm.generate(
                prompt,
                temp=params.temperature,
                top_p=params.top_p if params.temperature > 0 else 1.0,
                top_k=0 if params.temperature > 0 else 1,
                min_p=0.0,
                repeat_penalty=1.0,
                logits_processor=[recorder] if recorder else None,
            )
            try:
                for tok in tokens:
                    if self._is_eog(tok):
                        finish = "stop"
                        break
                    n_new += 1
                    if recorder is not None:
                        lp = recorder.logprob(tok)
                        pending_lp = lp if pending_lp is None else pending_lp + lp
                    text = decoder.decode(llm.detokenize([tok], special=False))
                    out = stops.feed(text)
                    if out:
                        yield Token(out, logprob=pending_lp)
                        pending_lp = None
                    if stops.hit:
                        finish = "stop"
                        break
                    if n_new >= max_new:
                        break
            except (RuntimeError, ValueError) as e:
                raise GeneratorError(f"{self.model_id}: llama.cpp failed while generating: {e}") from e
            finally:
                tokens.close()
        tail = stops.flush() + ("" if stops.hit else decoder.decode(b"", final=True))
        if tail:
            yield Token(tail, logprob=pending_lp)
        log.debug(
            "model=%s prompt_tokens=%d new_tokens=%d finish=%s seconds=%.2f",
            self.model_id, len(prompt), n_new, finish, time.perf_counter() - t0,
        )
        yield Token("", finish_reason=finish)

    def yes_probability(self, messages: Sequence[Message]) -> float:
        """P("yes") / (P("yes") + P("no")) for the first token of the assistant's reply."""
        llm = self._load()
        prompt = self._prompt_tokens(messages)
        if len(prompt) >= self.n_ctx:
            raise GeneratorError(f"the yes/no prompt is {len(prompt)} tokens, more than n_ctx={self.n_ctx}")
        yes_ids, no_ids = self._yes_no_ids()
        recorder = _LogitsRecorder()
        with self._run_lock:
            tokens = llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, logits_processor=[recorder])
            try:
                next(tokens)  # evaluates the prompt (reusing a cached prefix) and samples one token
            finally:
                tokens.close()
        share = yes_share_from_logprobs([recorder.logprob(i) for i in yes_ids], [recorder.logprob(i) for i in no_ids])
        return 0.5 if share is None else share

    def _yes_no_ids(self) -> tuple[list[int], list[int]]:
        if self._yes_no is None:
            llm = self._load()
            self._yes_no = yes_no_token_ids(
                lambda w: llm.tokenize(w.encode("utf-8"), add_bos=False, special=False), self.model_id)
        return self._yes_no


def _piece(llm: Any, token: int) -> str:
    if token is None or token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="ignore")


class _LogitsRecorder:
    """A llama-cpp-python logits processor that keeps the log-softmax of the current step.

    It runs first in the sampler chain, so it sees the model's raw logits (before
    temperature/top-p); the logprob of the sampled token is looked up after sampling.
    """

    def __init__(self) -> None:
        self.logprobs: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np

        x = scores.astype(np.float64)
        m = x.max()
        self.logprobs = x - (m + np.log(np.exp(x - m).sum()))
        return scores

    def logprob(self, token: int) -> float:
        if self.logprobs is None:
            raise GeneratorError("llama.cpp did not pass logits to the processor")
        return float(self.logprobs[token])
