"""Superpixels as the players of LIME and Shapley values: segmentation, what a switched-off superpixel
shows, and the model's outputs on every coalition.

* :func:`segment`: superpixels of one image (SLIC by default, with ``n_segments`` scaled to the image
  side: lime's default quickshift yields 2 regions at 28 px and 4 at 64 px);
* :func:`fill`: what replaces a switched-off superpixel (``hide``);
* :func:`coalition_outputs`: the model's logits for many 0/1 vectors over the superpixels, batched;
* :func:`model_outputs`: logits -> what a surrogate explains ('prob' or 'logit').
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import torch

from ..imaging import baseline, gaussian_blur, grey, to_display
from ..model_info import model_info
from .speed import inference_mode, resolve_precision

SEGMENTATIONS = ("slic", "quickshift", "felzenszwalb", "grid")
HIDES = ("segment_mean", "dataset_mean", "blur")


def default_n_segments(h: int, w: int) -> int:
    """About 0.75 superpixels per pixel of image side: 21 at 28 px, 48 at 64 px, 96 at 128, 168 at 224."""
    return int(np.clip(round(0.75 * math.sqrt(h * w)), 8, 250))


def relabel(seg: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..M-1 in order of appearance of their values."""
    _, inv = np.unique(seg, return_inverse=True)
    return inv.reshape(seg.shape).astype(np.int64)


def _quickshift(skseg, img, gray, seed, kw):
    rgb = np.stack([img] * 3, -1) if gray else img
    params = dict(kernel_size=4, max_dist=200, ratio=0.2)
    params.update(kw)
    sig = inspect.signature(skseg.quickshift).parameters
    if "rng" in sig:
        params["rng"] = seed
    elif "random_seed" in sig:  # pragma: no cover - scikit-image < 0.26
        params["random_seed"] = seed
    return skseg.quickshift(rgb, **params)


# what segment() sets itself (or takes as its own arguments), per scikit-image function
_SET_BY_US = {"image", "n_segments", "start_label", "channel_axis", "rng", "random_seed", "return_tree"}


def segmentation_options(method: str = "slic") -> list[str]:
    """The keyword options :func:`segment` passes on to scikit-image for ``method`` (none for 'grid')."""
    if method not in SEGMENTATIONS:
        raise ValueError(f"unknown segmentation {method!r}; use one of {SEGMENTATIONS}")
    if method == "grid":
        return []
    from skimage import segmentation as skseg

    return [k for k in inspect.signature(getattr(skseg, method)).parameters if k not in _SET_BY_US]


def segment(image: np.ndarray, method: str = "slic", n_segments: int | None = None, seed: int = 0,
            **kw) -> np.ndarray:
    """Superpixels of one image (H, W, C) or (H, W) in [0, 1]: int labels 0..M-1, shape (H, W).

    method:
      * ``"slic"`` (default): k-means in colour+position; ``n_segments`` defaults to
        :func:`default_n_segments`, ``compactness`` to 10 (grey levels are scaled to 0-100 like Lab).
      * ``"quickshift"``: lime's default (kernel_size=4, max_dist=200, ratio=0.2). It ignores the
        image size, so it yields a handful of regions on small images. Seeded through ``rng``
        (scikit-image >= 0.26) or ``random_seed`` (older), whichever this version accepts.
      * ``"felzenszwalb"``: graph-based, ``scale`` controls region size (XRAI uses several scales).
      * ``"grid"``: square patches, about ``n_segments`` of them (no image content involved).
    """
    from skimage import segmentation as skseg

    unknown = sorted(set(kw) - set(segmentation_options(method)))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for segmentation={method!r}; "
                        f"it accepts n_segments and {segmentation_options(method)}")
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    h, w = img.shape[:2]
    gray = img.ndim == 2
    if n_segments is None:
        n_segments = default_n_segments(h, w)
    if method == "slic":
        compactness = kw.pop("compactness", 10.0)
        src = img * 100.0 if gray else img
        seg = skseg.slic(src, n_segments=int(n_segments), compactness=compactness, start_label=0,
                         channel_axis=None if gray else -1, **kw)
    elif method == "quickshift":
        seg = _quickshift(skseg, img, gray, seed, kw)
    elif method == "felzenszwalb":
        params = dict(scale=kw.pop("scale", 100), sigma=kw.pop("sigma", 0.8), min_size=kw.pop("min_size", 20))
        seg = skseg.felzenszwalb(img, channel_axis=None if gray else -1, **params, **kw)
    elif method == "grid":
        k = max(1, int(round(math.sqrt(n_segments))))
        ys = np.minimum(np.arange(h) * k // h, k - 1)
        xs = np.minimum(np.arange(w) * k // w, k - 1)
        seg = ys[:, None] * k + xs[None, :]
    else:
        raise ValueError(f"unknown segmentation {method!r}; use one of {SEGMENTATIONS}")
    return relabel(seg)


def segments_for(model, x: torch.Tensor, segments, segmentation, n_segments, seed, seg_kw) -> list[np.ndarray]:
    """One label map per image: given (array (H,W) / (N,H,W) / callable on the display image) or computed."""
    n, _, h, w = x.shape
    if segments is not None and not callable(segments):
        s = np.asarray(segments)
        if s.shape == (h, w):
            return [relabel(s)] * n
        if s.shape == (n, h, w):
            return [relabel(si) for si in s]
        raise ValueError(f"segments must have shape (H, W)={h, w} or (N, H, W)={n, h, w}; got {s.shape}")
    disp = to_display(x, model)
    if callable(segments):
        return [relabel(np.asarray(segments(d))) for d in disp]
    return [segment(d, segmentation, n_segments, seed=seed, **seg_kw) for d in disp]


def fill(model, x1: torch.Tensor, seg: np.ndarray, hide) -> torch.Tensor:
    """What a switched-off superpixel is replaced with, (C, H, W) in the model's input units.

    ``hide``: ``"segment_mean"`` (lime's default: each superpixel's own mean colour),
    ``"dataset_mean"`` (the normalisation mean, i.e. 0 in normalised units: a neutral grey),
    ``"blur"`` (:func:`xai_helpers.imaging.gaussian_blur`, sigma = side/16), or a number = grey level
    in [0, 1] (0 = black).
    """
    c, h, w = x1.shape
    if hide is None or hide == "segment_mean":
        s = torch.as_tensor(seg, device=x1.device).reshape(-1)
        m = int(s.max()) + 1
        flat = x1.reshape(c, -1)
        sums = torch.zeros(c, m, dtype=x1.dtype, device=x1.device).index_add_(1, s, flat)
        cnt = torch.bincount(s, minlength=m).to(x1.dtype)
        return (sums / cnt)[:, s].reshape(c, h, w)
    if hide == "dataset_mean":
        return baseline(model, x1, "mean")
    if hide == "blur":
        return gaussian_blur(x1)
    if isinstance(hide, (int, float)) and not isinstance(hide, bool):
        return grey(model, x1, float(hide))
    raise ValueError(f"hide must be one of {HIDES} or a grey level in [0, 1]; got {hide!r}")


def model_outputs(model, out: torch.Tensor, output: str) -> torch.Tensor:
    """Logits -> what the surrogate explains: 'prob' (softmax, or sigmoid for multi-label) or 'logit'."""
    if output == "logit":
        return out
    if output != "prob":
        raise ValueError(f"output must be 'prob' or 'logit', not {output!r}")
    if model_info(model).task == "multilabel" or out.shape[1] == 1:
        return torch.sigmoid(out)
    return torch.softmax(out, dim=1)


@torch.no_grad()
def coalition_outputs(model, x1: torch.Tensor, seg: np.ndarray, Z: np.ndarray, fill: torch.Tensor,
                      batch_size: int | None = None, precision: str = "float32") -> torch.Tensor:
    """Model logits for every row of the 0/1 matrix ``Z`` (B, M): superpixel j kept where Z[:, j] = 1.

    Images are composed on the fly, ``batch_size`` at a time (default: the pixel budget): x_z = fill + mask_z * (x - fill).
    ``precision``: 'float32', 'bfloat16' (autocast; 2-2.6x faster on CPUs with AMX or AVX512-BF16, outputs
    differ by ~1e-3 in probability) or 'auto' (bfloat16 where the hardware has native support).
    """
    precision = resolve_precision(precision, x1.device)
    c, h, w = x1.shape
    from .. import config

    batch_size = config.images_per_pass(x1, batch_size)
    m = int(seg.max()) + 1
    onehot = torch.zeros(m, h * w, dtype=x1.dtype, device=x1.device)
    onehot[torch.as_tensor(seg.reshape(-1), device=x1.device), torch.arange(h * w, device=x1.device)] = 1
    diff = (x1 - fill)[None]
    outs = []
    with inference_mode(model, x1.device, precision, like=x1, fuse=True) as run:
        for i in range(0, len(Z), batch_size):
            z = torch.as_tensor(Z[i:i + batch_size], dtype=x1.dtype, device=x1.device)
            mask = (z @ onehot).reshape(len(z), 1, h, w)
            outs.append(run.model(fill[None] + mask * diff).float())
    return torch.cat(outs)


def paint(weights: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Superpixel values -> a map: value j painted on every pixel of superpixel j."""
    return np.asarray(weights, dtype=np.float32)[seg]


__all__ = ["segment", "segmentation_options", "default_n_segments", "relabel", "segments_for", "fill", "model_outputs",
           "coalition_outputs", "paint", "SEGMENTATIONS", "HIDES"]
