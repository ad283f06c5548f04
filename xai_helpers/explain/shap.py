"""Shapley values for images: chapter 06.

* :func:`expected_gradients` (Erion et al., 2021), what ``shap.GradientExplainer`` computes, with the
  same random stream but every sample in a few large batches and only the target differentiated
  (``tests/benchmarks/bench_perturbation.py``: several times faster at the same number of samples);
* ``shap_partition``: Owen values over shap's hierarchical image partition (the library itself);
* :func:`exact_shapley_one`: exact Shapley values over <= 12 superpixels (all 2^M coalitions), checked
  against KernelSHAP on the same game (:func:`kernel_shap_superpixels`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import check_count, register
from ..config import images_per_pass
from ..imaging import from_display, to_display
from ._random import global_random_state_kept, numpy_rng, randn_like
from .speed import batched_forward, inference_mode, resolve_precision
from .superpixels import coalition_outputs, fill, model_outputs, paint, segments_for

MAX_EXACT_PLAYERS = 12


# --- expected gradients ----------------------------------------------------------------------------
def _background(x: torch.Tensor, background) -> torch.Tensor:
    if background is None:
        background = torch.zeros_like(x[:1])  # the dataset-mean image in normalised units
    background = torch.as_tensor(background, dtype=x.dtype, device=x.device)
    if background.ndim == 3:
        background = background[None]
    if background.shape[1:] != x.shape[1:]:
        raise ValueError(f"background must have shape (B, {', '.join(map(str, x.shape[1:]))}); "
                         f"got {tuple(background.shape)}")
    return background


def _shap_draws(rs: np.random.RandomState, n: int, nsamples: int, n_background: int):
    """shap's stream: per image a RandomState seeded by one draw, then (choice, uniform) per sample."""
    rind = np.empty((n, nsamples), dtype=np.int64)
    ts = np.empty((n, nsamples), dtype=np.float64)
    for j in range(n):
        rs_j = np.random.RandomState(int(rs.randint(0, 10**6)))  # shap's rseed for this image
        for k in range(nsamples):
            rind[j, k] = rs_j.choice(n_background)
            ts[j, k] = rs_j.uniform()
    return rind, ts


def expected_gradients(model, x: torch.Tensor, targets: torch.Tensor, background: torch.Tensor | None = None,
                       nsamples: int = 50, batch_size: int | None = None, random_state=None,
                       local_smoothing: float = 0.0, precision: str = "float32", *, rng=None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Expected gradients (Erion et al., 2021), as ``shap.GradientExplainer`` computes them.

    phi(x) = E_{x' ~ background, t ~ U(0,1)} [ (x - x') * d f_target(x' + t (x - x')) / dx ]

    The draws (background row, t) follow shap's own stream (``choice`` then ``uniform`` per sample,
    from ``rseed`` = one draw per image) so that, with the same seed, the result equals shap's to float
    precision; but every sample of every image goes through the model in a few large batches and only
    the target output is differentiated (shap, by default, differentiates every output in turn).
    ``precision``: 'float32' (default here: equal to shap), 'bfloat16' (forward and backward under
    autocast: about 2x faster where the hardware runs it natively; the gradients move far less than
    the sampling noise of ``nsamples`` draws, see ``tests/test_perturbation.py``) or 'auto'.
    Returns (N, C, H, W) attributions.
    """
    nsamples = check_count("nsamples", nsamples)
    precision = resolve_precision(precision, x.device)
    background = _background(x, background)
    n = len(x)
    rind, ts = _shap_draws(numpy_rng(random_state, rng), n, nsamples, background.shape[0])
    rind_t = torch.as_tensor(rind.reshape(-1), device=x.device)
    t_t = torch.as_tensor(ts.reshape(-1), dtype=x.dtype, device=x.device)[:, None, None, None]
    img_idx = torch.arange(n, device=x.device).repeat_interleave(nsamples)
    tgt = targets.to(x.device)[img_idx]
    total = torch.zeros_like(x)                  # summed per image: memory of the batch, not of every sample
    batch_size = images_per_pass(x, batch_size)       # default: as many images as fit the pixel budget
    with inference_mode(model, x.device, precision, like=x):
        for i in range(0, n * nsamples, batch_size):
            sl = slice(i, i + batch_size)
            xi, bi = x[img_idx[sl]], background[rind_t[sl]]
            if local_smoothing > 0:
                xi = xi + randn_like(xi, generator) * local_smoothing
            inp = (bi + t_t[sl] * (xi - bi)).detach().requires_grad_(True)
            with torch.enable_grad():
                out = model(inp)
                (g,) = torch.autograd.grad(out.gather(1, tgt[sl, None]).float().sum(), inp)
            total.index_add_(0, img_idx[sl], g * (xi - bi))
    return (total / nsamples).detach()


@register("expected_gradients", "SHAP expected gradients (GradientExplainer), one batched backward pass",
          whole_batch=True)
def expected_gradients_method(model, x, targets, *, background=None, nsamples: int = 50, batch_size: int | None = None,
                              random_state=None, local_smoothing: float = 0.0, precision: str = "auto",
                              rng=None, generator=None):
    """Expected gradients; ``background`` (B, C, H, W) normalised images (default: the mean image),
    ``nsamples`` gradient samples per image; ``precision`` 'auto' (bfloat16 where the hardware runs it
    natively, float32 elsewhere) | 'float32' (equal to ``shap.GradientExplainer``) | 'bfloat16'.
    Map = attribution summed over channels."""
    return expected_gradients(model, x, targets, background, nsamples, batch_size, random_state,
                              local_smoothing, precision, rng=rng, generator=generator).sum(1)


register("shap", "SHAP expected gradients (alias of 'expected_gradients')", whole_batch=True)(expected_gradients_method)


class _Pick(torch.nn.Module):
    """The model restricted to one output (shap then differentiates only that one)."""

    def __init__(self, model, target: int):
        super().__init__()
        self.model, self.target = model, target

    def forward(self, z):
        return self.model(z)[:, self.target:self.target + 1]


def shap_gradient_library(model, x: torch.Tensor, targets, background=None, nsamples: int = 50,
                          random_state=None, batch_size: int = 50, all_outputs: bool = False) -> np.ndarray:
    """``shap.GradientExplainer`` itself (cross-check and timing): (N, C, H, W) for each image's target.

    ``all_outputs=True`` is the library's default call (no ``ranked_outputs``): it differentiates every
    model output, one after the other, and the target's slice is returned. The global random state is
    left as it was.
    """
    import shap

    if background is None:
        background = torch.zeros_like(x[:1])
    rs = numpy_rng(random_state)
    res = []
    with global_random_state_kept():
        every = shap.GradientExplainer(model, background, batch_size=batch_size) if all_outputs else None
        for j in range(len(x)):
            seed = int(rs.randint(0, 10**6))
            if all_outputs:
                sv = np.asarray(every.shap_values(x[j:j + 1], nsamples=nsamples, rseed=seed))[..., int(targets[j])]
            else:
                ex = shap.GradientExplainer(_Pick(model, int(targets[j])), background, batch_size=batch_size)
                sv = np.asarray(ex.shap_values(x[j:j + 1], nsamples=nsamples, rseed=seed))
                sv = sv.reshape(sv.shape[:4])
            res.append(sv[0])
    return np.stack(res)


@register("shap_partition", "SHAP Partition explainer with an image masker (blur or inpaint)", whole_batch=True)
def shap_partition_method(model, x, targets, *, max_evals: int = 500, masker: str = "blur", batch_size: int | None = None,
                          output: str = "logit"):
    """Owen values over shap's hierarchical image partition (``shap.PartitionExplainer`` +
    ``shap.maskers.Image``). ``masker``: 'blur' (= 'blur(s,s)' with s = side/4), 'inpaint_telea',
    'inpaint_ns', or any string shap accepts; ``max_evals`` model calls per image (the partition tree is
    refined while budget remains). Images are given to shap as (H, W, C) in 0-255 units (its inpainting
    maskers cast to uint8; grayscale as 3 equal channels, which the model function turns back into one);
    values are per unit of the model output, as usual."""
    import shap

    disp = to_display(x, model).astype(np.float32)
    n, h, w, c = disp.shape
    batch_size = images_per_pass(x, batch_size)
    if masker == "blur":
        k = max(3, (max(h, w) // 4) | 1)
        masker = f"blur({k},{k})"
    img3 = (np.repeat(disp, 3, axis=3) if c == 1 else disp) * 255.0
    maps = []
    for i in range(n):
        t = int(targets[i])

        def f(batch, t=t):
            b = np.asarray(batch, dtype=np.float32) / 255.0
            if c == 1:
                b = b[..., :1]
            xt = from_display(b, model, x[i])
            return model_outputs(model, batched_forward(model, xt, batch_size), output)[:, t:t + 1].cpu().numpy()

        with global_random_state_kept():
            ex = shap.PartitionExplainer(f, shap.maskers.Image(masker, img3[i].shape))
            sv = ex(img3[i:i + 1], max_evals=max_evals, batch_size=batch_size, silent=True)
        v = np.asarray(sv.values)[0]  # (H, W, 3, 1)
        maps.append(v.reshape(h, w, 3, -1)[..., 0].sum(-1))
    return np.stack(maps)


# --- exact Shapley values over a handful of superpixels -------------------------------------------
def all_coalitions(m: int) -> np.ndarray:
    """(2^m, m) 0/1 matrix; row s has bit j of s in column j."""
    s = np.arange(2 ** m)[:, None]
    return ((s >> np.arange(m)[None, :]) & 1).astype(np.int8)


def shapley_from_values(v: np.ndarray) -> np.ndarray:
    """Exact Shapley values from the value of every coalition, ``v[s]`` for bitmask s (length 2^M).

    phi_j = sum over S not containing j of |S|! (M - |S| - 1)! / M! * (v(S + j) - v(S)).
    """
    v = np.asarray(v, dtype=np.float64)
    m = int(round(math.log2(len(v))))
    if 2 ** m != len(v):
        raise ValueError(f"need one value per coalition (2^M entries), got {len(v)}")
    s = np.arange(2 ** m)
    size = np.array([bin(i).count("1") for i in range(2 ** m)])
    wt = np.array([math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m) if k < m else 0.0
                   for k in range(m + 1)])
    phi = np.zeros(m)
    for j in range(m):
        without = s[(s >> j) & 1 == 0]
        phi[j] = (wt[size[without]] * (v[without | (1 << j)] - v[without])).sum()
    return phi


def exact_shapley_one(model, x1: torch.Tensor, target: int, seg: np.ndarray, hide="dataset_mean",
                      output: str = "logit", batch_size: int | None = None) -> dict:
    """Exact Shapley values of ``target`` for the superpixels in ``seg`` (M <= 12): every one of the 2^M
    coalitions is evaluated (batched forward passes), then :func:`shapley_from_values`."""
    m = int(seg.max()) + 1
    if m > MAX_EXACT_PLAYERS:
        raise ValueError(f"exact Shapley values need 2^M forward passes; M={m} superpixels is more than "
                         f"{MAX_EXACT_PLAYERS} (2^{MAX_EXACT_PLAYERS}={2**MAX_EXACT_PLAYERS} passes). "
                         "Use fewer segments (n_segments=) or KernelSHAP / LIME.")
    Z = all_coalitions(m)
    hidden = fill(model, x1, seg, hide)
    out = model_outputs(model, coalition_outputs(model, x1, seg, Z, hidden, batch_size), output)
    v = out[:, target].double().cpu().numpy()
    return dict(phi=shapley_from_values(v), values=v, Z=Z, segments=seg, fill=hidden)


def _segmentation_extra(options: dict):
    from .lime import segmentation_extra

    return segmentation_extra(options)


@register("exact_shapley", "exact Shapley values over <= 12 superpixels (all 2^M coalitions)",
          extra_options=_segmentation_extra, whole_batch=True)
def exact_shapley_method(model, x, targets, *, n_segments: int = 10, segmentation: str = "slic", segments=None,
                         hide="dataset_mean", output: str = "logit", batch_size: int | None = None, **seg_kw):
    """Exact Shapley values with superpixels as players; map = phi_j painted on superpixel j.
    ``hide`` as for LIME (default: the dataset-mean grey), ``output`` 'logit' (default) | 'prob'."""
    segs = segments_for(model, x, segments, segmentation, n_segments, 0, seg_kw)
    maps = [paint(exact_shapley_one(model, x[i], int(targets[i]), segs[i], hide, output, batch_size)["phi"], segs[i])
            for i in range(len(x))]
    return np.stack(maps)


def kernel_shap_superpixels(model, x1: torch.Tensor, target: int, seg: np.ndarray, hide="dataset_mean",
                            output: str = "logit", nsamples: int | str = "auto", batch_size: int | None = None) -> np.ndarray:
    """``shap.KernelExplainer`` on the same superpixel game (players = superpixels, absent = ``hide``),
    for checking :func:`exact_shapley_one`. With nsamples >= 2^M it enumerates every coalition."""
    import shap

    m = int(seg.max()) + 1
    hidden = fill(model, x1, seg, hide)

    def f(Z):
        out = model_outputs(model, coalition_outputs(model, x1, seg, np.asarray(Z), hidden, batch_size), output)
        return out[:, target].double().cpu().numpy()

    with global_random_state_kept():
        ex = shap.KernelExplainer(f, np.zeros((1, m)))
        ns = 2 ** m + 2 if nsamples == "auto" else nsamples
        sv = ex.shap_values(np.ones((1, m)), nsamples=ns, l1_reg=False, silent=True)
    return np.asarray(sv).reshape(-1)[:m]


__all__ = ["expected_gradients", "expected_gradients_method", "shap_gradient_library", "shap_partition_method",
           "all_coalitions", "shapley_from_values", "exact_shapley_one", "exact_shapley_method",
           "kernel_shap_superpixels", "MAX_EXACT_PLAYERS"]
