"""XRAI (Kapishnikov et al., 2019): regions ranked by Integrated Gradients density; chapter 06.

1. Integrated Gradients (:func:`xai_helpers.explain.gradients.integrated_gradients_attr`), averaged over
   the baselines, channels merged by their maximum as in the reference code;
2. an over-segmentation: Felzenszwalb at several scales, each segment a mask, dilated by a disk;
3. greedy ranking: repeatedly add the region whose not-yet-covered pixels have the highest mean
   attribution (gain density); each pixel gets the gain of the region that first covered it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from . import register
from ..imaging import baseline, grey, to_display
from .gradients import integrated_gradients_attr
from .superpixels import relabel

SCALES = (50, 100, 150, 250, 500, 1200)
IG_RULE = "riemann_middle"      # the Integrated Gradients rule XRAI's maps were recorded with


def _disk_offsets(radius: int):
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return [(dy, dx) for dy, dx in zip(yy.ravel(), xx.ravel()) if dy * dy + dx * dx <= radius ** 2]


def xrai_segments(image: np.ndarray, scales: Sequence[float] = SCALES, dilation: int | None = None,
                  resize: int | None = None, min_size: int = 150) -> np.ndarray:
    """XRAI's over-segmentation: Felzenszwalb at several scales, each segment a mask, dilated by a
    disk. Returns (K, H, W) bool, overlapping masks.

    The reference code segments at 224 px (``resize=224``: scale values 50..1200, min_size 150,
    dilation radius 5 px). The default ``resize=None`` segments at the image's own size with the
    scale, min_size and radius shrunk by the area (resp. side) ratio to 224 px: the same regions
    relative to the image, about 10x faster at 64 px.
    """
    from skimage.segmentation import felzenszwalb
    from skimage.transform import resize as sk_resize

    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = img[..., None]
    h, w, c = img.shape
    side = resize or max(h, w)
    work = sk_resize(img, (resize, resize), order=3, mode="constant", preserve_range=True,
                     anti_aliasing=True) if resize else img
    lo, hi = work.min(), work.max()
    work = (work - lo) / (hi - lo) * 2 - 1 if hi > lo else work * 0
    area = (side / 224.0) ** 2
    if dilation is None:
        dilation = max(1, int(round(5 * max(h, w) / 224)))
    labels = []
    for s in scales:
        seg = felzenszwalb(work[..., 0] if c == 1 else work, scale=s * area, sigma=0.8,
                           min_size=max(2, int(round(min_size * area))), channel_axis=None if c == 1 else -1)
        if resize:
            seg = sk_resize(seg, (h, w), order=0, preserve_range=True, mode="constant",
                            anti_aliasing=False).astype(int)
        labels.append(relabel(seg))
    offsets = _disk_offsets(dilation)
    iy, ix = np.mgrid[0:h, 0:w]
    out = []
    for lab in labels:  # dilation by a disk: region l covers (y, x) if any pixel within the disk is l
        m = np.zeros((int(lab.max()) + 1, h, w), dtype=bool)
        for dy, dx in offsets:
            sy, sx = np.clip(iy + dy, 0, h - 1), np.clip(ix + dx, 0, w - 1)
            m[lab[sy, sx], iy, ix] = True
        out.append(m)
    return np.concatenate(out)


def xrai_from_attribution(attr: np.ndarray, masks: np.ndarray, min_pixel_diff: int | None = None,
                          area_threshold: float = 1.0):
    """XRAI's greedy region ranking: repeatedly add the region whose not-yet-covered pixels have the
    highest mean attribution (gain density); each pixel gets the gain of the region that first
    covered it. Returns (map (H, W), list of (region mask, gain) in the order added)."""
    h, w = attr.shape
    a = attr.reshape(-1).astype(np.float64)
    Mb = masks.reshape(len(masks), -1).astype(bool)
    if min_pixel_diff is None:
        min_pixel_diff = max(1, int(round(50 * h * w / 224 ** 2)))
    out = np.full(h * w, -np.inf)
    covered = np.zeros(h * w, dtype=bool)
    alive = np.ones(len(Mb), dtype=bool)
    cnt = Mb.sum(1).astype(np.float64)          # not-yet-covered pixels of each region
    gain_sum = Mb.astype(np.float64) @ a         # their summed attribution
    trace = []
    while covered.mean() < area_threshold:
        alive &= cnt >= min_pixel_diff
        if not alive.any():
            break
        gain = np.where(alive, gain_sum / np.maximum(cnt, 1), -np.inf)
        k = int(np.argmax(gain))
        new = Mb[k] & ~covered
        out[new] = gain[k]
        trace.append((new.reshape(h, w), float(gain[k])))
        covered |= new
        alive[k] = False
        cols = np.flatnonzero(new)               # update every region for the pixels just covered
        sub = Mb[:, cols]
        cnt -= sub.sum(1)
        gain_sum -= sub @ a[cols]
    rest = ~np.isfinite(out)
    if rest.any():
        out[rest] = a[rest].mean()
    return out.reshape(h, w), trace


def _xrai_baseline(model, x: torch.Tensor, b) -> torch.Tensor:
    """One of XRAI's baselines as a tensor like ``x``: a name or a grey level in [0, 1]."""
    if isinstance(b, str) and b in ("mean", "zero", "dataset_mean", "black", "white", "blur"):
        return baseline(model, x, "mean" if b == "dataset_mean" else b)
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        return grey(model, x, float(b))
    raise ValueError(f"baselines must be 'mean', 'black', 'white', 'blur' or grey levels in [0, 1]; got {b!r}")


@register("xrai", "XRAI: regions ranked by integrated-gradients density (Kapishnikov et al., 2019)")
def xrai_method(model, x, targets, *, steps: int = 32, baselines=("mean",), scales=SCALES,
                dilation: int | None = None, resize: int | None = None):
    """XRAI written from the paper: integrated gradients (averaged over ``baselines``, channels merged by
    max as in the reference code), Felzenszwalb over-segmentation at several ``scales``, greedy region
    ranking by attribution density. Map = the gain (mean attribution) of the region that covers a pixel.

    ``baselines``: any of 'mean' (the dataset mean, 0 in normalised units; default), 'black', 'white'
    (the paper's pair), 'blur', or a grey level in [0, 1]. A black baseline makes IG blind to dark
    evidence (dark dots on skin score ~0): the notebook shows it.
    """
    disp = to_display(x, model)
    attrs = [integrated_gradients_attr(model, x, targets, steps=steps, baseline=_xrai_baseline(model, x, b),
                                       rule=IG_RULE) for b in baselines]
    attr = torch.stack(attrs).mean(0).max(dim=1).values.cpu().numpy()
    maps = []
    for i in range(len(x)):
        masks = xrai_segments(disp[i], scales, dilation, resize)
        m, _ = xrai_from_attribution(attr[i], masks)
        maps.append(m)
    return np.stack(maps).astype(np.float32)


__all__ = ["xrai_method", "xrai_segments", "xrai_from_attribution", "SCALES"]
