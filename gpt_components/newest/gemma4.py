"""Gemma 4 (Google, the text model): shared key/value caches, per-layer inputs, capped logits.

What Gemma 4 chooses, on top of Gemma 3 (``gpt_components.modern.gemma3``):

- **two kinds of attention layer, shaped differently.** Sliding layers (four or five of every
  five or six) see the last ``sliding_window`` positions with heads of ``head_dim`` = 256 and
  plain RoPE (base 10,000); full layers see everything, with wider heads (``global_head_dim`` =
  512), optionally fewer key/value heads (``global_kv_heads``), and *proportional* RoPE: only
  the first ``partial_rotary_factor`` (a quarter) of the frequency pairs turn, at the speeds
  they would have in a full rotation, and the rest carry no position at all. The last layer is
  always full.
- **keys equal to values** (``keys_equal_values``, the larger models' full layers): one
  projection gives both; the key is normed and rotated, the value only normed.
- **queries, keys and values all RMS-normed**, and the scores left unscaled (``scale = 1``).
- **caches shared by the last layers** (``kv_shared_layers``): those layers compute queries
  only and attend to the keys and values of the last earlier layer of their kind; their cache is
  that layer's cache object, listed again in the stack (``newest.shared_kv``).
- **per-layer inputs** (``per_layer_dim``, the "E" models): each layer adds a gated view of its
  own slice of a second embedding (``newest.per_layer_inputs``).
- Gemma 3's four norms per block, in their plain form (``weight``, not ``1 + weight``), GELU in
  the gate, embeddings times ``sqrt(emb_dim)``; each block's output times a stored
  ``layer_scalar``; the feed-forward twice as wide in sharing layers (``double_wide_mlp``).
- **final logit soft-capping**: ``cap * tanh(logits / cap)`` (``logit_softcap`` = 30), which
  keeps every logit within ``(-cap, cap)`` and leaves their order unchanged.

- **experts beside the feed-forward** (``n_experts``, the 26B-A4B): a routed mixture of small
  experts runs next to the dense feed-forward, not instead of it (``newest.gemma4_moe``).

>>> cfg = Gemma4Config.from_name("gemma4-e2b")
>>> cfg.layer_types[13:15], cfg.kv_sources()[15:20]
(('sliding_attention', 'full_attention'), [13, 13, 13, 13, 14])
>>> model = Gemma4Model(Gemma4Config.from_name("gemma4-nano", vocab_size=60))
>>> cache = model.new_kv_cache(batch_size=1)
>>> cache.layers[5] is cache.layers[2], type(cache.layers[2]).__name__
(True, 'LayerKVCache')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from ..attention import check_features
from ..kv_cache import LayerCache
from ..machinery.checks import (
    check_bool,
    check_choice,
    check_float,
    check_instance,
    check_int,
    value_error,
)
from ..machinery.language_model import LanguageModel
from ..modern.cache import DecoderKVCache
from ..modern.config import DecoderConfig, LayerSpec, RopeSpec
from ..modern.family import Family, HFLayout
from ..modern.feedforward import SwiGLU
from ..modern.hf import decoder_fields_from_hf, decoder_fields_to_hf
from ..modern.norms import RMSNorm
from ..modern.rope import RotaryEmbedding
from .gemma4_moe import Gemma4MoE
from .per_layer_inputs import PerLayerEmbedding, PerLayerGate
from .shared_kv import SharedKVAttention, kv_sources

__all__ = ["Gemma4Config", "Gemma4Model", "Gemma4Block", "ProportionalRotaryEmbedding",
           "SoftCappedHead", "GEMMA4_PRESETS", "GEMMA4_HF_NAMES"]

SLIDING, FULL = "sliding_attention", "full_attention"  # transformers' names for the two kinds


def gemma4_layer_types(n_layers: int, pattern: int = 6) -> tuple[str, ...]:
    """Every ``pattern``-th layer full, the others sliding, and the last layer full."""
    kinds = [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layers)]
    kinds[-1] = FULL
    return tuple(kinds)


class ProportionalRotaryEmbedding(RotaryEmbedding):
    """RoPE in which only the first ``rotary_fraction`` of the frequency pairs turn.

    The turning pairs keep the speeds of a full rotation, ``theta ** (-2i / head_dim)``; the
    others get speed 0 (cos 1, sin 0: no rotation), so those features carry content only.
    ``factor`` divides every speed (positions interpolated, as ``linear`` RoPE scaling does).
    With ``rotary_fraction=1`` and ``factor=1`` it is plain RoPE.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, rotary_fraction: float = 1.0,
                 factor: float = 1.0) -> None:
        super().__init__(head_dim, theta)
        check_float("rotary_fraction", rotary_fraction, low=0, high=1, low_open=True)
        check_float("factor", factor, low=0, low_open=True)
        turning = int(rotary_fraction * head_dim // 2)  # pairs that turn, as transformers counts
        speeds = self.inv_freq.clone()
        speeds[turning:] = 0.0
        self.inv_freq = speeds / factor


class SoftCappedHead(nn.Module):
    """The output head with Gemma's soft cap: ``cap * tanh(linear(x) / cap)``.

    The cap wraps a plain bias-free ``nn.Linear`` (``linear``), so whatever adapts or replaces
    linear layers (LoRA, and its merge) changes what is capped, never the cap itself.
    ``weight``, ``in_features`` and ``out_features`` are the linear layer's.
    """

    def __init__(self, in_features: int, out_features: int, cap: float) -> None:
        super().__init__()
        self.cap = check_float("cap", cap, low=0, low_open=True)
        self.linear = nn.Linear(in_features, out_features, bias=False)

    @property
    def _base(self) -> nn.Linear:
        return getattr(self.linear, "linear", self.linear)  # under a LoRA wrapper, its linear

    @property
    def weight(self) -> torch.Tensor:
        return self._base.weight

    @property
    def in_features(self) -> int:
        return self._base.in_features

    @property
    def out_features(self) -> int:
        return self._base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cap * torch.tanh(self.linear(x) / self.cap)


@dataclass(frozen=True)
class Gemma4Config(DecoderConfig):
    """Gemma 4's choices; defaults are Gemma 4 E2B's text model. ``head_dim``/``n_kv_heads``
    and ``rope_local_theta`` are the sliding layers', ``global_head_dim``/``global_kv_heads``,
    ``rope_theta``, ``partial_rotary_factor`` and ``rope_factor`` the full layers'."""

    vocab_size: int = 262144
    context_length: int = 131072
    emb_dim: int = 1536
    n_layers: int = 35
    n_heads: int = 8
    n_kv_heads: int = 1
    head_dim: int = 256
    hidden_dim: int = 6144
    norm_eps: float = 1e-6
    feed_forward: str = "geglu"
    rope_theta: float = 1000000.0
    qk_norm: bool = True  # and the values too, without a weight
    post_norms: bool = True
    scale_embeddings: bool = True
    tie_weights: bool = True
    sliding_window: int = 512  # keys a sliding layer's query sees, itself included
    layer_types: tuple[str, ...] | None = None  # None: five sliding to one full, last full
    rope_local_theta: float = 10000.0  # RoPE base of the sliding layers
    partial_rotary_factor: float = 0.25  # share of the full layers' frequency pairs that turn
    rope_factor: float = 1.0  # divides the full layers' RoPE speeds
    global_head_dim: int = 512
    global_kv_heads: int | None = None  # None: n_kv_heads; only with keys_equal_values
    keys_equal_values: bool = False  # full layers: one projection for keys and values
    kv_shared_layers: int = 0  # the last layers, which read earlier layers' caches
    per_layer_dim: int = 256  # features of each layer's own input (0: none)
    double_wide_mlp: bool = False  # sharing layers' feed-forward twice as wide
    logit_softcap: float | None = 30.0  # None: logits not capped
    n_experts: int = 0  # routed experts beside each dense feed-forward (0: none)
    n_experts_per_token: int = 8  # experts each token is routed to
    moe_hidden_dim: int = 704  # each expert's inner width

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rope_scaling is not None:
            raise value_error("rope_scaling", "rope_scaling must be None: Gemma 4 stretches its "
                                              "full layers with rope_factor")
        for name in ("qk_norm", "post_norms", "scale_embeddings"):
            if getattr(self, name) is not True:
                raise value_error(name, f"{name} must be True in Gemma 4")
        if self.layer_types is None:
            object.__setattr__(self, "layer_types", gemma4_layer_types(self.n_layers))
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.n_layers:
            raise value_error("layer_types", f"layer_types must name {self.n_layers} layers, "
                                             f"got {len(self.layer_types)}")
        for kind in self.layer_types:
            check_choice("layer_types", kind, (SLIDING, FULL))
        if self.layer_types[-1] != FULL:
            raise value_error("layer_types", "layer_types must end with 'full_attention' "
                                             "(Gemma 4's last layer sees the whole context)")
        check_int("sliding_window", self.sliding_window, low=1)
        check_float("rope_local_theta", self.rope_local_theta, low=1, low_open=True)
        check_float("partial_rotary_factor", self.partial_rotary_factor, low=0, high=1,
                    low_open=True)
        check_float("rope_factor", self.rope_factor, low=0, low_open=True)
        check_int("global_head_dim", self.global_head_dim, low=2)
        if self.global_head_dim % 2:
            raise value_error("global_head_dim", f"global_head_dim must be even (RoPE turns "
                                                 f"pairs), got {self.global_head_dim}")
        check_bool("keys_equal_values", self.keys_equal_values)
        check_int("global_kv_heads", self.global_kv_heads, low=1, optional=True)
        if self.global_kv_heads is not None:
            if not self.keys_equal_values:
                raise value_error("global_kv_heads", "global_kv_heads must be None unless "
                                                     "keys_equal_values (transformers reads it "
                                                     "only then)")
            if self.n_heads % self.global_kv_heads:
                raise value_error("global_kv_heads", f"global_kv_heads ({self.global_kv_heads})"
                                                     f" must divide n_heads ({self.n_heads})")
        check_int("per_layer_dim", self.per_layer_dim, low=0)
        check_bool("double_wide_mlp", self.double_wide_mlp)
        check_float("logit_softcap", self.logit_softcap, low=0, low_open=True, optional=True)
        if check_int("n_experts", self.n_experts, low=0):
            check_int("n_experts_per_token", self.n_experts_per_token, low=1,
                      high=self.n_experts)
            check_int("moe_hidden_dim", self.moe_hidden_dim, low=1)
        self.kv_sources()  # refuses a sharing layer with nothing to share from

    def kv_sources(self) -> list[int]:
        """For each layer, the layer whose keys and values it attends to (itself if its own)."""
        return kv_sources(self.layer_types, self.kv_shared_layers)

    def attention_shape(self, index: int) -> tuple[int, int]:
        """``(n_kv_heads, head_dim)`` of layer ``index``'s keys and values."""
        if self.layer_types[index] == SLIDING:
            return self.n_kv_heads, self.head_dim
        return self.global_kv_heads or self.n_kv_heads, self.global_head_dim

    def layer(self, index: int) -> LayerSpec:
        if self.layer_types[index] == SLIDING:
            return LayerSpec(attention="sliding_gqa", feed_forward=self.feed_forward,
                             rope="local")
        return LayerSpec(attention="gqa", feed_forward=self.feed_forward)

    def attention_scale(self) -> float:
        return 1.0

    def rope_specs(self) -> dict[str, RopeSpec]:
        return {"default": RopeSpec(self.global_head_dim, self.rope_theta),
                "local": RopeSpec(self.head_dim, self.rope_local_theta)}


class Gemma4Block(nn.Module):
    """Gemma 4's block: four norms around attention and feed-forward, then the layer's own
    input, then ``layer_scalar``::

        x = x + post_norm1(att(norm1(x)))
        x = x + post_norm2(ff(norm2(x)))       # + moe.dense_norm, moe(x) with experts
        x = x + per_layer(x, layer_input)      # with per-layer inputs
        x = x * layer_scalar
    """

    def __init__(self, cfg: Gemma4Config, index: int) -> None:
        super().__init__()
        self.index = index
        self.emb_dim = cfg.emb_dim
        sliding = cfg.layer_types[index] == SLIDING
        source = cfg.kv_sources()[index]
        shares = source != index
        self.rope = "local" if sliding else "global"  # which of the model's RoPE tables
        n_kv_heads, head_dim = cfg.attention_shape(index)
        self.norm1 = RMSNorm(cfg.emb_dim, eps=cfg.norm_eps)
        self.att = SharedKVAttention(
            cfg.emb_dim, cfg.n_heads, n_kv_heads, head_dim,
            window=cfg.sliding_window if sliding else None,
            keys_equal_values=cfg.keys_equal_values and not sliding, layer=index,
            reads_from=source,
            norm_eps=cfg.norm_eps, bias=cfg.attention_bias, dropout=cfg.drop_rate,
            kernel=cfg.attn_kernel)
        self.post_norm1 = RMSNorm(cfg.emb_dim, eps=cfg.norm_eps)
        self.norm2 = RMSNorm(cfg.emb_dim, eps=cfg.norm_eps)
        wide = 2 if cfg.double_wide_mlp and shares else 1
        self.ff = SwiGLU(cfg.emb_dim, cfg.hidden_dim * wide, activation="gelu_tanh")
        self.post_norm2 = RMSNorm(cfg.emb_dim, eps=cfg.norm_eps)
        self.moe = (Gemma4MoE(cfg.emb_dim, cfg.n_experts, cfg.n_experts_per_token,
                              cfg.moe_hidden_dim, eps=cfg.norm_eps) if cfg.n_experts else None)
        self.per_layer = (PerLayerGate(cfg.emb_dim, cfg.per_layer_dim, eps=cfg.norm_eps)
                          if cfg.per_layer_dim else None)
        self.register_buffer("layer_scalar", torch.ones(1))  # stored with the weights

    def forward(self, x: torch.Tensor, rope: dict[str, tuple[torch.Tensor, torch.Tensor]],
                layer_input: torch.Tensor | None = None, cache: LayerCache | None = None,
                start: int | None = None, need_weights: bool = False,
                shared: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        check_features(x, self.emb_dim, (3,), self.norm1.weight)
        attended = self.att(self.norm1(x), rope[self.rope], cache, start, need_weights, shared)
        weights = None
        if need_weights:
            attended, weights = attended
        x = x + self.post_norm1(attended)
        fed = self.ff(self.norm2(x))
        if self.moe is not None:  # the experts read the same residual stream as the dense
            fed = self.moe.dense_norm(fed) + self.moe(x)
        x = x + self.post_norm2(fed)
        if self.per_layer is not None:
            x = x + self.per_layer(x, layer_input)
        x = x * self.layer_scalar
        return (x, weights) if need_weights else x


class _Context(NamedTuple):
    """What every block reads besides the residual stream, for one pass."""

    rope: dict[str, tuple[torch.Tensor, torch.Tensor]]  # table name -> (cos, sin)
    start: int | None  # position of the first token (None: each row's, from a paged cache)
    layer_inputs: torch.Tensor | None  # (B, T, n_layers, per_layer_dim)
    shared: dict[int, tuple[torch.Tensor, torch.Tensor]]  # the pass's keys, values by source


class Gemma4Model(LanguageModel):
    """Gemma 4's text model: a ``LanguageModel`` of ``Gemma4Block``s.

    ``tok_emb``, ``trf_blocks``, ``final_norm`` and ``out_head`` (a ``SoftCappedHead`` when the
    logits are capped) as every family has them, plus ``per_layer`` (the per-layer inputs) and
    the two RoPE tables. ``new_kv_cache`` makes one cache per layer where a sharing layer's
    entry *is* its source layer's cache object; within a pass, a sharing layer attends to what
    its source's ``store`` returned (``SharedKVAttention``), with a cache or without.
    """

    def __init__(self, cfg: Gemma4Config) -> None:
        super().__init__()
        check_instance("cfg", cfg, Gemma4Config, "a Gemma4Config")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.per_layer = (PerLayerEmbedding(cfg.vocab_size, cfg.emb_dim, cfg.n_layers,
                                            cfg.per_layer_dim, eps=cfg.norm_eps)
                          if cfg.per_layer_dim else None)
        self.trf_blocks = nn.ModuleList(Gemma4Block(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.emb_dim, eps=cfg.norm_eps)
        self.out_head = (nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
                         if cfg.logit_softcap is None
                         else SoftCappedHead(cfg.emb_dim, cfg.vocab_size, cfg.logit_softcap))
        self.rope = nn.ModuleDict({
            "local": ProportionalRotaryEmbedding(cfg.head_dim, cfg.rope_local_theta),
            "global": ProportionalRotaryEmbedding(cfg.global_head_dim, cfg.rope_theta,
                                                  cfg.partial_rotary_factor, cfg.rope_factor)})
        self.sources = cfg.kv_sources()
        self.apply(_init_weights)
        if cfg.tie_weights:
            getattr(self.out_head, "linear", self.out_head).weight = self.tok_emb.weight

    def _embed(self, idx: torch.Tensor,
               start: int | torch.Tensor) -> tuple[torch.Tensor, _Context]:
        """Embeddings, per-layer inputs and RoPE tables for positions ``start ..`` (or, for a
        paged cache whose rows differ, the (B, T) positions ``start``)."""
        weight = self.tok_emb.weight
        # Scaled by sqrt(emb_dim) rounded to the weights' dtype first, as Gemma does.
        x = self.tok_emb(idx) * torch.tensor(self.cfg.emb_dim**0.5, dtype=weight.dtype,
                                             device=weight.device)  # (B, T, emb)
        layer_inputs = None if self.per_layer is None else self.per_layer(idx, x)
        if isinstance(start, torch.Tensor):  # each row its own positions: (B, 1, T, hd) tables
            b, t = start.shape
            rope = {name: tuple(part.view(b, 1, t, -1)
                                for part in table(start.reshape(-1), x.dtype))
                    for name, table in self.rope.items()}
            return x, _Context(rope, None, layer_inputs, {})
        positions = torch.arange(start, start + idx.shape[1], device=idx.device)
        rope = {name: table(positions, x.dtype) for name, table in self.rope.items()}
        return x, _Context(rope, start, layer_inputs, {})

    def _block(self, block: nn.Module, x: torch.Tensor, context: _Context,
               cache: LayerCache | None) -> torch.Tensor:
        layer_input = None if context.layer_inputs is None else context.layer_inputs[
            :, :, block.index]
        return block(x, context.rope, layer_input, cache, context.start,
                     shared=context.shared)

    def _block_with_weights(self, block: nn.Module, x: torch.Tensor,
                            context: _Context) -> tuple[torch.Tensor, torch.Tensor]:
        layer_input = None if context.layer_inputs is None else context.layer_inputs[
            :, :, block.index]
        return block(x, context.rope, layer_input, need_weights=True, shared=context.shared)

    def _new_cache(self, batch_size: int, max_tokens: int, device: torch.device,
                   dtype: torch.dtype) -> DecoderKVCache:
        """One cache per layer; a sharing layer's is its source layer's, the same object."""
        layers: list[LayerCache] = []
        for i, (block, source) in enumerate(zip(self.trf_blocks, self.sources, strict=True)):
            layers.append(layers[source] if source != i else block.att.new_cache(
                batch_size, max_tokens, device=device, dtype=dtype))
        return DecoderKVCache(layers, batch_size, max_tokens)

    def new_kv_cache(self, batch_size: int, max_tokens: int | None = None) -> DecoderKVCache:
        """An empty cache for this model (a sharing layer's entry is its source's cache)."""
        return super().new_kv_cache(batch_size, max_tokens)


def _init_weights(module: nn.Module) -> None:
    """N(0, 0.02) for matrices and embeddings, zero biases (nothing to draw on meta)."""
    if isinstance(module, (nn.Linear, nn.Embedding)) and not module.weight.is_meta:
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


GEMMA4_PRESETS: dict[str, Gemma4Config] = {
    # Published size: the text model of google/gemma-4-E2B (its config.json's text_config).
    "gemma4-e2b": Gemma4Config(
        layer_types=gemma4_layer_types(35, pattern=5), kv_shared_layers=20,
        double_wide_mlp=True),
    # Published size: google/gemma-4-26B-A4B's text_config: experts beside every feed-forward
    # (8 of 128 per token), keys = values and 2 key/value heads in the full layers.
    "gemma4-26b-a4b": Gemma4Config(
        context_length=262144, emb_dim=2816, n_layers=30, n_heads=16, n_kv_heads=8,
        hidden_dim=2112, sliding_window=1024, global_kv_heads=2, keys_equal_values=True,
        per_layer_dim=0, n_experts=128, n_experts_per_token=8, moe_hidden_dim=704),
    # Small for a laptop CPU (GPT-2's BPE): two sliding layers and a full one, twice; the last
    # three read the caches of layers 1 and 2 (a ring of 16, every position), keys = values in
    # the full layers, per-layer inputs of 8 features.
    "gemma4-nano": Gemma4Config(
        vocab_size=50257, context_length=64, emb_dim=48, n_layers=6, n_heads=4, n_kv_heads=2,
        head_dim=16, hidden_dim=128, global_head_dim=32, global_kv_heads=1,
        keys_equal_values=True, kv_shared_layers=3, per_layer_dim=8, sliding_window=16,
        layer_types=(SLIDING, SLIDING, FULL) * 2, double_wide_mlp=True),
}

# Our module (or tensor) -> Gemma4ForCausalLM's; ".weight"/".bias" carry over.
GEMMA4_HF_NAMES: dict[str, str] = {
    "tok_emb": "model.embed_tokens",
    "per_layer.tok_emb": "model.embed_tokens_per_layer",
    "per_layer.proj": "model.per_layer_model_projection",
    "per_layer.norm": "model.per_layer_projection_norm",
    "trf_blocks.{i}.norm1": "model.layers.{i}.input_layernorm",
    "trf_blocks.{i}.att.W_query": "model.layers.{i}.self_attn.q_proj",
    "trf_blocks.{i}.att.q_norm": "model.layers.{i}.self_attn.q_norm",
    "trf_blocks.{i}.att.W_key": "model.layers.{i}.self_attn.k_proj",
    "trf_blocks.{i}.att.k_norm": "model.layers.{i}.self_attn.k_norm",
    "trf_blocks.{i}.att.W_value": "model.layers.{i}.self_attn.v_proj",
    "trf_blocks.{i}.att.out_proj": "model.layers.{i}.self_attn.o_proj",
    "trf_blocks.{i}.post_norm1": "model.layers.{i}.post_attention_layernorm",
    "trf_blocks.{i}.norm2": "model.layers.{i}.pre_feedforward_layernorm",
    "trf_blocks.{i}.ff.fc1": "model.layers.{i}.mlp.gate_proj",
    "trf_blocks.{i}.ff.fc2": "model.layers.{i}.mlp.up_proj",
    "trf_blocks.{i}.ff.fc3": "model.layers.{i}.mlp.down_proj",
    "trf_blocks.{i}.post_norm2": "model.layers.{i}.post_feedforward_layernorm",
    "trf_blocks.{i}.moe.dense_norm": "model.layers.{i}.post_feedforward_layernorm_1",
    "trf_blocks.{i}.moe.norm_in": "model.layers.{i}.pre_feedforward_layernorm_2",
    "trf_blocks.{i}.moe.norm_out": "model.layers.{i}.post_feedforward_layernorm_2",
    "trf_blocks.{i}.moe.router": "model.layers.{i}.router",  # scale, per_expert_scale
    "trf_blocks.{i}.moe.router.proj": "model.layers.{i}.router.proj",
    "trf_blocks.{i}.moe.experts": "model.layers.{i}.experts",  # gate_up_proj, down_proj
    "trf_blocks.{i}.per_layer.gate": "model.layers.{i}.per_layer_input_gate",
    "trf_blocks.{i}.per_layer.projection": "model.layers.{i}.per_layer_projection",
    "trf_blocks.{i}.per_layer.norm": "model.layers.{i}.post_per_layer_input_norm",
    "trf_blocks.{i}.layer_scalar": "model.layers.{i}.layer_scalar",
    "final_norm": "model.norm",
    "out_head": "lm_head",
    "out_head.linear": "lm_head",  # a soft-capped head's
}

_DEFAULT_ROPE = {SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
                 FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                        "rope_theta": 1000000.0}}


def _rope_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The RoPE fields from ``rope_parameters`` (by layer kind; transformers' defaults)."""
    params = {**_DEFAULT_ROPE, **(hf.get("rope_parameters") or {})}
    local, full = params[SLIDING], params[FULL]
    if local.get("rope_type", "default") != "default":
        raise value_error("config", f"config rope_parameters of sliding_attention must be "
                                    f"'default', got {local.get('rope_type')!r}")
    kind = full.get("rope_type", "default")
    if kind not in ("default", "proportional"):
        raise value_error("config", f"config rope_parameters of full_attention must be "
                                    f"'default' or 'proportional', got {kind!r}")
    proportional = kind == "proportional"
    return {"rope_local_theta": float(local.get("rope_theta", 10000.0)),
            "rope_theta": float(full.get("rope_theta", 1000000.0)),
            "partial_rotary_factor": float(full.get("partial_rotary_factor", 1.0)
                                           if proportional else 1.0),
            "rope_factor": float(full.get("factor", 1.0) if proportional else 1.0)}


def config_from_hf(hf: Mapping[str, Any]) -> Gemma4Config:
    """A ``Gemma4Config`` from a ``Gemma4ForCausalLM`` (``gemma4_text``) ``config.json``, or
    the ``text_config`` of a published ``gemma4`` one."""
    hf = hf.get("text_config") or hf
    if hf.get("use_bidirectional_attention"):
        raise value_error("config", "config use_bidirectional_attention must be null: a "
                                    "causal model")
    ple = hf.get("hidden_size_per_layer_input", 256) or 0
    if ple and hf.get("vocab_size_per_layer_input", 262144) != hf.get("vocab_size", 262144):
        raise value_error("config", "config vocab_size_per_layer_input must equal vocab_size")
    head_dim, global_head_dim = hf.get("head_dim", 256), hf.get("global_head_dim", 512)
    global_kv = hf.get("num_global_key_value_heads")
    per_layer = hf.get("per_layer_config")  # transformers' own spelling of the two above,
    if per_layer is not None:  # which leaves out what equals the sliding layers'
        full = next(iter(per_layer.values()), {})
        global_head_dim = full.get("head_dim", head_dim)
        global_kv = full.get("num_key_value_heads")
    k_eq_v = bool(hf.get("attention_k_eq_v", False))
    shared = {"vocab_size": 262144, "max_position_embeddings": 131072, "hidden_size": 2304,
              "intermediate_size": 9216, "num_hidden_layers": 30, "num_attention_heads": 8,
              "num_key_value_heads": 4, "tie_word_embeddings": True,  # transformers' defaults
              **{k: v for k, v in hf.items() if k not in ("rope_parameters", "rope_scaling",
                                                          "rope_theta")}, "head_dim": head_dim}
    fields = decoder_fields_from_hf(shared, activation="gelu_pytorch_tanh")
    n_kv = fields["n_kv_heads"]
    layer_types = hf.get("layer_types") or gemma4_layer_types(fields["n_layers"])
    return Gemma4Config(
        **{**fields, **_rope_from_hf(hf)}, sliding_window=hf.get("sliding_window", 512),
        layer_types=tuple(layer_types), global_head_dim=global_head_dim,
        global_kv_heads=global_kv if k_eq_v and global_kv not in (None, n_kv) else None,
        keys_equal_values=k_eq_v, kv_shared_layers=hf.get("num_kv_shared_layers", 0),
        per_layer_dim=ple, double_wide_mlp=bool(hf.get("use_double_wide_mlp", False)),
        logit_softcap=hf.get("final_logit_softcapping"), **_experts_from_hf(hf))


def _experts_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
    if not hf.get("enable_moe_block"):
        return {}
    return {"n_experts": hf["num_experts"], "n_experts_per_token": hf["top_k_experts"],
            "moe_hidden_dim": hf["moe_intermediate_size"]}


def config_to_hf(cfg: Gemma4Config) -> dict[str, Any]:
    """The ``config.json`` of a ``Gemma4ForCausalLM``: the shared fields, and Gemma 4's."""
    fields = {k: v for k, v in decoder_fields_to_hf(
        cfg, HF_LAYOUT, activation=("hidden_activation", "gelu_pytorch_tanh")).items()
        if k not in ("rope_theta", "rope_scaling")}
    return {**fields, "rope_parameters": {
                SLIDING: {"rope_type": "default", "rope_theta": cfg.rope_local_theta},
                FULL: {"rope_type": "proportional", "rope_theta": cfg.rope_theta,
                       "partial_rotary_factor": cfg.partial_rotary_factor,
                       # transformers reads a factor but warns of one: written only if used
                       **({"factor": cfg.rope_factor} if cfg.rope_factor != 1.0 else {})}},
            "sliding_window": cfg.sliding_window, "layer_types": list(cfg.layer_types),
            "global_head_dim": cfg.global_head_dim,
            "num_global_key_value_heads": cfg.global_kv_heads,
            "attention_k_eq_v": cfg.keys_equal_values,
            "num_kv_shared_layers": cfg.kv_shared_layers,
            "hidden_size_per_layer_input": cfg.per_layer_dim,
            "vocab_size_per_layer_input": cfg.vocab_size,
            "use_double_wide_mlp": cfg.double_wide_mlp,
            "final_logit_softcapping": cfg.logit_softcap, "use_bidirectional_attention": None,
            "enable_moe_block": cfg.n_experts > 0, "num_experts": cfg.n_experts or None,
            "top_k_experts": cfg.n_experts_per_token if cfg.n_experts else None,
            "moe_intermediate_size": cfg.moe_hidden_dim if cfg.n_experts else None}


HF_LAYOUT = HFLayout(model_type="gemma4_text", architecture="Gemma4ForCausalLM",
                     names=GEMMA4_HF_NAMES, config_from_hf=config_from_hf,
                     config_to_hf=config_to_hf, title="Gemma 4")
FAMILY = Family(name="gemma4_text", config_class=Gemma4Config, model_class=Gemma4Model,
                presets=GEMMA4_PRESETS, layout=HF_LAYOUT)
