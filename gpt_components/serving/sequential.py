"""The textbook engine: one request at a time, token by token through ``generate``'s KV cache.

``SequentialEngine`` speaks the engine interface the server is written against
(``add_request``, ``step``, ``abort``, ``has_unfinished``) and does the simplest honest thing
behind it: requests wait in arrival order, and each ``step`` makes one token of the oldest
unfinished request with ``generation.generate_stream`` (a KV cache sized for that request, the
sampling of ``sample_next_token``, a ``torch.Generator`` seeded with the request's seed). Every
request therefore gets exactly the tokens ``generate`` gives it alone: the property the batched
engine must keep, and the baseline its speed is measured against.

A request stops at ``max_tokens`` (``"length"``), at one of its ``stop_token_ids`` (``"stop"``;
that id is not part of the output, as ``generate``'s ``eos_id`` is not), when the engine has a
tokenizer once its decoded text holds one of its ``stop`` strings (``"stop"``; the ids are kept,
the caller cuts the text), or when aborted (``"abort"``, reported by the next step). A prompt
and its ``max_tokens`` must fit in the model's context: past it ``generate`` would slide the
window, and every engine would have to agree how.

>>> import torch
>>> from gpt_components.model import GPTConfig, GPTModel
>>> model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50)).eval()
>>> engine = SequentialEngine(model)
>>> engine.add_request("a", [1, 2, 3], SamplingParams(temperature=0, max_tokens=2))
>>> outputs = [engine.step()[0] for _ in range(2)]
>>> [o.finished for o in outputs], outputs[-1].finish_reason, engine.has_unfinished()
([False, True], 'length', False)
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..generation import check_sampling, generate_stream
from ..machinery.checks import check_instance, check_int, check_str, type_error, value_error
from .requests import RequestOutput, SamplingParams

__all__ = ["SequentialEngine", "check_engine_request"]


@dataclass
class _Request:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    tokens: list[int] = field(default_factory=list)
    stream: Iterator[torch.Tensor] | None = None  # started when the request is served
    generated: int = 0  # tokens the model made, an end id included


def check_engine_request(model: nn.Module, request_id: Any, prompt_token_ids: Any,
                  params: Any) -> list[int]:
    """Refuse a request no engine can serve, naming the parameter; the prompt as a list.

    The prompt must be a non-empty list of ids in the vocabulary, and the prompt and
    ``params.max_tokens`` must fit in the model's context.
    """
    check_str("request_id", request_id)
    check_instance("params", params, SamplingParams, "a SamplingParams")
    if isinstance(prompt_token_ids, (str, bytes)) or not hasattr(prompt_token_ids, "__len__"):
        raise type_error("prompt_token_ids", f"prompt_token_ids must be a list of ints, got "
                                             f"{type(prompt_token_ids).__name__}")
    prompt = list(prompt_token_ids)
    vocab, context = model.cfg.vocab_size, model.cfg.context_length
    if not prompt:
        raise value_error("prompt_token_ids", "prompt_token_ids must hold at least one id, got "
                                              "an empty list")
    for token in prompt:
        check_int("prompt_token_ids", token, low=0, high=vocab - 1)
    check_int("max_tokens", params.max_tokens, low=1)
    check_sampling(params.temperature, params.top_k, params.top_p)
    if params.top_k is not None and params.top_k > vocab:
        raise value_error("top_k", f"top_k must be <= the model's vocab_size={vocab}, got "
                                   f"{params.top_k}")
    if len(prompt) + params.max_tokens > context:
        raise value_error("max_tokens", f"max_tokens must be <= {context - len(prompt)} (the "
                                        f"context of {context} tokens less the prompt's "
                                        f"{len(prompt)}), got {params.max_tokens}")
    for token in params.stop_token_ids:
        check_int("stop_token_ids", token, low=0, high=vocab - 1)
    for text in params.stop:
        check_str("stop", text)
    check_int("seed", params.seed, low=0, optional=True)
    return prompt


class SequentialEngine:
    """Serves one request at a time, in arrival order, one token per ``step``.

    ``tokenizer`` (optional) decodes the new ids to watch for ``stop`` strings; without it
    those are left to the caller.
    """

    def __init__(self, model: nn.Module, *, tokenizer: Any = None) -> None:
        missing = [n for n in ("cfg", "hidden_states", "out_head", "new_kv_cache")
                   if not hasattr(model, n)]
        if not isinstance(model, nn.Module) or missing:
            raise type_error("model", f"model must be a language model of gpt_components "
                                      f"(GPTModel, DecoderModel), got {type(model).__name__}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._queue: deque[_Request] = deque()  # the head is the one being served
        self._aborted: list[_Request] = []  # to be reported by the next step

    def add_request(self, request_id: str, prompt_token_ids: list[int],
                    params: SamplingParams) -> None:
        """Queue a request; it is served after every request queued before it."""
        prompt = check_engine_request(self.model, request_id, prompt_token_ids, params)
        if any(r.request_id == request_id for r in self._queue):
            raise value_error("request_id", f"request_id {request_id!r} is already queued")
        self._queue.append(_Request(request_id, prompt, params))

    def has_unfinished(self) -> bool:
        """Whether a request is queued, served, or aborted and not yet reported."""
        return bool(self._queue or self._aborted)

    def abort(self, request_id: str) -> None:
        """End a request, served or waiting; the next step reports it finished with reason
        ``"abort"`` (an unknown or finished id is ignored)."""
        for request in self._queue:
            if request.request_id == request_id:
                self._queue.remove(request)  # its stream, and the cache inside it, go with it
                self._aborted.append(request)
                return

    def step(self) -> list[RequestOutput]:
        """The aborted requests' ends, then one more token of the oldest request."""
        outputs = [RequestOutput(r.request_id, [], list(r.tokens), True, "abort", r.generated)
                   for r in self._aborted]
        self._aborted.clear()
        if not self._queue:
            return outputs
        request = self._queue[0]
        if request.stream is None:
            request.stream = self._start(request)
        token = int(next(request.stream)[0, 0])
        request.generated += 1
        params = request.params
        reason = None
        if token in params.stop_token_ids:
            reason, new = "stop", []  # the end id is not part of the answer
        else:
            request.tokens.append(token)
            new = [token]
            if self._hit_stop_string(request):
                reason = "stop"
            elif len(request.tokens) >= params.max_tokens:
                reason = "length"
        if reason is not None:
            self._queue.popleft()
        return [*outputs, RequestOutput(request.request_id, new, list(request.tokens),
                                        reason is not None, reason, request.generated)]

    def _start(self, request: _Request) -> Iterator[torch.Tensor]:
        params = request.params
        device = next(self.model.parameters()).device
        generator = None
        if params.temperature > 0:
            seed = secrets.randbits(63) if params.seed is None else params.seed
            generator = torch.Generator(device=device).manual_seed(seed)
        ids = torch.tensor([request.prompt], device=device)
        # No eos_id: a stop id is seen here, so that any of several ends the answer.
        return generate_stream(self.model, ids, params.max_tokens, temperature=params.temperature,
                               top_k=params.top_k, top_p=params.top_p, generator=generator)

    def _hit_stop_string(self, request: _Request) -> bool:
        if not request.params.stop or self.tokenizer is None:
            return False
        # The whole answer so far (a stop string may span tokens, a character several bytes).
        text = self.tokenizer.decode(request.tokens)
        return any(s in text for s in request.params.stop)
