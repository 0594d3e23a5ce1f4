"""LoRA, low-rank adaptation (appendix E): train two thin matrices beside each frozen linear layer.

A ``LoRALayer`` adds ``(alpha / rank) * x @ A @ B`` to a layer's output. ``B`` starts at zero,
so a freshly adapted model computes exactly the base model's function; training moves only
``A`` and ``B`` (``rank * (in_dim + out_dim)`` numbers per layer instead of ``in_dim *
out_dim``). Exports
``LoRALayer``, ``LinearWithLoRA``, ``replace_linear_with_lora``, ``merge_lora``,
``lora_state_dict``, ``save_lora``, ``load_lora`` and ``count_trainable_parameters``.

>>> import torch
>>> from torch import nn
>>> base = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> x = torch.randn(3, 4)
>>> before = base(x)
>>> model = replace_linear_with_lora(base, rank=2, alpha=4.0)
>>> torch.equal(model(x), before)  # B = 0: the adapters start as the identity change
True
>>> count_trainable_parameters(model)  # 2*(4+8) + 2*(8+2)
44
"""

from __future__ import annotations

import math
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..machinery.tensor_files import read_safetensors

__all__ = [
    "LoRALayer",
    "LinearWithLoRA",
    "replace_linear_with_lora",
    "merge_lora",
    "lora_state_dict",
    "save_lora",
    "load_lora",
    "count_trainable_parameters",
]


def _check_rank_alpha(rank: int, alpha: float) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int >= 1, got {rank!r}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a finite number, got {alpha!r}")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")


class LoRALayer(nn.Module):
    """The low-rank update ``(alpha / rank) * x @ A @ B``, ``A`` (in_dim, rank) random, ``B`` zeros.

    The scale is ``alpha / rank``, as in the LoRA paper, the PEFT library and the book's errata
    and current code (the printed book scales by ``alpha`` alone), so ``LoraConfig(r=rank,
    lora_alpha=alpha)`` in PEFT and ``--lora-rank``/``--lora-alpha`` here mean the same update.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        rank: int,
        alpha: float,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_rank_alpha(rank, alpha)
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.rank = rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / rank
        self.A = nn.Parameter(torch.empty(in_dim, rank))
        # The same initialisation nn.Linear gives its weight: small and scaled by fan-in.
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5), generator=generator)
        self.B = nn.Parameter(torch.zeros(rank, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaling * (x @ self.A @ self.B)  # (..., in) -> (..., rank) -> (..., out)

    def delta_weight(self) -> torch.Tensor:
        """The update as an ``nn.Linear`` weight, shape (out_dim, in_dim)."""
        return self.scaling * (self.A @ self.B).T


class LinearWithLoRA(nn.Module):
    """A linear layer plus a ``LoRALayer`` of matching shape: ``linear(x) + lora(x)``."""

    def __init__(
        self,
        linear: nn.Linear,
        rank: int,
        alpha: float,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha, generator)
        self.lora.to(device=linear.weight.device, dtype=linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.lora(x)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function, with the update folded in."""
        base = self.linear
        linear = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        with torch.no_grad():
            # Keep the base weight's memory order (column-major in an eval-mode GPTModel).
            linear.weight.data = torch.empty_like(base.weight)
            linear.weight.copy_(base.weight + self.lora.delta_weight())
            if base.bias is not None:
                linear.bias.copy_(base.bias)
        linear.requires_grad_(base.weight.requires_grad)
        return linear


def replace_linear_with_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    freeze_base: bool = True,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Wrap every ``nn.Linear`` in ``model`` in a ``LinearWithLoRA``, in place; returns ``model``.

    With ``freeze_base`` (the default) every parameter that existed before stops requiring
    gradients first, so only the adapters train.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_rank_alpha(rank, alpha)
    if not isinstance(freeze_base, bool):
        raise TypeError(f"freeze_base must be True or False, got {freeze_base!r}")
    if isinstance(model, nn.Linear):
        raise TypeError("model must contain nn.Linear layers, not be one: use LinearWithLoRA")
    if freeze_base:
        model.requires_grad_(False)
    _replace(model, rank, alpha, generator)
    return model


def _replace(
    module: nn.Module, rank: int, alpha: float, generator: torch.Generator | None
) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, LinearWithLoRA(child, rank, alpha, generator))
        elif not isinstance(child, LinearWithLoRA):
            _replace(child, rank, alpha, generator)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, in place: plain ``nn.Linear`` layers again."""
    for name, child in model.named_children():
        if isinstance(child, LinearWithLoRA):
            setattr(model, name, child.merged())
        else:
            merge_lora(child)
    return model


def _lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter matrices, keyed as in ``model.state_dict()``."""
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers: call replace_linear_with_lora first")
    return {
        f"{name}.{matrix}": getattr(layer, matrix).detach()
        for name, layer in layers.items()
        for matrix in ("A", "B")
    }


def save_lora(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the adapters alone (a few MB, not the whole model) to a safetensors file."""
    tensors = {key: value.contiguous().cpu() for key, value in lora_state_dict(model).items()}
    first = next(iter(_lora_layers(model).values()))
    metadata = {"rank": str(first.rank), "alpha": repr(first.alpha)}
    save_file(tensors, os.fspath(path), metadata=metadata)


def load_lora(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load adapters written by ``save_lora`` into ``model``; returns ``model``.

    A model without adapters yet gets them first, with the rank and alpha stored in the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no LoRA file at {path!r}")
    tensors = read_safetensors(path)
    if not _lora_layers(model):
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        if "rank" not in metadata or "alpha" not in metadata:
            raise ValueError(f"path: {path!r} holds no rank/alpha metadata; not from save_lora")
        replace_linear_with_lora(model, int(metadata["rank"]), float(metadata["alpha"]))
    expected = lora_state_dict(model)
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))[:3]
        extra = sorted(set(tensors) - set(expected))[:3]
        raise ValueError(
            f"path: adapters in {path!r} do not fit model (missing {missing}, unexpected {extra})"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"path: {key} has shape {tuple(value.shape)} in {path!r}, "
                f"model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(tensors, strict=False)
    return model


def count_trainable_parameters(model: nn.Module) -> int:
    """How many numbers an optimizer would update: parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
