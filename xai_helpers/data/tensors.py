"""From uint8 images to the float tensors a model reads: channel statistics and normalisation.

The conversion itself is :func:`xai_helpers.imaging.normalise` (the one home of ``(x - mean) / std``);
torch is imported only when a tensor is made.
"""
from __future__ import annotations

import numpy as np

from ..imageset import ImageSet


def channel_stats(ds: ImageSet, indices=None) -> tuple:
    """Per-channel mean and std of ``ds.images[indices]`` in [0, 1] units: ((m,...), (s,...))."""
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices)
    c = ds.images.shape[-1]
    s1 = np.zeros(c)
    s2 = np.zeros(c)
    n = 0
    for start in range(0, len(idx), 1024):
        x = ds.images[idx[start:start + 1024]].reshape(-1, c).astype(np.float64) / 255.0
        s1 += x.sum(0)
        s2 += (x ** 2).sum(0)
        n += len(x)
    mean = s1 / max(n, 1)
    std = np.sqrt(np.clip(s2 / max(n, 1) - mean ** 2, 1e-12, None))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def images_to_tensor(images: np.ndarray, mean=None, std=None):
    """uint8 (N, H, W, C) -> float (N, C, H, W): [0, 1], then ``(x - mean) / std`` per channel if given."""
    import torch

    from ..imaging import normalise

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if mean is None and std is None:
        return x
    return normalise(x, 0.0 if mean is None else mean, 1.0 if std is None else std)


def to_tensor(ds: ImageSet, indices=None, mean=None, std=None):
    """Images as a float tensor (N, C, H, W): [0, 1], then ``(x - mean) / std`` per channel if given."""
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices)
    return images_to_tensor(ds.images[idx], mean, std)
