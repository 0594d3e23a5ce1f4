"""The interface every model family shares: token ids in, logits out, a cache between steps.

``LanguageModel`` is the base of ``GPTModel`` (the book's GPT-2) and ``DecoderModel`` (the
modern families). It owns what they do the same way, once:

- ``forward(idx, kv_cache=None)`` is ``out_head(hidden_states(idx, kv_cache))``;
- ``hidden_states`` checks the ids (an integer [batch, tokens] tensor of ids in the vocabulary,
  on the model's device) and the cache (a ``CacheStack`` of this model's layout, device and
  dtype, for as many rows, with room), refuses a sequence past the context, runs the blocks and
  advances the cache;
- ``trace(idx)`` lays one pass open (``gpt_components.inspect.trace``);
- ``new_kv_cache(batch_size, max_tokens=None)`` checks its sizes and makes the cache;
- ``train(mode)`` switches the blocks' weight layout (``lay_out_blocks``);
- ``auxiliary_loss()`` is None unless a family adds a training loss (a mixture of experts).

A family writes only what differs, as four hooks: ``_embed(idx, start)`` (the embeddings of
the ids at positions ``start ..``, with whatever its blocks need besides, such as RoPE tables;
``start`` is a (B, T) tensor of positions instead when the cache's rows differ, as a paged
cache's do: ``Cache.positions``),
``_block(block, x, context, cache)`` (one block's forward, with its layer's cache),
``_block_with_weights(block, x, context)`` (the same, returning the attention probabilities)
and ``_new_cache(batch_size, max_tokens, device, dtype)`` (a ``CacheStack`` of its layers'
caches). Its ``__init__`` sets ``cfg`` (with ``vocab_size`` and ``context_length``),
``tok_emb``, ``trf_blocks``, ``final_norm`` and ``out_head``.

>>> import torch
>>> from gpt_components.model import GPTConfig, GPTModel
>>> model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50)).eval()
>>> isinstance(model, LanguageModel)
True
>>> other = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50, n_layers=1))
>>> try:  # a cache from another model is refused before any work
...     model(torch.tensor([[1, 2]]), kv_cache=other.new_kv_cache(1))
... except ValueError as error:
...     print(error.parameter, "|", str(error)[:60])
kv_cache | kv_cache was not made for this model: it holds 1 layers, the
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..inspect.trace import ModelTrace
from ..kv_cache import CacheStack
from .checks import check_instance, check_int, check_token_ids, value_error

__all__ = ["LanguageModel", "lay_out_blocks"]


def _widening_linears(blocks: nn.Module) -> list[nn.Linear]:
    """The blocks' ``nn.Linear`` layers with ``out_features >= in_features``."""
    return [m for m in blocks.modules()
            if isinstance(m, nn.Linear) and m.out_features >= m.in_features]


def lay_out_blocks(blocks: nn.Module, decoding: bool) -> None:
    """Lay the blocks' widening weights out for decoding (column-major) or training (row-major).

    Generating one token multiplies a single row by every weight matrix: a pass bound by how
    fast the weights stream from memory. On the CPU measured (MKL, one thread), that product
    reads a matrix with ``out >= in`` 20-50% faster when it is stored as its transpose [in, out]
    (the layout of GPT-2's own ``Conv1D``) than in ``nn.Linear``'s [out, in]; narrowing matrices
    (the feed-forward's 4*emb -> emb) are faster as they are. A training step, though, is
    about 4% faster with every weight row-major (``benchmarks/README.md``). So the models call
    this from ``train(mode)``: row-major in training mode, column-major widening weights in eval
    mode. Only the memory order changes: shapes, values, the ``Parameter`` objects (which an
    optimizer holds), ``state_dict`` keys and the function computed stay the same; a gradient
    moves with its weight. The output head is left alone: training computes its weight gradient
    much faster row-major, so ``generation`` takes a transposed copy of it instead. Shards of a
    sharded model (FSDP's DTensors) keep their layout.
    """
    with torch.no_grad():
        for module in _widening_linears(blocks):
            weight = module.weight
            if type(weight.data) is not torch.Tensor:  # a DTensor shard: FSDP owns its storage
                continue
            weight.data = _laid_out(weight.data, decoding)
            if weight.grad is not None:
                weight.grad = _laid_out(weight.grad, decoding)


def _laid_out(matrix: torch.Tensor, column_major: bool) -> torch.Tensor:
    """``matrix`` [out, in] itself if already in the order asked, else a copy in that order."""
    if column_major:
        return matrix if matrix.t().is_contiguous() else matrix.t().contiguous().t()
    return matrix.contiguous()


class LanguageModel(nn.Module):
    """Token ids -> logits through ``trf_blocks``, with a KV cache between decoding steps."""

    #: Whether eval mode lays the widening weights out for decoding (``lay_out_blocks``).
    #: False keeps training's layout in eval mode too, for a model that scores beside one in
    #: training mode and must round as it does (DPO's frozen reference).
    decoding_layout: bool = True

    cfg: Any
    tok_emb: nn.Embedding
    trf_blocks: nn.Module
    final_norm: nn.Module
    out_head: nn.Module

    # -- what a family writes -------------------------------------------------------------

    def _embed(self, idx: torch.Tensor, start: int | torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The blocks' input (B, T, emb) for checked ids at positions ``start ..`` (or at the
        positions of a (B, T) tensor ``start``), and the context every block reads besides
        (None if nothing)."""
        raise NotImplementedError

    def _block(self, block: nn.Module, x: torch.Tensor, context: Any,
               cache: Any) -> torch.Tensor:
        """One block's forward over ``x``, storing into its layer's ``cache`` (or None)."""
        raise NotImplementedError

    def _block_with_weights(self, block: nn.Module, x: torch.Tensor,
                            context: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One block's forward without a cache, and its attention probabilities."""
        raise NotImplementedError

    def _new_cache(self, batch_size: int, max_tokens: int, device: torch.device,
                   dtype: torch.dtype) -> CacheStack:
        """An empty cache of every layer (sizes already checked)."""
        raise NotImplementedError

    # -- what every family shares ---------------------------------------------------------

    def train(self, mode: bool = True) -> LanguageModel:
        """Set training (or, ``False``, eval) mode and the blocks' weight layout for it.

        Eval mode keeps the widening weights column-major, for fast decoding; training mode
        keeps every weight row-major, for a fast training step (see ``lay_out_blocks``).
        """
        super().train(mode)
        lay_out_blocks(self.trf_blocks, decoding=not mode and self.decoding_layout)
        return self

    def forward(self, idx: torch.Tensor, kv_cache: CacheStack | None = None) -> torch.Tensor:
        """Logits [batch, tokens, vocab] for token ids ``idx`` [batch, tokens].

        With ``kv_cache`` (from ``new_kv_cache``), ``idx`` continues the cached tokens: its
        first token sits at position ``kv_cache.length``, and the cache grows by its length.
        """
        return self.out_head(self.hidden_states(idx, kv_cache))  # (B, T, vocab)

    def hidden_states(self, idx: torch.Tensor,
                      kv_cache: CacheStack | None = None) -> torch.Tensor:
        """What the output head reads: the final norm's output [batch, tokens, emb_dim].

        ``forward`` is ``out_head(hidden_states(idx, kv_cache))``; generation uses this to
        apply the head to the last position only.
        """
        start = self._check_input(idx, kv_cache)
        positions = None if kv_cache is None else kv_cache.positions
        x, context = self._embed(idx, start if positions is None else positions)  # (B, T, emb)
        for layer, block in enumerate(self.trf_blocks):
            x = self._block(block, x, context, None if kv_cache is None else kv_cache.layers[layer])
        if kv_cache is not None:
            kv_cache.advance(idx.shape[1])
        return self.final_norm(x)  # (B, T, emb)

    def trace(self, idx: torch.Tensor) -> ModelTrace:
        """One pass over ``idx`` [batch, tokens] laid open (see ``gpt_components.inspect.trace``):
        each block's input, the attention probabilities of every query head, the logits.

        Runs in eval mode (restoring the mode after) without gradients or a KV cache; the
        attention maps are the probabilities that produced the residual stream and the logits.
        """
        self._check_input(idx, None)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                x, context = self._embed(idx, 0)
                residuals, attentions = [x], []
                for block in self.trf_blocks:
                    x, weights = self._block_with_weights(block, x, context)
                    residuals.append(x)
                    attentions.append(weights)  # (B, n_heads, T, T)
                logits = self.out_head(self.final_norm(x))  # (B, T, vocab)
        finally:
            self.train(was_training)
        return ModelTrace(residuals, attentions, logits)

    def new_kv_cache(self, batch_size: int, max_tokens: int | None = None) -> CacheStack:
        """An empty cache of every layer for ``batch_size`` sequences of up to ``max_tokens``
        positions (the context length by default), on the model's device and dtype."""
        check_int("batch_size", batch_size, low=1)
        context = self.cfg.context_length
        if max_tokens is None:
            max_tokens = context
        elif check_int("max_tokens", max_tokens, low=1) > context:
            raise value_error("max_tokens", f"max_tokens must be an int in [1, context_length="
                                            f"{context}], got {max_tokens!r}")
        weight = self.tok_emb.weight
        return self._new_cache(batch_size, max_tokens, weight.device, weight.dtype)

    def auxiliary_loss(self) -> torch.Tensor | None:
        """A loss the last forward pass adds to the next-token loss in training (None: none).

        Dense models have none; a mixture of experts returns its routers' load-balancing loss.
        """
        return None

    def _check_input(self, idx: Any, kv_cache: Any) -> int:
        """Refuse bad ids or a cache that does not fit, before any work; the first position."""
        weight = self.tok_emb.weight
        check_token_ids(idx, self.cfg.vocab_size, device=weight.device)
        rows, t = idx.shape
        context = self.cfg.context_length
        if kv_cache is None:
            if t > context:
                raise value_error("idx", f"Sequence length {t} exceeds the model's {context} "
                                         f"tokens: idx has {t} tokens, more than "
                                         f"context_length={context}")
            return 0
        self._check_cache(kv_cache, rows, weight)
        positions = kv_cache.positions
        if positions is not None and tuple(positions.shape) != (rows, t):
            raise value_error("kv_cache", f"kv_cache holds positions for {tuple(positions.shape)}"
                                          f" tokens, idx has {(rows, t)}")
        start = kv_cache.length
        limit = min(kv_cache.max_tokens, context)
        if start + t > limit:
            raise value_error("idx", f"Sequence length {start + t} exceeds the cache's {limit} "
                                     f"tokens: idx adds {t} tokens to a kv_cache holding {start} "
                                     f"of max_tokens={kv_cache.max_tokens} (context_length="
                                     f"{context})")
        return start

    def _check_cache(self, kv_cache: Any, rows: int, weight: torch.Tensor) -> None:
        """``kv_cache`` is a stack this model could have made, for ``rows`` sequences."""
        check_instance("kv_cache", kv_cache, CacheStack,
                       f"a cache from {type(self).__name__}.new_kv_cache, or None")
        got, want = kv_cache.layout, self._cache_layout()
        if got != want:
            remedy = "make one with model.new_kv_cache(batch_size)"
            if len(got) != len(want):
                raise value_error("kv_cache", f"kv_cache was not made for this model: it holds "
                                              f"{len(got)} layers, the model has {len(want)} "
                                              f"({remedy})")
            layer = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
            raise value_error("kv_cache", f"kv_cache was not made for this model: its layer "
                                          f"{layer} holds {got[layer]}, the model's needs "
                                          f"{want[layer]} ({remedy})")
        buffer = next(kv_cache.layers[0].buffers(), None)  # the stack's all share one
        if buffer is not None and (buffer.device, buffer.dtype) != (weight.device, weight.dtype):
            raise value_error("kv_cache", f"kv_cache holds {buffer.dtype} on {buffer.device}, "
                                          f"but the model is {weight.dtype} on {weight.device}: "
                                          f"make it with model.new_kv_cache(...) after moving "
                                          f"the model")
        if kv_cache.batch_size != rows:
            raise value_error("kv_cache", f"kv_cache was made for batch_size="
                                          f"{kv_cache.batch_size}, idx has {rows} rows")


    def _cache_layout(self) -> tuple:
        """The layout of this model's caches, worked out once on the meta device."""
        layout = self.__dict__.get("_cache_layout_memo")
        if layout is None:
            layout = self._new_cache(1, 1, torch.device("meta"), self.tok_emb.weight.dtype).layout
            self.__dict__["_cache_layout_memo"] = layout
        return layout
