"""Robustness: does the map stay put when the image barely changes, and does it predict the output?

* **Max-sensitivity** (Yeh et al., 2019, "On the (In)fidelity and Sensitivity of Explanations"):
  ``SENS_max(x) = max_{||delta||_inf <= r} ||Phi(x + delta) - Phi(x)|| / ||Phi(x)||``, estimated over
  ``n_samples`` draws of delta uniform in the L-infinity ball of radius ``r`` (in the model's units).
  Divided by ||Phi(x)|| as captum's ``sensitivity_max`` does (``relative=False``: Yeh's raw form), so
  that maps on different scales compare. Low = robust.
* **Local Lipschitz estimate** (Alvarez-Melis & Jaakkola, 2018, "On the robustness of interpretability
  methods"): ``L(x) = max_delta ||Phi(x + delta) - Phi(x)||_2 / ||delta||_2`` over the same draws.
  Low = robust.
* **Infidelity** (Yeh et al., 2019): with random perturbations I,
  ``INFD(x) = E_I[(I . Phi(x) - (f(x) - f(x - I)))^2]``: how badly the map, read as a linear model,
  predicts the change in the output. ``normalize=True`` first rescales the map by the best factor
  ``beta = E[(I . Phi) d] / E[(I . Phi)^2]`` (captum's ``normalize``), since a map's units are
  arbitrary. I is Gaussian noise (std ``noise_std``) per PIXEL, the same in every channel: a map of
  (N, H, W) gives one number per pixel, so ``I . Phi = sum_hw I_hw Phi_hw``. Low = faithful.

The perturbations come from a local ``torch.Generator`` (``seed``), laid out image by image
(image 0's draws first), which is also captum's layout; perturbed explanations and forward passes run
in batches of ``batch_size``. The model must be in eval mode and is never changed.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import config
from ..explain import check_images
from ._inputs import check_model, explain_fn, one_target_each, prepare, score_function


def linf_noise(x: torch.Tensor, n_samples: int, radius: float, seed: int = 0) -> torch.Tensor:
    """(N * n_samples, C, H, W) draws uniform in [-radius, radius], image 0's ``n_samples`` first."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    shape = (len(x) * n_samples, *x.shape[1:])
    return (torch.rand(shape, generator=g, device=x.device, dtype=x.dtype) * 2 - 1) * radius


def pixel_noise(x: torch.Tensor, n_samples: int, std: float, seed: int = 0) -> torch.Tensor:
    """(N * n_samples, 1, H, W) Gaussian draws with standard deviation ``std``, one per pixel."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    return torch.randn((len(x) * n_samples, 1, *x.shape[2:]), generator=g, device=x.device, dtype=x.dtype) * std


def _maps_in_batches(run, model, x: torch.Tensor, t: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([run(model, x[b:b + batch_size], t[b:b + batch_size]) for b in range(0, len(x), batch_size)])


def _explanation_changes(model, images, target, method, radius, n_samples, seed, batch_size, options):
    """Explanation at x, explanation at each perturbed x, and the perturbations (all float64 CPU)."""
    check_model(model)
    x = check_images(model, images)
    if radius <= 0 or n_samples < 1:
        raise ValueError(f"need radius > 0 and n_samples >= 1, got radius={radius}, n_samples={n_samples}")
    t = one_target_each(model, x, target)
    run = explain_fn(method, options)
    base = _maps_in_batches(run, model, x, t, batch_size)
    delta = linf_noise(x, n_samples, radius, seed)
    moved = _maps_in_batches(run, model, x.repeat_interleave(n_samples, 0) + delta,
                             t.repeat_interleave(n_samples), batch_size)
    return base, moved, delta.double().cpu()


def max_sensitivity(model, images, target=None, method="gradcam", *, radius: float = 0.02, n_samples: int = 10,
                    relative: bool = True, seed: int = 0, batch_size: int = 64,
                    options: dict | None = None) -> np.ndarray:
    """Per image: the largest (relative) Frobenius change of the map over ``n_samples`` perturbations
    in the L-infinity ball of radius ``radius`` (Yeh et al., 2019; = captum's ``sensitivity_max``).

    method  a name for :func:`xai_helpers.explain.explain` (``options`` passed on) or a callable
            ``f(model, x, targets) -> (N, H, W)``; the target is resolved once on the clean images.
    """
    base, moved, _ = _explanation_changes(model, images, target, method, radius, n_samples, seed, batch_size,
                                          options)
    n = len(base)
    diff = (moved - base.repeat_interleave(n_samples, 0)).reshape(n, n_samples, -1).norm(dim=2)
    if relative:
        norm = base.reshape(n, -1).norm(dim=1)
        diff = diff / torch.where(norm > 0, norm, torch.ones_like(norm))[:, None]     # captum: a zero map -> 1
    return diff.max(1).values.numpy()


def local_lipschitz(model, images, target=None, method="gradcam", *, radius: float = 0.02, n_samples: int = 10,
                    seed: int = 0, batch_size: int = 64, options: dict | None = None) -> np.ndarray:
    """Per image: ``max_delta ||Phi(x + delta) - Phi(x)||_2 / ||delta||_2`` over ``n_samples`` draws in the
    L-infinity ball of radius ``radius`` (Alvarez-Melis & Jaakkola, 2018), the same draws as
    :func:`max_sensitivity` for the same seed."""
    base, moved, delta = _explanation_changes(model, images, target, method, radius, n_samples, seed,
                                              batch_size, options)
    n = len(base)
    num = (moved - base.repeat_interleave(n_samples, 0)).reshape(n, n_samples, -1).norm(dim=2)
    return (num / delta.reshape(n, n_samples, -1).norm(dim=2)).max(1).values.numpy()


def sensitivity_scores(model, images, target=None, method="gradcam", *, radius: float = 0.02, n_samples: int = 10,
                       seed: int = 0, batch_size: int = 64, options: dict | None = None) -> dict[str, np.ndarray]:
    """``{"max_sensitivity": (N,), "local_lipschitz": (N,)}`` from ONE set of perturbed explanations:
    the same numbers as :func:`max_sensitivity` (relative) and :func:`local_lipschitz` with the same
    arguments, at half the cost of calling both (the explanations are the expensive part)."""
    base, moved, delta = _explanation_changes(model, images, target, method, radius, n_samples, seed, batch_size,
                                              options)
    n = len(base)
    diff = (moved - base.repeat_interleave(n_samples, 0)).reshape(n, n_samples, -1).norm(dim=2)
    norm = base.reshape(n, -1).norm(dim=1)
    sens = diff / torch.where(norm > 0, norm, torch.ones_like(norm))[:, None]
    lip = diff / delta.reshape(n, n_samples, -1).norm(dim=2)
    return {"max_sensitivity": sens.max(1).values.numpy(), "local_lipschitz": lip.max(1).values.numpy()}


def infidelity(model, images, maps, target=None, *, n_samples: int = 32, noise_std: float = 0.01,
               normalize: bool = True, score: str = "logit", seed: int = 0, batch_size: int | None = None) -> np.ndarray:
    """Per map: Yeh et al.'s infidelity ``E_I[(I . Phi - (f(x) - f(x - I)))^2]`` with Gaussian pixel
    noise I (see the module docstring; = captum's ``infidelity`` on the same perturbations).

    score      "logit" (default: closest to linear in the input), "softmax", "sigmoid" or "auto".
    noise_std  in the model's units. Small noise (the default) asks whether the map predicts the
               output to first order (the signed gradient then scores best); larger noise rewards
               smoother maps (Yeh et al. show SmoothGrad is optimal for Gaussian I).
    """
    x, m, t = prepare(model, images, maps, target)
    if noise_std <= 0 or n_samples < 1:
        raise ValueError(f"need noise_std > 0 and n_samples >= 1, got {noise_std}, {n_samples}")
    f = score_function(model, score)
    noise = pixel_noise(x, n_samples, noise_std, seed)
    n = len(x)
    rows_t = t.repeat_interleave(n_samples)
    xr = x.repeat_interleave(n_samples, 0) - noise                                        # x - I
    batch_size = config.images_per_pass(x, batch_size)                                    # default: the pixel budget
    with torch.no_grad():
        f0 = f(model(x)).gather(1, t[:, None])[:, 0].double().cpu()
        fp = torch.cat([f(model(xr[b:b + batch_size])).gather(1, rows_t[b:b + batch_size, None])[:, 0]
                        for b in range(0, len(xr), batch_size)])
    d = (f0.repeat_interleave(n_samples) - fp.double().cpu()).view(n, n_samples)           # f(x) - f(x - I)
    a = (noise.double().cpu()[:, 0] * m.repeat_interleave(n_samples, 0)).sum((1, 2)).view(n, n_samples)  # I . Phi
    if normalize:
        aa, ad = (a * a).sum(1), (a * d).sum(1)
        beta = torch.where(aa != 0, ad / torch.where(aa != 0, aa, torch.ones_like(aa)), torch.zeros_like(aa))
        a = beta[:, None] * a
    return ((a - d) ** 2).mean(1).numpy()


__all__ = ["linf_noise", "pixel_noise", "max_sensitivity", "local_lipschitz", "sensitivity_scores", "infidelity"]
