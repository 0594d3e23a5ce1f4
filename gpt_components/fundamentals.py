"""PyTorch fundamentals (appendix A): devices, a hand-derived gradient, datasets and a small MLP.

Exports ``available_devices``/``default_device``; ``logistic_loss`` (the appendix's one-neuron
logistic regression) with ``logistic_loss_grad``, its gradient worked out by hand;
``ToyDataset``; ``NeuralNetwork`` (two hidden layers of 30 and 20 ReLU units); and the plain
training loop ``train_classifier`` with ``compute_accuracy``.

>>> x, w, b, y = torch.tensor([1.1]), torch.tensor([2.2]), torch.tensor([0.0]), torch.tensor([1.0])
>>> round(logistic_loss(x, w, b, y).item(), 4)
0.0852
>>> [round(g.item(), 4) for g in logistic_loss_grad(x, w, b, y)]
[-0.0898, -0.0817]
>>> model = NeuralNetwork(50, 3)
>>> sum(p.numel() for p in model.parameters())
2213
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .machinery.checks import (
    check_float,
    check_instance,
    check_int,
    check_tensor,
    type_error,
    value_error,
)

__all__ = [
    "available_devices",
    "default_device",
    "logistic_loss",
    "logistic_loss_grad",
    "ToyDataset",
    "NeuralNetwork",
    "train_classifier",
    "compute_accuracy",
]


def available_devices() -> list[str]:
    """Devices torch can use here, in order of preference: cuda, mps, then cpu."""
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def default_device() -> torch.device:
    """The preferred device: cuda, then mps, then cpu."""
    return torch.device(available_devices()[0])


def _check_logistic_inputs(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, y: torch.Tensor
) -> torch.Size:
    """Validate the four tensors; return the shape of ``z = x * w + b``."""
    for name, value in (("x", x), ("w", w), ("b", b), ("y", y)):
        check_tensor(name, value, kind="floating")
    shape = x.shape
    for name, value in (("w", w), ("b", b)):
        try:
            shape = torch.broadcast_shapes(shape, value.shape)
        except RuntimeError:
            raise value_error(name, f"{name} of shape {tuple(value.shape)} must broadcast "
                                    f"against the shape {tuple(shape)} of x") from None
    if y.shape != shape:
        raise value_error("y", f"y must have the shape {tuple(shape)} of z = x*w + b, got "
                               f"{tuple(y.shape)}")
    if not ((y >= 0) & (y <= 1)).all():  # (NaN fails both comparisons)
        raise value_error("y", f"y must hold targets in [0, 1], got {y.tolist()}")
    return shape


def logistic_loss(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Binary cross-entropy of ``a = sigmoid(z)``, ``z = x * w + b``, averaged over the elements.

    ``x``, ``w`` and ``b`` broadcast together; ``y`` has ``z``'s shape and holds targets in [0, 1].
    Computed from ``z`` directly (``softplus(z) - y * z``), which equals ``-y log a - (1 - y)
    log(1 - a)`` but stays finite when the sigmoid saturates.
    """
    _check_logistic_inputs(x, w, b, y)
    z = x * w + b
    return (F.softplus(z) - y * z).mean()


def _sum_to_shape(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Undo broadcasting: sum ``grad`` over the dimensions that were expanded from ``shape``."""
    leading = grad.dim() - len(shape)
    grad = grad.sum(dim=tuple(range(leading))) if leading else grad
    expanded = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    return grad.sum(dim=expanded, keepdim=True) if expanded else grad


def logistic_loss_grad(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dw, dL/db)`` of ``logistic_loss``, derived by hand, shaped like ``w`` and ``b``.

    With ``n`` elements, ``dL/dz = (sigmoid(z) - y) / n`` (the sigmoid's derivative ``a (1 - a)``
    cancels against the cross-entropy's ``1 / (a (1 - a))``); then ``dz/dw = x`` and
    ``dz/db = 1``, summed over the positions each parameter was broadcast to.
    """
    shape = _check_logistic_inputs(x, w, b, y)
    dz = (torch.sigmoid(x * w + b) - y) / math.prod(shape)
    return _sum_to_shape(dz * x, w.shape), _sum_to_shape(dz, b.shape)


class ToyDataset(torch.utils.data.Dataset):
    """Features ``X`` (one row per sample) paired with labels ``y``, as ``(X[i], y[i])``."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor) -> None:
        for name, value in (("X", X), ("y", y)):
            check_tensor(name, value)
            if value.dim() == 0:
                raise value_error(name, f"{name} must have a sample dimension, got a 0-d tensor")
        if len(X) != len(y):
            raise value_error("y", f"y must have one label per row of X ({len(X)}), got "
                                   f"{len(y)}")
        self.features = X
        self.labels = y

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.labels[index]

    def __len__(self) -> int:
        return self.labels.shape[0]


class NeuralNetwork(nn.Module):
    """The appendix's multilayer perceptron: ``num_inputs -> 30 -> 20 -> num_outputs`` with ReLU.

    Pass a ``generator`` to draw the initial weights from it (same distribution as PyTorch's
    default ``nn.Linear`` initialisation) instead of torch's global random state.
    """

    def __init__(
        self, num_inputs: int, num_outputs: int, *, generator: torch.Generator | None = None
    ) -> None:
        check_int("num_inputs", num_inputs, low=1)
        check_int("num_outputs", num_outputs, low=1)
        if generator is not None:
            check_instance("generator", generator, torch.Generator, "a torch.Generator or None")
        super().__init__()
        self.num_inputs = num_inputs  # (the first layer's in_features, unless LoRA wraps it)
        self.layers = nn.Sequential(
            nn.Linear(num_inputs, 30),
            nn.ReLU(),
            nn.Linear(30, 20),
            nn.ReLU(),
            nn.Linear(20, num_outputs),
        )
        if generator is not None:
            self._reset_parameters(generator)

    @torch.no_grad()
    def _reset_parameters(self, generator: torch.Generator) -> None:
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                # nn.Linear's own scheme: both bounds come out as 1 / sqrt(fan_in).
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                bound = 1 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, kind="floating")
        if x.dim() < 1 or x.shape[-1] != self.num_inputs:
            raise value_error("x", f"x must be (batch, num_inputs={self.num_inputs}), got shape "
                                   f"{tuple(x.shape)}")
        return self.layers(x)  # (batch, num_inputs) -> (batch, num_outputs) logits


def train_classifier(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    epochs: int,
    lr: float,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    device: torch.device | str | None = None,
) -> list[float]:
    """Plain SGD: per batch forward, loss, backward, step, reset; return each epoch's mean loss.

    The mean is per sample (batch losses weighted by batch size). The model is left in eval mode.
    """
    check_instance("model", model, nn.Module, "an nn.Module")
    check_int("epochs", epochs, low=1)
    check_float("lr", lr, low=0, low_open=True)
    if not callable(loss_fn):
        raise type_error("loss_fn", f"loss_fn must be a callable (logits, labels) -> loss, got "
                                    f"{type(loss_fn).__name__}")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        model.train()
        total, count = 0.0, 0
        for features, labels in loader:
            if device is not None:
                features, labels = features.to(device), labels.to(device)
            loss = loss_fn(model(features), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            total += loss.item() * len(labels)
            count += len(labels)
        if count == 0:
            raise value_error("loader", "loader must yield at least one batch, got an empty loader")
        losses.append(total / count)
    model.eval()
    return losses


@torch.no_grad()
def compute_accuracy(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device | str | None = None,
) -> float:
    """Fraction of samples whose highest logit is the label, with the model in eval mode."""
    check_instance("model", model, nn.Module, "an nn.Module")
    model.eval()
    correct, total = 0, 0
    for features, labels in loader:
        if device is not None:
            features, labels = features.to(device), labels.to(device)
        predictions = model(features).argmax(dim=-1)
        correct += int((predictions == labels).sum())
        total += len(labels)
    if total == 0:
        raise value_error("loader", "loader must yield at least one sample, got an empty loader")
    return correct / total
