"""Baselines every comparison should include (Adebayo et al., 2018, "Sanity checks for saliency maps").

* ``random``: uniform noise, independent of model and image. A metric that scores it well is broken;
  on the pointing game it scores about the evidence area fraction.
* ``edges``: a Sobel edge detector on the image, independent of the model. Maps that look like it
  may show the image's structure rather than what the model uses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from ._random import rand


@register("random", "baseline: uniform random map (ignores model and image; seeded)")
def random_map(model, x, targets, generator: torch.Generator | None = None):
    return rand((len(x), x.shape[2], x.shape[3]), x.device, generator)


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the channel-mean image, (N, H, W)."""
    g = x.mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype)
    k = torch.stack([kx, kx.T])[:, None]                                    # (2, 1, 3, 3)
    e = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), k)
    return e.pow(2).sum(1).sqrt()


@register("edges", "baseline: Sobel edge magnitude of the image (ignores the model)")
def edges(model, x, targets):
    return sobel_magnitude(x)


__all__ = ["random_map", "edges", "sobel_magnitude"]
