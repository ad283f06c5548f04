"""Localisation: does an explanation map point where the evidence is? (maps against ground-truth masks).

Masks are planted evidence, expert lesion masks or rasterised boxes. These scores measure agreement
with a mask, which is not faithfulness to the model (a model may rightly use evidence outside it).

* Pointing game (Zhang et al., 2018): a hit when the map's maximum falls inside the mask (optionally
  within ``tolerance`` pixels of it). Chance level = the mask's area fraction.
* Relevance mass (Arras et al., 2022): share of the positive relevance that lies inside the mask.
  Chance level = area fraction again. (Score-CAM's "energy-based pointing game" is the same number.)
* Relevance rank accuracy (Arras et al., 2022): of the |mask| highest-ranked pixels, the share inside.
"""
from __future__ import annotations

import warnings

import numpy as np


def _as_np(a) -> np.ndarray:
    if hasattr(a, "maps"):                    # an Explanation
        a = a.maps
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _check(maps, masks):
    maps, masks = _as_np(maps).astype(np.float64), _as_np(masks).astype(bool)
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None] if masks.ndim == 2 else masks
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must have the same (N, H, W) shape; "
                         "resize masks to the map resolution (maps are at the model input size)")
    return maps, masks


def _dilate(masks: np.ndarray, r: int) -> np.ndarray:
    if r <= 0:
        return masks
    from scipy.ndimage import binary_dilation

    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (yy ** 2 + xx ** 2) <= r * r
    return np.stack([binary_dilation(m, structure=disk) for m in masks])


def pointing_hits(maps, masks, tolerance: int = 0) -> np.ndarray:
    """Per image: 1.0 if the map's maximum lies in the mask (grown by ``tolerance`` px), else 0.0;
    NaN for images whose mask is empty (no evidence to point at).

    Ties are split fairly: the hit is the share of the maximal pixels that lie in the mask (the
    chance that a pointer picking one of them at random lands inside). A constant map (a method
    that found nothing, e.g. an all-zero Grad-CAM) therefore scores the area fraction, not a hit.
    """
    maps, masks = _check(maps, masks)
    grown = _dilate(masks, int(tolerance))
    hits = np.full(len(maps), np.nan)
    for i, (m, g) in enumerate(zip(maps, grown)):
        if masks[i].any():
            hits[i] = float(g[m >= m.max()].mean()) if np.isfinite(m).all() else 0.0
    return hits


def pointing_game(maps, masks, tolerance: int = 0) -> float:
    """Share of images (with a non-empty mask) whose map maximum falls inside the mask."""
    h = pointing_hits(maps, masks, tolerance)
    if np.isnan(h).all():
        raise ValueError("every mask is empty: the pointing game needs at least one image with evidence")
    return float(np.nanmean(h))


def relevance_mass(maps, masks, positive: bool = True) -> np.ndarray:
    """Per image: (relevance inside the mask) / (total relevance); positive part by default, else |map|."""
    maps, masks = _check(maps, masks)
    r = np.clip(maps, 0, None) if positive else np.abs(maps)
    tot = r.reshape(len(r), -1).sum(1)
    inside = (r * masks).reshape(len(r), -1).sum(1)
    return np.where(tot > 0, inside / np.where(tot > 0, tot, 1), np.nan)


def relevance_rank_accuracy(maps, masks) -> np.ndarray:
    """Per image: share of the top-|mask| pixels of the map that lie inside the mask."""
    maps, masks = _check(maps, masks)
    out = np.full(len(maps), np.nan)
    for i, (m, k) in enumerate(zip(maps, masks)):
        n = int(k.sum())
        if n:
            top = np.argpartition(m.ravel(), -n)[-n:]
            out[i] = k.ravel()[top].mean()
    return out


def area_fraction(masks) -> np.ndarray:
    """Per image: the share of pixels inside the mask (the chance level of the scores above)."""
    masks = _as_np(masks).astype(bool)
    return masks.reshape(len(masks), -1).mean(1)


def per_image_scores(maps_by_method: dict, masks, score: str = "pointing_hits", tolerance: int = 0) -> dict:
    """Per method, the per-image ``score`` ("pointing_hits", "relevance_mass" or "rank_accuracy") of its maps.

    ``maps_by_method`` maps a method name to its (N, H, W) maps of the same N images as ``masks``; the
    result maps each name to an (N,) array (NaN where a mask is empty), ready for
    :func:`xai_helpers.evaluation.bootstrap_ci` or :func:`~xai_helpers.evaluation.paired_test`.
    """
    scorers = {"pointing_hits": lambda m: pointing_hits(m, masks, tolerance),
               "relevance_mass": lambda m: relevance_mass(m, masks),
               "rank_accuracy": lambda m: relevance_rank_accuracy(m, masks)}
    if score not in scorers:
        raise ValueError(f"unknown score {score!r}; choose one of {sorted(scorers)}")
    return {name: scorers[score](maps) for name, maps in maps_by_method.items()}


class ImagesLeftOutWarning(UserWarning):
    """A localisation score was averaged over fewer images than it was given (see ``left_out``)."""


class LocalizationScores(dict):
    """What :func:`score_maps` returns: the averages as a plain dict (one row of a table), plus

    * ``n_images``: how many (map, mask) pairs were given;
    * ``n_used``: per score, how many images its average is over;
    * ``left_out``: per score, ``{reason: count}`` for the images it could not score.
    """

    def __init__(self, scores: dict, n_images: int, n_used: dict, left_out: dict):
        super().__init__(scores)
        self.n_images, self.n_used, self.left_out = int(n_images), dict(n_used), dict(left_out)

    def report(self) -> str:
        """One line per score: images used of those given, and why any was left out."""
        lines = []
        for name, n in self.n_used.items():
            why = "; ".join(f"{c} {r}" for r, c in self.left_out.get(name, {}).items())
            lines.append(f"{name}: {n} of {self.n_images} images" + (f" (left out: {why})" if why else ""))
        return "\n".join(lines)


EMPTY_MASK = "mask empty (no evidence to point at)"
NOT_FINITE = "map has NaN or infinite values"
NO_POSITIVE = "map has no positive value (relevance mass is 0 / 0)"


def _left_out_reasons(maps: np.ndarray, masks: np.ndarray) -> dict:
    """Per score, an (N,) array of the reason each image cannot be scored ('' where it can)."""
    flat = maps.reshape(len(maps), -1)
    finite = np.isfinite(flat).all(1)
    has_mask = masks.reshape(len(masks), -1).any(1)
    positive = np.where(finite, np.clip(np.nan_to_num(flat), 0, None).sum(1) > 0, False)
    base = np.where(~has_mask, EMPTY_MASK, "").astype(object)
    mass = np.where(base != "", base, np.where(~finite, NOT_FINITE, np.where(~positive, NO_POSITIVE, "")))
    rank = np.where(base != "", base, np.where(~finite, NOT_FINITE, ""))
    # a non-finite map is a miss in the pointing game (pointing_hits), not a left-out image
    return {"pointing_game": base, "relevance_mass": mass.astype(object), "rank_accuracy": rank.astype(object)}


def score_maps(maps, masks, tolerance: int = 0, warn: bool = True, name: str | None = None) -> LocalizationScores:
    """All scores at once, averaged over images, with the chance level for comparison.

    Each score is averaged over the images it can score: an empty mask leaves an image out of every
    score (and of the chance level); a map with no positive value has no relevance mass (0 / 0), one
    with NaN values no mass or rank. The result says how many images each score used
    (``.n_used``) and why any was left out (``.left_out``, ``.report()``); ``warn`` raises an
    :class:`ImagesLeftOutWarning` when a map was left out, since a method that blanks most of its
    maps would otherwise be scored on the few it did not blank; ``name`` (e.g. the method) heads it.
    """
    maps, masks = _check(maps, masks)
    if not masks.any():
        raise ValueError("every mask is empty: localisation scores need at least one image with evidence")
    reasons = _left_out_reasons(maps, masks)
    per_image = {"pointing_game": pointing_hits(maps, masks, tolerance),
                 "relevance_mass": relevance_mass(maps, masks),
                 "rank_accuracy": relevance_rank_accuracy(maps, masks)}
    scores, n_used, left_out = {}, {}, {}
    for score, values in per_image.items():
        use = reasons[score] == ""
        scores[score] = float(values[use].mean()) if use.any() else float("nan")
        n_used[score] = int(use.sum())
        why, counts = np.unique(reasons[score][~use].astype(str), return_counts=True)
        left_out[score] = {str(r): int(c) for r, c in zip(why, counts)}
    has_mask = reasons["pointing_game"] == ""
    scores["chance (area fraction)"] = float(area_fraction(masks)[has_mask].mean())
    result = LocalizationScores(scores, len(maps), n_used, left_out)
    dropped = {k: v for k, v in left_out.items() if set(v) - {EMPTY_MASK}}
    if warn and dropped:
        head = f"{name}: " if name else ""
        warnings.warn(f"{head}localisation scores averaged over fewer images than given:\n{result.report()}\n"
                      "A map left out is not scored at all; compare n_used before comparing means.",
                      ImagesLeftOutWarning, stacklevel=2)
    return result


__all__ = ["pointing_game", "pointing_hits", "relevance_mass", "relevance_rank_accuracy", "area_fraction",
           "per_image_scores", "score_maps", "LocalizationScores", "ImagesLeftOutWarning"]
