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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..machinery.checks import (
    check_choice,
    check_float,
    check_instance,
    check_int,
    did_you_mean,
    value_error,
    with_fields,
)
from ..machinery.registry import FAMILIES
from .attention import ATTENTION_KERNELS
from .rope import Llama3RopeScaling, YarnRopeScaling

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

    family: ClassVar[str] = "decoder"  # set by the family's declaration (registry.Family)

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
    rope_scaling: Llama3RopeScaling | YarnRopeScaling | None = None  # long-context scaling
    qk_norm: bool = False  # a norm on each head's queries and keys before RoPE (Qwen3)
    attention_bias: bool = False  # biases on W_query/W_key/W_value/out_proj (HF's attention_bias)
    post_norms: bool = False  # also norm each branch's output before its residual add (Gemma 3)
    scale_embeddings: bool = False  # token embeddings times sqrt(emb_dim) (Gemma)
    aux_loss_coef: float = 0.0  # weight of the routers' load-balancing loss in training (MoE)
    tie_weights: bool = False  # output head shares the token embedding matrix
    drop_rate: float = 0.0  # dropout on the attention probabilities while training
    attn_kernel: str = "sdpa"  # "sdpa" (fused) or "textbook" (the softmax written out)

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, Mapping):  # {"rope_type": "yarn", ...}: YaRN
            fields = dict(self.rope_scaling)
            # A run's config.json (dataclasses.asdict) has no rope_type: YaRN's fields tell it.
            named = fields.pop("rope_type", "yarn" if "beta_fast" in fields else "llama3")
            kind = YarnRopeScaling if named == "yarn" else Llama3RopeScaling
            object.__setattr__(self, "rope_scaling", kind(**fields))
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.emb_dim // max(self.n_heads, 1))
        for name in ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads",
                     "n_kv_heads", "head_dim", "hidden_dim"):
            check_int(name, getattr(self, name), low=1)
        if self.n_heads % self.n_kv_heads:
            raise value_error("n_kv_heads", f"n_kv_heads ({self.n_kv_heads}) must divide n_heads "
                                            f"({self.n_heads})")
        if self.head_dim % 2:
            raise value_error("head_dim", f"head_dim must be even (RoPE turns pairs), got "
                                          f"{self.head_dim}")
        check_float("norm_eps", self.norm_eps, low=0, low_open=True)
        check_float("rope_theta", self.rope_theta, low=1, low_open=True)
        check_instance("rope_scaling", self.rope_scaling,
                       (Llama3RopeScaling, YarnRopeScaling, type(None)),
                       "a Llama3RopeScaling, a YarnRopeScaling, its dict or None")
        if isinstance(self.rope_scaling, Llama3RopeScaling):
            for name in ("factor", "low_freq_factor", "high_freq_factor"):
                check_float(f"rope_scaling.{name}", getattr(self.rope_scaling, name), low=0,
                            low_open=True)
            check_int("rope_scaling.original_context_length",
                      self.rope_scaling.original_context_length, low=1)
        check_float("aux_loss_coef", self.aux_loss_coef, low=0)
        check_float("drop_rate", self.drop_rate, low=0, high=1, high_open=True)
        check_choice("attn_kernel", self.attn_kernel, ATTENTION_KERNELS)
        from .components import ATTENTIONS, FEED_FORWARDS, NORMS

        for name, table in (("norm", NORMS), ("feed_forward", FEED_FORWARDS),
                            ("attention", ATTENTIONS)):
            check_choice(name, getattr(self, name), table)

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
        """This family's named configurations, as its declaration gives them."""
        family = FAMILIES.get(cls.family)
        return {} if family is None or family.config_class is not cls else family.presets

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> DecoderConfig:
        """A named preset of this family, with any field overridden by keyword."""
        presets = cls.presets()
        if name not in presets:
            raise value_error("name", f"name must be a {cls.__name__} preset, got {name!r}"
                                      f"{did_you_mean(name, presets) or f' ({sorted(presets)})'}")
        return with_fields(presets[name], overrides)
