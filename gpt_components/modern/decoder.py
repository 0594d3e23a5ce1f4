"""The modern decoder: token embedding, blocks made of the config's components, RMSNorm, head.

``DecoderBlock`` is GPT-2's pre-norm block with its parts chosen by the config: ``x + att(norm1
(x))``, then ``x + ff(norm2(x))``, where ``components`` builds ``norm1``/``norm2``, ``att`` and
``ff`` from ``cfg`` and the block's ``cfg.layer(i)``. ``DecoderModel`` has GPT-2's interface
(``cfg``, ``forward(idx, kv_cache)``, ``hidden_states``, ``tok_emb``, ``trf_blocks``,
``final_norm``, ``out_head``, ``new_kv_cache``, ``trace``) and no position embedding: each block
rotates its queries and keys with the RoPE table its ``LayerSpec`` names, computed once per
forward pass for the positions in hand.

>>> import torch
>>> from gpt_components.modern.config import DecoderConfig
>>> cfg = DecoderConfig(vocab_size=64, context_length=16, emb_dim=32, n_layers=2, n_heads=4,
...                     n_kv_heads=2, hidden_dim=64)
>>> model = DecoderModel(cfg).eval()
>>> model(torch.tensor([[1, 2, 3]])).shape
torch.Size([1, 3, 64])
>>> model.new_kv_cache(batch_size=1).layers[0].keys.shape  # (B, n_kv_heads, tokens, head_dim)
torch.Size([1, 2, 16, 8])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..inspect.trace import ModelTrace
from ..model import _lay_out_blocks, check_token_ids
from .cache import DecoderKVCache
from .components import ATTENTIONS, FEED_FORWARDS, make_norm
from .config import DecoderConfig
from .moe import MoEFeedForward, load_balancing_loss
from .rope import RotaryEmbedding

__all__ = ["DecoderBlock", "DecoderModel"]

RopeTables = dict[str, tuple[torch.Tensor, torch.Tensor]]


class DecoderBlock(nn.Module):
    """Pre-norm block: ``x + att(norm1(x))``, then ``x + ff(norm2(x))``; parts from the config."""

    def __init__(self, cfg: DecoderConfig, index: int) -> None:
        super().__init__()
        spec = cfg.layer(index)
        self.rope = spec.rope  # which of the model's RoPE tables this block's attention uses
        self.norm1 = make_norm(cfg, cfg.emb_dim)
        self.att = ATTENTIONS[spec.attention](cfg, spec)
        self.norm2 = make_norm(cfg, cfg.emb_dim)
        self.ff = FEED_FORWARDS[spec.feed_forward](cfg, spec)
        # Gemma 3's "sandwich": each branch's output is normed again before the residual add.
        self.post_norm1 = make_norm(cfg, cfg.emb_dim) if cfg.post_norms else None
        self.post_norm2 = make_norm(cfg, cfg.emb_dim) if cfg.post_norms else None

    def forward(self, x: torch.Tensor, rope: RopeTables, cache: Any = None, start: int = 0,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        table = None if self.rope is None else rope[self.rope]
        attended = self.att(self.norm1(x), table, cache, start, need_weights)
        weights = None
        if need_weights:
            attended, weights = attended
        if self.post_norm1 is not None:
            attended = self.post_norm1(attended)
        x = x + attended
        fed = self.ff(self.norm2(x))
        x = x + (fed if self.post_norm2 is None else self.post_norm2(fed))
        return (x, weights) if need_weights else x


class DecoderModel(nn.Module):
    """A decoder-only transformer whose components its ``DecoderConfig`` names."""

    decoding_layout: bool = True  #: as ``GPTModel.decoding_layout``

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        if not isinstance(cfg, DecoderConfig):
            raise TypeError(f"cfg must be a DecoderConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.trf_blocks = nn.ModuleList(DecoderBlock(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = make_norm(cfg, cfg.emb_dim)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.rope = nn.ModuleDict({name: RotaryEmbedding(spec.head_dim, spec.theta, spec.scaling)
                                   for name, spec in cfg.rope_specs().items()})
        self.apply(_init_weights)
        if cfg.tie_weights:
            self.out_head.weight = self.tok_emb.weight

    def train(self, mode: bool = True) -> DecoderModel:
        """Set training (or eval) mode and the blocks' weight layout for it, as ``GPTModel``
        does: row-major for training, column-major widening weights for decoding."""
        super().train(mode)
        _lay_out_blocks(self.trf_blocks, decoding=not mode and self.decoding_layout)
        return self

    def forward(self, idx: torch.Tensor, kv_cache: DecoderKVCache | None = None) -> torch.Tensor:
        """Logits [batch, tokens, vocab] for token ids ``idx`` [batch, tokens].

        With ``kv_cache`` (from ``new_kv_cache``), ``idx`` continues the cached tokens: its
        first token sits at position ``kv_cache.length``, and the cache grows by its length.
        """
        return self.out_head(self.hidden_states(idx, kv_cache))  # (B, T, vocab)

    def hidden_states(self, idx: torch.Tensor,
                      kv_cache: DecoderKVCache | None = None) -> torch.Tensor:
        """What the output head reads: the final norm's output [batch, tokens, emb_dim]."""
        x, rope, start = self._embed(idx, kv_cache)
        for i, block in enumerate(self.trf_blocks):
            x = block(x, rope, None if kv_cache is None else kv_cache.layers[i], start)
        if kv_cache is not None:
            kv_cache.advance(idx.shape[1])
        return self.final_norm(x)  # (B, T, emb)

    def _embed(self, idx: torch.Tensor,
               kv_cache: DecoderKVCache | None) -> tuple[torch.Tensor, RopeTables, int]:
        """Checked ids -> embeddings (B, T, emb), the RoPE tables for their positions, start."""
        check_token_ids(idx, self.cfg.vocab_size)
        b, t = idx.shape
        start = 0
        if kv_cache is not None:
            if kv_cache.batch_size != b:
                raise ValueError(f"kv_cache was made for batch_size={kv_cache.batch_size}, "
                                 f"idx has {b} rows")
            start = kv_cache.length
            if start + t > kv_cache.max_tokens:
                raise ValueError(f"Sequence length {start + t} exceeds the cache's "
                                 f"{kv_cache.max_tokens} tokens: idx adds {t} tokens to a "
                                 f"kv_cache holding {start} of max_tokens={kv_cache.max_tokens}")
        if start + t > self.cfg.context_length:
            raise ValueError(f"Sequence length {start + t} exceeds the model's "
                             f"{self.cfg.context_length} tokens: idx has {t} tokens after "
                             f"{start} cached ones, more than context_length="
                             f"{self.cfg.context_length}")
        x = self.tok_emb(idx)  # (B, T, emb)
        if self.cfg.scale_embeddings:  # rounded to the weights' dtype first, as Gemma does
            x = x * torch.tensor(self.cfg.emb_dim**0.5, dtype=x.dtype, device=x.device)
        positions = torch.arange(start, start + t, device=idx.device)
        rope = {name: table(positions, x.dtype) for name, table in self.rope.items()}
        return x, rope, start

    def trace(self, idx: torch.Tensor) -> ModelTrace:
        """One pass over ``idx`` laid open (see ``gpt_components.inspect.trace``): each block's
        input, the attention probabilities of every query head, the logits.

        Runs in eval mode (restoring the mode after), without gradients or a KV cache.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                x, rope, _ = self._embed(idx, None)
                residuals, attentions = [x], []
                for block in self.trf_blocks:
                    x, weights = block(x, rope, need_weights=True)
                    residuals.append(x)
                    attentions.append(weights)  # (B, n_heads, T, T)
                logits = self.out_head(self.final_norm(x))  # (B, T, vocab)
        finally:
            self.train(was_training)
        return ModelTrace(residuals, attentions, logits)

    def auxiliary_loss(self) -> torch.Tensor | None:
        """The last forward's load-balancing loss times ``cfg.aux_loss_coef`` (None: no routers).

        Training adds it to the next-token loss. It is taken over every sparse layer's router
        logits together, as ``transformers`` does.
        """
        mixtures = [block.ff for block in self.trf_blocks if isinstance(block.ff, MoEFeedForward)]
        if not mixtures or not self.cfg.aux_loss_coef or mixtures[0].router_logits is None:
            return None
        gate = mixtures[0].gate
        return self.cfg.aux_loss_coef * load_balancing_loss(
            [moe.router_logits for moe in mixtures], gate.n_experts, gate.top_k)

    def new_kv_cache(self, batch_size: int, max_tokens: int | None = None) -> DecoderKVCache:
        """An empty cache for this model (one per layer), on its device and dtype."""
        max_tokens = self.cfg.context_length if max_tokens is None else max_tokens
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) \
                or not 1 <= max_tokens <= self.cfg.context_length:
            raise ValueError(f"max_tokens must be an int in [1, context_length="
                             f"{self.cfg.context_length}], got {max_tokens!r}")
        weight = self.tok_emb.weight
        layers = [block.att.new_cache(batch_size, max_tokens, device=weight.device,
                                      dtype=weight.dtype) for block in self.trf_blocks]
        return DecoderKVCache(layers, batch_size, max_tokens)


def _init_weights(module: nn.Module) -> None:
    """Llama's initialisation: N(0, 0.02) for matrices and embeddings, zero biases.

    Nothing to draw on the meta device (a model about to be loaded, or counted): torch's
    ``normal_`` there is a slow reference path, minutes for Qwen3-30B-A3B's 18,000 experts.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)) and not module.weight.is_meta:
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
