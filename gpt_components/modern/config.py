"""The modern decoder's configuration: one dataclass whose fields pick the components.

``DecoderConfig`` holds the sizes (``emb_dim``, ``n_heads``, ``n_kv_heads``, ``head_dim``,
``hidden_dim``...) and the *choices*: ``norm``, ``feed_forward`` and ``attention`` name entries
of ``components.NORMS`` / ``FEED_FORWARDS`` / ``ATTENTIONS``, and ``rope_theta`` /
``rope_scaling`` the position scheme. A family is a subclass that changes defaults (see
``llama.py``, ``qwen3.py``) and, when its layers differ, ``layer(i)``: the ``LayerSpec`` of
block ``i`` (which attention and feed-forward it builds and which RoPE table it uses), and
``rope_specs()``: the RoPE tables the model keeps, by name.

>>> cfg = DecoderConfig(vocab_size=64, context_length=16, emb_dim=32, n_layers=2, n_heads=4,
...                     n_kv_heads=2, hidden_dim=64)
>>> cfg.head_dim, cfg.layer(1)
(8, LayerSpec(attention='gqa', feed_forward='swiglu', rope='default'))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .attention import ATTENTION_KERNELS
from .rope import Llama3RopeScaling

__all__ = ["LayerSpec", "RopeSpec", "DecoderConfig"]


@dataclass(frozen=True)
class LayerSpec:
    """What block ``i`` is made of; names are looked up in ``components``."""

    attention: str = "gqa"  # a key of components.ATTENTIONS
    feed_forward: str = "swiglu"  # a key of components.FEED_FORWARDS
    rope: str | None = "default"  # a key of cfg.rope_specs(); None: no rotation (NoPE)


@dataclass(frozen=True)
class RopeSpec:
    """One table of rotary angles: the rotated width, the base and any long-context scaling."""

    head_dim: int
    theta: float
    scaling: Llama3RopeScaling | None = None


@dataclass(frozen=True)
class DecoderConfig:
    """Sizes and component choices of a ``DecoderModel``; defaults are Llama 3.2 1B's."""

    family: ClassVar[str] = "decoder"  # the registry's name for this config's family

    vocab_size: int = 128256  # Llama 3's tiktoken vocabulary
    context_length: int = 131072  # the most positions the model is run at
    emb_dim: int = 2048  # width of the residual stream
    n_layers: int = 16  # decoder blocks
    n_heads: int = 32  # query heads
    n_kv_heads: int = 8  # key/value heads, shared by n_heads / n_kv_heads query heads each
    head_dim: int | None = None  # features per head; None: emb_dim // n_heads
    hidden_dim: int = 8192  # the feed-forward's inner width
    norm: str = "rmsnorm"  # a key of components.NORMS (every norm of the model)
    norm_eps: float = 1e-5  # added to the mean square before the square root
    feed_forward: str = "swiglu"  # a key of components.FEED_FORWARDS
    attention: str = "gqa"  # a key of components.ATTENTIONS
    rope_theta: float = 500000.0  # RoPE base: larger turns slower, reaches further
    rope_scaling: Llama3RopeScaling | None = None  # Llama 3.1+'s long-context frequency scaling
    qk_norm: bool = False  # a norm on each head's queries and keys before RoPE (Qwen3)
    attention_bias: bool = False  # biases on W_query/W_key/W_value/out_proj (HF's attention_bias)
    post_norms: bool = False  # also norm each branch's output before its residual add (Gemma 3)
    scale_embeddings: bool = False  # token embeddings times sqrt(emb_dim) (Gemma)
    aux_loss_coef: float = 0.0  # weight of the routers' load-balancing loss in training (MoE)
    tie_weights: bool = False  # output head shares the token embedding matrix
    drop_rate: float = 0.0  # dropout on the attention probabilities while training
    attn_kernel: str = "sdpa"  # "sdpa" (fused) or "textbook" (the softmax written out)

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, Mapping):
            object.__setattr__(self, "rope_scaling", Llama3RopeScaling(**self.rope_scaling))
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.emb_dim // max(self.n_heads, 1))
        for name in ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads",
                     "n_kv_heads", "head_dim", "hidden_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads "
                             f"({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (RoPE turns pairs), got {self.head_dim}")
        if not isinstance(self.norm_eps, (int, float)) or not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be a float > 0, got {self.norm_eps!r}")
        if not isinstance(self.rope_theta, (int, float)) or not self.rope_theta > 1:
            raise ValueError(f"rope_theta must be a float > 1, got {self.rope_theta!r}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling,
                                                            Llama3RopeScaling):
            raise TypeError(f"rope_scaling must be a Llama3RopeScaling, its dict or None, got "
                            f"{type(self.rope_scaling).__name__}")
        if not isinstance(self.drop_rate, (int, float)) or not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if self.attn_kernel not in ATTENTION_KERNELS:
            raise ValueError(f"attn_kernel must be one of {ATTENTION_KERNELS}, got "
                             f"{self.attn_kernel!r}")
        from .components import ATTENTIONS, FEED_FORWARDS, NORMS

        for name, table in (("norm", NORMS), ("feed_forward", FEED_FORWARDS),
                            ("attention", ATTENTIONS)):
            if getattr(self, name) not in table:
                raise ValueError(f"{name} must be one of {sorted(table)}, got "
                                 f"{getattr(self, name)!r}")

    def layer(self, index: int) -> LayerSpec:
        """The components of block ``index``: the same for every block unless a family says."""
        return LayerSpec(attention=self.attention, feed_forward=self.feed_forward)

    def attention_scale(self) -> float | None:
        """What attention multiplies its scores by; None: ``head_dim ** -0.5``."""
        return None

    def rope_specs(self) -> dict[str, RopeSpec]:
        """The RoPE tables the model computes, by the name ``LayerSpec.rope`` gives."""
        return {"default": RopeSpec(self.head_dim, self.rope_theta, self.rope_scaling)}

    @classmethod
    def presets(cls) -> Mapping[str, DecoderConfig]:
        """This family's named configurations (a family file overrides this)."""
        return {}

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> DecoderConfig:
        """A named preset of this family, with any field overridden by keyword."""
        presets = cls.presets()
        if name not in presets:
            raise ValueError(f"name must be one of {sorted(presets)}, got {name!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"overrides must be {cls.__name__} fields {sorted(fields)}, got "
                            f"{unknown}")
        return dataclasses.replace(presets[name], **overrides)
