"""Is the model using the artifact? Three measurements of a shortcut (see :mod:`xai_helpers.artifacts`).

1. **AUC three ways** (:func:`shortcut_auc`): on test images with the artifact where training had it
   (on the positive class), on the same images clean, and with the artifact moved to the other class.
   A model that reads the lesion scores the same three times; the gap between the first and the last
   is how much of its AUC the artifact buys (the reliance).
2. **Counterfactual per image** (:func:`counterfactual_effect`): the change of the class probability
   when the artifact is added to (or, read the other way, removed from) the same image.
3. **Relevance on the artifact** (:func:`artifact_relevance`, :func:`relevance_scorecard`): for any
   ``explain()`` method, the share of positive relevance inside the artifact mask (relevance mass)
   and the pointing game, each against chance = the mask's area fraction.

Images are uint8 pixels; the model must declare its interface (``model.info``: see
:mod:`xai_helpers.model_info`), which says how to normalise them.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..artifacts import add_artifact
from ..model_info import model_info
from ._layers import _batches, model_device, resolve_target, to_model_input


def class_scores(model, images, target=1, batch_size: int | None = None) -> np.ndarray:
    """Probability of class ``target`` per image (softmax; sigmoid for multi-label models)."""
    k = resolve_target(model, target)
    x = to_model_input(model, images)
    multilabel = model_info(model).task == "multilabel"
    out = []
    model.eval()
    with torch.no_grad():
        for sl in _batches(x, batch_size):
            logits = model(x[sl].to(model_device(model))).float()
            p = torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)
            out.append(p[:, k].cpu())
    return torch.cat(out).numpy().astype(np.float64)


def _pick(labels_pos: np.ndarray, rate_pos: float, rate_neg: float, rng) -> np.ndarray:
    has = np.zeros(len(labels_pos), bool)
    for members, rate in ((np.flatnonzero(labels_pos), rate_pos), (np.flatnonzero(~labels_pos), rate_neg)):
        has[rng.choice(members, int(round(rate * len(members))), replace=False)] = True
    return has


def shortcut_auc(model, images, labels, artifact: str, positive=1, rate_positive: float = 1.0,
                 rate_negative: float = 0.0, seed: int = 0, avoid=None, batch_size: int | None = None,
                 return_counterfactual: bool = False):
    """ROC-AUC for "class ``positive`` vs the rest" on clean test ``images`` three ways.

    ``auc_shortcut``: the artifact on ``rate_positive`` of the positives and ``rate_negative`` of the
    rest (as in a shortcut training set); ``auc_clean``: the same images without it; ``auc_flipped``:
    the rates swapped, so the artifact sits on the other class. ``reliance`` = shortcut - flipped.
    Each image gets the same artifact in both conditions (a paired comparison).

    Two forward passes suffice (every image clean, every image with the artifact): in eval mode an
    image's score does not depend on its batch, so each condition picks, per image, one of the two.
    With ``return_counterfactual=True`` it returns ``(aucs, counterfactual)``, the second being
    :func:`counterfactual_effect` of adding the artifact to every image (from the same two passes)
    plus the drawn ``images`` and their ``masks``: the per-image check costs no further pass.
    """
    from sklearn.metrics import roc_auc_score

    pos_k = resolve_target(model, positive)
    y = np.asarray(labels) == pos_k
    if y.all() or not y.any():
        raise ValueError("shortcut_auc needs test images of both the positive class and the rest")
    drawn, masks = add_artifact(images, artifact, seed=seed, avoid=avoid)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 3]))
    cf = counterfactual_effect(model, images, drawn, target=pos_k, batch_size=batch_size)
    clean, with_artifact = cf["score_clean"], cf["score_artifact"]
    results = {"auc_clean": roc_auc_score(y, clean)}
    for name, (rp, rn) in (("auc_shortcut", (rate_positive, rate_negative)),
                           ("auc_flipped", (rate_negative, rate_positive))):
        has = _pick(y, rp, rn, rng)
        results[name] = roc_auc_score(y, np.where(has, with_artifact, clean))
    results = {k: float(v) for k, v in results.items()}
    results["reliance"] = results["auc_shortcut"] - results["auc_flipped"]
    results["n"] = int(len(y))
    if return_counterfactual:
        return results, dict(cf, images=drawn, masks=masks)
    return results


def counterfactual_effect(model, clean_images, artifact_images, target=1, batch_size: int | None = None) -> dict:
    """Per image, the change of P(``target``) when the artifact is added: score(with) - score(clean).

    Read it the other way for removal: a shortcut set's ``extra["clean_images"]`` are its images with
    the artifact removed. Returns ``delta`` (N,), ``score_clean``, ``score_artifact`` and the summary
    ``mean_delta``, ``mean_abs_delta`` and ``share_up`` (images whose score rose).
    """
    if np.shape(clean_images) != np.shape(artifact_images):
        raise ValueError(f"clean {np.shape(clean_images)} and artifact {np.shape(artifact_images)} images must "
                         "be the same images, same shape")
    a = class_scores(model, clean_images, target, batch_size)
    b = class_scores(model, artifact_images, target, batch_size)
    d = b - a
    return dict(delta=d, score_clean=a, score_artifact=b, mean_delta=float(d.mean()),
                mean_abs_delta=float(np.abs(d).mean()), share_up=float((d > 0).mean()))


def artifact_counterfactual(model, clean_images, artifact: str, target=1, seed: int = 0, avoid=None) -> dict:
    """:func:`counterfactual_effect` with the artifact drawn by :func:`~xai_helpers.artifacts.add_artifact`."""
    drawn, masks = add_artifact(clean_images, artifact, seed=seed, avoid=avoid)
    return dict(counterfactual_effect(model, clean_images, drawn, target), masks=masks)


def artifact_relevance(model, images, artifact_masks, method: str, target=1, batch_size: int = 16,
                       tolerance: int = 0, **options) -> dict:
    """How much of ``method``'s relevance for ``target`` lies on the artifact, against chance.

    Only images whose mask is not empty count. Returns per image ``relevance_mass`` (share of positive
    relevance inside the mask), ``pointing`` (1 if the map's maximum is inside), ``chance`` (the mask's
    area fraction), and their means, ``mass_over_chance`` and the method's ``seconds``.
    """
    from ..evaluation import area_fraction, pointing_hits, relevance_mass
    from ..explain import explain

    masks = np.asarray(artifact_masks, bool)
    keep = masks.reshape(len(masks), -1).any(1)
    if not keep.any():
        raise ValueError("every artifact mask is empty: pass the images that carry the artifact")
    imgs, masks = np.asarray(images)[keep], masks[keep]
    k = resolve_target(model, target)
    x = to_model_input(model, imgs)
    maps, seconds = [], 0.0
    for sl in _batches(x, batch_size):
        t0 = time.perf_counter()
        maps.append(explain(model, x[sl], target=k, method=method, **options).maps)
        seconds += time.perf_counter() - t0
    maps = np.concatenate(maps)
    mass, hits, chance = relevance_mass(maps, masks), pointing_hits(maps, masks, tolerance), area_fraction(masks)
    return dict(method=method, relevance_mass=mass, pointing=hits, chance=chance, n=int(keep.sum()),
                mean_mass=float(np.nanmean(mass)), mean_pointing=float(np.nanmean(hits)),
                mean_chance=float(chance.mean()), mass_over_chance=float(np.nanmean(mass) / chance.mean()),
                seconds=seconds, maps=maps)


def relevance_scorecard(model, images, artifact_masks, methods=("gradcam", "lrp", "integrated_gradients"),
                        target=1, options: dict | None = None, **kw) -> dict:
    """:func:`artifact_relevance` for several methods: {method: summary without the per-image arrays}.

    ``options`` gives per-method keyword arguments, e.g. ``{"lime": {"n_samples": 200}}``.
    """
    options = options or {}
    card = {}
    for m in methods:
        r = artifact_relevance(model, images, artifact_masks, m, target, **kw, **options.get(m, {}))
        card[m] = {k: r[k] for k in ("n", "mean_mass", "mean_pointing", "mean_chance", "mass_over_chance",
                                     "seconds")}
    return card


__all__ = ["class_scores", "shortcut_auc", "counterfactual_effect", "artifact_counterfactual",
           "artifact_relevance", "relevance_scorecard"]
