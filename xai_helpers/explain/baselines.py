"""Baselines every comparison should include (Adebayo et al., 2018, "Sanity checks for saliency maps").

* ``random``: uniform noise, independent of model and image. A metric that scores it well is broken;
  on the pointing game it scores about the evidence area fraction.
* ``edges``: a Sobel edge detector on the image, independent of the model. Maps that look like it
  may show the image's structure rather than what the model uses.
* ``centre``: an isotropic Gaussian centred in the image, the same for every image and class. It
  measures the centre bias of a data set: dermoscopy centres the lesion, so on PH2 this map, which
  looks at no model, points into the lesion on almost every image. A method that does not beat it
  has shown nothing about the model that the photographer's framing does not already explain.
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


CENTRE_SIGMA = 0.25    # standard deviation of the centre baseline, as a fraction of the shorter side


def centre_blob(height: int, width: int, sigma: float = CENTRE_SIGMA, device=None,
                dtype=torch.float32) -> torch.Tensor:
    """exp(-r^2 / (2 s^2)) with r the distance to the image centre and s = ``sigma`` * min(H, W); (H, W)."""
    if not sigma > 0:
        raise ValueError(f"sigma is a fraction of the image side and must be > 0, got {sigma}")
    s = float(sigma) * min(height, width)
    yy = torch.arange(height, device=device, dtype=dtype) - (height - 1) / 2
    xx = torch.arange(width, device=device, dtype=dtype) - (width - 1) / 2
    return torch.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / (2 * s * s))


@register("centre", "baseline: Gaussian blob in the image centre (ignores model and image); option sigma= "
                    f"(fraction of the side, default {CENTRE_SIGMA})")
def centre(model, x, targets, sigma: float = CENTRE_SIGMA):
    blob = centre_blob(x.shape[2], x.shape[3], sigma, device=x.device, dtype=x.dtype)
    return blob.expand(len(x), -1, -1).clone()


__all__ = ["random_map", "edges", "sobel_magnitude", "centre", "centre_blob", "CENTRE_SIGMA"]
