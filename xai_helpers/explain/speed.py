"""How the methods run many forward passes quickly; what they compute does not depend on it.

A chapter never needs to read this module: the method modules call it.

* :class:`channels_last_layout`: convolutions in channels-last memory layout where that was measured
  faster, restored afterwards;
* :func:`native_bfloat16` / :func:`resolve_precision`: bfloat16 where the hardware computes it natively;
* :func:`fused_for_inference`: a copy with BatchNorm folded into the convolutions (forward passes only);
* :class:`inference_mode`: the three together, as one context manager;
* :func:`batched_forward`: outputs for a large batch, in chunks, without autograd.
"""
from __future__ import annotations

import torch

from ._cache import ModuleCache, attribute_stamp, has_forward_hooks, param_stamp

CHANNELS_LAST_MIN_SIDE = 112   # float32 below this: the layout change costs more than it saves (measured, CPU)
PRECISIONS = ("auto", "float32", "bfloat16")


class channels_last_layout:
    """Context manager: run a conv net in channels-last memory layout, then restore its layout.

    The numbers are the same (up to float rounding); on CPU, oneDNN's convolutions are 1.2-1.5x
    faster in this layout at 128-224 px, which matters when a method needs hundreds of forward
    passes. In float32 at 64 px it is slower, so float32 images smaller than ``CHANNELS_LAST_MIN_SIDE``
    keep their layout; bfloat16 always uses it (its AMX and AVX512-BF16 kernels want it: 200 ResNet-18
    passes at 64 px took 0.39 s channels-last vs 0.52 s without on an AMX Xeon, 0.16 s vs 0.24 s on an
    AMD EPYC).
    """

    def __init__(self, model, enabled: bool = True, like: torch.Tensor | None = None,
                 precision: str = "float32"):
        self.model = model
        big = like is None or min(like.shape[-2:]) >= CHANNELS_LAST_MIN_SIDE or precision == "bfloat16"
        self.enabled = enabled and big and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())

    def __enter__(self):
        if self.enabled:
            # a model already kept channels-last (models.use_fast_layout) stays so on exit
            conv = next(m for m in self.model.modules() if isinstance(m, torch.nn.Conv2d))
            self.restore = not conv.weight.is_contiguous(memory_format=torch.channels_last) or conv.weight.is_contiguous()
            self.model.to(memory_format=torch.channels_last)
        return self.model

    def __exit__(self, *exc):
        if self.enabled and self.restore:
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
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto', 'float32' or 'bfloat16', not {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


_FUSED = ModuleCache()      # model -> its fused copy, or None where folding does not apply


def _same_output(model, fused, like: torch.Tensor) -> bool:
    x1 = like[None] if like.ndim == 3 else like[:1]
    ref, out = model(x1), fused(x1)
    return out.shape == ref.shape and bool(
        torch.allclose(out, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()) + 1e-6))


def _fuse(model, like):
    try:
        from torch.fx.experimental.optimization import fuse

        fused = fuse(model, inplace=False)
        return fused if like is None or _same_output(model, fused, like) else None
    except Exception:   # not traceable by torch.fx (data-dependent control flow, non-torch calls, ...)
        return None


@torch.no_grad()
def fused_for_inference(model, like: torch.Tensor | None = None):
    """A copy of an eval-mode ``model`` with every BatchNorm folded into the convolution before it
    (``torch.fx.experimental.optimization.fuse``): the same function, one pass over memory fewer per
    layer (a ResNet-18's 200 LIME forward passes at 224 px: about 13 % faster on a CPU). For forward
    passes only.

    The model itself is returned where folding does not apply or cannot be trusted: in training mode
    (BatchNorm uses batch statistics), without BatchNorm, with a forward hook on it, on a submodule or
    global (the copy would not run it), when torch.fx cannot trace it, or when the copy's output on
    ``like`` (one image) differs from the model's. The copy is cached while the model's parameters,
    buffers and plain attributes stay the same (:func:`param_stamp`, :func:`attribute_stamp`), and it is
    checked against the model on ``like`` at every call (one forward pass each), so that a change the
    stamps miss is caught too: a stale copy is rebuilt.
    """
    bn_types = torch.nn.modules.batchnorm._BatchNorm
    if (model.training or has_forward_hooks(model)
            or not any(isinstance(m, bn_types) for m in model.modules())):
        return model
    key = (param_stamp(model), attribute_stamp(model))
    built = []
    fused = _FUSED.get(model, key, lambda: built.append(1) or _fuse(model, like))
    if fused is not None and like is not None and not built and not _same_output(model, fused, like):
        fused = _fuse(model, like)                  # the model changed in a way the stamps do not see
        _FUSED.put(model, key, fused)
    return model if fused is None else fused


class inference_mode:
    """Context manager for many forward passes: channels-last layout (:class:`channels_last_layout`)
    and, for ``precision="bfloat16"``, autocast to bfloat16 (outputs come back as float32). With
    ``fuse=True`` (forward passes without gradients only) call ``.model``: the model with its
    BatchNorms folded (:func:`fused_for_inference`), or the model itself where that does not apply."""

    def __init__(self, model, device, precision: str = "float32", like: torch.Tensor | None = None,
                 fuse: bool = False):
        self.model = fused_for_inference(model, like) if fuse else model
        self.layout = channels_last_layout(self.model, like=like, precision=precision)
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
def batched_forward(model, batch: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Model outputs (logits) for a large batch, in chunks of ``batch_size`` (default: the pixel budget),
    without autograd."""
    from .. import config

    batch_size = config.images_per_pass(batch, batch_size)
    outs = [model(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)]
    return torch.cat(outs)


__all__ = ["channels_last_layout", "native_bfloat16", "resolve_precision", "fused_for_inference",
           "inference_mode", "batched_forward", "CHANNELS_LAST_MIN_SIDE", "PRECISIONS"]
