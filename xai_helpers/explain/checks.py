"""What :func:`xai_helpers.explain.explain` checks before and after a method runs, so that bad input
gets an error that says what to do, and a doubtful result a warning, instead of a silent wrong map.

* :func:`check_images`: a float (N, C, H, W) batch with the model's channels, cast to the model's dtype,
  on its device; NaN / inf pixels refused (naming the images); raw 0-255 pixels warned about;
  a model on the meta device (no weights yet) refused;
* :func:`resolve_targets`: the ``target=`` forms, with an error for a flat list that is neither one
  target per image nor meant for one image, and for an image given no target;
* :func:`check_options`: options a method does not know, with its valid ones listed;
* :func:`check_count`: a sample or step count that cannot give a map;
* :func:`smallest_input_side`: the smallest square image the model's forward pass accepts;
* :func:`blank_maps`: which maps are constant (no signal: a scorer would read them as chance).
"""
from __future__ import annotations

import inspect
import warnings
from typing import Callable

import numpy as np
import torch

from ..model_info import model_info

RAW_PIXEL_MAX = 20.0        # normalised images rarely exceed this; 0-255 pixels almost always do


class BlankMapWarning(UserWarning):
    """explain() returned constant maps for some images (see ``Explanation.blank``)."""


def model_dtype_device(model: torch.nn.Module):
    """(dtype, device) of the model's first floating-point parameter or buffer (float32 / CPU without)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.float32, torch.device("cpu")


def _check_pixels(model, images: torch.Tensor) -> None:
    if not images.numel():
        return
    flat = images.reshape(len(images), -1)
    bad = torch.nonzero(~torch.isfinite(flat).all(1)).view(-1).tolist()
    if bad:
        raise ValueError(f"NaN or infinite pixel values in image(s) {bad[:10]}{' ...' if len(bad) > 10 else ''} "
                         f"of {len(images)}: every method would return an all-NaN map for them (and target=None "
                         "would pick class 0). Drop or repair those images (e.g. torch.nan_to_num) first.")
    info = model_info(model)
    hi = max((1.0 - m) / s for m, s in zip(info.mean, info.std))    # a white pixel, normalised
    lo, mx = float(images.min()), float(images.max())
    if lo >= 0 and mx > max(RAW_PIXEL_MAX, 2 * hi):
        warnings.warn(f"the images look like raw 0-255 pixel values (min {lo:.3g}, max {mx:.3g}), not normalised "
                      f"ones (a white pixel normalises to {hi:.3g} for this model): explain() expects images "
                      "normalised as the model expects. Divide by 255 and normalise with model.info.mean / std "
                      "(the dataset's torch adapter does both).", UserWarning, stacklevel=3)


def check_images(model: torch.nn.Module, images) -> torch.Tensor:
    """Images as a float (N, C, H, W) tensor in the model's dtype on the model's device, with a clear error
    if they do not fit (wrong shape, channels, integer pixels, NaN / inf values, a model on the meta
    device) and a warning if they look like raw 0-255 pixels. Other float dtypes (float64, float16,
    bfloat16) are cast to the model's: the images' own precision is kept where the model's is higher."""
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
    dtype, device = model_dtype_device(model)
    if device.type == "meta":
        raise ValueError("the model's parameters are on the meta device: they have shapes but no values "
                         "(a model built under torch.device('meta') or with empty weights). Give it weights "
                         "first: model.to_empty(device='cpu') then model.load_state_dict(...), or load a checkpoint.")
    _check_pixels(model, images)
    return images.to(device=device, dtype=dtype)


def resolve_targets(model, x: torch.Tensor, target) -> list[list[int]]:
    """Turn ``target`` into, per image, the list of output indices to explain.

    Accepts an int, a class name, a list of ints/names with ONE entry PER IMAGE, per-image lists
    (``[["Effusion", "Mass"]] * len(x)``: several findings on every image), for a single image a flat
    list of several findings, or ``None`` / ``"pred"`` for the predicted class (the top logit).
    Raises ``ValueError`` that lists the valid targets, or the valid forms of a list.
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
    if n == 0:
        return []
    if target is None or (isinstance(target, str) and target == "pred"):
        with torch.no_grad():
            pred = model(x).argmax(1).tolist()
        return [[p] for p in pred]
    if isinstance(target, (torch.Tensor, np.ndarray)):
        target = target.tolist()
    if not isinstance(target, (list, tuple)):
        return [[one(target)] for _ in range(n)]
    if all(isinstance(t, (list, tuple)) for t in target) and len(target):
        if len(target) != n:
            raise ValueError(f"got {len(target)} target lists for {n} images: give one list per image")
        for i, t in enumerate(target):
            if not len(t):
                raise ValueError(f"image {i} has an empty target list: each image needs at least one target")
        return [[one(u) for u in t] for t in target]                 # per-image lists
    if any(isinstance(t, (list, tuple)) for t in target) or not len(target):
        raise ValueError(f"cannot read target {target!r}: give one target per image, or one list per image "
                         "(each image needs at least one target)")
    if n == 1:
        return [[one(t) for t in target]]                           # one image, several findings
    if len(target) == n:
        return [[one(t)] for t in target]                           # one target per image
    example = [names[0], names[-1]]
    raise ValueError(f"got a flat list of {len(target)} targets for {n} images: it must be either one target per "
                     f"image (a list of {n}), or, to explain several targets on every image, one list per image, "
                     f"e.g. {[example]!r} * {n}. (A flat list of several targets is only read as several "
                     "findings for a single image.)")


def check_count(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; a ValueError naming the option otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def check_options(method: str, fn: Callable, options: dict, extra: Callable | None = None,
                  internal=("rng", "generator")) -> None:
    """A TypeError naming every option in ``options`` that ``fn`` (a registered method) does not take,
    with the valid ones listed. A method that passes ``**kw`` on (LIME's segmentation options) gives
    ``extra(options)``: (description, names) of what it also accepts; without ``extra`` it is not checked."""
    params = list(inspect.signature(fn).parameters.values())[3:]        # after (model, x, targets)
    named = [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    unknown = [k for k in options if k not in named]
    if not unknown:
        return
    if any(p.kind == p.VAR_KEYWORD for p in params):
        if extra is None:
            return
        what, allowed = extra(options)
        unknown = [k for k in unknown if k not in allowed]
        if not unknown:
            return
        also = f"; and, passed on to {what}: {sorted(allowed)}"
    else:
        also = ""
    shown = [k for k in named if k not in internal]
    raise TypeError(f"unknown option(s) {unknown} for method {method!r}; its options: {shown}{also}")


@torch.no_grad()
def _forward_ok(model, c: int, h: int, w: int, dtype, device) -> bool:
    try:
        model(torch.zeros(1, c, h, w, dtype=dtype, device=device))
        return True
    except (RuntimeError, ValueError, IndexError):
        return False


def smallest_input_side(model, c: int, dtype=torch.float32, device="cpu", start: int = 1,
                        limit: int = 4096) -> int | None:
    """The smallest side s >= ``start`` such that the model's forward pass accepts a (1, c, s, s) image
    (searched by doubling from ``start``, then bisection); None if none up to ``limit`` does."""
    if _forward_ok(model, c, start, start, dtype, device):
        return start
    lo, hi = start, 2 * max(start, 1)
    while not _forward_ok(model, c, hi, hi, dtype, device):
        lo, hi = hi, hi * 2
        if hi > limit:
            return None
    while hi - lo > 1:                       # lo fails, hi works
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _forward_ok(model, c, mid, mid, dtype, device) else (mid, hi)
    return hi


def too_small_error(model, x: torch.Tensor, err: Exception) -> ValueError | None:
    """If the model's forward pass fails on one image of ``x``'s size but works on larger ones, a
    ValueError saying how many pixels it needs; else None (``err`` had another cause)."""
    c, h, w = x.shape[1:]
    size = model_info(model).input_size
    if (size and min(h, w) >= size) or _forward_ok(model, c, h, w, x.dtype, x.device):
        return None                             # not a size problem
    limit = max(512, 2 * (size or 0), 2 * max(h, w))
    need = smallest_input_side(model, c, x.dtype, x.device, start=min(h, w), limit=limit)
    if need is None or need <= min(h, w):
        return None
    built = f" (it was built for {size}x{size} px)" if size else ""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(f"images of {h}x{w} px are too small for this model: its forward pass fails ({first}). "
                      f"It needs at least {need}x{need} px{built}; resize the images (e.g. "
                      "torch.nn.functional.interpolate) to that size or more.")


def blank_maps(maps: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
    """(N,) bool: maps that are constant (max - min <= rtol * max |value|; all zeros included)."""
    maps = np.asarray(maps, dtype=np.float64)
    if not maps.size:
        return np.zeros(len(maps), dtype=bool)
    flat = maps.reshape(len(maps), -1)
    with np.errstate(invalid="ignore"):
        spread = flat.max(1) - flat.min(1)
        return spread <= rtol * np.abs(flat).max(1)


__all__ = ["check_images", "resolve_targets", "check_count", "check_options", "smallest_input_side",
           "too_small_error", "blank_maps", "model_dtype_device", "BlankMapWarning", "RAW_PIXEL_MAX"]
