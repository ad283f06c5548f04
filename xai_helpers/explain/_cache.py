"""Per-module caches that stay valid while the module (or its parameters) stays the same.

LRP's support check, LRP's rule weights and LIME's BatchNorm-folded copy are all derived from a model
and reused between calls; each is keyed on what would make it stale and forgotten with the model.
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

    def clear(self) -> None:
        self._entries.clear()
