"""OLMo 3 (Ai2): norms after each branch, QK-norm over whole projections, windows, YaRN.

What OLMo 3 chooses, on top of the modern decoder (``gpt_components.modern``):

- **post-branch norms.** No norm before attention or the feed-forward: each branch reads the
  residual stream as it is, and its *output* is normed before the residual add,
  ``x + norm(att(x))``, then ``x + norm(ff(x))`` (OLMo 2's choice, which kept its training
  stable). Gemma 3 norms on both sides; OLMo keeps only the second.
- **QK-norm over the whole projection.** Qwen3 and Gemma norm each head's query and key
  (``head_dim`` features, one weight shared by every head); OLMo norms all ``n_heads *
  head_dim`` query features at once, and all ``n_kv_heads * head_dim`` key features, with a
  weight per feature (``ProjectionRMSNorm``).
- **sliding-window layers**: three of every four layers see the last ``sliding_window`` = 4096
  positions (their KV cache stays that long), the fourth the whole context;
- **YaRN** on the full layers only (the published checkpoints stretch a context of 8,192 to
  65,536); the windowed layers keep plain RoPE, whose short range never needs stretching.

Everything else is Llama's: SwiGLU, grouped-query attention, RMSNorm, an untied head.

>>> cfg = Olmo3Config.from_name("olmo3-7b")
>>> cfg.layer(0).attention, cfg.layer(3).attention, cfg.sliding_window
('sliding_gqa', 'gqa', 4096)
>>> model = Olmo3Model(Olmo3Config.from_name("olmo3-nano", vocab_size=60))
>>> type(model.trf_blocks[0].norm1).__name__, tuple(model.trf_blocks[0].att.q_norm.weight.shape)
('Identity', (48,))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..machinery.checks import check_choice, check_float, check_int, value_error
from ..modern.config import DecoderConfig, LayerSpec, RopeSpec
from ..modern.decoder import DecoderModel
from ..modern.family import Family, HFLayout
from ..modern.hf import decoder_fields_from_hf, decoder_fields_to_hf, rope_from_hf, rope_to_hf
from ..modern.norms import RMSNorm
from ..modern.rope import YarnRopeScaling

__all__ = ["Olmo3Config", "Olmo3Model", "ProjectionRMSNorm", "OLMO3_PRESETS", "OLMO3_HF_NAMES"]

SLIDING, FULL = "sliding_attention", "full_attention"  # transformers' names for the two kinds


def olmo3_layer_types(n_layers: int, pattern: int = 4) -> tuple[str, ...]:
    """Every ``pattern``-th layer full, the others sliding (OLMo 3's 3:1)."""
    return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layers))


class ProjectionRMSNorm(RMSNorm):
    """RMSNorm over a whole projection, ``n_heads * head_dim`` features, given per head.

    Takes ``x`` as attention holds it, (..., n_heads, head_dim), and norms the last two axes
    together: the root mean square is taken over every head at once, and each of the ``n_heads
    * head_dim`` features has its own weight.
    """

    def __init__(self, n_heads: int, head_dim: int, eps: float = 1e-6) -> None:
        super().__init__(check_int("n_heads", n_heads, low=1) * check_int("head_dim", head_dim,
                                                                           low=1), eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(-2)).view_as(x)  # (..., nh, hd) -> (..., nh*hd) -> back


@dataclass(frozen=True)
class Olmo3Config(DecoderConfig):
    """OLMo 3's choices; defaults are OLMo-3-7B's. ``rope_theta`` and ``rope_scaling`` are the
    full layers' RoPE, ``rope_local_theta`` the sliding layers' (None: ``rope_theta``)."""

    vocab_size: int = 100278  # Dolma 2's tokenizer (cl100k's BPE plus OLMo's special tokens)
    context_length: int = 65536
    emb_dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    hidden_dim: int = 11008
    norm_eps: float = 1e-6
    rope_theta: float = 500000.0
    qk_norm: bool = True  # over whole projections (Olmo3Model widens the norms)
    post_norms: bool = True  # the only norms of a block: after each branch
    sliding_window: int = 4096  # keys a sliding layer's query sees, itself included
    rope_local_theta: float | None = None  # RoPE base of the sliding layers; None: rope_theta
    layer_types: tuple[str, ...] | None = None  # "sliding_attention" / "full_attention"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.qk_norm and self.post_norms):
            raise value_error("qk_norm" if not self.qk_norm else "post_norms",
                              "qk_norm and post_norms must be True: OLMo 3 norms queries, keys "
                              "and each branch's output")
        if self.layer_types is None:
            object.__setattr__(self, "layer_types", olmo3_layer_types(self.n_layers))
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.n_layers:
            raise value_error("layer_types", f"layer_types must name {self.n_layers} layers, "
                                             f"got {len(self.layer_types)}")
        for kind in self.layer_types:
            check_choice("layer_types", kind, (SLIDING, FULL))
        check_int("sliding_window", self.sliding_window, low=1)
        check_float("rope_local_theta", self.rope_local_theta, low=1, low_open=True,
                    optional=True)

    def layer(self, index: int) -> LayerSpec:
        if self.layer_types[index] == SLIDING:
            return LayerSpec(attention="sliding_gqa", feed_forward=self.feed_forward,
                             rope="local")
        return LayerSpec(attention="gqa", feed_forward=self.feed_forward)

    def rope_specs(self) -> dict[str, RopeSpec]:
        local = self.rope_theta if self.rope_local_theta is None else self.rope_local_theta
        return {"default": RopeSpec(self.head_dim, self.rope_theta, self.rope_scaling),
                "local": RopeSpec(self.head_dim, local)}


class Olmo3Model(DecoderModel):
    """The modern decoder with OLMo's block: no pre-norms, QK-norm over whole projections.

    ``DecoderBlock`` with ``post_norms`` computes ``x + post_norm1(att(norm1(x)))``; OLMo's
    ``norm1`` and ``norm2`` are identities, so its block is ``x + post_norm1(att(x))``, then
    ``x + post_norm2(ff(x))``. Its attention's ``q_norm`` and ``k_norm`` are
    ``ProjectionRMSNorm`` over all heads; everything else is the decoder's.
    """

    def __init__(self, cfg: Olmo3Config) -> None:
        super().__init__(cfg)
        for block in self.trf_blocks:
            # The branches read the residual stream itself; only their outputs are normed.
            block.norm1, block.norm2 = nn.Identity(), nn.Identity()
            att = block.att
            att.q_norm = ProjectionRMSNorm(att.n_heads, att.head_dim, eps=cfg.norm_eps)
            att.k_norm = ProjectionRMSNorm(att.n_kv_heads, att.head_dim, eps=cfg.norm_eps)


_SMALL = {"vocab_size": 50257, "rope_theta": 10000.0}  # GPT-2's BPE, the usual base
# The published checkpoints' long-context stretch: pretrained at 8,192 positions, run at 65,536;
# cos and sin times 0.1 ln(8) + 1 (transformers' attention factor for factor 8).
_PUBLISHED_YARN = YarnRopeScaling(factor=8.0, original_context_length=8192, beta_fast=32.0,
                                  beta_slow=1.0, attention_factor=1.2079441541679836)
OLMO3_PRESETS: dict[str, Olmo3Config] = {
    # Published sizes (config.json of allenai/Olmo-3-1025-7B and Olmo-3-1125-32B).
    "olmo3-7b": Olmo3Config(rope_scaling=_PUBLISHED_YARN),
    "olmo3-32b": Olmo3Config(emb_dim=5120, n_layers=64, n_heads=40, n_kv_heads=8,
                             hidden_dim=27648, rope_scaling=_PUBLISHED_YARN),
    # Small for a laptop CPU: three windowed layers of 16, then a full one, whose RoPE YaRN
    # stretches from 32 positions to 64, as the published ones do from 8,192 to 65,536.
    "olmo3-nano": Olmo3Config(context_length=64, emb_dim=48, n_layers=4, n_heads=4,
                              n_kv_heads=2, hidden_dim=128, sliding_window=16,
                              rope_scaling=YarnRopeScaling(factor=2.0, original_context_length=32),
                              **_SMALL),
}

# Our module -> Olmo3ForCausalLM's; ".weight"/".bias" carry over. No input_layernorm: the two
# norms of a block sit after its branches.
OLMO3_HF_NAMES: dict[str, str] = {
    "tok_emb": "model.embed_tokens",
    "trf_blocks.{i}.att.W_query": "model.layers.{i}.self_attn.q_proj",
    "trf_blocks.{i}.att.W_key": "model.layers.{i}.self_attn.k_proj",
    "trf_blocks.{i}.att.W_value": "model.layers.{i}.self_attn.v_proj",
    "trf_blocks.{i}.att.out_proj": "model.layers.{i}.self_attn.o_proj",
    "trf_blocks.{i}.att.q_norm": "model.layers.{i}.self_attn.q_norm",
    "trf_blocks.{i}.att.k_norm": "model.layers.{i}.self_attn.k_norm",
    "trf_blocks.{i}.post_norm1": "model.layers.{i}.post_attention_layernorm",
    "trf_blocks.{i}.ff.fc1": "model.layers.{i}.mlp.gate_proj",
    "trf_blocks.{i}.ff.fc2": "model.layers.{i}.mlp.up_proj",
    "trf_blocks.{i}.ff.fc3": "model.layers.{i}.mlp.down_proj",
    "trf_blocks.{i}.post_norm2": "model.layers.{i}.post_feedforward_layernorm",
    "final_norm": "model.norm",
    "out_head": "lm_head",
}

_ROPE_KEYS = ("rope_parameters", "rope_scaling", "rope_theta")


def _rope_from_hf(hf: Mapping[str, Any]) -> tuple[float, Any, float]:
    """Full layers' base and scaling, sliding layers' base, from either spelling.

    Published checkpoints give one ``rope_theta`` and a ``rope_scaling`` that transformers
    applies to the full layers only; transformers 5 writes ``rope_parameters`` by layer kind.
    """
    theta = hf.get("rope_theta", 500000.0)  # transformers' Olmo3Config default
    params = hf.get("rope_parameters") or {}
    if FULL in params or SLIDING in params:
        full, scaling = rope_from_hf({"rope_parameters": {"rope_theta": theta,
                                                          **(params.get(FULL) or {})}})
        local, local_scaling = rope_from_hf({"rope_parameters": {"rope_theta": theta,
                                                                 **(params.get(SLIDING) or {})}})
        if local_scaling is not None:
            raise value_error("config", "config rope_parameters of sliding_attention must be "
                                        "'default'")
        return full, scaling, local
    full, scaling = rope_from_hf({"rope_theta": theta, "rope_scaling": hf.get("rope_scaling")})
    return full, scaling, full


def _rope_to_hf(cfg: Olmo3Config) -> dict[str, Any]:
    """transformers 5's spelling, by layer kind (the sliding base may differ from the full)."""
    spec = cfg.rope_specs()
    full = rope_to_hf(spec["default"].theta, spec["default"].scaling)
    return {FULL: {"rope_type": "default", **(full["rope_scaling"] or {}),
                   "rope_theta": full["rope_theta"]},
            SLIDING: {"rope_type": "default", "rope_theta": spec["local"].theta}}


def config_from_hf(hf: Mapping[str, Any]) -> Olmo3Config:
    """An ``Olmo3Config`` from an ``Olmo3ForCausalLM`` ``config.json``."""
    full, scaling, local = _rope_from_hf(hf)
    fields = decoder_fields_from_hf({k: v for k, v in hf.items() if k not in _ROPE_KEYS})
    layer_types = hf.get("layer_types") or olmo3_layer_types(fields["n_layers"])
    return Olmo3Config(**{**fields, "rope_theta": full, "rope_scaling": scaling},
                       rope_local_theta=None if local == full else local,
                       sliding_window=hf.get("sliding_window") or fields["context_length"],
                       layer_types=tuple(layer_types))


def config_to_hf(cfg: Olmo3Config) -> dict[str, Any]:
    """The ``config.json`` of an ``Olmo3ForCausalLM``: the shared fields, and OLMo's."""
    fields = {k: v for k, v in decoder_fields_to_hf(cfg, HF_LAYOUT).items()
              if k not in _ROPE_KEYS}
    return {**fields, "rope_parameters": _rope_to_hf(cfg), "sliding_window": cfg.sliding_window,
            "layer_types": list(cfg.layer_types)}


HF_LAYOUT = HFLayout(model_type="olmo3", architecture="Olmo3ForCausalLM",
                     names=OLMO3_HF_NAMES, config_from_hf=config_from_hf,
                     config_to_hf=config_to_hf, title="OLMo 3")
FAMILY = Family(name="olmo3", config_class=Olmo3Config, model_class=Olmo3Model,
                presets=OLMO3_PRESETS, layout=HF_LAYOUT)
