"""The transformers backend: CPU bf16 (AMX makes it fast here), CUDA 4-bit nf4 via bitsandbytes,
optional PEFT LoRA adapter. Streams with ``TextIteratorStreamer`` fed by ``generate`` in a thread.

A GGUF model is converted once into a cached HF folder (:func:`kb_chatbot.app.generators.model_files.hf_folder_for`).
torch/transformers/peft are imported only when the model loads.
"""
from __future__ import annotations

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
from kb_chatbot.app.generators.model_files import ModelRef, hf_folder_for
from kb_chatbot.core.errors import ConfigError, GeneratorError
from kb_chatbot.core.types import GenParams, Message, Token

log = logging.getLogger(__name__)

#: Seconds the consumer waits for the next token before declaring the generation thread dead.
_TOKEN_TIMEOUT_S = 600.0


class HFGenerator(GeneratorBase):
    """``source``: an HF model folder, or a :class:`ModelRef` (a GGUF is converted on first load)."""

    continues_assistant = True

    def __init__(
        self,
        source: ModelRef | Path,
        *,
        models_dir: Path | None = None,
        threads: int = 1,
        adapter: Path | None = None,
        load_in_4bit: bool = True,
        context_tokens: int = 4096,
        device: str | None = None,
        model_id: str | None = None,
    ):
        if isinstance(source, ModelRef):
            self._ref = source
        else:
            self._ref = ModelRef(Path(source).name.lower(), hf_dir=Path(source))
        if self._ref.hf_dir is None and models_dir is None:
            raise ConfigError("HFGenerator: a GGUF model needs models_dir to cache its converted HF folder")
        self._models_dir = Path(models_dir) if models_dir else None
        self.adapter = Path(adapter) if adapter else None
        if self.adapter is not None and not (self.adapter / "adapter_config.json").is_file():
            raise ConfigError(
                f"generator.adapter: {self.adapter} is not a PEFT adapter folder (adapter_config.json "
                "missing); point it at the output folder of `kb finetune train`"
            )
        base_id = model_id or self._ref.model_id
        self.model_id = f"{base_id}+{self.adapter.name}" if self.adapter else base_id
        self.threads = threads
        self.load_in_4bit = load_in_4bit
        self.context_tokens = context_tokens
        self._device_pref = device
        self._lock = threading.Lock()
        self._model: Any = None
        self._tok: Any = None
        self.device = "cpu"

    # --- loading ------------------------------------------------------------------------

    def warm_up(self) -> None:
        self._load()

    def _load(self) -> tuple[Any, Any]:
        if self._model is not None:
            return self._model, self._tok
        with self._lock:
            if self._model is None:
                self._model, self._tok = self._load_now()
        return self._model, self._tok

    def _load_now(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # harmless CPU-kernel warning
        t0 = time.perf_counter()
        folder = hf_folder_for(self._ref, self._models_dir) if self._ref.hf_dir is None else self._ref.hf_dir
        cuda = torch.cuda.is_available() and self._device_pref != "cpu"
        self.device = "cuda" if cuda else "cpu"
        kwargs: dict[str, Any] = {"dtype": torch.bfloat16}
        if cuda and self.load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
            kwargs["device_map"] = {"": 0}
        else:
            torch.set_num_threads(self.threads)
        try:
            tok = AutoTokenizer.from_pretrained(str(folder))
            model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
            if cuda and "device_map" not in kwargs:
                model = model.to("cuda")
            if self.adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(self.adapter))
                if "quantization_config" not in kwargs:
                    # Unquantized weights: fold the LoRA deltas in once so every token pays
                    # for one matmul per layer, not two (first token was ~35% slower unmerged).
                    model = model.merge_and_unload()
        except (OSError, ValueError, RuntimeError) as e:
            what = f"adapter {self.adapter} on " if self.adapter else ""
            raise GeneratorError(f"cannot load {what}model folder {folder}: {e}") from e
        model.eval()
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        log.info(
            "model=%s backend=transformers device=%s nf4=%s adapter=%s load_s=%.1f",
            self.model_id, self.device, bool(kwargs.get("quantization_config")), self.adapter,
            time.perf_counter() - t0,
        )
        return model, tok

    # --- helpers ------------------------------------------------------------------------

    def _encode_chat(self, messages: Sequence[Message]):
        model, tok = self._load()
        messages, reply_start = split_continuation(messages)
        prompt = tok.apply_chat_template(to_dicts(messages), tokenize=False, add_generation_prompt=True) + reply_start
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        return model, tok, enc.to(model.device)

    def _eos_ids(self, model: Any, tok: Any) -> list[int]:
        ids: list[int] = []
        for v in (getattr(model.generation_config, "eos_token_id", None), tok.eos_token_id):
            for i in v if isinstance(v, (list, tuple)) else [v]:
                if i is not None and i not in ids:
                    ids.append(int(i))
        return ids

    def count_tokens(self, text: str) -> int:
        _, tok = self._load()
        return len(tok.encode(text, add_special_tokens=False))

    # --- generation ---------------------------------------------------------------------

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[Token]:
        return merge_finish(self._stream(messages, params))

    def _stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[Token]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        model, tok, enc = self._encode_chat(messages)
        n_prompt = int(enc["input_ids"].shape[1])
        room = self.context_tokens - n_prompt
        if room <= 0:
            raise GeneratorError(
                f"the prompt is {n_prompt} tokens, more than generator.context_tokens={self.context_tokens}; "
                "shorten the sources or raise context_tokens"
            )
        max_new = min(params.max_tokens, room)
        recorder = _LogprobRecorder() if params.logprobs else None
        cancel = threading.Event()
        streamer = _token_streamer(tok, recorder, timeout=_TOKEN_TIMEOUT_S)
        eos_ids = self._eos_ids(model, tok)
        kwargs: dict[str, Any] = dict(
            **enc,
            max_new_tokens=max_new,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
            pad_token_id=tok.pad_token_id,
            eos_token_id=eos_ids,
        )
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
            torch.manual_seed(params.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if recorder is not None:
            kwargs["logits_processor"] = LogitsProcessorList([recorder])
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=tok)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    model.generate(**kwargs)
            except BaseException as e:  # reported to the consumer below
                errors.append(e)
                streamer.text_queue.put(streamer.stop_signal)

        worker = threading.Thread(target=run, name=f"generate-{self.model_id}", daemon=True)
        stops = StopFilter(params.stop)
        pending_lp: float | None = None
        t0 = time.perf_counter()
        worker.start()
        try:
            for text, lp in streamer:
                if lp is not None:
                    pending_lp = lp if pending_lp is None else pending_lp + lp
                out = stops.feed(text)
                if out:
                    yield Token(out, logprob=pending_lp)
                    pending_lp = None
                if stops.hit:
                    break
            if errors:
                raise GeneratorError(f"{self.model_id}: generation failed: {errors[0]}") from errors[0]
            tail = stops.flush()
            if tail:
                yield Token(tail, logprob=pending_lp)
            ended = stops.hit or (streamer.ids and streamer.ids[-1] in eos_ids)
            finish = "length" if (not ended and streamer.count >= max_new) else "stop"
            log.debug(
                "model=%s prompt_tokens=%d new_tokens=%d finish=%s seconds=%.2f",
                self.model_id, n_prompt, streamer.count, finish, time.perf_counter() - t0,
            )
            yield Token("", finish_reason=finish)
        finally:
            cancel.set()  # a consumer that stops early frees the model at the next step

    def yes_probability(self, messages: Sequence[Message]) -> float:
        """P("yes") / (P("yes") + P("no")) for the first token of the assistant's reply."""
        import torch

        model, tok, enc = self._encode_chat(messages)
        yes_ids, no_ids = self._yes_no_ids(tok)
        with torch.inference_mode():
            logits = model(**enc).logits[0, -1].float()
        lp = torch.log_softmax(logits, dim=-1)
        share = yes_share_from_logprobs([float(lp[i]) for i in yes_ids], [float(lp[i]) for i in no_ids])
        return 0.5 if share is None else share

    def _yes_no_ids(self, tok: Any) -> tuple[list[int], list[int]]:
        return yes_no_token_ids(lambda w: tok.encode(w, add_special_tokens=False), self.model_id)


class _LogprobRecorder:
    """A logits processor that keeps the log-softmax of the last step (equals the model's
    distribution under greedy decoding; with sampling, after temperature/top-p)."""

    def __init__(self) -> None:
        self.last = None

    def __call__(self, input_ids, scores):
        import torch

        self.last = torch.log_softmax(scores[0].float(), dim=-1)
        return scores


class _Cancelled:
    """Stopping criterion: true once the consumer has gone away."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _token_streamer(tok: Any, recorder: _LogprobRecorder | None, timeout: float) -> Any:
    """Per-token (not per-word) streaming with each piece's log-probability.

    Built on ``TextIteratorStreamer`` (its queue, timeout and prompt skipping); ``put`` decodes
    the generated ids so far and queues ``(new_text, logprob)``, holding back an incomplete
    UTF-8 character. Defined in a function so transformers is imported only when generating.
    """
    from transformers import TextIteratorStreamer

    class Streamer(TextIteratorStreamer):
        def __init__(self) -> None:
            super().__init__(tok, skip_prompt=True, timeout=timeout, skip_special_tokens=True)
            self.ids: list[int] = []
            self.emitted = 0
            self.count = 0
            self.pending: float | None = None

        def put(self, value) -> None:
            if len(value.shape) > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            new = value.tolist()
            self.count += len(new)
            if recorder is not None and recorder.last is not None:
                lp = sum(float(recorder.last[i]) for i in new)
                self.pending = lp if self.pending is None else self.pending + lp
            self.ids.extend(new)
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # half of a multi-byte character
                return
            self._emit(text[self.emitted :])
            self.emitted = len(text)

        def _emit(self, piece: str) -> None:
            if piece or self.pending is not None:
                self.text_queue.put((piece, self.pending), timeout=self.timeout)
            self.pending = None

        def end(self) -> None:
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            self._emit(text[self.emitted :].replace("\ufffd", ""))
            self.next_tokens_are_prompt = True
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    return Streamer()
