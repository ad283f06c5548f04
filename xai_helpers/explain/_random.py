"""Random numbers for the sampling methods, without touching the global generators.

``explain(seed=...)`` makes one ``numpy.random.RandomState(seed)`` and one CPU ``torch.Generator``
seeded with ``seed`` and hands them to the methods that declare an ``rng`` / ``generator`` keyword:
the same streams that seeding the global generators used to give, so the maps are unchanged, and
the caller's own random state is left alone.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def numpy_rng(random_state=None, rng: np.random.RandomState | None = None) -> np.random.RandomState:
    """A RandomState from ``random_state`` (an int or a RandomState) if given, else one seeded by a draw
    from ``rng`` (explain's), else by a draw from NumPy's global generator (a direct call, unseeded)."""
    if isinstance(random_state, np.random.RandomState):
        return random_state
    if random_state is None:
        source = rng if rng is not None else np.random
        random_state = source.randint(0, 2**31 - 1)
    return np.random.RandomState(int(random_state))


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``: drawn on the CPU from ``generator`` (then moved to x's
    device, so CUDA and MPS give the same numbers), or from torch's global generator without one."""
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def rand(shape, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform [0, 1) float32 numbers, from ``generator`` on the CPU if given (see :func:`randn_like`)."""
    if generator is None:
        return torch.rand(*shape, device=device)
    return torch.rand(*shape, generator=generator).to(device)


def local_generators(seed: int | None):
    """(RandomState, torch.Generator) seeded with ``seed``, or (None, None) without a seed."""
    if seed is None:
        return None, None
    return np.random.RandomState(seed), torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def global_random_state_kept(seed: int | None = None):
    """Save Python's, NumPy's and torch's global random states, optionally seed NumPy and torch with
    ``seed`` (for a library that draws from them), and restore all of them afterwards."""
    saved = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        if seed is not None:
            torch.manual_seed(seed)
            np.random.seed(seed)
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])
        if saved[3] is not None:
            torch.cuda.set_rng_state_all(saved[3])
