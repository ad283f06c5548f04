"""Gradient-based attributions, written by hand and batched: saliency, SmoothGrad, Integrated
Gradients, and occlusion (perturbation, but it lives here because it is one batched forward pass).

* Saliency (Simonyan et al., 2014):  S(x) = max_c | d f_t / d x_c |
* SmoothGrad (Smilkov et al., 2017): average the gradient over noisy copies x + N(0, sigma^2)
* Integrated Gradients (Sundararajan et al., 2017), by default the midpoint Riemann sum with m steps:

      IG_i(x) = (x_i - x'_i) * 1/m * sum_{k=1..m} d f_t / d x_i ( x' + (k - 1/2)/m * (x - x') )

  and *completeness*: sum_i IG_i(x) ~= f_t(x) - f_t(x'). The rule is chosen by name as in captum
  (``rule=`` "riemann_middle", "riemann_left", "riemann_right", "riemann_trapezoid"): :func:`ig_path`.
* Occlusion (Zeiler & Fergus, 2014): slide a patch of the baseline over the image; the map is the
  drop of the target logit, averaged over the patches covering each pixel.
"""
from __future__ import annotations

import torch

from . import check_count, register
from ..config import images_per_pass
from ..imaging import baseline as imaging_baseline
from ._random import randn_like

IG_RULES = ("riemann_middle", "riemann_left", "riemann_right", "riemann_trapezoid")


def input_gradient(model, x, targets, batch_size: int | None = None) -> torch.Tensor:
    """d f_target / d x for a batch, computed in chunks of ``batch_size`` images (one backward per chunk;
    default: the pixel budget)."""
    batch_size = images_per_pass(x, batch_size)
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
    """The IG / occlusion reference input, in the model's normalised units: a name understood by
    :func:`xai_helpers.imaging.baseline` ('zero' = the dataset mean, 'black', 'white', 'blur'), a tensor,
    or a number (a constant in the model's units, not a grey level)."""
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    return imaging_baseline(model, x, baseline)


@register("saliency", "vanilla gradient: max over channels of |d logit / d pixel| (option absolute=)")
def saliency(model, x, targets, absolute: bool = True):
    g = input_gradient(model, x, targets)
    return g.abs().amax(1) if absolute else g.sum(1)


@register("input_x_gradient", "gradient times input, summed over channels")
def input_x_gradient(model, x, targets):
    return (input_gradient(model, x, targets) * x).sum(1)


@register("smoothgrad", "SmoothGrad: gradient averaged over noisy copies; options n_samples=, noise=, absolute=")
def smoothgrad(model, x, targets, n_samples: int = 16, noise: float = 0.15, absolute: bool = True,
               batch_size: int | None = None, generator: torch.Generator | None = None):
    n_samples = check_count("n_samples", n_samples)
    n = len(x)
    sigma = noise * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))            # per image
    xs = x.repeat(n_samples, 1, 1, 1)                                           # sample-major
    xs = xs + randn_like(xs, generator) * sigma.repeat(n_samples).view(-1, 1, 1, 1)
    g = input_gradient(model, xs, targets.repeat(n_samples), batch_size=images_per_pass(x, batch_size))
    g = g.view(n_samples, n, *x.shape[1:])
    return g.abs().mean(0).amax(1) if absolute else g.mean(0).sum(1)


def ig_path(steps: int, rule: str = "riemann_middle", dtype=torch.float32, device=None):
    """The quadrature of Integrated Gradients' path integral, chosen by name as in captum:
    ``(alphas, weights, denominator)`` with IG = (x - x') * sum_k weights_k grad f(x' + alphas_k (x - x'))
    / denominator. Midpoint, left and right sums weigh every step 1 and divide by m; the trapezoid rule
    evaluates both ends with weight 1/2 and divides by m - 1."""
    if rule not in IG_RULES:
        raise ValueError(f"unknown Integrated Gradients rule {rule!r}; valid: {IG_RULES}")
    steps = check_count("steps", steps)
    if rule == "riemann_trapezoid" and steps < 2:
        raise ValueError("the trapezoid rule needs steps >= 2 (both ends of the path)")
    k = torch.arange(steps, device=device, dtype=dtype)
    weights = torch.ones(steps, device=device, dtype=dtype)
    if rule == "riemann_middle":
        return (k + 0.5) / steps, weights, steps
    if rule == "riemann_left":
        return k / steps, weights, steps
    if rule == "riemann_right":
        return (k + 1) / steps, weights, steps
    weights[0] = weights[-1] = 0.5                      # trapezoid: both ends, half weight
    return k / (steps - 1), weights, steps - 1


def integrated_gradients_attr(model, x, targets, steps: int = 32, baseline="zero", batch_size: int | None = None,
                              rule: str = "riemann_middle") -> torch.Tensor:
    """Integrated Gradients per channel (N, C, H, W), the path images in chunks of ``batch_size`` (default:
    as many as fit :func:`xai_helpers.config.pixel_budget`); ``rule`` as in captum
    (:data:`IG_RULES`, default the midpoint Riemann sum)."""
    b = _baseline(model, x, baseline)
    n = len(x)
    alphas, weights, denominator = ig_path(steps, rule, x.dtype, x.device)
    total = torch.zeros_like(x)
    bs = images_per_pass(x, batch_size)
    per_chunk = max(1, bs // max(1, n))                  # steps per chunk (more images than bs: one step, split)
    for s in range(0, steps, per_chunk):
        a = alphas[s:s + per_chunk].view(-1, 1, 1, 1, 1)                    # (k, 1, 1, 1, 1)
        path = (b[None] + a * (x - b)[None]).reshape(-1, *x.shape[1:])      # (k*n, C, H, W)
        g = input_gradient(model, path, targets.repeat(len(a)), batch_size=bs)
        w = weights[s:s + per_chunk].view(-1, 1, 1, 1, 1)
        total += (g.view(len(a), n, *x.shape[1:]) * w).sum(0)
    return (x - b) * total / denominator


@register("integrated_gradients", "Integrated Gradients; options steps=, baseline=, rule= (default riemann_middle)")
def integrated_gradients(model, x, targets, steps: int = 32, baseline="zero", batch_size: int | None = None,
                         rule: str = "riemann_middle"):
    return integrated_gradients_attr(model, x, targets, steps=steps, baseline=baseline, batch_size=batch_size,
                                     rule=rule).sum(1)


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
              batch_size: int | None = None):
    n, c, h, w = x.shape
    patch = patch or max(4, min(h, w) // 8)
    stride = stride or max(1, patch // 2)
    b = _baseline(model, x, baseline)
    grid = occlusion_grid(h, w, patch, stride)
    with torch.no_grad():
        base = model(x).gather(1, targets.view(-1, 1))[:, 0]
        drops = torch.empty(len(grid), n, device=x.device)
        per_chunk = max(1, images_per_pass(x, batch_size) // n)        # occluded positions per pass
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


__all__ = ["ig_path", "IG_RULES", "input_gradient", "saliency", "smoothgrad", "integrated_gradients", "integrated_gradients_attr",
           "completeness", "occlusion", "input_x_gradient"]
