"""Which explanation methods a model supports, asked of each method's own check (never of an
architecture name, which goes stale the day a method learns a new architecture).

    >>> from xai_helpers.explain.support import supported_methods, supports
    >>> supported_methods(model, ["gradcam", "lrp", "integrated_gradients"])   # e.g. without "lrp"
    >>> unsupported_reason(model, "lrp")    # the method's own refusal, or None

* ``lrp``: :func:`xai_helpers.explain.lrp.check_lrp_support` (it traces the model and refuses any
  operation without an LRP rule).
* CAMs (``gradcam``, ``gradcam++``, ``layercam``, ``scorecam``): the model has a layer to read, its
  declared ``cam_layer`` or one :func:`~xai_helpers.explain.cam.default_target_layer` can find (or the
  caller passes ``layer=``).
* every other registered method needs only gradients or forward passes: any model that declares its
  interface supports it.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from . import available_methods

CAM_METHODS = ("gradcam", "gradcam++", "layercam", "scorecam")


def _lrp_refusal(model: torch.nn.Module, options: dict) -> str | None:
    from .lrp import LRPUnsupportedError, check_lrp_support

    try:
        check_lrp_support(model)
    except LRPUnsupportedError as err:
        return str(err)
    return None


def _cam_refusal(model: torch.nn.Module, options: dict) -> str | None:
    from .cam import default_target_layer

    if options.get("layer") is not None:
        return None
    try:
        default_target_layer(model)
    except ValueError as err:
        return str(err)
    return None


# method -> its check: None if the method can explain the model, else the reason it cannot
_CHECKS: dict[str, Callable[[torch.nn.Module, dict], str | None]] = {
    "lrp": _lrp_refusal, **{m: _cam_refusal for m in CAM_METHODS}}


def unsupported_reason(model: torch.nn.Module, method: str, **options) -> str | None:
    """Why ``method`` cannot explain ``model`` (the method's own words), or None if it can.

    ``options`` are the method's options as :func:`~xai_helpers.explain.explain` would get them
    (e.g. ``layer=`` for a CAM on a model that declares none)."""
    known = available_methods()
    if method not in known:
        raise ValueError(f"unknown method {method!r}; available: {sorted(known)}")
    check = _CHECKS.get(method)
    return None if check is None else check(model, options)


def supports(model: torch.nn.Module, method: str, **options) -> bool:
    """True if ``explain(model, x, target, method, **options)`` can explain this model."""
    return unsupported_reason(model, method, **options) is None


def supported_methods(model: torch.nn.Module, methods: Iterable[str] | None = None,
                      options: dict | None = None) -> list[str]:
    """The methods of ``methods`` (default: every registered one) that can explain ``model``, in order.

    ``options`` maps a method name to its keyword options, as ``MethodComparison`` takes them."""
    options = options or {}
    methods = list(available_methods()) if methods is None else list(methods)
    return [m for m in methods if supports(model, m, **options.get(m, {}))]


__all__ = ["supports", "supported_methods", "unsupported_reason", "CAM_METHODS"]
