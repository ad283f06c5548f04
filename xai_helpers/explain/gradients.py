"""Gradient-based attributions, written by hand and batched: saliency, SmoothGrad, Integrated
Gradients, and occlusion (perturbation, but it lives here because it is one batched forward pass).

* Saliency (Simonyan et al., 2014):  S(x) = max_c | d f_t / d x_c |
* SmoothGrad (Smilkov et al., 2017): average the gradient over noisy copies x + N(0, sigma^2)
* Integrated Gradients (Sundararajan et al., 2017), midpoint Riemann sum with m steps:

      IG_i(x) = (x_i - x'_i) * 1/m * sum_{k=1..m} d f_t / d x_i ( x' + (k - 1/2)/m * (x - x') )

  and *completeness*: sum_i IG_i(x) ~= f_t(x) - f_t(x').
* Occlusion (Zeiler & Fergus, 2014): slide a patch of the baseline over the image; the map is the
  drop of the target logit, averaged over the patches covering each pixel.
"""
from __future__ import annotations

import math

import torch

from . import register


def input_gradient(model, x, targets, batch_size: int = 256) -> torch.Tensor:
    """d f_target / d x for a batch, computed in chunks of ``batch_size`` (one backward per chunk)."""
    grads = []
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size].detach().requires_grad_(True)
        with torch.enable_grad():
            out = model(xb)
            score = out.gather(1, targets[s:s + batch_size].view(-1, 1)).sum()
            (g,) = torch.autograd.grad(score, xb)
        grads.append(g)
    return torch.cat(grads)


def _baseline(model, x, baseline):
    """The IG / occlusion reference input, in the model's normalised units."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x.device, x.dtype).expand_as(x)
    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    if baseline in ("zero", "mean", None):      # 0 after normalisation = the dataset mean colour
        return torch.zeros_like(x)
    if baseline in ("black", "white"):
        mean, std = getattr(model, "mean", None), getattr(model, "std", None)
        c = x.shape[1]
        mean = torch.as_tensor(mean if mean is not None else [0.0] * c, dtype=x.dtype, device=x.device)
        std = torch.as_tensor(std if std is not None else [1.0] * c, dtype=x.dtype, device=x.device)
        v = 0.0 if baseline == "black" else 1.0
        return ((v - mean) / std).view(1, -1, 1, 1).expand_as(x).clone()
    if baseline == "blur":
        import torch.nn.functional as F
        k = max(3, (x.shape[-1] // 8) | 1)
        return F.avg_pool2d(F.pad(x, [k // 2] * 4, mode="replicate"), k, stride=1)
    raise ValueError(f"unknown baseline {baseline!r}; use 'zero' (dataset mean), 'black', 'white', 'blur', "
                     "a number or a tensor")


@register("saliency", "vanilla gradient: max over channels of |d logit / d pixel| (option absolute=)")
def saliency(model, x, targets, absolute: bool = True):
    g = input_gradient(model, x, targets)
    return g.abs().amax(1) if absolute else g.sum(1)


@register("input_x_gradient", "gradient times input, summed over channels")
def input_x_gradient(model, x, targets):
    return (input_gradient(model, x, targets) * x).sum(1)


@register("smoothgrad", "SmoothGrad: gradient averaged over noisy copies; options n_samples=, noise=, absolute=")
def smoothgrad(model, x, targets, n_samples: int = 16, noise: float = 0.15, absolute: bool = True,
               batch_size: int = 128):
    n = len(x)
    sigma = noise * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))            # per image
    xs = x.repeat(n_samples, 1, 1, 1)                                           # sample-major
    xs = xs + torch.randn_like(xs) * sigma.repeat(n_samples).view(-1, 1, 1, 1)
    g = input_gradient(model, xs, targets.repeat(n_samples), batch_size=batch_size)
    g = g.view(n_samples, n, *x.shape[1:])
    return g.abs().mean(0).amax(1) if absolute else g.mean(0).sum(1)


def integrated_gradients_attr(model, x, targets, steps: int = 32, baseline="zero",
                              batch_size: int = 128) -> torch.Tensor:
    """Integrated Gradients per channel (N, C, H, W), midpoint Riemann sum, all steps batched."""
    b = _baseline(model, x, baseline)
    n = len(x)
    alphas = (torch.arange(steps, device=x.device, dtype=x.dtype) + 0.5) / steps
    total = torch.zeros_like(x)
    per_chunk = max(1, batch_size // max(1, n))          # steps per forward/backward chunk
    for s in range(0, steps, per_chunk):
        a = alphas[s:s + per_chunk].view(-1, 1, 1, 1, 1)                    # (k, 1, 1, 1, 1)
        path = (b[None] + a * (x - b)[None]).reshape(-1, *x.shape[1:])      # (k*n, C, H, W)
        g = input_gradient(model, path, targets.repeat(len(a)), batch_size=len(path))
        total += g.view(len(a), n, *x.shape[1:]).sum(0)
    return (x - b) * total / steps


@register("integrated_gradients", "Integrated Gradients (midpoint Riemann sum); options steps=, baseline=")
def integrated_gradients(model, x, targets, steps: int = 32, baseline="zero", batch_size: int = 128):
    return integrated_gradients_attr(model, x, targets, steps=steps, baseline=baseline,
                                     batch_size=batch_size).sum(1)


def completeness(model, x, targets, attributions, baseline="zero") -> torch.Tensor:
    """Per image: sum of attributions / (f_t(x) - f_t(baseline)); 1.0 means complete."""
    b = _baseline(model, x, baseline)
    targets = torch.as_tensor(targets, device=x.device).long().view(-1).expand(len(x))
    with torch.no_grad():
        fx = model(x).gather(1, targets.view(-1, 1))[:, 0]
        fb = model(b).gather(1, targets.view(-1, 1))[:, 0]
    a = torch.as_tensor(attributions, device=x.device).reshape(len(x), -1).sum(1)
    return a / (fx - fb)


def occlusion_grid(h: int, w: int, patch: int, stride: int):
    ys = list(range(0, max(h - patch, 0) + 1, stride))
    xs = list(range(0, max(w - patch, 0) + 1, stride))
    if ys[-1] != max(h - patch, 0):
        ys.append(max(h - patch, 0))
    if xs[-1] != max(w - patch, 0):
        xs.append(max(w - patch, 0))
    return [(y, x) for y in ys for x in xs]


@register("occlusion", "Occlusion: logit drop when a patch is replaced by the baseline; options patch=, stride=")
def occlusion(model, x, targets, patch: int | None = None, stride: int | None = None, baseline="zero",
              batch_size: int = 128):
    n, c, h, w = x.shape
    patch = patch or max(4, min(h, w) // 8)
    stride = stride or max(1, patch // 2)
    b = _baseline(model, x, baseline)
    grid = occlusion_grid(h, w, patch, stride)
    with torch.no_grad():
        base = model(x).gather(1, targets.view(-1, 1))[:, 0]
        drops = torch.empty(len(grid), n, device=x.device)
        per_chunk = max(1, batch_size // n)
        for s in range(0, len(grid), per_chunk):
            pos = grid[s:s + per_chunk]
            xo = x.repeat(len(pos), 1, 1, 1)
            for k, (py, px) in enumerate(pos):
                xo[k * n:(k + 1) * n, :, py:py + patch, px:px + patch] = b[:, :, py:py + patch, px:px + patch]
            out = model(xo).gather(1, targets.repeat(len(pos)).view(-1, 1))[:, 0]
            drops[s:s + len(pos)] = base[None] - out.view(len(pos), n)
    heat = torch.zeros(n, h, w, device=x.device)
    count = torch.zeros(1, h, w, device=x.device)
    for k, (py, px) in enumerate(grid):
        heat[:, py:py + patch, px:px + patch] += drops[k].view(-1, 1, 1)
        count[:, py:py + patch, px:px + patch] += 1
    return heat / count.clamp(min=1)


__all__ = ["input_gradient", "saliency", "smoothgrad", "integrated_gradients", "integrated_gradients_attr",
           "completeness", "occlusion", "input_x_gradient"]
