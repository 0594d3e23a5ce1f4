"""PyTorch fundamentals (appendix A) (in progress: the foundation issue fills this in)."""

from __future__ import annotations

import torch

__all__ = ["available_devices", "default_device"]


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
