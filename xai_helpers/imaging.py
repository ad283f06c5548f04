"""Pixels and the model's input units: normalisation, display conversion, baselines.

One home for every conversion between [0, 1] pixel values and the normalised tensors a model reads,
so chapters and methods do not each write ``(x - mean) / std`` their own way. Uses numpy and torch only.
"""
from __future__ import annotations

import numpy as np
import torch


def _per_channel(values, c: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """mean or std (length 1 or C) as a (C, 1, 1) tensor of ``like``'s dtype and device."""
    v = torch.as_tensor(values, dtype=like.dtype if like.is_floating_point() else torch.float32,
                        device=like.device).reshape(-1)
    if v.numel() == 1 and c > 1:
        v = v.repeat(c)
    if v.numel() != c:
        raise ValueError(f"{name} needs 1 or {c} values (one per channel), got {v.numel()}")
    return v.view(c, 1, 1)


def normalise(x01: torch.Tensor, mean, std) -> torch.Tensor:
    """``(x01 - mean) / std`` per channel: (C, H, W) or (N, C, H, W) in [0, 1] -> the model's units.

    ``mean`` and ``std`` hold one value per channel, or one value for all channels.
    """
    x01 = torch.as_tensor(x01)
    if not x01.is_floating_point():
        raise TypeError(f"normalise expects a float tensor in [0, 1], got {x01.dtype}; divide uint8 images by 255")
    if x01.ndim not in (3, 4):
        raise ValueError(f"normalise expects (C, H, W) or (N, C, H, W), got shape {tuple(x01.shape)}")
    c = x01.shape[-3]
    return (x01 - _per_channel(mean, c, x01, "mean")) / _per_channel(std, c, x01, "std")


def denormalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """The inverse of :func:`normalise`: ``x * std + mean`` per channel (back to [0, 1] pixel units)."""
    x = torch.as_tensor(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"denormalise expects (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
    c = x.shape[-3]
    return x * _per_channel(std, c, x, "std") + _per_channel(mean, c, x, "mean")


__all__ = ["normalise", "denormalise"]
