"""Splits that do not leak: the official split when there is one, else grouped AND stratified.

A group (lesion, patient) lies on one side only; every class (every finding, for multi-label sets)
reaches each side. ``check_split`` asserts it.
"""
from __future__ import annotations

import numpy as np

from ..imageset import ImageSet


def _strata(ds: ImageSet) -> np.ndarray:
    """One stratum per image: the label (single-label) or the rarest positive finding (-1 = none)."""
    if ds.task == "multilabel":
        lab = ds.labels > 0.5
        freq = lab.sum(axis=0)
        rank = np.argsort(np.argsort(freq, kind="stable"), kind="stable")   # 0 = rarest finding
        r = np.where(lab, rank[None, :], len(freq))
        best = r.min(axis=1)
        order = np.argsort(rank)
        return np.where(best < len(freq), order[np.clip(best, 0, len(freq) - 1)], -1)
    return np.asarray(ds.labels).astype(np.int64)


def split(ds: ImageSet, val: float = 0.15, test: float = 0.15, seed: int = 0,
          use_official: bool = True) -> dict:
    """Indices ``{"train", "val", "test"}``: the official split when the set has one (and
    ``use_official``), else stratified AND grouped: every group (lesion, patient) lies on one side only.

    A group is stratified by its rarest label (so every class, and every finding, reaches each side);
    groups of each stratum are shuffled with ``seed`` and dealt out until each side has its share of
    images. Deterministic for a given ``seed``.
    """
    if ds.official_split is not None and use_official:
        return {p: np.flatnonzero(ds.official_split == p) for p in ("train", "val", "test")}
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val and test are fractions with val + test < 1, got val={val}, test={test}")
    strata = _strata(ds)
    groups = np.asarray(ds.groups).astype(str)
    uniq, ginv = np.unique(groups, return_inverse=True)
    gsize = np.bincount(ginv)
    # a group's stratum: the rarest stratum among its images (least frequent overall)
    s_vals, s_inv = np.unique(strata, return_inverse=True)
    s_freq = np.bincount(s_inv)
    s_rank = np.argsort(np.argsort(s_freq, kind="stable"), kind="stable")
    g_rank = np.full(len(uniq), len(s_vals))
    np.minimum.at(g_rank, ginv, s_rank[s_inv])
    rng = np.random.default_rng(seed)
    side = np.empty(len(uniq), dtype="<U5")
    for r in range(len(s_vals)):
        gs = np.flatnonzero(g_rank == r)
        if not len(gs):
            continue
        gs = gs[rng.permutation(len(gs))]
        total = gsize[gs].sum()
        cum = np.cumsum(gsize[gs]) - gsize[gs] / 2.0            # image count at each group's middle
        side[gs] = np.where(cum < test * total, "test", np.where(cum < (test + val) * total, "val", "train"))
    img_side = side[ginv]
    return {p: np.flatnonzero(img_side == p) for p in ("train", "val", "test")}


def check_split(ds: ImageSet, parts: dict) -> None:
    """Raise AssertionError if an image is on two sides, or a group crosses sides."""
    seen = {}
    for p, idx in parts.items():
        for g in np.unique(np.asarray(ds.groups)[idx]):
            if g in seen and seen[g] != p:
                raise AssertionError(f"group {g!r} is in both {seen[g]} and {p}")
            seen[g] = p
    allidx = np.concatenate([np.asarray(v) for v in parts.values()])
    if len(np.unique(allidx)) != len(allidx):
        raise AssertionError("an image is in two parts of the split")
