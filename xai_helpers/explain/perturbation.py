"""Perturbation and Shapley methods: LIME, SHAP (expected gradients, Partition), exact Shapley, XRAI.

Every method here registers with :func:`xai_helpers.explain.register` and is called as
``explain(model, images, target, method="lime", **options)``. What this module adds over calling
``lime`` / ``shap`` directly:

* **one pass of batched forward passes** (``torch.no_grad``, on the model's device) instead of
  lime's ten-image batches built pixel by pixel in NumPy, and one batched backward pass for
  expected gradients instead of one per output class: the libraries' defaults are several times
  slower at the same number of samples (``tests/benchmarks/bench_perturbation.py``);
* **reproducible**: every random draw comes from a ``numpy.random.RandomState`` seeded from
  ``random_state=`` or, by default, from NumPy's global generator, which ``explain(seed=...)`` seeds.
  (lime seeds only its segmentation, and with scikit-image >= 0.26 not even that: quickshift's
  ``random_seed`` argument became ``rng`` and lime's value is silently dropped.)
* **segmentations that make sense at MedMNIST sizes**: lime's default quickshift yields 2 regions
  at 28 px and 4 at 64 px; here the default is SLIC with ``n_segments`` scaled to the image side;
* grayscale (C=1) and RGB images alike: images are (N, C, H, W) tensors normalised as the model
  expects; segmentation sees them un-normalised with ``model.mean`` / ``model.std``.

The re-implementation of LIME follows ``lime_image`` line by line (same sampling stream, same
per-segment-mean "hide" colour, same cosine kernel, same weighted ridge) and is checked against it
in ``tests/test_perturbation.py``; ``engine="lime_image"`` calls the library itself.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from . import register
from ._cache import ModuleCache, param_stamp

# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def _rng(random_state) -> np.random.RandomState:
    """A RandomState from an int, an existing RandomState, or (None) NumPy's global generator."""
    if isinstance(random_state, np.random.RandomState):
        return random_state
    if random_state is None:  # explain(seed=...) has seeded the global generator
        random_state = np.random.randint(0, 2**31 - 1)
    return np.random.RandomState(int(random_state))


def _mean_std(model, c: int):
    mean = getattr(model, "mean", None)
    std = getattr(model, "std", None)
    if mean is None or std is None:
        return None, None
    mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    std = np.asarray(std, dtype=np.float32).reshape(-1)
    if mean.size == 1:
        mean, std = np.repeat(mean, c), np.repeat(std, c)
    return mean[:c], std[:c]


def to_display(model, x: torch.Tensor, clip: bool = True) -> np.ndarray:
    """Normalised (N, C, H, W) tensor -> (N, H, W, C) float images in [0, 1] for segmentation/plots.

    Uses ``model.mean`` / ``model.std`` when the model carries them, else rescales each image to [0, 1].
    """
    a = x.detach().float().cpu().numpy()
    mean, std = _mean_std(model, a.shape[1])
    if mean is not None:
        a = a * std[None, :, None, None] + mean[None, :, None, None]
    else:
        lo = a.min(axis=(1, 2, 3), keepdims=True)
        hi = a.max(axis=(1, 2, 3), keepdims=True)
        a = (a - lo) / np.where(hi > lo, hi - lo, 1.0)
    a = a.transpose(0, 2, 3, 1)
    return np.clip(a, 0, 1) if clip else a


def _from_display(model, img01: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) display images -> normalised (B, C, H, W) tensor on ``like``'s device.

    The inverse of :func:`to_display` for ``like`` (one image, (C, H, W) or (1, C, H, W)); without
    ``model.mean``/``std`` it undoes the per-image rescaling of ``like``."""
    t = torch.as_tensor(np.ascontiguousarray(img01.transpose(0, 3, 1, 2)), dtype=like.dtype, device=like.device)
    mean, std = _mean_std(model, t.shape[1])
    if mean is None:
        lo, hi = like.min(), like.max()
        return t * (hi - lo if hi > lo else 1.0) + lo
    if mean is not None:
        m = torch.as_tensor(mean, dtype=t.dtype, device=t.device)[None, :, None, None]
        s = torch.as_tensor(std, dtype=t.dtype, device=t.device)[None, :, None, None]
        t = (t - m) / s
    return t


def _display_value_to_normalised(model, x1: torch.Tensor, value: float) -> torch.Tensor:
    """A grey level in [0, 1] (display units) as a (C, 1, 1) tensor in the model's input units."""
    c = x1.shape[0]
    mean, std = _mean_std(model, c)
    if mean is None:  # no normalisation known: map through this image's own range
        lo, hi = float(x1.min()), float(x1.max())
        return torch.full((c, 1, 1), lo + value * (hi - lo), dtype=x1.dtype, device=x1.device)
    v = (value - mean) / std
    return torch.as_tensor(v, dtype=x1.dtype, device=x1.device).reshape(c, 1, 1)


def _outputs(model, out: torch.Tensor, output: str) -> torch.Tensor:
    """Logits -> what the surrogate explains: 'prob' (softmax, or sigmoid for multi-label) or 'logit'."""
    if output == "logit":
        return out
    if output != "prob":
        raise ValueError(f"output must be 'prob' or 'logit', not {output!r}")
    if getattr(model, "task", None) == "multilabel" or out.shape[1] == 1:
        return torch.sigmoid(out)
    return torch.softmax(out, dim=1)


CHANNELS_LAST_MIN_SIDE = 112   # float32 below this: the layout change costs more than it saves (measured, CPU)


class fast_layout:
    """Context manager: run a conv net in channels-last memory layout, then restore its layout.

    The numbers are the same (up to float rounding); on CPU, oneDNN's convolutions are 1.2-1.5x
    faster in this layout at 128-224 px, which matters when a method needs hundreds of forward
    passes. In float32 at 64 px it is slower, so float32 images smaller than ``CHANNELS_LAST_MIN_SIDE``
    keep their layout; bfloat16 always uses it (its AMX and AVX512-BF16 kernels want it: 200 ResNet-18 passes at 64 px
    took 0.39 s channels-last vs 0.52 s without on an AMX Xeon, 0.16 s vs 0.24 s on an AMD EPYC).
    """

    def __init__(self, model, enabled: bool = True, like: torch.Tensor | None = None,
                 precision: str = "float32"):
        self.model = model
        big = like is None or min(like.shape[-2:]) >= CHANNELS_LAST_MIN_SIDE or precision == "bfloat16"
        self.enabled = enabled and big and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())

    def __enter__(self):
        if self.enabled:
            self.model.to(memory_format=torch.channels_last)
        return self.model

    def __exit__(self, *exc):
        if self.enabled:
            self.model.to(memory_format=torch.contiguous_format)
        return False


def native_bfloat16(device) -> bool:
    """True where the hardware computes in bfloat16 natively, which makes a ResNet's forward and
    backward passes about twice as fast: a CPU with AMX tiles (Intel Sapphire Rapids and later) or with
    AVX512-BF16 instructions (Intel Cooper Lake, AMD Zen 4 and later), or a CUDA GPU that supports
    bfloat16. Elsewhere (older CPUs, Apple MPS) bfloat16 is emulated and slower: False."""
    device = torch.device(device)
    try:
        if device.type == "cpu":
            cpu = torch.cpu
            return bool(cpu._is_amx_tile_supported() or getattr(cpu, "_is_avx512_bf16_supported", bool)())
        if device.type == "cuda":
            return bool(torch.cuda.is_bf16_supported())
    except (AttributeError, RuntimeError):
        pass
    return False


def resolve_precision(precision: str, device) -> str:
    """'float32' | 'bfloat16' | 'auto' (bfloat16 where :func:`native_bfloat16`, else float32)."""
    if precision not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"precision must be 'auto', 'float32' or 'bfloat16', not {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


_FUSED = ModuleCache()      # model -> its fused copy, or None where folding does not apply


@torch.no_grad()
def fused_for_inference(model, like: torch.Tensor | None = None):
    """A copy of an eval-mode ``model`` with every BatchNorm folded into the convolution before it
    (``torch.fx.experimental.optimization.fuse``): the same function, one pass over memory fewer per
    layer (a ResNet-18's 200 LIME forward passes at 224 px: about 13 % faster on a CPU). For forward
    passes only.

    The model itself is returned where folding does not apply or cannot be trusted: in training mode
    (BatchNorm uses batch statistics), without BatchNorm, when torch.fx cannot trace it, or when the
    copy's output on ``like`` (one image) differs from the model's. The copy is cached while the
    model's parameters and buffers stay the same (storage and version counters).
    """
    bn_types = torch.nn.modules.batchnorm._BatchNorm
    if model.training or not any(isinstance(m, bn_types) for m in model.modules()):
        return model

    def compute():
        try:
            from torch.fx.experimental.optimization import fuse

            fused = fuse(model, inplace=False)
            if like is not None:
                x1 = like[None] if like.ndim == 3 else like[:1]
                ref, out = model(x1), fused(x1)
                if not torch.allclose(out, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()) + 1e-6):
                    return None
            return fused
        except Exception:   # not traceable by torch.fx (data-dependent control flow, non-torch calls, ...)
            return None

    fused = _FUSED.get(model, param_stamp(model), compute)
    return model if fused is None else fused


class inference_mode:
    """Context manager for many forward passes: channels-last layout (:class:`fast_layout`) and, for
    ``precision="bfloat16"``, autocast to bfloat16 (outputs come back as float32). With ``fuse=True``
    (forward passes without gradients only) call ``.model``: the model with its BatchNorms folded
    (:func:`fused_for_inference`), or the model itself where that does not apply."""

    def __init__(self, model, device, precision: str = "float32", like: torch.Tensor | None = None,
                 fuse: bool = False):
        self.model = fused_for_inference(model, like) if fuse else model
        self.layout = fast_layout(self.model, like=like, precision=precision)
        self.autocast = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
                         if precision == "bfloat16" else None)

    def __enter__(self):
        self.layout.__enter__()
        if self.autocast is not None:
            self.autocast.__enter__()
        return self

    def __exit__(self, *exc):
        if self.autocast is not None:
            self.autocast.__exit__(*exc)
        return self.layout.__exit__(*exc)


@torch.no_grad()
def batched_forward(model, batch: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Model outputs (logits) for a large batch, in chunks of ``batch_size``, without autograd."""
    outs = [model(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)]
    return torch.cat(outs)


def default_n_segments(h: int, w: int) -> int:
    """About 0.75 superpixels per pixel of image side: 21 at 28 px, 48 at 64 px, 96 at 128, 168 at 224."""
    return int(np.clip(round(0.75 * math.sqrt(h * w)), 8, 250))


def _relabel(seg: np.ndarray) -> np.ndarray:
    _, inv = np.unique(seg, return_inverse=True)
    return inv.reshape(seg.shape).astype(np.int64)


def segment(image: np.ndarray, method: str = "slic", n_segments: int | None = None, seed: int = 0,
            **kw) -> np.ndarray:
    """Superpixels of one image (H, W, C) or (H, W) in [0, 1]: int labels 0..M-1, shape (H, W).

    method:
      * ``"slic"`` (default): k-means in colour+position; ``n_segments`` defaults to
        :func:`default_n_segments`, ``compactness`` to 10 (grey levels are scaled to 0-100 like Lab).
      * ``"quickshift"``: lime's default (kernel_size=4, max_dist=200, ratio=0.2). It ignores the
        image size, so it yields a handful of regions on small images. Seeded through ``rng``
        (scikit-image >= 0.26) or ``random_seed`` (older), whichever this version accepts.
      * ``"felzenszwalb"``: graph-based, ``scale`` controls region size (XRAI uses several scales).
      * ``"grid"``: square patches, about ``n_segments`` of them (no image content involved).
    """
    from skimage import segmentation as skseg

    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    h, w = img.shape[:2]
    gray = img.ndim == 2
    if n_segments is None:
        n_segments = default_n_segments(h, w)
    if method == "slic":
        compactness = kw.pop("compactness", 10.0)
        src = img * 100.0 if gray else img
        seg = skseg.slic(src, n_segments=int(n_segments), compactness=compactness, start_label=0,
                         channel_axis=None if gray else -1, **kw)
    elif method == "quickshift":
        import inspect

        rgb = np.stack([img] * 3, -1) if gray else img
        params = dict(kernel_size=4, max_dist=200, ratio=0.2)
        params.update(kw)
        sig = inspect.signature(skseg.quickshift).parameters
        if "rng" in sig:
            params["rng"] = seed
        elif "random_seed" in sig:  # pragma: no cover - scikit-image < 0.26
            params["random_seed"] = seed
        seg = skseg.quickshift(rgb, **params)
    elif method == "felzenszwalb":
        params = dict(scale=kw.pop("scale", 100), sigma=kw.pop("sigma", 0.8), min_size=kw.pop("min_size", 20))
        seg = skseg.felzenszwalb(img, channel_axis=None if gray else -1, **params, **kw)
    elif method == "grid":
        k = max(1, int(round(math.sqrt(n_segments))))
        ys = np.minimum(np.arange(h) * k // h, k - 1)
        xs = np.minimum(np.arange(w) * k // w, k - 1)
        seg = ys[:, None] * k + xs[None, :]
    else:
        raise ValueError(f"unknown segmentation {method!r}; use 'slic', 'quickshift', 'felzenszwalb' or 'grid'")
    return _relabel(seg)


def _segments_for(model, x: torch.Tensor, segments, segmentation, n_segments, seed, seg_kw) -> list[np.ndarray]:
    """One label map per image: given (array (H,W) / (N,H,W) / callable) or computed."""
    n, _, h, w = x.shape
    if segments is not None:
        if callable(segments):
            disp = to_display(model, x)
            return [_relabel(np.asarray(segments(d))) for d in disp]
        s = np.asarray(segments)
        if s.shape == (h, w):
            return [_relabel(s)] * n
        if s.shape == (n, h, w):
            return [_relabel(si) for si in s]
        raise ValueError(f"segments must have shape (H, W)={h, w} or (N, H, W)={n, h, w}; got {s.shape}")
    disp = to_display(model, x)
    return [segment(d, segmentation, n_segments, seed=seed, **seg_kw) for d in disp]


def _fill(model, x1: torch.Tensor, seg: np.ndarray, hide) -> torch.Tensor:
    """What a switched-off superpixel is replaced with, (C, H, W) in the model's input units.

    ``hide``: ``"segment_mean"`` (lime's default: each superpixel's own mean colour),
    ``"dataset_mean"`` (the normalisation mean, i.e. 0 in normalised units: a neutral grey),
    ``"blur"`` (Gaussian blur, sigma = side/16), or a number = grey level in [0, 1] (0 = black).
    """
    c, h, w = x1.shape
    if hide is None or hide == "segment_mean":
        s = torch.as_tensor(seg, device=x1.device).reshape(-1)
        m = int(s.max()) + 1
        flat = x1.reshape(c, -1)
        sums = torch.zeros(c, m, dtype=x1.dtype, device=x1.device).index_add_(1, s, flat)
        cnt = torch.bincount(s, minlength=m).to(x1.dtype)
        return (sums / cnt)[:, s].reshape(c, h, w)
    if hide == "dataset_mean":
        if _mean_std(model, c)[0] is None:
            return x1.mean(dim=(1, 2), keepdim=True).expand(c, h, w).clone()
        return torch.zeros_like(x1)
    if hide == "blur":
        from torchvision.transforms.functional import gaussian_blur

        sigma = max(h, w) / 16
        k = int(2 * round(3 * sigma) + 1)
        return gaussian_blur(x1[None], [k, k], [sigma, sigma])[0]
    if isinstance(hide, (int, float)):
        return _display_value_to_normalised(model, x1, float(hide)).expand(c, h, w).clone()
    raise ValueError(f"hide must be 'segment_mean', 'dataset_mean', 'blur' or a grey level in [0, 1]; got {hide!r}")


@torch.no_grad()
def coalition_outputs(model, x1: torch.Tensor, seg: np.ndarray, Z: np.ndarray, fill: torch.Tensor,
                      batch_size: int = 128, precision: str = "float32") -> torch.Tensor:
    """Model logits for every row of the 0/1 matrix ``Z`` (B, M): superpixel j kept where Z[:, j] = 1.

    Images are composed on the fly, ``batch_size`` at a time: x_z = fill + mask_z * (x - fill).
    ``precision``: 'float32', 'bfloat16' (autocast; 2-2.6x faster on CPUs with AMX or AVX512-BF16, outputs differ by
    ~1e-3 in probability) or 'auto' (bfloat16 where the hardware has native support).
    """
    precision = resolve_precision(precision, x1.device)
    c, h, w = x1.shape
    m = int(seg.max()) + 1
    onehot = torch.zeros(m, h * w, dtype=x1.dtype, device=x1.device)
    onehot[torch.as_tensor(seg.reshape(-1), device=x1.device), torch.arange(h * w, device=x1.device)] = 1
    diff = (x1 - fill)[None]
    outs = []
    with inference_mode(model, x1.device, precision, like=x1, fuse=True) as run:
        for i in range(0, len(Z), batch_size):
            z = torch.as_tensor(Z[i:i + batch_size], dtype=x1.dtype, device=x1.device)
            mask = (z @ onehot).reshape(len(z), 1, h, w)
            outs.append(run.model(fill[None] + mask * diff).float())
    return torch.cat(outs)


def _paint(weights: np.ndarray, seg: np.ndarray) -> np.ndarray:
    return np.asarray(weights, dtype=np.float32)[seg]


# --------------------------------------------------------------------------------------------
# LIME
# --------------------------------------------------------------------------------------------


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
             kernel_width: float = 0.25, hide="segment_mean", output: str = "prob", batch_size: int = 128,
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
    rs = _rng(random_state)
    m = int(seg.max()) + 1
    Z = rs.randint(0, 2, num_samples * m).reshape(num_samples, m)
    Z[0, :] = 1
    fill = _fill(model, x1, seg, hide)
    out = _outputs(model, coalition_outputs(model, x1, seg, Z, fill, batch_size, precision), output)
    y = out[:, target].double().cpu().numpy()
    pi = lime_kernel(cosine_distance_to_ones(Z), kernel_width)
    coef, intercept, score = weighted_ridge(Z, y, pi, alpha)
    return dict(weights=coef, intercept=intercept, score=score, Z=Z, y=y, kernel=pi, segments=seg)


def lime_image_one(model, x1: torch.Tensor, target: int, seg: np.ndarray, *, num_samples: int = 1000,
                   kernel_width: float = 0.25, hide="segment_mean", output: str = "prob",
                   batch_size: int = 10, random_state=None) -> dict:
    """The same explanation through the ``lime`` library itself (for cross-checks and timing).

    A wrapper fixes what lime gets wrong on medical images: grayscale inputs (lime converts them to
    RGB; the classifier function converts back), channel order (lime wants H, W, C in [0, 1]-like
    units), seeding (lime's ``random_state`` is seeded, and the segmentation is passed in), and the
    model call (``torch.no_grad`` on the model's device).
    """
    from lime import lime_image

    seed = int(_rng(random_state).randint(0, 2**31 - 1)) if not isinstance(random_state, int) else random_state
    img = to_display(model, x1[None], clip=False)[0].astype(np.float64)  # H, W, C
    c = img.shape[2]
    if hide in (None, "segment_mean"):
        hide_color = None
    elif isinstance(hide, (int, float)):
        hide_color = float(hide)
    elif hide == "dataset_mean":
        mean, _ = _mean_std(model, c)
        hide_color = float(np.mean(mean)) if mean is not None else float(img.mean())
    else:
        raise ValueError(f"engine='lime_image' supports hide='segment_mean' or a grey level, not {hide!r}")

    def classifier_fn(batch):
        b = np.asarray(batch, dtype=np.float32)
        if c == 1:
            b = b[..., :1]  # lime made the grayscale image RGB; the model wants one channel
        with torch.no_grad():
            return _outputs(model, model(_from_display(model, b, x1)), output).cpu().numpy()

    explainer = lime_image.LimeImageExplainer(kernel_width=kernel_width, random_state=seed)
    e = explainer.explain_instance(img[..., 0] if c == 1 else img, classifier_fn, labels=(target,), top_labels=None,
                                   hide_color=hide_color, num_samples=num_samples, batch_size=batch_size,
                                   segmentation_fn=lambda _im: seg, random_seed=seed)
    w = np.zeros(int(seg.max()) + 1)
    for j, v in e.local_exp[target]:
        w[j] = v
    return dict(weights=w, intercept=float(e.intercept[target]), score=float(e.score), segments=seg)


@register("lime", "LIME: weighted ridge surrogate over superpixels (seeded, batched; SLIC by default)")
def lime_method(model, x, targets, *, num_samples: int = 1000, segmentation: str = "slic",
                n_segments: int | None = None, segments=None, kernel_width: float = 0.25,
                hide="segment_mean", output: str = "prob", batch_size: int = 128, random_state=None,
                engine: str = "fast", precision: str = "auto", **seg_kw):
    """LIME (Ribeiro et al., 2016) on superpixels; map = each superpixel's weight painted on its pixels.

    Options: ``num_samples`` perturbed images per explanation; ``segmentation`` 'slic' (default) |
    'quickshift' (lime's default) | 'felzenszwalb' | 'grid', with ``n_segments`` (default scaled to
    the image size) or explicit ``segments`` (H, W) / (N, H, W) / callable; ``kernel_width`` of the
    proximity kernel; ``hide`` 'segment_mean' | 'dataset_mean' | 'blur' | grey level;
    ``output`` 'prob' | 'logit'; ``engine`` 'fast' (batched re-implementation) | 'lime_image';
    ``precision`` of the forward passes (engine 'fast'): 'auto' (bfloat16 where the hardware runs it
    natively, e.g. CPUs with AMX or AVX512-BF16; float32 elsewhere) | 'float32' | 'bfloat16'. The surrogate fits
    probabilities that bfloat16 changes by ~1e-3, far below LIME's sampling noise (notebook 05).
    """
    if engine not in ("fast", "lime_image"):
        raise ValueError(f"engine must be 'fast' or 'lime_image', not {engine!r}")
    rs = _rng(random_state)
    segs = _segments_for(model, x, segments, segmentation, n_segments, int(rs.randint(0, 2**31 - 1)), seg_kw)
    maps = []
    for i in range(len(x)):
        seed_i = int(rs.randint(0, 2**31 - 1))
        if engine == "fast":
            r = lime_one(model, x[i], int(targets[i]), segs[i], num_samples=num_samples, kernel_width=kernel_width,
                         hide=hide, output=output, batch_size=batch_size, random_state=seed_i,
                         precision=precision)
        else:
            r = lime_image_one(model, x[i], int(targets[i]), segs[i], num_samples=num_samples,
                               kernel_width=kernel_width, hide=hide, output=output,
                               batch_size=batch_size if batch_size != 128 else 10, random_state=seed_i)
        maps.append(_paint(r["weights"], segs[i]))
    return np.stack(maps)


# --------------------------------------------------------------------------------------------
# SHAP: expected gradients, Partition explainer
# --------------------------------------------------------------------------------------------


def expected_gradients(model, x: torch.Tensor, targets: torch.Tensor, background: torch.Tensor | None = None,
                       nsamples: int = 50, batch_size: int = 128, random_state=None,
                       local_smoothing: float = 0.0, precision: str = "float32") -> torch.Tensor:
    """Expected gradients (Erion et al., 2021), as ``shap.GradientExplainer`` computes them.

    phi(x) = E_{x' ~ background, t ~ U(0,1)} [ (x - x') * d f_target(x' + t (x - x')) / dx ]

    The draws (background row, t) follow shap's own stream (``choice`` then ``uniform`` per sample,
    from ``rseed`` = one draw per image) so that, with the same seed, the result equals shap's to float precision; but
    every sample of every image goes through the model in a few large batches and only the target
    output is differentiated (shap, by default, differentiates every output in turn).
    ``precision``: 'float32' (default here: equal to shap), 'bfloat16' (forward and backward under
    autocast: about 2x faster where :func:`native_bfloat16`; the gradients move far less than the
    sampling noise of ``nsamples`` draws, see ``tests/test_perturbation.py``) or 'auto'.
    Returns (N, C, H, W) attributions.
    """
    precision = resolve_precision(precision, x.device)
    if background is None:
        background = torch.zeros_like(x[:1])  # the dataset-mean image in normalised units
    background = torch.as_tensor(background, dtype=x.dtype, device=x.device)
    if background.ndim == 3:
        background = background[None]
    if background.shape[1:] != x.shape[1:]:
        raise ValueError(f"background must have shape (B, {', '.join(map(str, x.shape[1:]))}); "
                         f"got {tuple(background.shape)}")
    rs = _rng(random_state)
    n = len(x)
    rind = np.empty((n, nsamples), dtype=np.int64)
    ts = np.empty((n, nsamples), dtype=np.float64)
    for j in range(n):
        rs_j = np.random.RandomState(int(rs.randint(0, 10**6)))  # shap's rseed for this image
        for k in range(nsamples):
            rind[j, k] = rs_j.choice(background.shape[0])
            ts[j, k] = rs_j.uniform()
    rind_t = torch.as_tensor(rind.reshape(-1), device=x.device)
    t_t = torch.as_tensor(ts.reshape(-1), dtype=x.dtype, device=x.device)[:, None, None, None]
    img_idx = torch.arange(n, device=x.device).repeat_interleave(nsamples)
    tgt = targets.to(x.device)[img_idx]
    phis = torch.zeros(n * nsamples, *x.shape[1:], dtype=x.dtype, device=x.device)
    with inference_mode(model, x.device, precision, like=x):
        _eg_batches(model, x, img_idx, rind_t, t_t, tgt, background, phis, batch_size, local_smoothing)
    return phis.reshape(n, nsamples, *x.shape[1:]).mean(1).detach()


def _eg_batches(model, x, img_idx, rind_t, t_t, tgt, background, phis, batch_size, local_smoothing):
    for i in range(0, len(phis), batch_size):
        sl = slice(i, i + batch_size)
        xi, bi = x[img_idx[sl]], background[rind_t[sl]]
        if local_smoothing > 0:
            xi = xi + torch.randn_like(xi) * local_smoothing
        inp = (bi + t_t[sl] * (xi - bi)).detach().requires_grad_(True)
        with torch.enable_grad():
            out = model(inp)
            (g,) = torch.autograd.grad(out.gather(1, tgt[sl, None]).float().sum(), inp)
        phis[sl] = g * (xi - bi)


@register("expected_gradients", "SHAP expected gradients (GradientExplainer), one batched backward pass")
def expected_gradients_method(model, x, targets, *, background=None, nsamples: int = 50, batch_size: int = 128,
                              random_state=None, local_smoothing: float = 0.0, precision: str = "auto"):
    """Expected gradients; ``background`` (B, C, H, W) normalised images (default: the mean image),
    ``nsamples`` gradient samples per image; ``precision`` 'auto' (bfloat16 where the hardware runs it
    natively, float32 elsewhere) | 'float32' (equal to ``shap.GradientExplainer``) | 'bfloat16'.
    Map = attribution summed over channels."""
    return expected_gradients(model, x, targets, background, nsamples, batch_size, random_state,
                              local_smoothing, precision).sum(1)


register("shap", "SHAP expected gradients (alias of 'expected_gradients')")(expected_gradients_method)


def shap_gradient_library(model, x: torch.Tensor, targets, background=None, nsamples: int = 50,
                          random_state=None, batch_size: int = 50, all_outputs: bool = False) -> np.ndarray:
    """``shap.GradientExplainer`` itself (cross-check and timing): (N, C, H, W) for each image's target.

    ``all_outputs=True`` is the library's default call (no ``ranked_outputs``): it differentiates every
    model output, one after the other, and the target's slice is returned.
    """
    import shap

    if background is None:
        background = torch.zeros_like(x[:1])
    rs = _rng(random_state)
    ex = shap.GradientExplainer(model, background, batch_size=batch_size)
    res = []
    for j in range(len(x)):
        seed = int(rs.randint(0, 10**6))
        if all_outputs:
            sv = ex.shap_values(x[j:j + 1], nsamples=nsamples, rseed=seed)
            sv = np.asarray(sv)[..., int(targets[j])]
        else:
            class _Pick(torch.nn.Module):  # explain only the target output
                def __init__(self, m, t):
                    super().__init__()
                    self.m, self.t = m, t

                def forward(self, z):
                    return self.m(z)[:, self.t:self.t + 1]

            exj = shap.GradientExplainer(_Pick(model, int(targets[j])), background, batch_size=batch_size)
            sv = np.asarray(exj.shap_values(x[j:j + 1], nsamples=nsamples, rseed=seed))
            sv = sv.reshape(sv.shape[:4])
        res.append(sv[0])
    return np.stack(res)


@register("shap_partition", "SHAP Partition explainer with an image masker (blur or inpaint)")
def shap_partition_method(model, x, targets, *, max_evals: int = 500, masker: str = "blur", batch_size: int = 128,
                          output: str = "logit"):
    """Owen values over shap's hierarchical image partition (``shap.PartitionExplainer`` +
    ``shap.maskers.Image``). ``masker``: 'blur' (= 'blur(s,s)' with s = side/4), 'inpaint_telea',
    'inpaint_ns', or any string shap accepts; ``max_evals`` model calls per image (the partition tree is
    refined while budget remains). Images are given to shap as (H, W, C) in 0-255 units (its inpainting
    maskers cast to uint8; grayscale as 3 equal channels, which the model function turns back into one);
    values are per unit of the model output, as usual."""
    import shap

    disp = to_display(model, x).astype(np.float32)
    n, h, w, c = disp.shape
    if masker == "blur":
        k = max(3, (max(h, w) // 4) | 1)
        masker = f"blur({k},{k})"
    # shap's inpainting maskers cast to uint8, so images go to shap in 0-255 units (blur does not care)
    img3 = (np.repeat(disp, 3, axis=3) if c == 1 else disp) * 255.0
    maps = []
    for i in range(n):
        t = int(targets[i])

        def f(batch, t=t):
            b = np.asarray(batch, dtype=np.float32) / 255.0
            if c == 1:
                b = b[..., :1]
            xt = _from_display(model, b, x[i])
            return _outputs(model, batched_forward(model, xt, batch_size), output)[:, t:t + 1].cpu().numpy()

        mk = shap.maskers.Image(masker, img3[i].shape)
        ex = shap.PartitionExplainer(f, mk)
        sv = ex(img3[i:i + 1], max_evals=max_evals, batch_size=batch_size, silent=True)
        v = np.asarray(sv.values)[0]  # (H, W, 3, 1)
        maps.append(v.reshape(h, w, 3, -1)[..., 0].sum(-1))
    return np.stack(maps)


# --------------------------------------------------------------------------------------------
# exact Shapley values over a handful of superpixels
# --------------------------------------------------------------------------------------------

MAX_EXACT_PLAYERS = 12


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
                      output: str = "logit", batch_size: int = 256) -> dict:
    """Exact Shapley values of ``target`` for the superpixels in ``seg`` (M <= 12): every one of the 2^M
    coalitions is evaluated (batched forward passes), then :func:`shapley_from_values`."""
    m = int(seg.max()) + 1
    if m > MAX_EXACT_PLAYERS:
        raise ValueError(f"exact Shapley values need 2^M forward passes; M={m} superpixels is more than "
                         f"{MAX_EXACT_PLAYERS} (2^{MAX_EXACT_PLAYERS}={2**MAX_EXACT_PLAYERS} passes). "
                         "Use fewer segments (n_segments=) or KernelSHAP / LIME.")
    Z = all_coalitions(m)
    fill = _fill(model, x1, seg, hide)
    out = _outputs(model, coalition_outputs(model, x1, seg, Z, fill, batch_size), output)
    v = out[:, target].double().cpu().numpy()
    return dict(phi=shapley_from_values(v), values=v, Z=Z, segments=seg, fill=fill)


@register("exact_shapley", "exact Shapley values over <= 12 superpixels (all 2^M coalitions)")
def exact_shapley_method(model, x, targets, *, n_segments: int = 10, segmentation: str = "slic", segments=None,
                         hide="dataset_mean", output: str = "logit", batch_size: int = 256, **seg_kw):
    """Exact Shapley values with superpixels as players; map = phi_j painted on superpixel j.
    ``hide`` as for LIME (default: the dataset-mean grey), ``output`` 'logit' (default) | 'prob'."""
    segs = _segments_for(model, x, segments, segmentation, n_segments, 0, seg_kw)
    maps = [_paint(exact_shapley_one(model, x[i], int(targets[i]), segs[i], hide, output, batch_size)["phi"], segs[i])
            for i in range(len(x))]
    return np.stack(maps)


def kernel_shap_superpixels(model, x1: torch.Tensor, target: int, seg: np.ndarray, hide="dataset_mean",
                            output: str = "logit", nsamples: int | str = "auto", batch_size: int = 256) -> np.ndarray:
    """``shap.KernelExplainer`` on the same superpixel game (players = superpixels, absent = ``hide``),
    for checking :func:`exact_shapley_one`. With nsamples >= 2^M it enumerates every coalition."""
    import shap

    m = int(seg.max()) + 1
    fill = _fill(model, x1, seg, hide)

    def f(Z):
        out = _outputs(model, coalition_outputs(model, x1, seg, np.asarray(Z), fill, batch_size), output)
        return out[:, target].double().cpu().numpy()

    ex = shap.KernelExplainer(f, np.zeros((1, m)))
    ns = 2 ** m + 2 if nsamples == "auto" else nsamples
    return np.asarray(ex.shap_values(np.ones((1, m)), nsamples=ns, l1_reg=False, silent=True)).reshape(-1)[:m]


# --------------------------------------------------------------------------------------------
# XRAI
# --------------------------------------------------------------------------------------------


def integrated_gradients(model, x: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor,
                         steps: int = 32, batch_size: int = 128) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al., 2017), right Riemann sum, batched over steps.
    ``baseline`` broadcastable to ``x``. Returns (N, C, H, W)."""
    baseline = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
    alphas = torch.arange(1, steps + 1, dtype=x.dtype, device=x.device) / steps
    out = torch.zeros_like(x)
    for j in range(len(x)):
        path = baseline[j][None] + alphas[:, None, None, None] * (x[j] - baseline[j])[None]
        grads = []
        for i in range(0, steps, batch_size):
            inp = path[i:i + batch_size].detach().requires_grad_(True)
            with torch.enable_grad():
                o = model(inp)[:, int(targets[j])].sum()
                (g,) = torch.autograd.grad(o, inp)
            grads.append(g)
        out[j] = torch.cat(grads).mean(0) * (x[j] - baseline[j])
    return out.detach()


def _ig(model, x, targets, baseline, steps):
    try:  # helper EXPLAIN's version, when it exists
        from .gradients import integrated_gradients_attr as ig_shared  # type: ignore

        return torch.as_tensor(ig_shared(model, x, targets, steps=steps, baseline=baseline))
    except Exception:  # not written yet, or a different signature: our own
        return integrated_gradients(model, x, targets, baseline, steps)


def xrai_segments(image: np.ndarray, scales: Sequence[float] = (50, 100, 150, 250, 500, 1200),
                  dilation: int | None = None, resize: int | None = None, min_size: int = 150) -> np.ndarray:
    """XRAI's over-segmentation: Felzenszwalb at several scales, each segment a mask, dilated by a
    disk. Returns (K, H, W) bool, overlapping masks.

    The reference code segments at 224 px (``resize=224``: scale values 50..1200, min_size 150,
    dilation radius 5 px). The default ``resize=None`` segments at the image's own size with the
    scale, min_size and radius shrunk by the area (resp. side) ratio to 224 px: the same regions
    relative to the image, about 10x faster at 64 px.
    """
    from skimage.segmentation import felzenszwalb
    from skimage.transform import resize as sk_resize

    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = img[..., None]
    h, w, c = img.shape
    side = resize or max(h, w)
    work = sk_resize(img, (resize, resize), order=3, mode="constant", preserve_range=True,
                     anti_aliasing=True) if resize else img
    lo, hi = work.min(), work.max()
    work = (work - lo) / (hi - lo) * 2 - 1 if hi > lo else work * 0
    area = (side / 224.0) ** 2
    if dilation is None:
        dilation = max(1, int(round(5 * max(h, w) / 224)))
    labels = []
    for s in scales:
        seg = felzenszwalb(work[..., 0] if c == 1 else work, scale=s * area, sigma=0.8,
                           min_size=max(2, int(round(min_size * area))), channel_axis=None if c == 1 else -1)
        if resize:
            seg = sk_resize(seg, (h, w), order=0, preserve_range=True, mode="constant",
                            anti_aliasing=False).astype(int)
        labels.append(_relabel(seg))
    yy, xx = np.mgrid[-dilation:dilation + 1, -dilation:dilation + 1]
    offsets = [(dy, dx) for dy, dx in zip(yy.ravel(), xx.ravel()) if dy * dy + dx * dx <= dilation ** 2]
    iy, ix = np.mgrid[0:h, 0:w]
    out = []
    for lab in labels:  # dilation by a disk: region l covers (y, x) if any pixel within the disk is l
        m = np.zeros((int(lab.max()) + 1, h, w), dtype=bool)
        for dy, dx in offsets:
            sy, sx = np.clip(iy + dy, 0, h - 1), np.clip(ix + dx, 0, w - 1)
            m[lab[sy, sx], iy, ix] = True
        out.append(m)
    return np.concatenate(out)


def xrai_from_attribution(attr: np.ndarray, masks: np.ndarray, min_pixel_diff: int | None = None,
                          area_threshold: float = 1.0):
    """XRAI's greedy region ranking: repeatedly add the region whose not-yet-covered pixels have the
    highest mean attribution (gain density); each pixel gets the gain of the region that first
    covered it. Returns (map (H, W), list of (region mask, gain) in the order added)."""
    h, w = attr.shape
    a = attr.reshape(-1).astype(np.float64)
    Mb = masks.reshape(len(masks), -1).astype(bool)
    if min_pixel_diff is None:
        min_pixel_diff = max(1, int(round(50 * h * w / 224 ** 2)))
    out = np.full(h * w, -np.inf)
    covered = np.zeros(h * w, dtype=bool)
    alive = np.ones(len(Mb), dtype=bool)
    cnt = Mb.sum(1).astype(np.float64)          # not-yet-covered pixels of each region
    gain_sum = Mb.astype(np.float64) @ a         # their summed attribution
    trace = []
    while covered.mean() < area_threshold:
        alive &= cnt >= min_pixel_diff
        if not alive.any():
            break
        gain = np.where(alive, gain_sum / np.maximum(cnt, 1), -np.inf)
        k = int(np.argmax(gain))
        new = Mb[k] & ~covered
        out[new] = gain[k]
        trace.append((new.reshape(h, w), float(gain[k])))
        covered |= new
        alive[k] = False
        cols = np.flatnonzero(new)               # update every region for the pixels just covered
        sub = Mb[:, cols]
        cnt -= sub.sum(1)
        gain_sum -= sub @ a[cols]
    rest = ~np.isfinite(out)
    if rest.any():
        out[rest] = a[rest].mean()
    return out.reshape(h, w), trace


@register("xrai", "XRAI: regions ranked by integrated-gradients density (Kapishnikov et al., 2019)")
def xrai_method(model, x, targets, *, steps: int = 32, baselines=("mean",), scales=(50, 100, 150, 250, 500, 1200),
                dilation: int | None = None, resize: int | None = None):
    """XRAI written from the paper: integrated gradients (averaged over ``baselines``, channels merged by
    max as in the reference code), Felzenszwalb over-segmentation at several ``scales``, greedy region
    ranking by attribution density. Map = the gain (mean attribution) of the region that covers a pixel.

    ``baselines``: any of 'mean' (the dataset mean, 0 in normalised units; default), 'black', 'white'
    (the paper's pair), 'blur', or a grey level in [0, 1]. A black baseline makes IG blind to dark
    evidence (dark dots on skin score ~0): the notebook shows it.
    """
    disp = to_display(model, x)
    attrs = []
    for b in baselines:
        if isinstance(b, str) and b in ("mean", "zero", "dataset_mean", "blur"):
            hide = "blur" if b == "blur" else "dataset_mean"
            base = torch.stack([_fill(model, xi, None, hide) for xi in x])
        elif isinstance(b, (int, float)) or b in ("black", "white"):
            val = {"black": 0.0, "white": 1.0}.get(b, b)
            base = torch.stack([_display_value_to_normalised(model, xi, float(val)).expand_as(xi) for xi in x])
        else:
            raise ValueError(f"baselines must be 'mean', 'black', 'white', 'blur' or grey levels in [0, 1]; got {b!r}")
        attrs.append(_ig(model, x, targets, base, steps))
    attr = torch.stack(attrs).mean(0).max(dim=1).values.cpu().numpy()
    maps = []
    for i in range(len(x)):
        masks = xrai_segments(disp[i], scales, dilation, resize)
        m, _ = xrai_from_attribution(attr[i], masks)
        maps.append(m)
    return np.stack(maps).astype(np.float32)
