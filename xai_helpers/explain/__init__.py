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
"""
from __future__ import annotations

import importlib
import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..model_info import ModelInfoError, model_info
from ._random import local_generators

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

BACKENDS = ("ours", "library")
_OLD_BACKENDS = {"hand": "ours", "fast": "ours", "pytorch-grad-cam": "library", "zennit": "library",
                 "lime_image": "library"}


def register(name: str, description: str = ""):
    """Decorator: make ``fn(model, x, targets, **options)`` available as ``explain(..., method=name)``."""

    def deco(fn):
        _METHODS[name] = fn
        params = inspect.signature(fn).parameters
        _RANDOM_KEYWORDS[name] = tuple(k for k in ("rng", "generator") if k in params)
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().split("\n")[0]
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


def resolve_targets(model, x: torch.Tensor, target) -> list[list[int]]:
    """Turn ``target`` into, per image, the list of output indices to explain.

    Accepts an int, a class name, a list of ints/names with one entry per image, a list of several
    findings for every image (multi-label: ``["Effusion", "Atelectasis"]``), or ``None`` / ``"pred"``
    for the predicted class (the top logit). Raises ``ValueError`` that lists the valid targets.
    """
    names = list(model_info(model).class_names)
    n_out = len(names)
    valid = f"valid targets: indices 0..{n_out - 1} or names {names}"

    def one(t) -> int:
        if isinstance(t, (np.integer, int)) and not isinstance(t, bool):
            if not 0 <= int(t) < n_out:
                raise ValueError(f"target {int(t)} is out of range for a model with {n_out} outputs; {valid}")
            return int(t)
        if isinstance(t, str):
            if t not in names:
                raise ValueError(f"unknown target {t!r}; {valid}")
            return names.index(t)
        raise ValueError(f"cannot read target {t!r} ({type(t).__name__}); {valid}")

    n = len(x)
    if target is None or (isinstance(target, str) and target == "pred"):
        with torch.no_grad():
            pred = model(x).argmax(1).tolist()
        return [[p] for p in pred]
    if isinstance(target, torch.Tensor):
        target = target.tolist()
    if isinstance(target, np.ndarray):
        target = target.tolist()
    if isinstance(target, (list, tuple)):
        if len(target) == n and all(not isinstance(t, (list, tuple)) for t in target) and n > 1:
            return [[one(t)] for t in target]            # one target per image
        if all(isinstance(t, (list, tuple)) for t in target):
            if len(target) != n:
                raise ValueError(f"got {len(target)} target lists for {n} images")
            return [[one(u) for u in t] for t in target]  # per-image lists
        return [[one(t) for t in target] for _ in range(n)]  # several findings, every image
    return [[one(target)] for _ in range(n)]


def check_images(model: torch.nn.Module, images) -> torch.Tensor:
    """Images as a float (N, C, H, W) tensor on the model's device, with a clear error if they do not fit."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor or numpy array, not {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W) or (C, H, W); got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float tensors already normalised as the model expects; got {images.dtype}. "
                         "Use the dataset's torch adapter, which converts and normalises.")
    want_c = model_info(model).in_channels
    if images.shape[1] != want_c:
        raise ValueError(f"the model expects {want_c}-channel images but got {images.shape[1]} channels "
                         f"(shape {tuple(images.shape)}); images must be (N, C, H, W) with C={want_c}.")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    return images.to(device)


def explain(model: torch.nn.Module, images, target=None, method: str = "gradcam", *,
            seed: int | None = 0, **options) -> Explanation:
    """Explain ``model``'s output ``target`` on ``images`` with ``method``.

    Parameters
    ----------
    model : a classifier returning logits (N, K) that declares its interface (``model.info``: built by
        ``models.build_model``, or wrapped with ``model_info.describe_model``; else ModelInfoError).
        It is put in eval mode.
    images : (N, C, H, W) or (C, H, W) float tensor/array, normalised as the model expects.
    target : class index, class name, per-image list, several findings (multi-label), or None
        for the predicted class. A flat list as long as the batch is read as ONE target PER IMAGE;
        to explain several findings on every image, pass per-image lists
        (``[["Effusion", "Mass"]] * len(images)``), which is never ambiguous.
    method : see :func:`available_methods`.
    seed : seeds the method's own random generators (a NumPy RandomState and a CPU torch.Generator),
        so that sampling methods are reproducible; the global random state is left untouched.
        ``None``: unseeded (the methods draw from the global generators).
    **options : passed to the method (e.g. ``layer=`` for CAMs, ``steps=`` for Integrated Gradients).
    """
    _load_methods()
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; available: {sorted(_METHODS)}")
    names = model_info(model).class_names          # ModelInfoError for a model without the interface
    model.eval()
    x = check_images(model, images)
    per_image = resolve_targets(model, x, target)
    idx = np.array([i for i, ts in enumerate(per_image) for _ in ts])
    tgt = [t for ts in per_image for t in ts]
    xx = x[torch.as_tensor(idx, device=x.device)] if len(idx) != len(x) else x
    tt = torch.as_tensor(tgt, dtype=torch.long, device=x.device)
    rng, generator = local_generators(seed)
    seeded = {k: v for k, v in (("rng", rng), ("generator", generator))
              if k in _RANDOM_KEYWORDS[method] and v is not None and k not in options}
    t0 = time.perf_counter()
    out = _METHODS[method](model, xx, tt, **options, **seeded)
    seconds = time.perf_counter() - t0
    if isinstance(out, torch.Tensor):
        out = out.detach().float().cpu().numpy()
    out = np.asarray(out, dtype=np.float32)
    if out.ndim == 4 and out.shape[1] in (1, 3):  # per-channel attribution: sum over channels
        out = out.sum(1)
    if out.shape != (len(xx), x.shape[2], x.shape[3]):
        raise RuntimeError(f"method {method!r} returned maps of shape {out.shape}, expected "
                           f"{(len(xx), x.shape[2], x.shape[3])}")
    return Explanation(maps=out, method=method, targets=tgt, target_names=[names[t] for t in tgt],
                       image_index=idx, options=dict(options), seconds=seconds)


__all__ = ["explain", "register", "available_methods", "Explanation", "resolve_targets", "check_images",
           "check_backend", "BACKENDS", "ModelInfoError"]
