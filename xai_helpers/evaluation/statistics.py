"""How sure are we? Intervals and tests for per-image explanation scores.

A table of mean scores over a dozen images hides how much those means would move on another dozen.
Everything here takes per-image scores (one number per image, e.g. from
:func:`~xai_helpers.evaluation.per_image_scores`), ignores images whose score is NaN (an empty mask),
and draws its random numbers from a local generator seeded by ``seed``: calling it never touches the
global NumPy state, and the same call gives the same answer.

* :func:`bootstrap_ci`: percentile bootstrap interval of the mean (Efron & Tibshirani, 1993).
* :func:`paired_test`: two methods on the same images, Wilcoxon signed-rank or sign-flip permutation.
* :func:`holm`: Holm (1979) step-down adjustment when several pairs are tested at once.
* :func:`friedman`: all methods at once, with each method's mean rank (Demšar, 2006).
* :func:`critical_difference` and :func:`rank_groups`: after Friedman, which mean ranks differ
  (Nemenyi's all-pairs test, Demšar's critical-difference diagram).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Interval(NamedTuple):
    mean: float
    low: float
    high: float


class PairedResult(NamedTuple):
    statistic: float
    pvalue: float
    method: str
    n: int                      # pairs used (both scores finite)


class FriedmanResult(NamedTuple):
    statistic: float            # chi-squared, tie-corrected
    pvalue: float
    mean_ranks: dict            # method -> mean rank over images, 1 = best
    n: int                      # images used (every score finite)


def _scores(values, name: str = "values") -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be one score per image (1-D); got shape {v.shape}")
    return v


def bootstrap_ci(values, n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Mean of the per-image ``values`` and its percentile bootstrap interval at ``level``.

    Images are resampled with replacement ``n_resamples`` times; the interval holds the middle
    ``level`` share of the resampled means. NaN values (images without a score) are left out.
    """
    v = _scores(values)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        raise ValueError("no finite scores to bootstrap: every value is NaN (were all masks empty?)")
    if not 0 < level < 1:
        raise ValueError(f"level is a probability such as 0.95, got {level}")
    rng = np.random.default_rng(seed)
    means = rng.choice(v, size=(int(n_resamples), len(v)), replace=True).mean(1)
    tail = round(50 * (1 - level), 10)              # percent in each tail: 2.5 for level 0.95
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(v.mean()), float(low), float(high))


def _paired(a, b) -> np.ndarray:
    a, b = _scores(a, "a"), _scores(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a paired test needs the same images in a and b; got {len(a)} and {len(b)} scores")
    keep = ~(np.isnan(a) | np.isnan(b))
    if keep.sum() < 2:
        raise ValueError("fewer than 2 images have a finite score in both a and b")
    return a[keep] - b[keep]


def _sign_flip_pvalue(d: np.ndarray, n_resamples: int, seed: int) -> float:
    """Two-sided p of mean(d) under random sign flips (exact when 2**n <= n_resamples)."""
    observed = abs(d.mean())
    slack = 1e-12 * max(1.0, float(np.abs(d).max()))      # equal means must count as "as extreme"
    n = len(d)
    if 2 ** n <= n_resamples:
        codes = np.arange(2 ** n)[:, None] >> np.arange(n) & 1
        return float(np.mean(np.abs((1 - 2 * codes) @ d) / n >= observed - slack))
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, n_resamples, 4096):
        signs = rng.choice((-1.0, 1.0), size=(min(4096, n_resamples - start), n))
        extreme += int(np.sum(np.abs(signs @ d) / n >= observed - slack))
    return (1 + extreme) / (1 + n_resamples)


def paired_test(a, b, method: str = "wilcoxon", n_resamples: int = 10000, seed: int = 0) -> PairedResult:
    """Two-sided test that two methods score the same on the same images (``a[i]``, ``b[i]``: image i).

    ``"wilcoxon"``: signed-rank test (scipy); statistic = the smaller signed-rank sum, images with a
    zero difference are dropped. ``"permutation"``: statistic = mean(a - b), p = share of random sign
    flips of the differences whose mean is at least as far from 0 (all flips when there are few images).
    """
    d = _paired(a, b)
    if method == "wilcoxon":
        from scipy.stats import wilcoxon

        if not np.any(d):
            return PairedResult(0.0, 1.0, method, len(d))
        res = wilcoxon(d)
        return PairedResult(float(res.statistic), float(res.pvalue), method, len(d))
    if method == "permutation":
        return PairedResult(float(d.mean()), _sign_flip_pvalue(d, int(n_resamples), seed), method, len(d))
    raise ValueError(f"unknown method {method!r}; choose 'wilcoxon' or 'permutation'")


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values, in the input order: reject hypothesis i at level alpha if ``adjusted[i] <= alpha``.

    The k-th smallest p is multiplied by (m - k + 1) and the results are made non-decreasing (capped at 1).
    """
    p = _scores(pvalues, "pvalues")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p-values must lie in [0, 1] (no NaN); got {p}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def _score_matrix(scores) -> tuple[list[str], np.ndarray]:
    if isinstance(scores, dict):
        names, cols = list(scores), [_scores(v, f"scores[{k!r}]") for k, v in scores.items()]
        if len({len(c) for c in cols}) > 1:
            raise ValueError(f"every method needs a score for the same images; got lengths {[len(c) for c in cols]}")
        return [str(n) for n in names], np.stack(cols, axis=1)
    if hasattr(scores, "columns"):                            # a pandas DataFrame: images x methods
        return [str(c) for c in scores.columns], np.asarray(scores, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be a dict of per-image arrays or an (images, methods) array; got {s.shape}")
    return [str(k) for k in range(s.shape[1])], s


def friedman(scores, higher_is_better: bool = True) -> FriedmanResult:
    """Friedman test that all methods score alike, and each method's mean rank (1 = best).

    ``scores``: a dict method -> per-image scores, a DataFrame (images x methods) or an (images,
    methods) array. Images are the blocks: each image ranks the methods (ties share the average rank).
    Images with any NaN score are left out. Needs at least 3 methods (for 2, use :func:`paired_test`).
    """
    from scipy.stats import friedmanchisquare, rankdata

    names, s = _score_matrix(scores)
    s = s[~np.isnan(s).any(axis=1)]
    if s.shape[1] < 3:
        raise ValueError(f"Friedman needs at least 3 methods, got {s.shape[1]}; compare two with paired_test")
    if len(s) < 2:
        raise ValueError("Friedman needs at least 2 images with a finite score for every method")
    ranks = rankdata(-s if higher_is_better else s, axis=1)
    mean_ranks = dict(zip(names, ranks.mean(0).tolist()))
    if np.all(s == s[:, :1]):                                # every image ties every method
        return FriedmanResult(0.0, 1.0, mean_ranks, len(s))
    res = friedmanchisquare(*s.T)
    return FriedmanResult(float(res.statistic), float(res.pvalue), mean_ranks, len(s))


def critical_difference(n_methods: int, n_images: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of mean ranks (Demšar, 2006, eq. 5): two of ``n_methods`` methods
    ranked on ``n_images`` images differ at level ``alpha`` (all pairs at once) when their mean ranks
    differ by more than ``q_alpha * sqrt(k (k + 1) / (6 N))``, with ``q_alpha`` the studentized range
    quantile divided by sqrt(2) (2.343 for 3 methods, 2.728 for 5, Demšar's table 5)."""
    from scipy.stats import studentized_range

    if n_methods < 2 or n_images < 1:
        raise ValueError(f"a critical difference needs at least 2 methods and 1 image; got {n_methods}, {n_images}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha is a probability in (0, 1), got {alpha}")
    q = studentized_range.ppf(1 - alpha, n_methods, np.inf) / np.sqrt(2)
    return float(q * np.sqrt(n_methods * (n_methods + 1) / (6.0 * n_images)))


def rank_groups(mean_ranks: dict, cd: float) -> list[list[str]]:
    """The groups a critical-difference diagram joins with a bar: maximal runs of methods, in mean-rank
    order, whose ranks lie within ``cd`` of each other (no pair inside a group differs). Groups of one
    method are left out."""
    order = sorted(mean_ranks, key=mean_ranks.get)
    groups = []
    for i, m in enumerate(order):
        j = i
        while j + 1 < len(order) and mean_ranks[order[j + 1]] - mean_ranks[m] < cd:
            j += 1
        group = order[i:j + 1]
        if len(group) > 1 and not any(set(group) <= set(g) for g in groups):
            groups.append(group)
    return groups


__all__ = ["Interval", "PairedResult", "FriedmanResult", "bootstrap_ci", "paired_test", "holm", "friedman",
           "critical_difference", "rank_groups"]
