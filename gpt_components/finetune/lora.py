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

from ..machinery.checks import (
    ArgumentError,
    check_bool,
    check_float,
    check_instance,
    check_int,
    check_tensor,
    type_error,
    value_error,
)
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


def _check_rank_alpha(rank: int, alpha: float, generator: torch.Generator | None) -> None:
    check_int("rank", rank, low=1)
    check_float("alpha", alpha)
    if generator is not None:
        check_instance("generator", generator, torch.Generator, "a torch.Generator or None")


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
        _check_rank_alpha(rank, alpha, generator)
        check_int("in_dim", in_dim, low=1)
        check_int("out_dim", out_dim, low=1)
        self.rank = rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / rank
        self.A = nn.Parameter(torch.empty(in_dim, rank))
        # The same initialisation nn.Linear gives its weight: small and scaled by fan-in.
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5), generator=generator)
        self.B = nn.Parameter(torch.zeros(rank, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, kind="floating")
        if x.dim() < 1 or x.shape[-1] != self.A.shape[0]:
            raise value_error("x", f"x must be [..., in_dim={self.A.shape[0]}], got shape "
                                   f"{tuple(x.shape)}")
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
        check_instance("linear", linear, nn.Linear, "an nn.Linear")
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha, generator)
        self.lora.to(device=linear.weight.device, dtype=linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.lora(x)

    # The wrapped layer's attributes, for code that reads them off the layer it replaced (a
    # Gated DeltaNet checks its input against ``W_out.weight``'s dtype and device).
    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

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
    check_instance("model", model, nn.Module, "an nn.Module")
    _check_rank_alpha(rank, alpha, generator)
    check_bool("freeze_base", freeze_base)
    if isinstance(model, nn.Linear):
        raise type_error("model", "model must contain nn.Linear layers, not be one: use "
                                  "LinearWithLoRA")
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
    check_instance("model", model, nn.Module, "an nn.Module")
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
    check_instance("model", model, nn.Module, "an nn.Module")
    layers = _lora_layers(model)
    if not layers:
        raise value_error("model", "model has no LoRA layers: call replace_linear_with_lora "
                                   "first")
    return {
        f"{name}.{matrix}": getattr(layer, matrix).detach()
        for name, layer in layers.items()
        for matrix in ("A", "B")
    }


def save_lora(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the adapters alone (a few MB, not the whole model) to a safetensors file."""
    check_instance("path", path, (str, os.PathLike), "a path (str or os.PathLike)")
    tensors = {key: value.contiguous().cpu() for key, value in lora_state_dict(model).items()}
    first = next(iter(_lora_layers(model).values()))
    metadata = {"rank": str(first.rank), "alpha": repr(first.alpha)}
    save_file(tensors, os.fspath(path), metadata=metadata)


def load_lora(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load adapters written by ``save_lora`` into ``model``; returns ``model``.

    A model without adapters yet gets them first, with the rank and alpha stored in the file.
    """
    check_instance("model", model, nn.Module, "an nn.Module")
    check_instance("path", path, (str, os.PathLike), "a path (str or os.PathLike)")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no LoRA file at {path!r}")
    if isinstance(model, nn.Linear):
        raise type_error("model", "model must contain nn.Linear layers, not be one: use "
                                  "LinearWithLoRA")
    tensors = read_safetensors(path)
    wrap = None
    if _lora_layers(model):
        expected = {key: value.shape for key, value in lora_state_dict(model).items()}
    else:  # the adapters replace_linear_with_lora would add, checked before adding them
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        try:
            wrap = int(metadata["rank"]), float(metadata["alpha"])
            _check_rank_alpha(*wrap, None)
        except (KeyError, ValueError, ArgumentError):
            raise value_error("path", f"path: {path!r} holds no valid rank/alpha metadata; not "
                                      f"from save_lora") from None
        expected = _adapter_shapes(model, wrap[0])
    _check_adapters(tensors, expected, path)
    if wrap is not None:
        replace_linear_with_lora(model, *wrap)
    model.load_state_dict(tensors, strict=False)
    return model


def _adapter_shapes(model: nn.Module, rank: int) -> dict[str, torch.Size]:
    """The ``A`` and ``B`` shapes of the adapters ``replace_linear_with_lora`` would add."""
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            shapes[f"{name}.lora.A"] = torch.Size((module.in_features, rank))
            shapes[f"{name}.lora.B"] = torch.Size((rank, module.out_features))
    return shapes


def _check_adapters(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Size],
                    path: str) -> None:
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))[:3]
        extra = sorted(set(tensors) - set(expected))[:3]
        raise value_error("path", f"path: adapters in {path!r} do not fit model (missing "
                                  f"{missing}, unexpected {extra})")
    for key, value in tensors.items():
        if value.shape != expected[key]:
            raise value_error("path", f"path: {key} has shape {tuple(value.shape)} in {path!r}, "
                                      f"model expects {tuple(expected[key])}")


def count_trainable_parameters(model: nn.Module) -> int:
    """How many numbers an optimizer would update: parameters with ``requires_grad``."""
    check_instance("model", model, nn.Module, "an nn.Module")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
