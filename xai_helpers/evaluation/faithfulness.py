"""Faithfulness: does the model's output follow the pixels the map calls important?

A map is *faithful* when removing the pixels it ranks highest hurts the model's score most. Each
score here perturbs the image in the map's order and reads the model's score for the explained class.

* **Deletion** (Petsiuk et al., 2018, "RISE"): replace the top-ranked pixels, ``step`` at a time, and
  record the class probability p_k after k steps. A faithful map makes the curve drop fast, so the
  area under it, ``AUC = integral_0^1 p(fraction removed)``, is LOW.
* **Insertion** (ibid.): start from a degraded image (blurred by default) and put the original
  pixels back in the map's order. A faithful map makes the curve rise fast: the area is HIGH.
* **Pixel flipping, MoRF / LeRF** and **AOPC** (Samek et al., 2017, "Evaluating the visualization of
  what a deep neural network has learned"): deletion in most- or least-relevant-first order, over
  pixels or square regions; ``AOPC = 1/(L+1) * sum_{k=0..L} (f(x^(0)) - f(x^(k)))`` is HIGH for a
  faithful map under MoRF and LOW under LeRF.
* **AIC / SIC** (Kapishnikov et al., 2019, "XRAI"): :func:`pic_curves` reveals the top-ranked pixels
  of a blurred image and plots the model's softmax (SIC) or correctness (AIC) against the
  *information* revealed, estimated by the image's compressed size (lossless WebP bytes), both
  normalised between the fully blurred (0) and the original image (1).

What replaces a removed pixel matters (a black patch can itself be evidence, notebook 08 shows one):
``"blur"`` (a Gaussian blur of the image, sigma ``blur_sigma`` px), ``"mean"`` (the normalisation
mean, i.e. 0 in the model's units: the dataset mean when the model is normalised by its training
set), ``"black"`` (pixel value 0, i.e. ``-mean / std``), ``"uniform"`` (noise, Samek's choice,
seeded locally), or an explicit number / tensor in the model's units.

Every perturbed image of every map goes through the model in batches of ``batch_size``: the
(image, step) pairs are streamed, so a curve costs exactly its forward passes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import config
from ._inputs import batched_scores, pixel_units, prepare, score_function

REPLACEMENTS = ("blur", "mean", "black", "uniform")
AUC_RULES = ("trapezoid", "quantus")


def area_under_curve(scores, fractions, rule: str = "trapezoid") -> np.ndarray:
    """Area under each row of ``scores`` (N, S+1), the one home of the AUC rule.

    * ``"trapezoid"``: the trapezoidal rule over the fraction of pixels perturbed, 0 to 1, including
      the unperturbed start, so a curve that stays at p has area p (Petsiuk et al.'s convention).
    * ``"quantus"``: Quantus 0.6's ``calculate_auc`` on its PixelFlipping curve: that curve starts
      AFTER the first step (no unperturbed point) and the trapezoids have width 1 (not normalised).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if rule == "trapezoid":
        return np.trapezoid(scores, np.asarray(fractions, dtype=np.float64), axis=1)
    if rule == "quantus":
        return np.trapezoid(scores[:, 1:], dx=1.0, axis=1)
    raise ValueError(f"rule must be one of {AUC_RULES}, got {rule!r}")


@dataclass
class Curves:
    """Perturbation curves of N maps: ``scores[i, k]`` after ``fractions[k]`` of the pixels changed."""

    fractions: np.ndarray        # (S+1,) from 0 to 1
    scores: np.ndarray           # (N, S+1) the target's score (probability by default)
    kind: str                    # "deletion" or "insertion"
    order: str                   # "morf" (most relevant first) or "lerf"
    targets: np.ndarray          # (N,) the output index scored

    def auc(self, rule: str = "trapezoid") -> np.ndarray:
        """Per-map area under the curve (see :func:`area_under_curve`)."""
        return area_under_curve(self.scores, self.fractions, rule)

    def aopc(self) -> np.ndarray:
        """Per-map AOPC = mean over the L+1 points of (start score - score): Samek et al. (2017), eq. 12."""
        return (self.scores[:, :1] - self.scores).mean(1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), kernel radius ceil(3 sigma), reflected borders."""
    if sigma <= 0:
        return x.clone()
    r = min(int(np.ceil(3 * sigma)), min(x.shape[-2:]) - 1)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).repeat(x.shape[1], 1, 1, 1)                          # (C, 1, 1, 2r+1)
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k, groups=x.shape[1])
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.transpose(2, 3), groups=x.shape[1])


def replacement_images(model, x: torch.Tensor, replacement, *, blur_sigma: float = 5.0, mean=None, std=None,
                       seed: int = 0) -> torch.Tensor:
    """What a removed pixel becomes, as a tensor shaped like ``x`` (see the module docstring)."""
    if isinstance(replacement, str):
        if replacement not in REPLACEMENTS:
            raise ValueError(f"replacement must be one of {REPLACEMENTS}, a number or a tensor; got {replacement!r}")
        if replacement == "blur":
            return gaussian_blur(x, blur_sigma)
        if replacement == "mean":
            return torch.zeros_like(x)
        m, s = pixel_units(model, mean, std)
        m = torch.as_tensor(m, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        if replacement == "black":
            return (torch.zeros_like(x) - m) / s
        g = torch.Generator(device=x.device).manual_seed(seed)
        return (torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) - m) / s
    r = torch.as_tensor(replacement, dtype=x.dtype, device=x.device)
    try:
        return r.expand_as(x).clone()
    except RuntimeError:
        raise ValueError(f"a replacement tensor must broadcast to the images' shape {tuple(x.shape)}; "
                         f"got {tuple(r.shape)}") from None


def perturbation_ranks(maps: torch.Tensor, order: str = "morf", patch: int = 1) -> tuple[torch.Tensor, int]:
    """Per pixel, the step rank of its region (0 = perturbed first), and the number of regions.

    ``patch`` > 1 sums the map over non-overlapping ``patch`` x ``patch`` squares (Samek et al.'s
    region perturbation; edge squares may be smaller) and ranks the squares. Ties keep raster order.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' (most relevant first) or 'lerf' (least relevant first), got {order!r}")
    n, h, w = maps.shape
    if patch > 1:
        hp, wp = -(-h // patch), -(-w // patch)
        padded = F.pad(maps[:, None], (0, wp * patch - w, 0, hp * patch - h))
        cells = F.avg_pool2d(padded, patch)[:, 0] * patch * patch                  # (N, hp, wp) sums
        values = cells.reshape(n, -1)
    else:
        values = maps.reshape(n, -1)
    key = -values if order == "morf" else values
    idx = np.argsort(key.numpy(), axis=1, kind="stable")
    rank = np.empty_like(idx)
    np.put_along_axis(rank, idx, np.arange(idx.shape[1])[None].repeat(n, 0), axis=1)
    rank = torch.from_numpy(rank)
    if patch > 1:
        rank = rank.view(n, hp, wp).repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, :h, :w]
    return rank.reshape(n, 1, h, w), values.shape[1]


def perturbation_curve(model, images, maps, target=None, *, kind: str = "deletion", order: str = "morf",
                       replacement="mean", steps: int = 50, per_step: int | None = None, patch: int = 1,
                       score: str = "auto", batch_size: int | None = None, blur_sigma: float = 5.0, mean=None, std=None,
                       seed: int = 0) -> Curves:
    """The general curve behind :func:`deletion`, :func:`insertion` and :func:`pixel_flipping`.

    kind         "deletion": image -> pixels replaced; "insertion": replacement -> pixels restored.
    order        "morf" (most relevant first, by the signed map) or "lerf".
    replacement  see the module docstring (for insertion: the starting image).
    steps        number of steps; or ``per_step`` pixels (regions when ``patch`` > 1) per step,
                 the last step taking what is left (Quantus's ``features_in_step`` counts values, so
                 ``features_in_step = C * per_step``).
    score        "auto" (softmax, sigmoid for multi-label), "softmax", "sigmoid" or "logit".
    """
    if kind not in ("deletion", "insertion"):
        raise ValueError(f"kind must be 'deletion' or 'insertion', got {kind!r}")
    x, m, t = prepare(model, images, maps, target)
    rank, n_units = perturbation_ranks(m, order, patch)
    per = int(per_step) if per_step is not None else int(np.ceil(n_units / max(1, int(steps))))
    if per < 1:
        raise ValueError(f"per_step / steps must give at least one pixel per step (got {per})")
    counts = torch.clamp(torch.arange(0, -(-n_units // per) + 1) * per, max=n_units)
    other = replacement_images(model, x, replacement, blur_sigma=blur_sigma, mean=mean, std=std, seed=seed)
    first, second = (other, x) if kind == "deletion" else (x, other)     # where(rank < count, first, second)
    rank, counts = rank.to(x.device), counts.to(x.device)
    n_pts = len(counts)

    def make_batch(rows):
        rows = rows.to(x.device)
        i, k = rows // n_pts, rows % n_pts
        return torch.where(rank[i] < counts[k].view(-1, 1, 1, 1), first[i], second[i])

    rows_target = t.cpu().repeat_interleave(n_pts)
    batch_size = config.images_per_pass(x, batch_size)                  # default: the pixel budget
    s = batched_scores(model, make_batch, len(x) * n_pts, rows_target, batch_size, score_function(model, score))
    return Curves(fractions=(counts.cpu().double() / n_units).numpy(), scores=s.view(len(x), n_pts).numpy(),
                  kind=kind, order=order, targets=t.cpu().numpy())


def deletion(model, images, maps, target=None, *, replacement="mean", steps: int = 50, **options) -> Curves:
    """Deletion curve (Petsiuk et al., 2018): remove the most relevant pixels first; low AUC = faithful.

    Petsiuk et al. replace with zeros in the model's units (``"mean"``, the default) in steps of
    one image row. Returns :class:`Curves`; ``.auc()`` gives the per-map area.
    """
    return perturbation_curve(model, images, maps, target, kind="deletion", order="morf",
                              replacement=replacement, steps=steps, **options)


def insertion(model, images, maps, target=None, *, replacement="blur", steps: int = 50, **options) -> Curves:
    """Insertion curve (Petsiuk et al., 2018): from a blurred image, restore the most relevant pixels
    first; high AUC = faithful. Returns :class:`Curves`."""
    return perturbation_curve(model, images, maps, target, kind="insertion", order="morf",
                              replacement=replacement, steps=steps, **options)


def pixel_flipping(model, images, maps, target=None, *, order: str = "morf", patch: int = 1,
                   replacement="mean", steps: int = 50, **options) -> Curves:
    """MoRF / LeRF pixel (``patch`` = 1) or region flipping (Samek et al., 2017). ``.aopc()`` on the
    result: high under MoRF, low under LeRF.

    Samek et al. used 9x9 regions replaced by uniform noise (``replacement="uniform"``); the default
    here is the mean, because noise can itself be evidence: the planted-skin model reads noise as
    its dotted pattern, and every curve then RISES (AOPC < 0 for any map)."""
    return perturbation_curve(model, images, maps, target, kind="deletion", order=order, patch=patch,
                              replacement=replacement, steps=steps, **options)


def aopc(model, images, maps, target=None, *, order: str = "morf", **options) -> np.ndarray:
    """Per-map AOPC (Samek et al., 2017): ``1/(L+1) sum_k (f(x^(0)) - f(x^(k)))`` of :func:`pixel_flipping`."""
    return pixel_flipping(model, images, maps, target, order=order, **options).aopc()


# ---------------------------------------------------------------------------------------------------
# Performance Information Curves: AIC and SIC (Kapishnikov et al., 2019), as PAIR's saliency.metrics.pic
PIC_THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)


def random_pixel_masks(n: int, height: int, width: int, fraction: float = 0.01, seed: int = 0) -> np.ndarray:
    """(n, H, W) bool: ``fraction`` of the pixels of each image, drawn with a local generator. These
    seed the fully blurred start image; keep the same mask when comparing methods on one image."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, height * width), dtype=bool)
    for m in masks:
        m[rng.choice(height * width, size=int(height * width * fraction), replace=False)] = True
    return masks.reshape(n, height, width)


def interpolated_image(img: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The "blurred" image of PIC: pixels in ``keep`` (plus the 4 corners) kept, the rest filled by
    linear interpolation between them (Delaunay triangles; scipy's griddata), uint8 like ``img``."""
    from scipy.interpolate import griddata

    keep = keep.copy()
    h, w = keep.shape
    keep[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
    if keep.all():
        return img.copy()
    im = img[..., None] if img.ndim == 2 else img
    known, unknown = np.argwhere(keep), np.argwhere(~keep)
    vals = griddata(known, im[keep].astype(np.float64), unknown, method="linear", fill_value=np.nan)
    vals = np.where(np.isnan(vals), im.reshape(-1, im.shape[-1]).mean(0), vals)   # outside the hull: mean colour
    out = im * keep[..., None].astype(np.float32)
    out[~keep] = vals
    return np.round(out).astype(img.dtype).reshape(img.shape)


def compressed_size(img: np.ndarray) -> int:
    """Bytes of ``img`` (uint8) as lossless WebP: PIC's estimate of the information in an image.

    ``img``: (H, W) or (H, W, 1) grey, (H, W, 3) RGB or (H, W, 4) RGBA.
    """
    import io

    from PIL import Image

    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]                              # grey with a channel axis: PIL wants (H, W)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[-1] in (3, 4))):
        raise ValueError(f"compressed_size needs one uint8 image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got "
                         f"{img.dtype} {img.shape}. Convert maps or float images with np.uint8(np.clip(x, 0, 255)).")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="webp", lossless=True, quality=100)
    return buf.tell()


@dataclass
class PicCurves:
    """SIC or AIC of N maps; rows of skipped images (see ``skipped``) are NaN."""

    kind: str                       # "sic" (softmax of the target) or "aic" (1 if predicted = target)
    curve_x: np.ndarray             # (P+1,) normalised information, 0 to 1
    curve_y: np.ndarray             # (N, P+1) normalised score
    auc: np.ndarray                 # (N,)
    skipped: list                   # per image: None, or why PIC cannot score it

    def aggregate(self, method: str = "median") -> tuple[np.ndarray, float]:
        """(curve, AUC) of the median (Kapishnikov et al.) or mean curve over the scored images."""
        ok = np.array([r is None for r in self.skipped])
        if not ok.any():
            raise ValueError("no image could be scored: " + "; ".join(sorted(set(self.skipped)))[:500])
        agg = {"median": np.median, "mean": np.mean}[method](self.curve_y[ok], axis=0)
        return agg, float(np.trapezoid(agg, self.curve_x))


def _pic_curve(info, preds, min_pred, keep_monotonous, curve_x):
    """One image's PIC from [original, fully blurred, thresholds...] information and scores."""
    if preds[0] < min_pred:
        return None, f"score on the original {preds[0]:.3f} < min_pred {min_pred}"
    if info[1] >= info[0]:
        return None, "the blurred image is not smaller than the original once compressed"
    if preds[1] >= preds[0]:
        return None, "the score on the blurred image is not lower than on the original"
    from scipy.interpolate import interp1d

    x = np.clip((info[2:] - info[1]) / (info[0] - info[1]), 0.0, 1.0)
    y = np.clip((preds[2:] - preds[1]) / (preds[0] - preds[1]), 0.0, 1.0)
    if keep_monotonous:
        y = np.maximum.accumulate(y)
    f = interp1d(np.r_[x, 0.0, 1.0], np.r_[y, 0.0, 1.0])
    return np.r_[f(curve_x[:-1]), 1.0], None


def pic_curves(model, images, maps, target=None, *, thresholds=PIC_THRESHOLDS, random_masks=None,
               random_fraction: float = 0.01, seed: int = 0, min_pred: float = 0.5, keep_monotonous: bool = True,
               num_points: int = 1000, batch_size: int | None = None, mean=None, std=None) -> dict[str, PicCurves]:
    """Softmax and Accuracy Information Curves (Kapishnikov et al., 2019), as PAIR's
    ``saliency.metrics.pic.compute_pic_metric``, with all images of all thresholds in batched passes.

    images   uint8 (N, H, W, C) (or (N, H, W)): compressed size needs real pixels; they are normalised
             with ``mean``/``std`` or ``model.info``.
    For each threshold t the top-t fraction of the map's pixels (plus the random seed pixels) are kept
    and the rest interpolated; the curve plots the normalised score against the normalised compressed
    size, made monotone if ``keep_monotonous``. Images whose original score is below ``min_pred``, or
    whose blurred version is not less informative / less confident, are skipped, with the reason.
    Returns ``{"sic": PicCurves, "aic": PicCurves}``.
    """
    from ..imaging import normalise

    imgs = np.asarray(images)
    if imgs.dtype != np.uint8 or imgs.ndim not in (3, 4):
        raise ValueError(f"pic_curves needs uint8 images (N, H, W, C) or (N, H, W); got {imgs.dtype} {imgs.shape}")
    m_, s_ = pixel_units(model, mean, std)

    def to_x(a):
        return normalise(torch.from_numpy(a.reshape(*a.shape[:3], -1)).permute(0, 3, 1, 2).float() / 255, m_, s_)

    x, m, t = prepare(model, to_x(imgs), maps, target)
    n, h, w = m.shape
    rm = random_pixel_masks(n, h, w, random_fraction, seed) if random_masks is None else np.asarray(random_masks, bool)
    if rm.shape != (n, h, w):
        raise ValueError(f"random_masks must have shape {(n, h, w)}, got {rm.shape}")
    stack, info = [], np.zeros((n, len(thresholds) + 2))
    for i in range(n):
        mp = m[i].numpy()
        seq = [imgs[i], interpolated_image(imgs[i], rm[i])]
        seq += [interpolated_image(imgs[i], (mp >= np.quantile(mp, 1 - th)) | rm[i]) for th in thresholds]
        info[i] = [compressed_size(a) for a in seq]
        stack += seq
    xs = to_x(np.stack(stack)).to(x.device)
    batch_size = config.images_per_pass(xs, batch_size)
    with torch.no_grad():
        logits = torch.cat([model(xs[b:b + batch_size]) for b in range(0, len(xs), batch_size)]).double().cpu()
    tt = t.cpu().repeat_interleave(len(thresholds) + 2)
    per_kind = {"sic": torch.softmax(logits, 1).gather(1, tt[:, None])[:, 0],
                "aic": (logits.argmax(1) == tt).double()}
    curve_x = np.r_[np.linspace(0.0, 1.0, num_points, endpoint=False), 1.0]
    out = {}
    for kind, p in per_kind.items():
        p = p.view(n, -1).numpy()
        ys, why = zip(*[_pic_curve(info[i], p[i], min_pred, keep_monotonous, curve_x) for i in range(n)])
        cy = np.stack([y if y is not None else np.full(len(curve_x), np.nan) for y in ys])
        out[kind] = PicCurves(kind, curve_x, cy, np.trapezoid(cy, curve_x, axis=1), list(why))
    return out


__all__ = ["Curves", "area_under_curve", "gaussian_blur", "replacement_images", "perturbation_ranks",
           "perturbation_curve", "deletion", "insertion", "pixel_flipping", "aopc", "REPLACEMENTS", "AUC_RULES",
           "PIC_THRESHOLDS", "PicCurves", "pic_curves", "random_pixel_masks", "interpolated_image", "compressed_size"]
