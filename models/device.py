"""Device resolution shared by training and serving: ``auto`` means the GPU when there is one."""

from __future__ import annotations

import torch


def resolve_device(requested: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a device; asking for CUDA without one is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} was asked for, but no CUDA device is available")
    return device
