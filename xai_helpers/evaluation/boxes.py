"""Expert boxes: does the map of a finding fall in the box a radiologist drew round it?

The protocol of Alam et al. (2023, "SHAMSUL") on NIH ChestX-ray14's boxed images: for each image and
each boxed finding, explain THAT finding's output and compare the map with the finding's box:

* **pointing**: 1 if the map's maximum lies in the box (ties shared fairly, see
  :func:`~xai_helpers.evaluation.pointing_hits`);
* **mass**: share of the positive relevance inside the box (:func:`~xai_helpers.evaluation.relevance_mass`);
* **iou**: intersection over union of the box with the map thresholded by Otsu's method
  (``skimage.filters.threshold_otsu``: the threshold that best splits the map's values in two);
* **area_fraction**: the box's share of the image: the chance level of pointing and mass (a map
  that knows nothing points into the box that often). For IoU, score the ``"random"`` method beside.

Several boxes of one finding on one image are merged into one mask. Boxes are dicts
``{"label", "x", "y", "w", "h"}`` in pixels of the image as given (what :func:`xai_helpers.data.load`
returns for ``"nih_cxr_bbox"``), or tuples ``(label, x, y, w, h)``.
"""
from __future__ import annotations

import numpy as np
import torch

from .localization import pointing_hits, relevance_mass
from .statistics import bootstrap_ci

BOX_SCORES = ("pointing", "mass", "iou")


def _box_fields(box, where: str) -> tuple[str, float, float, float, float]:
    if isinstance(box, dict):
        try:
            return str(box["label"]), *(float(box[k]) for k in ("x", "y", "w", "h"))
        except KeyError as err:
            raise ValueError(f"{where}: a box dict needs the keys label, x, y, w, h; missing {err}") from None
    if len(box) != 5:
        raise ValueError(f"{where}: a box is a dict or a tuple (label, x, y, w, h); got {box!r}")
    return str(box[0]), *(float(v) for v in box[1:])


def box_mask(box, shape: tuple[int, int], where: str = "box") -> np.ndarray:
    """(H, W) bool: the pixels whose centre lies in the box ``x <= c + 0.5 <= x + w`` (same for rows).

    A box too thin to hold a pixel centre still marks the pixel under its own centre. A box partly
    outside the image is clipped; an empty box (w or h <= 0, not finite) or one wholly outside the
    image is an error.
    """
    label, x, y, w, h = _box_fields(box, where)
    height, width = shape
    if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
        raise ValueError(f"{where} ({label}): box x={x}, y={y}, w={w}, h={h} is empty or not finite; "
                         "give a box with positive width and height in pixels")
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise ValueError(f"{where} ({label}): box x={x:.1f}..{x + w:.1f}, y={y:.1f}..{y + h:.1f} lies outside the "
                         f"{width} x {height} image; were the boxes scaled to the loaded size?")
    cols, rows = np.arange(width) + 0.5, np.arange(height) + 0.5
    m = ((rows >= y) & (rows <= y + h))[:, None] & ((cols >= x) & (cols <= x + w))[None, :]
    if not m.any():
        cy, cx = min(max(y + h / 2, 0), height - 1e-9), min(max(x + w / 2, 0), width - 1e-9)
        m[int(cy), int(cx)] = True
    return m


def finding_masks(boxes_per_image, shape: tuple[int, int]) -> list[tuple[int, str, np.ndarray]]:
    """``(image, finding, mask)`` per image and boxed finding (boxes of one finding merged), in order."""
    out = []
    for i, boxes in enumerate(boxes_per_image):
        merged: dict[str, np.ndarray] = {}
        for j, b in enumerate(boxes or ()):
            m = box_mask(b, shape, where=f"image {i}, box {j}")
            label = _box_fields(b, f"image {i}, box {j}")[0]
            merged[label] = merged[label] | m if label in merged else m
        out += [(i, f, m) for f, m in merged.items()]
    if not out:
        raise ValueError("no boxes given: boxes_per_image holds one (possibly empty) list of boxes per image, "
                         "and at least one image needs a box")
    return out


def otsu_iou(maps, masks) -> np.ndarray:
    """Per map: IoU of ``map > threshold_otsu(map)`` with the mask. A constant map marks no region: 0."""
    from skimage.filters import threshold_otsu

    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both be (N, H, W)")
    out = np.zeros(len(maps))
    for i, (m, k) in enumerate(zip(maps, masks)):
        if not np.isfinite(m).all():
            out[i] = np.nan
        elif m.max() > m.min():
            region = m > threshold_otsu(m)
            out[i] = (region & k).sum() / max((region | k).sum(), 1)
    return out


def score_box_maps(maps, masks) -> dict[str, np.ndarray]:
    """Per (map, mask) pair: pointing, mass, iou and area_fraction (the scores of the module docstring)."""
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks, dtype=bool)
    return {"pointing": pointing_hits(maps, masks), "mass": relevance_mass(maps, masks),
            "iou": otsu_iou(maps, masks), "area_fraction": masks.reshape(len(masks), -1).mean(1)}


def box_scores(model, images, boxes_per_image, method: str = "gradcam", *, method_options: dict | None = None,
               seed: int = 0, ids=None):
    """The SHAMSUL protocol for one method: a pandas DataFrame with one row per (image, boxed finding).

    images           (N, C, H, W) in the model's units, as :func:`~xai_helpers.explain.explain` takes them.
    boxes_per_image  N lists of boxes (see the module docstring), in pixels of these images.
    method           a name for ``explain``; each row explains the output of the row's finding.
    ids              optional N image names for the ``image`` column (default: the index).

    Columns: image, finding, method, pointing, mass, iou, area_fraction, seconds (per map). A finding
    the model has no output for is an error naming the model's outputs.
    """
    import pandas as pd

    from ..explain import explain
    from ..model_info import model_info

    if len(boxes_per_image) != len(images):
        raise ValueError(f"boxes_per_image has {len(boxes_per_image)} entries for {len(images)} images: "
                         "give one list of boxes per image (an empty list for an image without boxes)")
    names = model_info(model).class_names
    rows = finding_masks(boxes_per_image, tuple(images.shape[-2:]))
    unknown = sorted({f for _, f, _ in rows} - set(names))
    if unknown:
        raise ValueError(f"boxed findings {unknown} are not outputs of this model; its outputs are {list(names)}")
    idx = np.array([i for i, _, _ in rows])
    sel = images[torch.as_tensor(idx)] if isinstance(images, torch.Tensor) else np.asarray(images)[idx]
    exp = explain(model, sel, [f for _, f, _ in rows], method, seed=seed, **(method_options or {}))
    scores = score_box_maps(exp.maps, np.stack([m for _, _, m in rows]))
    image = [ids[i] for i in idx] if ids is not None else idx
    return pd.DataFrame({"image": image, "finding": [f for _, f, _ in rows], "method": method, **scores,
                         "seconds": exp.seconds / len(rows)})


def box_summary(table, n_boot: int = 1000, seed: int = 0, by=("method", "finding")):
    """Mean and bootstrap interval of each score per group of ``table`` (rows of :func:`box_scores`,
    several methods concatenated), beside the chance level (the mean box area fraction) and n.

    Returns a DataFrame indexed by ``by`` with columns ``<score>``, ``<score>_low``, ``<score>_high``
    for pointing, mass and iou, then ``chance`` and ``n``. ``by=("method",)`` pools the findings.
    """
    import pandas as pd

    out = {}
    for key, g in table.groupby(list(by), sort=False):
        row = {}
        for s in BOX_SCORES:
            v = g[s].to_numpy(dtype=np.float64)
            ci = bootstrap_ci(v, n_resamples=n_boot, seed=seed) if np.isfinite(v).any() else (np.nan,) * 3
            row.update({s: ci[0], f"{s}_low": ci[1], f"{s}_high": ci[2]})
        row.update(chance=float(g["area_fraction"].mean()), n=len(g))
        out[key if isinstance(key, tuple) else (key,)] = row
    res = pd.DataFrame.from_dict(out, orient="index")
    res.index = pd.MultiIndex.from_tuples(res.index, names=list(by)) if len(by) > 1 else \
        pd.Index([k[0] for k in res.index], name=by[0])
    return res


__all__ = ["BOX_SCORES", "box_mask", "finding_masks", "otsu_iou", "score_box_maps", "box_scores", "box_summary"]
