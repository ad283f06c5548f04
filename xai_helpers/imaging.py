"""Pixels and the model's input units: normalisation, display conversion, baselines.

One home for every conversion between [0, 1] pixel values and the normalised tensors a model reads,
so that chapters and methods do not each write ``(x - mean) / std`` their own way:

* :func:`normalise` / :func:`denormalise`: [0, 1] pixels <-> the model's units, per channel;
* :func:`to_display` / :func:`from_display`: tensors <-> images as matplotlib and scikit-image see them;
* :func:`baseline`: the reference input of Integrated Gradients, occlusion, XRAI and the "hidden"
  superpixels of LIME and SHAP ("zero"/"mean", "black", "white", "blur"), and :func:`gaussian_blur`,
  the one blur they share.

``norm`` arguments say how the tensors were normalised: a model that declares its interface
(``model.info``, see :mod:`xai_helpers.model_info`), a :class:`~xai_helpers.model_info.ModelInfo`, or a
``(mean, std)`` pair. At import this module uses numpy and torch only.
"""
from __future__ import annotations

import numpy as np
import torch

BASELINES = ("zero", "mean", "black", "white", "blur")


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


def mean_std(norm) -> tuple:
    """``(mean, std)`` from a model that declares its interface, a ModelInfo, or a (mean, std) pair."""
    if isinstance(norm, torch.nn.Module):
        from .model_info import model_info   # lazy: this module imports numpy and torch only

        norm = model_info(norm)
    if hasattr(norm, "mean") and hasattr(norm, "std") and not isinstance(norm, (torch.Tensor, np.ndarray)):
        return tuple(norm.mean), tuple(norm.std)
    if isinstance(norm, (tuple, list)) and len(norm) == 2:
        return norm[0], norm[1]
    raise TypeError(f"norm must be a model with model.info, a ModelInfo or a (mean, std) pair; got {type(norm).__name__}")


def _rescale01(a: np.ndarray, axis) -> np.ndarray:
    """Min-max rescale to [0, 1] over ``axis`` where the values leave [0, 1]; else unchanged."""
    lo, hi = np.nanmin(a, axis=axis, keepdims=True), np.nanmax(a, axis=axis, keepdims=True)
    out = (a - lo) / (hi - lo + 1e-12)
    return np.where((lo < 0) | (hi > 1), out, a).astype(np.float32)


def to_display(image, norm=None, clip: bool = True) -> np.ndarray:
    """Images as matplotlib and scikit-image see them: float32 in [0, 1], channels last.

    * one image, (H, W), (H, W, C) or torch-style (C, H, W), uint8 or float -> (H, W) grey or
      (H, W, 3) RGB;
    * a batch (N, C, H, W) -> (N, H, W, C) (grey images keep their channel axis).

    With ``norm`` (see the module docstring) float images are un-normalised and clipped to [0, 1]
    (``clip=False`` keeps the values outside); without it, float images outside [0, 1] are min-max
    rescaled (each image of a batch on its own).
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = image.float() if image.is_floating_point() else image
    batch = np.ndim(image) == 4
    if batch and norm is None:
        a = np.asarray(image, dtype=np.float32).transpose(0, 2, 3, 1)
        return _rescale01(a, axis=(1, 2, 3))
    if batch or (norm is not None and np.ndim(image) == 3):
        t = torch.as_tensor(np.asarray(image, dtype=np.float32))
        a = denormalise(t, *mean_std(norm)).numpy()
        a = np.clip(a, 0, 1) if clip else a
        if batch:
            return a.transpose(0, 2, 3, 1)
        image = a
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.transpose(img, (1, 2, 0))
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    return _rescale01(img.astype(np.float32), axis=None)


def from_display(images01: np.ndarray, norm, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`to_display` for a batch: (B, H, W, C) in [0, 1] -> normalised (B, C, H, W)
    tensor of ``like``'s dtype and device."""
    t = torch.as_tensor(np.ascontiguousarray(np.asarray(images01).transpose(0, 3, 1, 2)), dtype=like.dtype,
                        device=like.device)
    return normalise(t, *mean_std(norm))


def grey(norm, x: torch.Tensor, level: float) -> torch.Tensor:
    """A uniform grey image, ``level`` in [0, 1] pixel units (0 black, 1 white), in the model's units,
    shaped like ``x`` ((C, H, W) or (N, C, H, W))."""
    c = x.shape[-3]
    flat = torch.full((c, 1, 1), float(level), dtype=x.dtype, device=x.device)
    return normalise(flat, *mean_std(norm)).expand_as(x).clone()


def gaussian_blur(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Gaussian blur of (C, H, W) or (N, C, H, W), each channel on its own, reflecting at the border.

    ``sigma`` defaults to side / 16 (4 px at 64 px: finer than the findings, coarser than texture); the
    kernel spans +-3 sigma. The same kernel as ``torchvision.transforms.functional.gaussian_blur``.
    """
    one = x.ndim == 3
    xb = x[None] if one else x
    h, w = xb.shape[-2:]
    sigma = max(h, w) / 16 if sigma is None else float(sigma)
    half = int(round(3 * sigma))
    r = torch.linspace(-half, half, 2 * half + 1, device=x.device)
    k1 = torch.exp(-0.5 * (r / sigma) ** 2)
    k1 = k1 / k1.sum()
    c = xb.shape[1]
    k2 = (k1[:, None] * k1[None, :]).to(x.dtype).expand(c, 1, -1, -1)
    out = torch.nn.functional.conv2d(torch.nn.functional.pad(xb, [half] * 4, mode="reflect"), k2, groups=c)
    return out[0] if one else out


def baseline(norm, x: torch.Tensor, kind="zero") -> torch.Tensor:
    """The reference input shaped like ``x``, in the model's units.

    ``kind``: ``"zero"`` / ``"mean"`` (0 after normalisation: the dataset's mean colour), ``"black"``,
    ``"white"``, ``"blur"`` (:func:`gaussian_blur` of ``x``), or a tensor broadcastable to ``x``.
    """
    if isinstance(kind, torch.Tensor):
        return kind.to(x.device, x.dtype).expand_as(x)
    if kind in ("zero", "mean", None):
        return torch.zeros_like(x)
    if kind in ("black", "white"):
        return grey(norm, x, 0.0 if kind == "black" else 1.0)
    if kind == "blur":
        return gaussian_blur(x)
    raise ValueError(f"unknown baseline {kind!r}; use one of {BASELINES} or a tensor")


__all__ = ["normalise", "denormalise", "mean_std", "to_display", "from_display", "grey", "gaussian_blur",
           "baseline", "BASELINES"]
