"""The GPT model (chapter 4): configuration presets, ``GPTModel`` and its size.

Exports ``GPTConfig`` (a dataclass with named presets: ``GPTConfig.from_name("gpt2-small")``,
the four published GPT-2 sizes and small ones that train on a laptop CPU), ``GPTModel``
(token and position embeddings, ``n_layers`` transformer blocks, a final norm and the output
head), ``count_parameters`` and ``memory_footprint_mb``.

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

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .inspect.trace import ModelTrace
from .kv_cache import KVCache
from .transformer import ATTENTION_KERNELS, LAYER_KERNELS, LayerNorm, TransformerBlock

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
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.emb_dim % self.n_heads != 0:
            raise ValueError(
                f"emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})"
            )
        if isinstance(self.drop_rate, bool) or not isinstance(self.drop_rate, (int, float)):
            raise TypeError(f"drop_rate must be a float in [0, 1), got {self.drop_rate!r}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")
        for name in ("qkv_bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.attn_kernel not in ATTENTION_KERNELS:
            raise ValueError(
                f"attn_kernel must be one of {ATTENTION_KERNELS}, got {self.attn_kernel!r}"
            )
        if self.layer_kernel not in LAYER_KERNELS:
            raise ValueError(
                f"layer_kernel must be one of {LAYER_KERNELS}, got {self.layer_kernel!r}"
            )

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named preset (see ``MODEL_PRESETS``), with any field overridden by keyword."""
        if name not in MODEL_PRESETS:
            raise ValueError(f"name must be one of {sorted(MODEL_PRESETS)}, got {name!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"overrides must be GPTConfig fields {sorted(fields)}, got {unknown}")
        return dataclasses.replace(MODEL_PRESETS[name], **overrides)

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
    raise TypeError(f"cfg must be a GPTConfig or a dict of its fields, got {type(cfg).__name__}")


def check_token_ids(idx: Any, vocab_size: int, name: str = "idx") -> None:
    """Raise unless ``idx`` is a 2-D integer tensor of ids in ``[0, vocab_size)``."""
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(idx).__name__}")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {idx.dtype}")
    if idx.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D [batch, tokens], got shape {tuple(idx.shape)}"
        )
    if idx.shape[0] < 1 or idx.shape[1] < 1:
        raise ValueError(f"{name} must hold at least one row and one token per row, got shape "
                         f"{tuple(idx.shape)}")
    if torch.compiler.is_compiling():
        return  # reading values would break the graph; eager calls check them
    low, high = torch.stack(torch.aminmax(idx)).tolist()  # one device-to-host copy, not two
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds token id {bad}, outside [0, vocab_size={vocab_size})")


def _widening_linears(blocks: nn.Module) -> list[nn.Linear]:
    """The blocks' ``nn.Linear`` layers with ``out_features >= in_features``."""
    return [m for m in blocks.modules()
            if isinstance(m, nn.Linear) and m.out_features >= m.in_features]


def _lay_out_blocks(blocks: nn.Module, decoding: bool) -> None:
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


class GPTModel(nn.Module):
    """GPT-2: embeddings, ``n_layers`` transformer blocks, final norm, output head."""

    #: Whether eval mode lays the widening weights out for decoding (``_lay_out_blocks``).
    #: False keeps training's layout in eval mode too, for a model that scores beside one in
    #: training mode and must round as it does (DPO's frozen reference).
    decoding_layout: bool = True

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

    def train(self, mode: bool = True) -> GPTModel:
        """Set training (or, ``False``, eval) mode and the blocks' weight layout for it.

        Eval mode keeps the widening weights column-major, for fast decoding; training mode
        keeps every weight row-major, for a fast training step (see ``_lay_out_blocks``).
        """
        super().train(mode)
        _lay_out_blocks(self.trf_blocks, decoding=not mode and self.decoding_layout)
        return self

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Logits [batch, tokens, vocab] for token ids ``idx`` [batch, tokens].

        With ``kv_cache`` (from ``new_kv_cache``), ``idx`` continues the cached tokens: its
        first token sits at position ``kv_cache.length``, and the cache grows by its length.
        """
        return self.out_head(self.hidden_states(idx, kv_cache))  # (B, T, vocab)

    def hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """What the output head reads: the final norm's output [batch, tokens, emb_dim].

        ``forward`` is ``out_head(hidden_states(idx, kv_cache))``; generation uses this to
        apply the head to the last position only.
        """
        if isinstance(idx, torch.Tensor) and idx.device != self.tok_emb.weight.device:
            raise ValueError(f"idx is on device {idx.device}, but the model is on "
                             f"{self.tok_emb.weight.device}: move idx with idx.to(...)")
        check_token_ids(idx, self.cfg.vocab_size)
        b, t = idx.shape
        start = 0
        if kv_cache is not None:
            if kv_cache.batch_size != b:
                raise ValueError(f"kv_cache was made for batch_size={kv_cache.batch_size}, "
                                 f"idx has {b} rows")
            start = kv_cache.length
            limit = min(kv_cache.max_tokens, self.cfg.context_length)
            if start + t > limit:
                raise ValueError(f"Sequence length {start + t} exceeds the cache's {limit} "
                                 f"tokens: idx adds {t} tokens to a kv_cache holding {start} "
                                 f"of max_tokens={kv_cache.max_tokens} (context_length="
                                 f"{self.cfg.context_length})")
        if start + t > self.cfg.context_length:
            raise ValueError(f"Sequence length {t} exceeds the model's {self.cfg.context_length} "
                             f"tokens: idx has {t} tokens, more than context_length="
                             f"{self.cfg.context_length}")
        x = self._embed(idx, start)  # (B, T, emb)
        for layer, block in enumerate(self.trf_blocks):
            x = block(x, kv_cache=kv_cache, layer=layer)
        if kv_cache is not None:
            kv_cache.advance(t)
        return self.final_norm(x)  # (B, T, emb)

    def _embed(self, idx: torch.Tensor, start: int) -> torch.Tensor:
        positions = torch.arange(start, start + idx.shape[1], device=idx.device)
        return self.drop_emb(self.tok_emb(idx) + self.pos_emb(positions))  # (B, T, emb)

    def trace(self, idx: torch.Tensor) -> ModelTrace:
        """One pass over ``idx`` [batch, tokens] laid open (see ``gpt_components.inspect.trace``).

        Runs in eval mode (restoring the mode after) without gradients or a KV cache, through
        each block's ``forward_with_weights``: the attention maps are the probabilities that
        produced the residual stream and the logits returned.
        """
        check_token_ids(idx, self.cfg.vocab_size)
        if idx.shape[1] > self.cfg.context_length:
            raise ValueError(f"idx has {idx.shape[1]} tokens, more than context_length="
                             f"{self.cfg.context_length}")
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                residuals = [self._embed(idx, 0)]  # (B, T, emb)
                attentions = []
                for block in self.trf_blocks:
                    x, weights = block.forward_with_weights(residuals[-1])
                    residuals.append(x)
                    attentions.append(weights)  # (B, nh, T, T)
                logits = self.out_head(self.final_norm(residuals[-1]))  # (B, T, vocab)
        finally:
            self.train(was_training)
        return ModelTrace(residuals, attentions, logits)

    def new_kv_cache(self, batch_size: int, max_tokens: int | None = None) -> KVCache:
        """An empty cache for this model, on its device and dtype."""
        max_tokens = self.cfg.context_length if max_tokens is None else max_tokens
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= self.cfg.context_length:
            raise ValueError(f"max_tokens must be an int in [1, context_length="
                             f"{self.cfg.context_length}], got {max_tokens!r}")
        weight = self.tok_emb.weight
        return KVCache(self.cfg.n_layers, batch_size, self.cfg.n_heads, self.cfg.head_dim,
                       max_tokens, device=weight.device, dtype=weight.dtype)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **overrides: Any) -> GPTModel:
        """GPT-2 weights in Hugging Face's layout; see ``gpt_components.weights``."""
        from .machinery.registry import FAMILIES  # GPT-2's family is declared in `weights`

        return FAMILIES["gpt2"].load_pretrained(name_or_path, **overrides)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters: a tied output head is counted once, with the embedding."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # Module.parameters() yields a shared Parameter only once.
    return sum(p.numel() for p in model.parameters())


def memory_footprint_mb(model: nn.Module, dtype: torch.dtype | None = None) -> float:
    """Memory of the parameters in MB (2**20 bytes), in ``dtype`` or their own dtypes."""
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    total = sum(
        p.numel() * (p.element_size() if dtype is None else dtype.itemsize)
        for p in model.parameters()
    )
    return total / 2**20
