"""One call for every explanation method in the workbook.

    >>> from xai_helpers.explain import explain
    >>> exp = explain(model, images, target="mel", method="gradcam")
    >>> exp.maps.shape            # (N, H, W), signed, at the input's resolution
    >>> exp.normalized()          # unsigned, each map scaled to [0, 1], for display

Methods live in one module per family, named after what a chapter teaches: ``cam`` (03), ``lrp``
(04), ``lime`` (05), ``shap`` and ``xrai`` (06), ``gradients`` and ``baselines`` (07); they register
themselves with :func:`register`. ``explain`` does the shared work once: it checks the images and the
target against the model's declared interface (:func:`xai_helpers.model_info.model_info`), moves them
to the model's device, hands sampling methods seeded generators of their own, times the call and wraps
the result, so that every method is compared on equal terms. Where a method exists both as our code
and as a library's, ``backend="ours"`` or ``backend="library"`` chooses.

Bad input gets an error that says what to do (:mod:`.checks`): NaN pixels, a flat target list of the
wrong length, too small images, options a method does not know, counts that give no map. An empty batch
gives an empty Explanation. Large batches run in chunks of ``chunk_size`` images, so memory stays bounded;
maps whose value is constant (no signal) raise a :class:`BlankMapWarning` and are marked in
``Explanation.blank``.
"""
from __future__ import annotations

import importlib
import inspect
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..model_info import ModelInfoError, model_info
from ._random import local_generators
from .checks import (BlankMapWarning, blank_maps, check_count, check_images, check_options, resolve_targets,
                     too_small_error)

# name -> function(model, x, targets, **options) -> tensor/array (N, H, W) at input resolution.
# ``x`` is a float tensor (N, C, H, W) on the model's device; ``targets`` a LongTensor (N,) of
# output indices (one per image; multi-finding requests are expanded by ``explain``).
_METHODS: dict[str, Callable] = {}
_DESCRIPTIONS: dict[str, str] = {}
# modules imported the first time a method is looked up (they import captum, zennit, shap, lime and
# pytorch-grad-cam only inside the functions that use them, so importing this package stays light)
_METHOD_MODULES = ("cam", "lrp", "gradients", "baselines", "lime", "shap", "xrai")
# which of explain's seeded generators each method declares: rng (numpy RandomState), generator (torch)
_RANDOM_KEYWORDS: dict[str, tuple[str, ...]] = {}
# methods that pass **options on (LIME's segmentation): options -> (to what, the names it accepts)
_EXTRA_OPTIONS: dict[str, Callable] = {}
# methods that bound their own memory and draw random numbers across the batch: no chunks
_WHOLE_BATCH: set[str] = set()
CHUNK_SIZE = 64     # images per method call: bounds memory (Grad-CAM holds ~1.3 MB per 64 px image)

BACKENDS = ("ours", "library")
_OLD_BACKENDS = {"hand": "ours", "fast": "ours", "pytorch-grad-cam": "library", "zennit": "library",
                 "lime_image": "library"}


def register(name: str, description: str = "", *, extra_options: Callable | None = None,
             whole_batch: bool = False):
    """Decorator: make ``fn(model, x, targets, **options)`` available as ``explain(..., method=name)``.

    ``extra_options(options) -> (what, names)``: for a method that passes ``**kw`` on, what else it
    accepts (explain rejects any other option). ``whole_batch=True``: the method bounds its own memory
    (it loops over the images, or sums over its samples), so explain hands it the whole batch instead of
    chunks, and its random stream, drawn across the batch, does not depend on ``chunk_size``."""

    def deco(fn):
        _METHODS[name] = fn
        params = inspect.signature(fn).parameters
        _RANDOM_KEYWORDS[name] = tuple(k for k in ("rng", "generator") if k in params)
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().split("\n")[0]
        if extra_options is not None:
            _EXTRA_OPTIONS[name] = extra_options
        if whole_batch:
            _WHOLE_BATCH.add(name)
        return fn

    return deco


def check_backend(backend: str, valid: Sequence[str] = BACKENDS) -> str:
    """``backend`` if it is one of ``valid``; a ValueError naming the new spelling for an old one."""
    if backend in valid:
        return backend
    if backend in _OLD_BACKENDS:
        raise ValueError(f"backend={backend!r} is now backend={_OLD_BACKENDS[backend]!r} "
                         f"(one word for every method: {' / '.join(map(repr, valid))})")
    raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(map(repr, valid))} "
                     "('ours': this package's code; 'library': the reference library's)")


def _load_methods() -> None:
    for mod in _METHOD_MODULES:
        importlib.import_module(f"{__name__}.{mod}")


def available_methods() -> dict[str, str]:
    """Method name -> one-line description, for every registered method."""
    _load_methods()
    return dict(sorted(_DESCRIPTIONS.items()))


@dataclass
class Explanation:
    """The result of :func:`explain`: one map per (image, target) at input resolution."""

    maps: np.ndarray                 # (N, H, W) float32, signed as the method produced it
    method: str
    targets: list                    # one output index per map
    target_names: list               # the class / finding name of each map
    image_index: np.ndarray          # which input image each map belongs to (N,)
    options: dict = field(default_factory=dict)
    seconds: float = 0.0             # wall time of the method itself, whole batch
    blank: np.ndarray | None = None  # (N,) bool: constant maps (no signal; a score of them means nothing)

    def __post_init__(self):
        if self.blank is None:
            self.blank = blank_maps(self.maps)

    def __len__(self) -> int:
        return len(self.maps)

    def normalized(self, absolute: bool = True, percentile: float = 99.5) -> np.ndarray:
        """Unsigned view for display: |map| (or positive part), scaled per map to [0, 1].

        The top ``100 - percentile`` % of values are clipped so that one extreme pixel does not
        wash out the rest of the map.
        """
        m = np.abs(self.maps) if absolute else np.clip(self.maps, 0, None)
        flat = m.reshape(len(m), -1)
        hi = np.percentile(flat, percentile, axis=1)[:, None]
        hi = np.where(hi > 0, hi, flat.max(axis=1, keepdims=True))
        hi = np.where(hi > 0, hi, 1.0)
        return (np.clip(flat / hi, 0, 1)).reshape(m.shape).astype(np.float32)

    def title(self, i: int = 0) -> str:
        return f"{self.method} | {self.target_names[i]}"


def _as_maps(out, method: str, n: int, h: int, w: int) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        out = out.detach().float().cpu().numpy()
    out = np.asarray(out, dtype=np.float32)
    if out.ndim == 4 and out.shape[1] in (1, 3):  # per-channel attribution: sum over channels
        out = out.sum(1)
    if out.shape != (n, h, w):
        raise RuntimeError(f"method {method!r} returned maps of shape {out.shape}, expected {(n, h, w)}")
    return out


def _run(method: str, model, x: torch.Tensor, targets: torch.Tensor, chunk_size: int, options: dict) -> np.ndarray:
    """The method's maps for the whole batch, ``chunk_size`` images per call (``whole_batch`` methods:
    one call)."""
    n, _, h, w = x.shape
    if n == 0:
        return np.zeros((0, h, w), dtype=np.float32)
    step = n if method in _WHOLE_BATCH else chunk_size
    maps = []
    for s in range(0, n, step):
        try:
            out = _METHODS[method](model, x[s:s + step], targets[s:s + step], **options)
        except RuntimeError as err:
            small = too_small_error(model, x[:1], err)
            if small is not None:
                raise small from err
            raise
        maps.append(_as_maps(out, method, len(x[s:s + step]), h, w))
    return np.concatenate(maps)


def _warn_doubtful(exp: "Explanation") -> None:
    """A warning for blank (constant) maps and for maps with NaN / inf values, naming method and images."""
    n = len(exp)
    finite = np.isfinite(exp.maps.reshape(n, -1)).all(1) if exp.maps.size else np.ones(n, bool)
    for mask, what, category in ((exp.blank, "blank (constant: no signal)", BlankMapWarning),
                                 (~finite, "NaN or infinite", RuntimeWarning)):
        if mask.any():
            imgs = sorted(set(exp.image_index[mask].tolist()))
            warnings.warn(f"{exp.method}: {int(mask.sum())} of {n} maps are {what}, for images {imgs[:10]}"
                          f"{' ...' if len(imgs) > 10 else ''}. The method found nothing to attribute there (a zero "
                          "gradient, a dead or ablated layer, a saturated output, a flat image); a score of such a "
                          "map is meaningless (chance level). Explanation.blank marks the blank ones.",
                          category, stacklevel=3)


def explain(model: torch.nn.Module, images, target=None, method: str = "gradcam", *,
            seed: int | None = 0, chunk_size: int = CHUNK_SIZE, **options) -> Explanation:
    """Explain ``model``'s output ``target`` on ``images`` with ``method``.

    Parameters
    ----------
    model : a classifier returning logits (N, K) that declares its interface (``model.info``: built by
        ``models.build_model``, or wrapped with ``model_info.describe_model``; else ModelInfoError).
        It is put in eval mode.
    images : (N, C, H, W) or (C, H, W) float tensor/array, normalised as the model expects (a warning
        if they look like raw 0-255 pixels; NaN / inf pixels are refused). Other float dtypes are cast
        to the model's. N = 0 gives an empty Explanation (maps of shape (0, H, W)).
    target : class index, class name, one per image (a flat list as long as the batch), several per
        image (per-image lists: ``[["Effusion", "Mass"]] * len(images)``), or None for the predicted
        class. A flat list of another length is an error, except for a single image, where it means
        several findings of that image.
    method : see :func:`available_methods`.
    seed : seeds the method's own random generators (a NumPy RandomState and a CPU torch.Generator),
        so that sampling methods are reproducible; the global random state is left untouched.
        ``None``: unseeded (the methods draw from the global generators).
    chunk_size : images per method call (memory grows with it). The maps do not depend on it, except the
        noise of SmoothGrad and of the random baseline on batches larger than ``chunk_size`` (same
        distribution, another draw). LIME, expected gradients / SHAP, SHAP partition and exact Shapley
        bound their own memory and always get the whole batch (their random streams span it).
    **options : passed to the method (e.g. ``layer=`` for CAMs, ``steps=`` for Integrated Gradients);
        an option the method does not know is a TypeError that lists the valid ones.
    """
    _load_methods()
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; available: {sorted(_METHODS)}")
    check_options(method, _METHODS[method], options, _EXTRA_OPTIONS.get(method))
    chunk_size = check_count("chunk_size", chunk_size)
    names = model_info(model).class_names          # ModelInfoError for a model without the interface
    model.eval()
    x = check_images(model, images)
    try:
        per_image = resolve_targets(model, x, target)
    except RuntimeError as err:                    # target=None: the forward pass may fail on small images
        small = too_small_error(model, x[:1], err) if len(x) else None
        if small is not None:
            raise small from err
        raise
    idx = np.array([i for i, ts in enumerate(per_image) for _ in ts], dtype=np.int64)
    tgt = [t for ts in per_image for t in ts]
    xx = x[torch.as_tensor(idx, device=x.device)] if len(idx) != len(x) else x
    tt = torch.as_tensor(tgt, dtype=torch.long, device=x.device)
    rng, generator = local_generators(seed)
    seeded = {k: v for k, v in (("rng", rng), ("generator", generator))
              if k in _RANDOM_KEYWORDS[method] and v is not None and k not in options}
    t0 = time.perf_counter()
    maps = _run(method, model, xx, tt, chunk_size, {**options, **seeded})
    exp = Explanation(maps=maps, method=method, targets=tgt, target_names=[names[t] for t in tgt],
                      image_index=idx, options=dict(options), seconds=time.perf_counter() - t0)
    _warn_doubtful(exp)
    return exp

__all__ = ["explain", "register", "available_methods", "Explanation", "resolve_targets", "check_images",
           "check_backend", "BACKENDS", "ModelInfoError", "BlankMapWarning", "CHUNK_SIZE", "check_count"]
