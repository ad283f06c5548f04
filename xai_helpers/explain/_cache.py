"""Per-module caches that stay valid while the module (or its parameters) stays the same.

LRP's support check, LRP's rule weights and LIME's BatchNorm-folded copy are all derived from a model
and reused between calls; each is keyed on what would make it stale and forgotten with the model:
:func:`param_stamp` (the parameter and buffer values), :func:`attribute_stamp` (the plain attributes
a forward pass may read), :func:`has_forward_hooks` (hooks a copy would not run).
"""
from __future__ import annotations

import itertools
import weakref
from typing import Any, Callable

import torch


def param_stamp(*modules: torch.nn.Module | None, recurse: bool = True) -> tuple:
    """What identifies the current values of the modules' parameters and buffers: storage, version
    counter (bumped by every in-place change: an optimiser step, ``load_state_dict``), dtype and device."""
    tensors = itertools.chain.from_iterable(
        itertools.chain(m.parameters(recurse=recurse), m.buffers(recurse=recurse)) for m in modules if m is not None)
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


_TORCH_BOOKKEEPING = frozenset(vars(torch.nn.Module())) - {"training"}   # parameters, hooks, ...


def _value_stamp(v, depth: int = 0):
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes, torch.dtype, torch.device)):
        return v
    if isinstance(v, torch.Tensor):
        return ("tensor", v.data_ptr(), v._version, tuple(v.shape), v.dtype)
    if isinstance(v, (tuple, list)) and depth < 3 and len(v) <= 64:
        return (type(v).__name__, tuple(_value_stamp(u, depth + 1) for u in v))
    return (type(v).__name__, id(v))


def attribute_stamp(module: torch.nn.Module) -> tuple:
    """What identifies the plain (non-parameter) attributes of the module and its submodules, which a
    forward pass may read (a flag, a scale, a pooling size, ``training``): numbers, strings and short
    tuples by value, tensors by storage and version, anything else by identity."""
    return tuple((name, tuple((k, _value_stamp(v)) for k, v in vars(m).items() if k not in _TORCH_BOOKKEEPING))
                 for name, m in module.named_modules())


def has_forward_hooks(module: torch.nn.Module) -> bool:
    """True if a forward (pre-)hook is registered on the module, a submodule, or globally: a traced or
    fused copy would not run it."""
    from torch.nn.modules import module as mm

    if mm._global_forward_hooks or mm._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class ModuleCache:
    """module -> value, recomputed when ``key`` changes and dropped when the module is garbage-collected.
    The value must not refer to the module (it would keep it alive)."""

    def __init__(self):
        self._entries = weakref.WeakKeyDictionary()

    def get(self, module: torch.nn.Module, key, compute: Callable[[], Any]):
        hit = self._entries.get(module)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = compute()
        self._entries[module] = (key, value)
        return value

    def put(self, module: torch.nn.Module, key, value) -> None:
        self._entries[module] = (key, value)

    def clear(self) -> None:
        self._entries.clear()
