"""What the concept methods share: images to model input, a named layer, its activations and gradients.

A forward hook on the named module records its output; the gradient of a class logit with respect to
that output is one ``torch.autograd.grad`` call. Nothing here changes the model.
"""
from __future__ import annotations

import numpy as np
import torch

from ..imaging import normalise
from ..model_info import model_info


def model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_model_input(model: torch.nn.Module, images, what: str = "images") -> torch.Tensor:
    """uint8 (N, H, W, C) pixels -> the model's normalised float (N, C, H, W), using ``model.info``.

    A float tensor/array (N, C, H, W) is taken as already normalised. ``what`` names the images in errors.
    """
    info = model_info(model)
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        if images.ndim != 4 or images.shape[-1] != info.in_channels:
            raise ValueError(f"{what}: expected uint8 (N, H, W, {info.in_channels}) pixels, got {images.shape}")
        x = normalise(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0,
                      info.mean, info.std)
    else:
        x = torch.as_tensor(images)
        if not x.is_floating_point() or x.ndim != 4 or x.shape[1] != info.in_channels:
            raise ValueError(f"{what}: expected uint8 (N, H, W, C) pixels or a normalised float (N, C, H, W) "
                             f"tensor with C={info.in_channels}, got {x.dtype} {tuple(x.shape)}")
    if info.input_size is not None and tuple(x.shape[-2:]) != (info.input_size, info.input_size):
        raise ValueError(f"{what} are {x.shape[-2]}x{x.shape[-1]} px but the model was built for "
                         f"{info.input_size}x{info.input_size}; load or resize them to that size "
                         "(e.g. xai_helpers.data.load(..., size=...))")
    return x.float()


def get_module(model: torch.nn.Module, layer: str) -> torch.nn.Module:
    """The sub-module called ``layer`` (a dotted name), or a ValueError that lists the valid names."""
    modules = dict(model.named_modules())
    if not isinstance(layer, str) or layer not in modules or layer == "":
        names = [n for n in modules if n]
        shown = names if len(names) <= 40 else names[:20] + ["..."] + names[-19:]
        raise ValueError(f"layer {layer!r} is not a module of this {type(model).__name__}; valid layer names: "
                         f"{shown}. Pass one of them (the Grad-CAM layer is {model_info(model).cam_layer!r}).")
    return modules[layer]


def _batches(x, batch_size: int | None):
    """Slices over the images of ``x`` (N, C, H, W), ``batch_size`` at a time (None: the pixel budget)."""
    from .. import config

    batch_size = config.images_per_pass(x, batch_size)
    for start in range(0, len(x), batch_size):
        yield slice(start, min(start + batch_size, len(x)))


class _LayerReached(Exception):
    """Raised by a forward hook once the wanted layer has given its output: the rest of the network
    is not needed for activations, so the forward pass stops there."""


def layer_activations(model, x: torch.Tensor, layer: str, batch_size: int | None = None) -> torch.Tensor:
    """Output of module ``layer`` for every input, on the CPU: (N, ...).

    The forward pass stops at ``layer`` (the layers after it cost time and give nothing here: for a
    middle block of EfficientNet-Lite0 that is about a third of the pass). A module called more than
    once per forward gives its first call's output.
    """
    module, store = get_module(model, layer), []

    def hook(m, i, o):
        store.append(o.detach().cpu())
        raise _LayerReached

    handle = module.register_forward_hook(hook)
    model.eval()
    try:
        with torch.no_grad():
            for sl in _batches(x, batch_size):
                try:
                    model(x[sl].to(model_device(model)))
                except _LayerReached:
                    pass
                else:
                    raise RuntimeError(f"layer {layer!r} was not called in the forward pass; pick a module "
                                       "the model uses (see model.named_modules())")
    finally:
        handle.remove()
    return torch.cat(store)


def layer_gradients(model, x: torch.Tensor, layer: str, target: int, batch_size: int | None = None):
    """``(activations, gradients)`` of module ``layer``: d logit[target] / d activation, both (N, ...)."""
    module, store = get_module(model, layer), {}

    def hook(m, i, o):
        store["a"] = o
    handle = module.register_forward_hook(hook)
    acts, grads = [], []
    model.eval()
    try:
        for sl in _batches(x, batch_size):
            out = model(x[sl].to(model_device(model)))
            (g,) = torch.autograd.grad(out[:, int(target)].sum(), store["a"])
            acts.append(store["a"].detach().cpu())
            grads.append(g.detach().cpu())
    finally:
        handle.remove()
    return torch.cat(acts), torch.cat(grads)


def resolve_target(model, target) -> int:
    """A class index from an index or a class name (see ``model.info.class_names``)."""
    names = list(model_info(model).class_names)
    if isinstance(target, str):
        if target not in names:
            raise ValueError(f"unknown target {target!r}; classes are {names}")
        return names.index(target)
    t = int(target)
    if not 0 <= t < len(names):
        raise ValueError(f"target {t} out of range; classes are {names} (indices 0..{len(names) - 1})")
    return t
