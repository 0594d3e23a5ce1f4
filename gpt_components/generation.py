"""Text generation (chapters 4 and 5): greedy decoding, sampling, streaming, a KV cache.

Exports ``generate_text_simple`` (the book's greedy loop, with or without a KV cache) and
``generate_text_simple_stream`` (the book's streaming form), ``generate`` (temperature, top-k,
nucleus/top-p, per-row ``eos_id``, a KV cache), ``generate_stream`` (the same, yielding each
step's tokens), ``sample_next_token`` and the tokenizer helpers ``text_to_token_ids`` /
``token_ids_to_text``.

Sampling order: top-k, then top-p (on the top-k distribution), then temperature, then a draw
from the given ``torch.Generator``; ``temperature=0`` is greedy. Past the context length the
model sees the last ``context_size`` tokens (a sliding window). With the cache, a full window
rebuilds the cache from those tokens, because GPT-2's absolute position embeddings make shifted
keys wrong: cached and uncached decoding compute the same function. The cache is made for the
positions generation will feed (the prompt and every new token but the last, at most the
window), not for the whole context: a few tokens of a model with a long context cost a few
tokens of cache.

>>> import torch
>>> from gpt_components.model import GPTConfig, GPTModel
>>> model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50)).eval()
>>> out = generate(model, torch.tensor([[1, 2]]), max_new_tokens=3, temperature=1.0, top_k=5,
...                generator=torch.Generator().manual_seed(0))
>>> out.shape
torch.Size([1, 5])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .machinery.checks import (
    check_bool,
    check_float,
    check_instance,
    check_int,
    check_str,
    check_tensor,
    check_token_ids,
    type_error,
    value_error,
)
from .tokenizers import ENDOFTEXT, gpt2_tokenizer

__all__ = [
    "generate_text_simple",
    "generate_text_simple_stream",
    "generate",
    "generate_stream",
    "sample_next_token",
    "check_sampling",
    "text_to_token_ids",
    "token_ids_to_text",
]


def text_to_token_ids(text: str, tokenizer: Any = None) -> torch.Tensor:
    """Encode ``text`` to a [1, tokens] tensor (GPT-2 BPE by default; ``<|endoftext|>`` allowed)."""
    check_str("text", text, empty=True)
    tokenizer = gpt2_tokenizer() if tokenizer is None else tokenizer
    ids = tokenizer.encode(text, allowed_special={ENDOFTEXT})
    return torch.tensor(ids, dtype=torch.long).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor | list[int], tokenizer: Any = None) -> str:
    """Decode one sequence of ids, a [tokens] or [1, tokens] tensor or a list."""
    if isinstance(token_ids, torch.Tensor):
        if token_ids.dim() == 2 and token_ids.shape[0] == 1:
            token_ids = token_ids.squeeze(0)
        if token_ids.dim() != 1:
            raise value_error("token_ids", f"token_ids must be [tokens] or [1, tokens], got "
                                           f"shape {tuple(token_ids.shape)}")
        if token_ids.numel():
            check_tensor("token_ids", token_ids, kind="integer")
        token_ids = token_ids.tolist()
    tokenizer = gpt2_tokenizer() if tokenizer is None else tokenizer
    return tokenizer.decode(list(token_ids))


def generate_text_simple(model: nn.Module, idx: torch.Tensor, max_new_tokens: int,
                         context_size: int | None = None, use_cache: bool = False) -> torch.Tensor:
    """The book's greedy loop: crop to ``context_size``, take the argmax, append, repeat.

    Chapter 4's loop runs the whole window through ``model`` at every step, so any module that
    maps ids to logits works. ``use_cache=True`` is the book's KV-cache form of it (its bonus
    material's ``generate_text_simple(..., use_cache=True)``): the same tokens from ``generate``
    with a cache, for a model of this package. ``context_size`` None is the model's
    ``cfg.context_length``.
    """
    check_int("max_new_tokens", max_new_tokens, low=0)
    if context_size is None:
        _check_model(model)
        context_size = model.cfg.context_length
    check_int("context_size", context_size, low=1)
    if check_bool("use_cache", use_cache):
        return generate(model, idx, max_new_tokens, context_size, use_cache=True)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -context_size:])[:, -1, :]  # (B, vocab)
        idx = torch.cat([idx, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return idx


def generate_text_simple_stream(model: nn.Module, token_ids: torch.Tensor, max_new_tokens: int,
                                eos_token_id: int | None = None,
                                context_size: int | None = None) -> Iterator[torch.Tensor]:
    """The book's streaming greedy generator (its KV-cache bonus): yields [batch, 1] ids.

    ``generate_stream`` with a cache, greedy, stopping before ``eos_token_id`` once every row
    has produced it (a row that finished earlier is padded with it meanwhile).
    """
    return generate_stream(model, token_ids, max_new_tokens, context_size, eos_id=eos_token_id)


def sample_next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of ``logits`` [batch, vocab], as a [batch, 1] tensor.

    ``-inf`` logits mark tokens that can never be drawn; NaN or ``+inf`` (a diverged model) are
    refused, as greedy decoding would otherwise pick them silently.
    """
    check_sampling(temperature, top_k, top_p, generator)
    _check_logits(logits)
    if top_k is not None and top_k > logits.shape[-1]:
        raise value_error("top_k", f"top_k must be <= the {logits.shape[-1]} logits per row "
                                   f"(the vocabulary), got {top_k}")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(torch.softmax(logits, dim=-1), dim=-1, descending=True)
        # Drop a token once the more probable ones already reach top_p; the first always stays.
        # Their mass is the running total before it (exact, where cumsum - p would round).
        total = sorted_probs.cumsum(dim=-1)
        before = torch.cat([torch.zeros_like(total[:, :1]), total[:, :-1]], dim=-1)
        drop_sorted = before >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    # Subtract the max first: a small temperature must not overflow to inf - inf.
    scaled = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    return torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator)


def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int,
             context_size: int | None = None, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """``idx`` [batch, tokens] followed by up to ``max_new_tokens`` generated tokens per row.

    ``eos_id`` stops generation the way the book's ``generate`` does (chapters 5 and 7): the end
    token is not appended, so for one row the output is the prompt and the answer, and
    chapter 7's ``token_ids_to_text(...)[len(prompt):]`` prints what the book prints, with no
    ``<|endoftext|>`` after it. In a batch, a row that produces ``eos_id`` is finished and is
    padded with ``eos_id`` from there on; generation stops, again without appending that step,
    once every row has finished. Call ``model.eval()`` first.
    """
    steps = generate_stream(model, idx, max_new_tokens, context_size, temperature, top_k,
                            top_p, eos_id, use_cache, generator)
    return torch.cat([idx, *steps], dim=1)


def generate_stream(model: nn.Module, idx: torch.Tensor, max_new_tokens: int,
                    context_size: int | None = None, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None,
                    eos_id: int | None = None, use_cache: bool = True,
                    generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Like ``generate``, but yields each step's new tokens ([batch, 1]) as they are made.

    Arguments are checked on the call, before the first token.
    """
    _check_model(model)
    cfg = model.cfg
    check_token_ids(idx, cfg.vocab_size)
    check_int("max_new_tokens", max_new_tokens, low=0)
    context_size = cfg.context_length if context_size is None else context_size
    if check_int("context_size", context_size, low=1) > cfg.context_length:
        raise value_error("context_size", f"context_size must be <= the model's context_length="
                                          f"{cfg.context_length}, got {context_size}")
    check_sampling(temperature, top_k, top_p, generator)
    if top_k is not None and top_k > cfg.vocab_size:
        raise value_error("top_k", f"top_k must be <= the model's vocab_size={cfg.vocab_size}, "
                                   f"got {top_k}")
    if eos_id is not None and check_int("eos_id", eos_id, low=0) >= cfg.vocab_size:
        raise value_error("eos_id", f"eos_id must be in [0, vocab_size={cfg.vocab_size}), got "
                                    f"{eos_id}")
    # The cache holds what will be fed: the prompt and every new token but the last, at most
    # the window (a cache sized for the whole context would be gigabytes for a few tokens).
    fed = min(context_size, idx.shape[1] + max_new_tokens - 1)
    window = _Window(model, context_size, idx.shape[0] if check_bool("use_cache", use_cache)
                     else None, max(1, fed))
    return _stream(window, idx, max_new_tokens, temperature, top_k, top_p, eos_id, generator)


def _stream(window: _Window, idx: torch.Tensor, max_new_tokens: int, temperature: float,
            top_k: int | None, top_p: float | None, eos_id: int | None,
            generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        # Grad mode is switched per step, never held across a yield into the caller's code.
        with torch.no_grad():
            logits = window.next_logits(idx)
            next_ids = sample_next_token(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                finished |= next_ids.squeeze(1) == eos_id
                if bool(finished.all()):
                    return  # as the book: the last end token is not appended
                next_ids = next_ids.masked_fill(finished.unsqueeze(1), eos_id)
            idx = torch.cat([idx, next_ids], dim=1)
        yield next_ids


class _Window:
    """Last-position logits of the last ``context_size`` tokens, with or without a KV cache.

    The cache holds the window's tokens at positions ``0 .. length - 1``, with room for
    ``cache_tokens`` of them (at most ``context_size``). While it has room, a step feeds only
    the newest token. Once full, the window slides: every position changes, so the cache is
    refilled from the last ``context_size`` tokens, exactly as without a cache.
    """

    def __init__(self, model: nn.Module, context_size: int, batch_size: int | None,
                 cache_tokens: int) -> None:
        self.model = model
        self.context_size = context_size
        self.cache = None if batch_size is None else model.new_kv_cache(batch_size, cache_tokens)
        self.covered = 0  # tokens of the sequence seen by the cache so far
        self.head = _decoding_head(model.out_head)

    def next_logits(self, idx: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            hidden = self.model.hidden_states(idx[:, -self.context_size:])
        else:
            n = idx.shape[1]
            if self.cache.length > 0 and n == self.covered + 1 and self.cache.remaining > 0:
                hidden = self.model.hidden_states(idx[:, -1:], kv_cache=self.cache)
            else:
                self.cache.reset()
                hidden = self.model.hidden_states(idx[:, -self.context_size:], kv_cache=self.cache)
            self.covered = n
        return self.head(hidden[:, -1, :])  # only the last position's logits: (B, vocab)


def _decoding_head(head: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``head`` as a function of [batch, emb] rows, as fast as possible for a few rows.

    A plain bias-free ``nn.Linear`` on the CPU (GPT-2's output head) is applied through a
    transposed copy of its weight: streaming a [emb, vocab] matrix past one row is about twice
    as fast there as streaming ``nn.Linear``'s [vocab, emb] (see ``language_model.lay_out_blocks``).
    The copy lives as long as one generation call (154 MB for GPT-2 small). Any other head
    (LoRA-wrapped, biased, on a GPU) is called as it is.
    """
    if (type(head) is not nn.Linear or head.bias is not None
            or head.weight.device.type != "cpu" or head.weight.stride(1) != 1):
        return head
    weight_t = head.weight.detach().t().contiguous()  # (emb, vocab), row-major
    return lambda rows: rows @ weight_t


def _check_logits(logits: Any) -> None:
    check_tensor("logits", logits, kind="floating")
    if logits.dim() != 2:
        raise value_error("logits", f"logits must be a 2-D [batch, vocab] tensor, got shape "
                                    f"{tuple(logits.shape)}")
    if logits.is_meta:
        raise value_error("logits", "logits must hold values, got a tensor on the meta device")
    if bool((~(logits < math.inf)).any()):  # NaN compares False, so one pass finds both
        raise value_error("logits", "logits hold NaN or +inf (has the model diverged?): no token "
                                    "can be sampled from them")


def _check_model(model: Any) -> None:
    """Any family's model: ``cfg``, ``hidden_states``, ``out_head`` and ``new_kv_cache``."""
    missing = [name for name in ("cfg", "hidden_states", "out_head", "new_kv_cache")
               if not hasattr(model, name)]
    if not isinstance(model, nn.Module) or missing:
        raise type_error("model", f"model must be a language model of gpt_components "
                                  f"(GPTModel, DecoderModel), got {type(model).__name__}")


def check_sampling(temperature: float, top_k: int | None, top_p: float | None,
                   generator: torch.Generator | None = None) -> None:
    """Refuse sampling settings ``generate`` would refuse, naming the parameter: a caller that
    loads a model first (the command line) checks them before that work."""
    check_float("temperature", temperature, low=0)
    check_int("top_k", top_k, low=1, optional=True)
    check_float("top_p", top_p, low=0, high=1, low_open=True, optional=True)
    if generator is not None:
        check_instance("generator", generator, torch.Generator, "a torch.Generator or None")
