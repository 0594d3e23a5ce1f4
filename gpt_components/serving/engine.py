"""The serving engine (first cut): requests in, tokens out, one step at a time.

This first cut keeps one contiguous cache per request and steps each request on its own; the
paged, batched engine replaces its insides behind the same methods.

>>> import torch
>>> from gpt_components.model import GPTConfig, GPTModel
>>> from gpt_components.serving.requests import SamplingParams
>>> model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50)).eval()
>>> engine = Engine(model)
>>> engine.add_request("a", [1, 2, 3], SamplingParams(temperature=0, max_tokens=3))
>>> outputs = []
>>> while engine.has_unfinished():
...     outputs += engine.step()
>>> outputs[-1].finished, len(outputs[-1].token_ids)
(True, 3)
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..generation import sample_next_token
from ..machinery.checks import check_instance, check_int, check_str, value_error
from .requests import RequestOutput, SamplingParams

__all__ = ["Engine"]


@dataclass
class _Request:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    cache: Any = None
    finish_reason: str | None = None


class Engine:
    """Many requests served by one model (first cut: one request at a time inside a step)."""

    def __init__(self, model: nn.Module, *, tokenizer: Any = None, block_size: int = 16,
                 num_blocks: int | None = None, max_batch_tokens: int = 256,
                 max_running: int = 32, prefix_caching: bool = True,
                 draft_model: nn.Module | None = None, num_speculative_tokens: int = 0) -> None:
        check_instance("model", model, nn.Module, "a language model of gpt_components")
        self.model = model
        self.tokenizer = tokenizer
        self.block_size = check_int("block_size", block_size, low=1)
        self.num_blocks = check_int("num_blocks", num_blocks, low=1, optional=True)
        self.max_batch_tokens = check_int("max_batch_tokens", max_batch_tokens, low=1)
        self.max_running = check_int("max_running", max_running, low=1)
        self.prefix_caching = prefix_caching
        self.draft_model = draft_model
        self.num_speculative_tokens = check_int("num_speculative_tokens",
                                                num_speculative_tokens, low=0)
        self._requests: dict[str, _Request] = {}

    def add_request(self, request_id: str, prompt_token_ids: list[int],
                    params: SamplingParams) -> None:
        """Queue a request (checked before it is queued)."""
        check_str("request_id", request_id)
        check_instance("params", params, SamplingParams, "a SamplingParams")
        if request_id in self._requests:
            raise value_error("request_id", f"request_id {request_id!r} is already in use")
        cfg = self.model.cfg
        prompt = list(prompt_token_ids)
        if not prompt:
            raise value_error("prompt_token_ids", "prompt_token_ids must hold at least one token")
        if len(prompt) + params.max_tokens > cfg.context_length:
            raise value_error("max_tokens", f"the prompt's {len(prompt)} tokens and max_tokens="
                                            f"{params.max_tokens} pass the model's context_length="
                                            f"{cfg.context_length}")
        seed = secrets.randbits(63) if params.seed is None else params.seed
        self._requests[request_id] = _Request(request_id, prompt, params,
                                              torch.Generator().manual_seed(seed))

    def abort(self, request_id: str) -> None:
        """End a request; the next step reports it finished with reason ``"abort"``."""
        request = self._requests.get(request_id)
        if request is not None and request.finish_reason is None:
            request.finish_reason = "abort"
            request.cache = None

    def has_unfinished(self) -> bool:
        """Whether any request is still queued, running, or waiting to report its end."""
        return bool(self._requests)

    def step(self) -> list[RequestOutput]:
        """One step: one new token for every running request; their outputs."""
        outputs = []
        for request in list(self._requests.values()):
            new = []
            if request.finish_reason is None:
                new = [self._next_token(request)]
                params = request.params
                if new[0] in params.stop_token_ids:
                    new, request.finish_reason = [], "stop"
                else:
                    request.tokens += new
                    if len(request.tokens) >= params.max_tokens:
                        request.finish_reason = "length"
            finished = request.finish_reason is not None
            outputs.append(RequestOutput(request.request_id, new, list(request.tokens),
                                         finished, request.finish_reason))
            if finished:
                del self._requests[request.request_id]
        return outputs

    def _next_token(self, request: _Request) -> int:
        with torch.no_grad():
            if request.cache is None:
                request.cache = self.model.new_kv_cache(1, len(request.prompt)
                                                        + request.params.max_tokens)
                ids = request.prompt
            else:
                ids = request.tokens[-1:]
            hidden = self.model.hidden_states(torch.tensor([ids]), kv_cache=request.cache)
            logits = self.model.out_head(hidden[:, -1])
            p = request.params
            return int(sample_next_token(logits, p.temperature, p.top_k, p.top_p,
                                         request.generator))

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
                 ) -> list[list[int]]:
        """Run ``prompts`` to completion; each one's generated tokens, in order."""
        params = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"generate-{i}" for i in range(len(prompts))]
        for request_id, prompt, p in zip(ids, prompts, params, strict=True):
            self.add_request(request_id, prompt, p)
        results: dict[str, list[int]] = {}
        while self.has_unfinished():
            for output in self.step():
                if output.finished:
                    results[output.request_id] = output.token_ids
        return [results[i] for i in ids]
