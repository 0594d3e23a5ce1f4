"""The modern decoder: token embedding, blocks made of the config's components, RMSNorm, head.

``DecoderBlock`` is GPT-2's pre-norm block with its parts chosen by the config: ``x + att(norm1
(x))``, then ``x + ff(norm2(x))``, where ``components`` builds ``norm1``/``norm2``, ``att`` and
``ff`` from ``cfg`` and the block's ``cfg.layer(i)``. ``DecoderModel`` is a ``LanguageModel``
(``gpt_components.machinery.language_model``), as GPT-2 is: ``cfg``, ``forward(idx,
kv_cache)``, ``hidden_states``, ``tok_emb``, ``trf_blocks``, ``final_norm``, ``out_head``,
``new_kv_cache``, ``trace``; it has no position embedding: each block
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

import torch
from torch import nn

from ..attention import check_features
from ..kv_cache import LayerCache
from ..machinery.checks import check_instance, type_error
from ..machinery.language_model import LanguageModel
from ..machinery.registry import FAMILIES
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
        self.emb_dim = cfg.emb_dim
        self.rope = spec.rope  # which of the model's RoPE tables this block's attention uses
        self.norm1 = make_norm(cfg, cfg.emb_dim)
        self.att = ATTENTIONS[spec.attention](cfg, spec)
        self.norm2 = make_norm(cfg, cfg.emb_dim)
        self.ff = FEED_FORWARDS[spec.feed_forward](cfg, spec)
        # Gemma 3's "sandwich": each branch's output is normed again before the residual add.
        self.post_norm1 = make_norm(cfg, cfg.emb_dim) if cfg.post_norms else None
        self.post_norm2 = make_norm(cfg, cfg.emb_dim) if cfg.post_norms else None

    def forward(self, x: torch.Tensor, rope: RopeTables, cache: LayerCache | None = None,
                start: int | None = None,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, T, emb) at positions ``start ..`` (default: after ``cache``'s positions)
        through attention and feed-forward; ``rope`` holds the model's tables for them."""
        check_features(x, self.emb_dim, (3,), next(self.parameters()))
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


def _check_model_class(model: nn.Module, cfg: DecoderConfig) -> None:
    """A family whose model extends ``DecoderModel`` (Gemma 4's shared caches and per-layer
    inputs, OLMo 3's norms) would be built wrong as a plain ``DecoderModel``: refused."""
    for family in FAMILIES.values():
        if type(cfg) is family.config_class and not isinstance(model, family.model_class):
            raise type_error("cfg", f"cfg is a {type(cfg).__name__}, whose model is "
                                    f"{family.model_class.__name__}: build it with "
                                    f"{family.model_class.__name__}(cfg) or build_model(cfg), "
                                    f"not {type(model).__name__}(cfg)")


class DecoderModel(LanguageModel):
    """A decoder-only transformer whose components its ``DecoderConfig`` names.

    ``forward``, ``hidden_states``, ``trace``, ``new_kv_cache`` and ``train`` are the shared
    ``LanguageModel``'s; the decoder's own part is embedding without positions (``_embed``
    computes the RoPE tables for the positions in hand instead) and blocks that rotate with
    them.
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        check_instance("cfg", cfg, DecoderConfig, "a DecoderConfig")
        _check_model_class(self, cfg)
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

    def _embed(self, idx: torch.Tensor, start: int | torch.Tensor
               ) -> tuple[torch.Tensor, tuple[RopeTables, int | None]]:
        """Embeddings (B, T, emb), and the RoPE tables for positions ``start ..`` with start.

        A (B, T) ``start`` holds each row's positions (a paged cache's rows differ): the
        tables are then (B, 1, T, hd), one per row, and the blocks read the first position
        from the cache (whose ``visible`` mask places each row)."""
        x = self.tok_emb(idx)  # (B, T, emb)
        if self.cfg.scale_embeddings:  # rounded to the weights' dtype first, as Gemma does
            x = x * torch.tensor(self.cfg.emb_dim**0.5, dtype=x.dtype, device=x.device)
        if isinstance(start, torch.Tensor):
            b, t = start.shape
            rope = {name: tuple(part.view(b, 1, t, -1) for part in table(start.reshape(-1),
                                                                         x.dtype))
                    for name, table in self.rope.items()}  # each (B, 1, T, hd)
            return x, (rope, None)
        positions = torch.arange(start, start + idx.shape[1], device=idx.device)
        rope = {name: table(positions, x.dtype) for name, table in self.rope.items()}
        return x, (rope, start)

    def _block(self, block: nn.Module, x: torch.Tensor, context: tuple[RopeTables, int],
               cache: LayerCache | None) -> torch.Tensor:
        rope, start = context
        return block(x, rope, cache, start)

    def _block_with_weights(self, block: nn.Module, x: torch.Tensor,
                            context: tuple[RopeTables, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return block(x, context[0], need_weights=True)

    def _new_cache(self, batch_size: int, max_tokens: int, device: torch.device,
                   dtype: torch.dtype) -> DecoderKVCache:
        """One cache per layer, of the kind its attention keeps."""
        layers = [block.att.new_cache(batch_size, max_tokens, device=device, dtype=dtype)
                  for block in self.trf_blocks]
        return DecoderKVCache(layers, batch_size, max_tokens)

    def new_kv_cache(self, batch_size: int, max_tokens: int | None = None) -> DecoderKVCache:
        """An empty cache for this model (one per layer), on its device and dtype."""
        return super().new_kv_cache(batch_size, max_tokens)

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


def _init_weights(module: nn.Module) -> None:
    """Llama's initialisation: N(0, 0.02) for matrices and embeddings, zero biases.

    Nothing to draw on the meta device (a model about to be loaded, or counted): torch's
    ``normal_`` there is a slow reference path, minutes for Qwen3-30B-A3B's 18,000 experts.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)) and not module.weight.is_meta:
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
