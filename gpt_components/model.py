"""The GPT model (chapter 4): configuration presets, ``GPTModel`` and its size.

Exports ``GPTConfig`` (a dataclass with named presets: ``GPTConfig.from_name("gpt2-small")``,
the four published GPT-2 sizes and small ones that train on a laptop CPU), ``GPTModel``
(token and position embeddings, ``n_layers`` transformer blocks, a final norm and the output
head), ``count_parameters`` and ``memory_footprint_mb``. ``GPTModel`` is a ``LanguageModel``
(``gpt_components.machinery.language_model``): the checks, the cache, ``trace`` and the weight
layout are the interface every family shares; this module writes what is GPT-2's own.

>>> import torch
>>> cfg = GPTConfig.from_name("gpt-nano", vocab_size=100)
>>> model = GPTModel(cfg)
>>> model(torch.tensor([[1, 2, 3]])).shape
torch.Size([1, 3, 100])
>>> with torch.device("meta"):
...     big = GPTModel(GPTConfig.from_name("gpt2-small"))
>>> count_parameters(big)
163009536
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attention import ATTENTION_KERNELS
from .kv_cache import KVCache, LayerCache
from .machinery.checks import (
    check_bool,
    check_choice,
    check_float,
    check_instance,
    check_int,
    type_error,
    value_error,
    with_fields,
)
from .machinery.language_model import LanguageModel
from .transformer import LAYER_KERNELS, LayerNorm, TransformerBlock

__all__ = ["GPTConfig", "GPTModel", "MODEL_PRESETS", "count_parameters", "memory_footprint_mb"]


@dataclass(frozen=True)
class GPTConfig:
    """Hyperparameters of a ``GPTModel``; the defaults are the book's GPT-2 small (124M)."""

    vocab_size: int = 50257  # GPT-2's BPE: 50,000 merges + 256 bytes + <|endoftext|>
    context_length: int = 1024  # the most tokens the position embedding can place
    emb_dim: int = 768  # width of every token's vector through the whole network
    n_heads: int = 12  # attention heads per layer; each sees emb_dim / n_heads dimensions
    n_layers: int = 12  # transformer blocks stacked
    drop_rate: float = 0.1  # dropout on embeddings, attention weights and residual branches
    qkv_bias: bool = False  # biases on W_query/W_key/W_value (OpenAI's GPT-2 has them)
    tie_weights: bool = False  # output head shares the token embedding matrix (as GPT-2 does)
    attn_kernel: str = "sdpa"  # "sdpa" (fused, fast) or "textbook" (chapter 3's explicit math)
    layer_kernel: str = "fused"  # LayerNorm and GELU: "fused" (torch's ops) or "textbook" (ch. 4)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            check_int(name, getattr(self, name), low=1)
        if self.emb_dim % self.n_heads != 0:
            raise value_error("emb_dim", f"emb_dim ({self.emb_dim}) must be divisible by n_heads "
                                         f"({self.n_heads})")
        check_float("drop_rate", self.drop_rate, low=0.0, high=1.0, high_open=True)
        for name in ("qkv_bias", "tie_weights"):
            check_bool(name, getattr(self, name))
        check_choice("attn_kernel", self.attn_kernel, ATTENTION_KERNELS)
        check_choice("layer_kernel", self.layer_kernel, LAYER_KERNELS)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named preset (see ``MODEL_PRESETS``), with any field overridden by keyword."""
        check_choice("name", name, MODEL_PRESETS)
        return with_fields(MODEL_PRESETS[name], overrides)

    def __getitem__(self, key: str) -> Any:
        """Read a field the book's way, ``cfg["emb_dim"]``."""
        return getattr(self, key)

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads


MODEL_PRESETS: dict[str, GPTConfig] = {
    # The published GPT-2 sizes, configured as the book does (no qkv bias, separate head).
    "gpt2-small": GPTConfig(emb_dim=768, n_layers=12, n_heads=12),
    "gpt2-medium": GPTConfig(emb_dim=1024, n_layers=24, n_heads=16),
    "gpt2-large": GPTConfig(emb_dim=1280, n_layers=36, n_heads=20),
    "gpt2-xl": GPTConfig(emb_dim=1600, n_layers=48, n_heads=25),
    # Small models for a laptop CPU (after minGPT's presets): minutes of training, not days.
    "gpt-mini": GPTConfig(context_length=256, emb_dim=192, n_layers=6, n_heads=6),
    "gpt-micro": GPTConfig(context_length=128, emb_dim=128, n_layers=4, n_heads=4),
    "gpt-nano": GPTConfig(context_length=64, emb_dim=48, n_layers=3, n_heads=3),
}


def _as_config(cfg: GPTConfig | dict[str, Any]) -> GPTConfig:
    if isinstance(cfg, GPTConfig):
        return cfg
    if isinstance(cfg, dict):
        return GPTConfig(**cfg)
    raise type_error("cfg", f"cfg must be a GPTConfig or a dict of its fields, got "
                            f"{type(cfg).__name__}")


class GPTModel(LanguageModel):
    """GPT-2: embeddings, ``n_layers`` transformer blocks, final norm, output head.

    ``forward``, ``hidden_states``, ``trace``, ``new_kv_cache`` and ``train`` are the shared
    ``LanguageModel``'s; GPT-2's own part is the learned position embedding (``_embed``) and
    blocks that take their layer's cache.
    """

    def __init__(self, cfg: GPTConfig | dict[str, Any]) -> None:
        super().__init__()
        cfg = _as_config(cfg)
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*(TransformerBlock(cfg) for _ in range(cfg.n_layers)))
        self.final_norm = LayerNorm(cfg.emb_dim, kernel=cfg.layer_kernel)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.out_head.weight = self.tok_emb.weight

    def _embed(self, idx: torch.Tensor, start: int | torch.Tensor) -> tuple[torch.Tensor, None]:
        positions = start if isinstance(start, torch.Tensor) else torch.arange(
            start, start + idx.shape[1], device=idx.device)  # (T) or, rows differing, (B, T)
        return self.drop_emb(self.tok_emb(idx) + self.pos_emb(positions)), None  # (B, T, emb)

    def _block(self, block: nn.Module, x: torch.Tensor, context: None,
               cache: LayerCache | None) -> torch.Tensor:
        return block(x, kv_cache=cache)

    def _block_with_weights(self, block: nn.Module, x: torch.Tensor,
                            context: None) -> tuple[torch.Tensor, torch.Tensor]:
        return block.forward_with_weights(x)

    def _new_cache(self, batch_size: int, max_tokens: int, device: torch.device,
                   dtype: torch.dtype) -> KVCache:
        return KVCache(self.cfg.n_layers, batch_size, self.cfg.n_heads, self.cfg.head_dim,
                       max_tokens, device=device, dtype=dtype)

    def new_kv_cache(self, batch_size: int, max_tokens: int | None = None) -> KVCache:
        """An empty ``KVCache`` for this model, on its device and dtype."""
        return super().new_kv_cache(batch_size, max_tokens)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **overrides: Any) -> GPTModel:
        """GPT-2 weights in Hugging Face's layout; see ``gpt_components.weights``."""
        from .machinery.registry import FAMILIES  # GPT-2's family is declared in `weights`

        return FAMILIES["gpt2"].load_pretrained(name_or_path, **overrides)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters: a tied output head is counted once, with the embedding."""
    check_instance("model", model, nn.Module, "a torch.nn.Module")
    # Module.parameters() yields a shared Parameter only once.
    return sum(p.numel() for p in model.parameters())


def memory_footprint_mb(model: nn.Module, dtype: torch.dtype | None = None) -> float:
    """Memory of the parameters in MB (2**20 bytes), in ``dtype`` or their own dtypes."""
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise type_error("dtype", f"dtype must be a torch.dtype or None, got {dtype!r}")
    check_instance("model", model, nn.Module, "a torch.nn.Module")
    total = sum(
        p.numel() * (p.element_size() if dtype is None else dtype.itemsize)
        for p in model.parameters()
    )
    return total / 2**20
