"""LIME (Ribeiro et al., 2016) on superpixels: chapter 05.

For one image and one output, LIME fits a simple model that is faithful near that image:

1. sample ``num_samples`` 0/1 vectors z over the M superpixels (1 = keep, 0 = hide);
2. run the model on the images they describe;
3. weight each sample by its proximity to the image, pi(z) = sqrt(exp(-d(z, 1)^2 / width^2)), d the
   cosine distance to the all-ones vector;
4. fit the weighted ridge regression g(z) = w0 + sum_j w_j z_j: w_j is superpixel j's importance.

:func:`lime_one` follows ``lime_image`` line by line (same sampling stream, same per-segment-mean
"hide" colour, same cosine kernel, same weighted ridge) and is checked against it in
``tests/test_perturbation.py``; ``backend="library"`` calls ``lime_image`` itself. Every random draw
comes from a seeded ``numpy.random.RandomState`` (lime seeds only its segmentation, and with
scikit-image >= 0.26 not even that: quickshift's ``random_seed`` argument became ``rng`` and lime's
value is silently dropped).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import check_backend, check_count, register
from ..imaging import from_display, to_display
from ..model_info import model_info
from ._random import global_random_state_kept, numpy_rng
from .superpixels import coalition_outputs, fill, model_outputs, paint, segmentation_options, segments_for


def lime_kernel(distances: np.ndarray, kernel_width: float = 0.25) -> np.ndarray:
    """lime_image's proximity weight: sqrt(exp(-d^2 / width^2)) of the cosine distance d to all-ones."""
    return np.sqrt(np.exp(-(distances ** 2) / kernel_width ** 2))


def cosine_distance_to_ones(Z: np.ndarray) -> np.ndarray:
    """Cosine distance between each 0/1 row and the all-ones row (1 for an all-zero row, as sklearn)."""
    Z = np.asarray(Z, dtype=np.float64)
    norm = np.sqrt((Z ** 2).sum(1))
    sim = np.divide(Z.sum(1), norm * math.sqrt(Z.shape[1]), out=np.zeros(len(Z)), where=norm > 0)
    return 1.0 - sim


def weighted_ridge(X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, alpha: float = 1.0):
    """sklearn ``Ridge(alpha, fit_intercept=True).fit(X, y, sample_weight)`` in closed form.

    Returns (coef, intercept, weighted R^2 score) - the score lime reports as the surrogate's fit.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    sw = np.asarray(sample_weight, dtype=np.float64)
    W = sw / sw.sum()
    xm = W @ X
    ym = W @ y
    Xc = X - xm
    yc = y - ym
    A = Xc.T @ (Xc * sw[:, None]) + alpha * np.eye(X.shape[1])
    coef = np.linalg.solve(A, Xc.T @ (yc * sw))
    intercept = ym - xm @ coef
    pred = X @ coef + intercept
    ss_res = (sw * (y - pred) ** 2).sum()
    ss_tot = (sw * (y - ym) ** 2).sum()
    score = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    return coef, float(intercept), float(score)


def lime_one(model, x1: torch.Tensor, target: int, seg: np.ndarray, *, num_samples: int = 1000,
             kernel_width: float = 0.25, hide="segment_mean", output: str = "prob", batch_size: int | None = None,
             random_state=None, alpha: float = 1.0, precision: str = "float32") -> dict:
    """LIME for one image, faithful to ``lime_image.LimeImageExplainer.explain_instance``.

    1. sample ``num_samples`` 0/1 vectors over the M superpixels (the first one keeps all of them),
       with the same draw as lime (``RandomState.randint(0, 2, num_samples * M)``);
    2. compose the perturbed images (switched-off superpixels replaced by ``hide``) and run the model
       on them in batches;
    3. weight each sample by its proximity to the original, pi(z) = sqrt(exp(-d(z, 1)^2 / width^2))
       with d the cosine distance in the 0/1 space (``kernel_width`` = 0.25, lime's default for images:
       small widths trust only samples that keep most superpixels);
    4. fit the weighted ridge regression g(z) = w0 + sum_j w_j z_j; w_j is superpixel j's importance.

    Returns dict(weights (M,), intercept, score (weighted R^2 of the surrogate), Z, y, kernel weights).
    """
    num_samples = check_count("num_samples", num_samples)
    rs = numpy_rng(random_state)
    m = int(seg.max()) + 1
    Z = rs.randint(0, 2, num_samples * m).reshape(num_samples, m)
    Z[0, :] = 1
    hidden = fill(model, x1, seg, hide)
    out = model_outputs(model, coalition_outputs(model, x1, seg, Z, hidden, batch_size, precision), output)
    y = out[:, target].double().cpu().numpy()
    pi = lime_kernel(cosine_distance_to_ones(Z), kernel_width)
    coef, intercept, score = weighted_ridge(Z, y, pi, alpha)
    return dict(weights=coef, intercept=intercept, score=score, Z=Z, y=y, kernel=pi, segments=seg)


def _lime_hide_color(model, hide):
    if hide in (None, "segment_mean"):
        return None
    if isinstance(hide, (int, float)):
        return float(hide)
    if hide == "dataset_mean":
        return float(np.mean(model_info(model).mean))
    raise ValueError(f"backend='library' (lime_image) supports hide='segment_mean', 'dataset_mean' or a grey "
                     f"level, not {hide!r}")


def lime_image_one(model, x1: torch.Tensor, target: int, seg: np.ndarray, *, num_samples: int = 1000,
                   kernel_width: float = 0.25, hide="segment_mean", output: str = "prob",
                   batch_size: int = 10, random_state=None) -> dict:
    """The same explanation through the ``lime`` library itself (for cross-checks and timing).

    A wrapper fixes what lime gets wrong on medical images: grayscale inputs (lime converts them to
    RGB; the classifier function converts back), channel order (lime wants H, W, C in [0, 1]-like
    units), seeding (lime's ``random_state`` is seeded, and the segmentation is passed in), and the
    model call (``torch.no_grad`` on the model's device). The global random state is left as it was.
    """
    from lime import lime_image

    seed = random_state if isinstance(random_state, int) else int(numpy_rng(random_state).randint(0, 2**31 - 1))
    img = to_display(x1[None], model, clip=False)[0].astype(np.float64)  # H, W, C
    c = img.shape[2]
    hide_color = _lime_hide_color(model, hide)

    def classifier_fn(batch):
        b = np.asarray(batch, dtype=np.float32)
        if c == 1:
            b = b[..., :1]  # lime made the grayscale image RGB; the model wants one channel
        with torch.no_grad():
            return model_outputs(model, model(from_display(b, model, x1)), output).cpu().numpy()

    with global_random_state_kept():
        explainer = lime_image.LimeImageExplainer(kernel_width=kernel_width, random_state=seed)
        e = explainer.explain_instance(img[..., 0] if c == 1 else img, classifier_fn, labels=(target,),
                                       top_labels=None, hide_color=hide_color, num_samples=num_samples,
                                       batch_size=batch_size, segmentation_fn=lambda _im: seg, random_seed=seed)
    w = np.zeros(int(seg.max()) + 1)
    for j, v in e.local_exp[target]:
        w[j] = v
    return dict(weights=w, intercept=float(e.intercept[target]), score=float(e.score), segments=seg)


def segmentation_extra(options: dict):
    """What LIME and exact Shapley pass on to the segmentation, for explain's option check."""
    method = options.get("segmentation", "slic")
    return f"segmentation={method!r}", segmentation_options(method) if isinstance(method, str) else []


@register("lime", "LIME: weighted ridge surrogate over superpixels (seeded, batched; SLIC by default)",
          extra_options=segmentation_extra, whole_batch=True)
def lime_method(model, x, targets, *, num_samples: int = 1000, segmentation: str = "slic",
                n_segments: int | None = None, segments=None, kernel_width: float = 0.25,
                hide="segment_mean", output: str = "prob", batch_size: int | None = None, random_state=None,
                backend: str = "ours", precision: str = "auto", rng=None, engine=None, **seg_kw):
    """LIME (Ribeiro et al., 2016) on superpixels; map = each superpixel's weight painted on its pixels.

    Options: ``num_samples`` perturbed images per explanation; ``segmentation`` 'slic' (default) |
    'quickshift' (lime's default) | 'felzenszwalb' | 'grid', with ``n_segments`` (default scaled to
    the image size) or explicit ``segments`` (H, W) / (N, H, W) / callable; ``kernel_width`` of the
    proximity kernel; ``hide`` 'segment_mean' | 'dataset_mean' | 'blur' | grey level;
    ``output`` 'prob' | 'logit'; ``backend`` 'ours' (:func:`lime_one`, batched) | 'library' (lime_image);
    ``precision`` of the forward passes (backend 'ours'): 'auto' (bfloat16 where the hardware runs it
    natively, e.g. CPUs with AMX or AVX512-BF16; float32 elsewhere) | 'float32' | 'bfloat16'. The surrogate
    fits probabilities that bfloat16 changes by ~1e-3, far below LIME's sampling noise (notebook 05).
    """
    if engine is not None:
        raise ValueError(f"LIME's engine= option is now backend=: engine='fast' -> backend='ours', "
                         f"engine='lime_image' -> backend='library' (got engine={engine!r})")
    backend = check_backend(backend)
    num_samples = check_count("num_samples", num_samples)
    rs = numpy_rng(random_state, rng)
    segs = segments_for(model, x, segments, segmentation, n_segments, int(rs.randint(0, 2**31 - 1)), seg_kw)
    maps = []
    for i in range(len(x)):
        seed_i = int(rs.randint(0, 2**31 - 1))
        if backend == "ours":
            r = lime_one(model, x[i], int(targets[i]), segs[i], num_samples=num_samples, kernel_width=kernel_width,
                         hide=hide, output=output, batch_size=batch_size, random_state=seed_i,
                         precision=precision)
        else:
            r = lime_image_one(model, x[i], int(targets[i]), segs[i], num_samples=num_samples,
                               kernel_width=kernel_width, hide=hide, output=output,
                               batch_size=batch_size if batch_size is not None else 10, random_state=seed_i)
        maps.append(paint(r["weights"], segs[i]))
    return np.stack(maps)


__all__ = ["lime_one", "lime_image_one", "lime_method", "lime_kernel", "cosine_distance_to_ones", "weighted_ridge"]
