"""The OpenVINO backend: the exported IR model driven step by step through the OpenVINO runtime.

On CPUs with AMX, OpenVINO's oneDNN kernels read a prompt about three times as fast as
llama.cpp but write more slowly (int8 weights are 1.5x the bytes of Q4_K_M); through the whole
answer service the first checked sentence comes in 0.82x llama.cpp's time (docs/BENCH.md, issue
26). ``generator.backend: openvino`` uses it, ``auto`` picks it on AMX once ``kb models prepare
--openvino`` has exported the model. OpenVINO GenAI's ``LLMPipeline`` gives neither next-token probabilities (the
yes/no checks read them) nor a way to continue a reply on its cached prompt, so this module runs
the stateful IR itself: ``input_ids``, ``attention_mask``, ``position_ids`` and ``beam_idx`` in,
``logits`` out, the KV cache held in the infer request's state.

Several infer requests (``slots``) share the compiled weights, each with its own KV cache: a
request keeps the tokens it has read, and a new prompt goes to the slot where it reads least
without evicting much (:func:`_cost`), which is trimmed to the shared prefix and reads only the
rest. So the answer prompt stays cached while a yes/no check runs on another slot, and resuming
the reply after the check reads only the new sentence (llama.cpp's single context re-reads the
whole answer prompt then).

Prompts are rendered with the exported folder's chat template and tokenizer (the same template
and token ids as the GGUF's, tested against llama.cpp in tests/app/test_openvino_generator.py).
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
from kb_chatbot.core.errors import GeneratorError, ModelNotFoundError
from kb_chatbot.core.types import GenParams, Message, Token

log = logging.getLogger(__name__)

_INSTALL_HINT = (
    "the openvino backend needs the OpenVINO runtime: pip install openvino==2026.4.1 "
    "(scripts/setup.sh installs it), or set generator.backend: llamacpp"
)
#: End-of-turn tokens of common chat templates, added to the model's own EOS ids when present.
_END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


class _Slot:
    """One infer request and the tokens its KV cache holds."""

    def __init__(self, request: Any):
        self.request = request
        self.tokens: list[int] = []
        self.used = 0.0


class OpenVINOGenerator(GeneratorBase):
    continues_assistant = True

    def __init__(
        self,
        folder: Path,
        *,
        threads: int = 1,
        n_ctx: int = 4096,
        model_id: str | None = None,
        slots: int = 2,
        seed: int = 0,
        exact: bool = False,
    ):
        self.folder = Path(folder)
        if not (self.folder / "openvino_model.xml").is_file():
            raise ModelNotFoundError(
                f"no OpenVINO model in {self.folder} (openvino_model.xml missing): run "
                "`kb models prepare --openvino`, or set generator.backend: llamacpp"
            )
        self.model_id = model_id or self.folder.name.lower()
        self.threads = threads
        self.n_ctx = n_ctx
        self.seed = seed
        self._n_slots = max(1, slots)
        #: f32 arithmetic and no dynamic quantization of activations: a prompt read in other
        #: pieces gives the same numbers (slower). Off, the CPU plugin computes in bf16 where the
        #: CPU has it and quantizes activations in groups per read, so how a prompt is split
        #: moves P(yes) a little (SmolLM2: 0.38 fresh vs 0.39 after a reply on the slot in f32
        #: with the quantization on, the same to 6 digits with it off; AMD EPYC).
        self.exact = exact
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()  # two cores: one inference at a time is the fastest
        self._slots: list[_Slot] | None = None
        self._tok: Any = None
        self._eog: set[int] = set()
        self._yes_no: tuple[list[int], list[int]] | None = None

    # --- loading ------------------------------------------------------------------------

    def warm_up(self) -> None:
        self._load()

    def _load(self) -> list[_Slot]:
        if self._slots is not None:
            return self._slots
        with self._load_lock:
            if self._slots is None:
                self._slots = self._load_now()
        return self._slots

    def _load_now(self) -> list[_Slot]:
        try:
            import openvino as ov
        except ImportError as e:
            raise ModelNotFoundError(_INSTALL_HINT) from e
        from transformers import AutoTokenizer

        t0 = time.perf_counter()
        try:
            core = ov.Core()
            model = core.read_model(str(self.folder / "openvino_model.xml"))
            names = {i.get_any_name() for i in model.inputs}
            missing = {"input_ids", "attention_mask", "position_ids", "beam_idx"} - names
            if missing or not _has_state(model):
                raise GeneratorError(
                    f"{self.folder}: not a stateful text-generation export (inputs {sorted(names)}); "
                    "export it with `kb models prepare --openvino`"
                )
            logits_last_only(model)
            # KV cache in f32, not the CPU plugin's default u8: a slot's cache is trimmed by reading
            # its state out and writing the kept part back, and a u8 cache comes back changed (the
            # same prompt's log-probabilities moved by up to 0.37 after a trim, SmolLM2); f32
            # round-trips exactly, and decoding was no slower with it (1.5B, 880-token prompts, AMX).
            config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                      "KV_CACHE_PRECISION": "f32"}
            if self.exact:
                config.update({"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0})
            compiled = core.compile_model(model, "CPU", config)
            slots = [_Slot(compiled.create_infer_request()) for _ in range(self._n_slots)]
        except RuntimeError as e:
            raise GeneratorError(f"OpenVINO cannot load {self.folder}: {e}") from e
        try:
            tok = AutoTokenizer.from_pretrained(str(self.folder))
        except (OSError, ValueError) as e:
            raise GeneratorError(f"{self.folder}: the tokenizer files do not load: {e}") from e
        if not getattr(tok, "chat_template", None):
            raise GeneratorError(f"{self.folder} has no chat template (a base model?): use an instruct/chat model")
        self._tok = tok
        self._eog = _end_ids(tok, self.folder)
        log.info(
            "model=%s backend=openvino threads=%d n_ctx=%d slots=%d load_s=%.1f",
            self.model_id, self.threads, self.n_ctx, len(slots), time.perf_counter() - t0,
        )
        return slots

    def _prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        self._load()
        messages, reply_start = split_continuation(messages)
        text = self._tok.apply_chat_template(to_dicts(messages), tokenize=False, add_generation_prompt=True)
        tokens = list(self._tok.encode(text, add_special_tokens=False))
        if reply_start:  # the assistant turn is open; its text so far follows, as llama.cpp does it
            tokens += self._tok.encode(reply_start, add_special_tokens=False)
        return tokens

    def count_tokens(self, text: str) -> int:
        self._load()
        return len(self._tok.encode(text, add_special_tokens=False))

    # --- the KV cache -------------------------------------------------------------------

    def _read(self, prompt: list[int]) -> tuple[_Slot, Any]:
        """Read ``prompt`` into the slot :func:`_cost` picks; the slot and the last position's logits."""
        slots = self._load()
        if len(prompt) >= self.n_ctx:
            raise GeneratorError(
                f"the prompt is {len(prompt)} tokens, more than generator.context_tokens={self.n_ctx}; "
                "shorten the sources or raise context_tokens"
            )
        slot = min(slots, key=lambda s: _cost(s, prompt))
        keep = min(_common_prefix(slot.tokens, prompt), len(prompt) - 1)
        if keep < len(slot.tokens):
            _trim(slot, keep)
        slot.used = time.monotonic()
        if keep < len(prompt) - 1:
            self._feed(slot, prompt[keep:-1])
        # The last prompt token is always read on its own: on AMX the runtime computes in bf16 and
        # a one-token step takes other kernels (dynamic int8 activations) than a many-token read,
        # so P(yes) of one check would otherwise depend on what the slot held before (0.37 vs
        # 0.40 measured on SmolLM2). Read this way, the same prompt gives the same logits.
        return slot, self._feed(slot, prompt[-1:])

    def _feed(self, slot: _Slot, new: list[int]) -> Any:
        import numpy as np

        try:
            slot.request.infer(step_inputs(new, len(slot.tokens)))
        except RuntimeError as e:
            slot.request.reset_state()  # whatever it read is unknown now: start that slot afresh
            slot.tokens = []
            raise GeneratorError(f"{self.model_id}: OpenVINO failed while reading the prompt: {e}") from e
        slot.tokens.extend(new)
        return slot.request.get_tensor("logits").data[0, -1].astype(np.float64)

    # --- generation ---------------------------------------------------------------------

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[Token]:
        return merge_finish(self._stream(messages, params))

    def _stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[Token]:
        import numpy as np

        prompt = self._prompt_tokens(messages)
        stops = StopFilter(params.stop)
        rng = np.random.default_rng(params.seed)
        finish = "length"
        new: list[int] = []
        shown = ""
        pending_lp: float | None = None
        t0 = time.perf_counter()
        with self._run_lock:
            slot, logits = self._read(prompt)
            max_new = min(params.max_tokens, self.n_ctx - len(prompt))
            while len(new) < max_new:
                tok = _pick(logits, params, rng)
                if tok in self._eog:
                    finish = "stop"
                    break
                new.append(tok)
                if params.logprobs:
                    lp = float(_log_softmax(logits)[tok])
                    pending_lp = lp if pending_lp is None else pending_lp + lp
                text = self._tok.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                if not text.endswith("\ufffd"):  # a character still split across tokens waits
                    out = stops.feed(text[len(shown):])
                    shown = text
                    if out:
                        yield Token(out, logprob=pending_lp)
                        pending_lp = None
                    if stops.hit:
                        finish = "stop"
                        break
                if len(new) >= max_new:
                    break
                logits = self._feed(slot, [tok])
        text = self._tok.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        tail = "" if stops.hit else stops.feed(text[len(shown):].replace("\ufffd", "")) + stops.flush()
        if tail:
            yield Token(tail, logprob=pending_lp)
        log.debug(
            "model=%s prompt_tokens=%d new_tokens=%d finish=%s seconds=%.2f",
            self.model_id, len(prompt), len(new), finish, time.perf_counter() - t0,
        )
        yield Token("", finish_reason=finish)

    def yes_probability(self, messages: Sequence[Message]) -> float:
        """P("yes") / (P("yes") + P("no")) for the first token of the assistant's reply."""
        prompt = self._prompt_tokens(messages)
        yes_ids, no_ids = self._yes_no_ids()
        with self._run_lock:
            _, logits = self._read(prompt)
        logp = _log_softmax(logits)
        share = yes_share_from_logprobs([float(logp[i]) for i in yes_ids], [float(logp[i]) for i in no_ids])
        return 0.5 if share is None else share

    def _yes_no_ids(self) -> tuple[list[int], list[int]]:
        if self._yes_no is None:
            self._load()
            self._yes_no = yes_no_token_ids(lambda w: list(self._tok.encode(w, add_special_tokens=False)), self.model_id)
        return self._yes_no


# --- helpers ------------------------------------------------------------------------------


def logits_last_only(model: Any) -> bool:
    """Compute the vocabulary projection for the last position only (the exporter computes it
    for every prompt token: 152k × 1.5k multiply-adds each, thrown away but for the last).

    A ``Gather`` of the last position goes in front of the ``MatMul`` that makes ``logits``, as
    OpenVINO GenAI does for its own pipelines. Returns False (model unchanged) when the graph is
    not the expected ``… → MatMul → [Convert] → logits`` shape.
    """
    import openvino as ov

    try:
        from openvino import opset13 as ops
    except ImportError:  # pragma: no cover - older runtimes
        return False
    out = next((o for o in model.outputs if o.get_any_name() == "logits"), None)
    if out is None:
        return False
    node = out.get_node().input_value(0).get_node()  # the Result's producer
    while node.get_type_name() in ("Convert", "Multiply", "Divide", "Tanh") and node.get_input_size():
        node = node.input_value(0).get_node()  # a soft-capping / precision tail
    if node.get_type_name() != "MatMul":
        return False
    hidden = node.input_value(0)
    if hidden.get_partial_shape().rank.get_length() != 3:
        return False
    last = ops.gather(hidden, ops.constant([-1], dtype=ov.Type.i64), ops.constant(1, dtype=ov.Type.i64))
    node.input(0).replace_source_output(last.output(0))
    model.validate_nodes_and_infer_types()
    return True


def step_inputs(ids: Sequence[int], start: int) -> dict[str, Any]:
    """The stateful IR's inputs to read ``ids`` at positions ``start``… on top of its cache."""
    import numpy as np

    end = start + len(ids)
    return {
        "input_ids": np.asarray([list(ids)], dtype=np.int64),
        "attention_mask": np.ones((1, end), dtype=np.int64),
        "position_ids": np.arange(start, end, dtype=np.int64)[None, :],
        "beam_idx": np.zeros(1, dtype=np.int32),
    }


def _has_state(model: Any) -> bool:
    return any(op.get_type_name() == "ReadValue" for op in model.get_ops())


def _cost(slot: _Slot, prompt: list[int]) -> tuple[float, float]:
    """Which slot reads ``prompt``: the fewest tokens to read, plus half of the cached tokens it
    would throw away (a check sharing only the system prompt with an answer takes another slot
    rather than evict the answer it would resume); the least recently used on a tie."""
    keep = _common_prefix(slot.tokens, prompt)
    return (len(prompt) - keep) + (len(slot.tokens) - keep) / 2, slot.used


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _trim(slot: _Slot, keep: int) -> None:
    """Keep the first ``keep`` positions of the slot's KV cache."""
    import openvino as ov

    if keep == 0:
        slot.request.reset_state()
        slot.tokens = []
        return
    have = len(slot.tokens)
    for state in slot.request.query_state():
        data = state.state.data
        axis = next((a for a in (2, 1, 3, 0) if a < data.ndim and data.shape[a] == have), None)
        if axis is None:  # not a per-position cache tensor we understand: start afresh
            slot.request.reset_state()
            slot.tokens = []
            return
        index = [slice(None)] * data.ndim
        index[axis] = slice(0, keep)
        state.state = ov.Tensor(data[tuple(index)].copy())
    del slot.tokens[keep:]


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    m = logits.max()
    return logits - (m + np.log(np.exp(logits - m).sum()))


def _pick(logits: Any, params: GenParams, rng: Any) -> int:
    """Greedy at temperature 0, else temperature + top-p sampling."""
    import numpy as np

    if params.temperature <= 0:
        return int(logits.argmax())
    p = np.exp(_log_softmax(logits / params.temperature))
    order = np.argsort(-p)
    keep = order[: int(np.searchsorted(np.cumsum(p[order]), params.top_p) + 1)]
    return int(rng.choice(keep, p=p[keep] / p[keep].sum()))


def _end_ids(tok: Any, folder: Path) -> set[int]:
    import json

    ids: set[int] = set()
    try:
        eos = json.loads((folder / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    except (OSError, ValueError):
        pass
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    vocab = tok.get_vocab()
    ids.update(vocab[t] for t in _END_OF_TURN if t in vocab)
    return ids
