"""Run-time settings shared by every notebook: fast mode, data root, device, seeds.

All of them are read from environment variables *when called*, never at import time, so that a
test or a notebook can change them and the change is seen.

=====================  =========================================================================
variable               meaning
=====================  =========================================================================
``XAI_FAST``           ``1`` (or ``true``/``yes``) shrinks epochs, sample and image counts so the
                       whole test suite fits CI; unset or ``0`` is full mode, what a class runs.
``XAI_DATA_ROOT``      where datasets, prepared-array caches and checkpoints live. Default: the
                       per-user cache folder (``~/.cache/xai-medimg`` on Linux).
``XAI_CACHE_DIR``      where prepared arrays and checkpoints are written. Default: the data root
                       when it is writable (:func:`writable`: a write bit set and the OS allows it),
                       else the per-user cache folder (a read-only data root, such as a shared class
                       copy made with ``chmod -R a-w``, is read but never written, even by root).
``XAI_DEVICE``         force ``cpu``, ``cuda``, ``cuda:1`` or ``mps``; default picks the best.
=====================  =========================================================================
"""
from __future__ import annotations

import os
import platform
import random
from pathlib import Path

FAST_ENV = "XAI_FAST"
DATA_ROOT_ENV = "XAI_DATA_ROOT"
DEVICE_ENV = "XAI_DEVICE"
CACHE_ENV = "XAI_CACHE_DIR"
SHARED_CACHE_ENV = "XAI_SHARED_CACHE"
PIXEL_BUDGET_ENV = "XAI_PIXEL_BUDGET"

_TRUE = {"1", "true", "yes", "on"}


def fast_mode() -> bool:
    """True when ``XAI_FAST`` asks for the short, CI-sized version of every notebook."""
    return os.environ.get(FAST_ENV, "").strip().lower() in _TRUE


def pick(fast, full):
    """Return ``fast`` in fast mode, ``full`` otherwise: ``epochs = pick(1, 30)``."""
    return fast if fast_mode() else full


# Images per forward or backward pass, where a function is not told (batch_size=None): as many as hold
# PIXEL_BUDGET pixels: 128 images of 64 px, 14 of 192 px, 10 of 224 px. Memory of a pass grows with its
# pixels, and on a CPU large batches are also slower: the two-scale EfficientNet-Lite0 at 192 px runs a
# forward pass in 13-15 ms per image in batches of 4-16 and 35 ms in batches of 128; Integrated Gradients
# of 8 images took 12.2 GB and 37 s with 128 path images per backward, 1.4 GB and 10 s with 14
# (tests/benchmarks/bench_memory.py). On a large GPU raise it: XAI_PIXEL_BUDGET=4000000.
PIXEL_BUDGET = 128 * 64 * 64


def pixel_budget() -> int:
    """Pixels per forward/backward pass: ``XAI_PIXEL_BUDGET`` if set, else :data:`PIXEL_BUDGET`."""
    env = os.environ.get(PIXEL_BUDGET_ENV, "").strip()
    if not env:
        return PIXEL_BUDGET
    try:
        value = int(float(env))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{PIXEL_BUDGET_ENV} must be a positive number of pixels per pass (e.g. {PIXEL_BUDGET}), "
                         f"got {env!r}; unset it for the default")
    return value


def images_per_pass(x, batch_size=None) -> int:
    """Images of ``x`` (a tensor or array shaped (..., H, W): a batch of model inputs or one image) per
    forward/backward pass: ``batch_size`` when given (an integer >= 1), else as many H x W images as fit
    :func:`pixel_budget` (at least one). The one place every batched pass of the package takes its size from."""
    if batch_size is not None:
        ok = not isinstance(batch_size, bool) and hasattr(batch_size, "__index__") and int(batch_size) >= 1
        if not ok:
            raise ValueError(f"batch_size must be an integer >= 1 (images per pass) or None for the pixel "
                             f"budget; got {batch_size!r}")
        return int(batch_size)
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 2:
        raise TypeError(f"images_per_pass needs the images (a tensor or array shaped (..., H, W)) to size a pass "
                        f"by the pixel budget; got {type(x).__name__}")
    return max(1, pixel_budget() // (int(shape[-2]) * int(shape[-1])))


def default_data_root() -> Path:
    """The per-user cache folder used when ``XAI_DATA_ROOT`` is not set."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("xai-medimg", appauthor=False))


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: an explicit argument, else ``XAI_DATA_ROOT``, else the user cache."""
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get(DATA_ROOT_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return default_data_root()


def writable(path: str | os.PathLike) -> bool:
    """May the workbook write at ``path`` (or create it)? The downloader's rule, shared:
    :func:`data_download.fetch.assert_writable_root`. The nearest existing folder must have a write
    bit for someone AND the OS must allow writing. The bits count even for root, whom the OS always
    allows: ``chmod -R a-w`` marks a shared class copy read-only, and it is never written.
    """
    from data_download.fetch import DownloadError, assert_writable_root

    try:
        assert_writable_root(Path(path))
    except (DownloadError, OSError):
        return False
    return True


_writable = writable      # the old private name


def work_dir(root: str | os.PathLike | None = None) -> Path:
    """The writable folder for caches and checkpoints (never inside the repository).

    ``XAI_CACHE_DIR`` if set; else the data root if :func:`writable`; else the per-user cache. A
    read-only data root (no write bits, even when running as root) is never written.
    """
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    r = data_root(root)
    return r if writable(r) else default_data_root()


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """Where prepared (resized) arrays are cached: ``<work dir>/_cache``."""
    return work_dir(root) / "_cache"


def checkpoint_dir(root: str | os.PathLike | None = None) -> Path:
    """Where trained models are saved: ``<work dir>/checkpoints``."""
    return work_dir(root) / "checkpoints"


def shared_cache() -> Path | None:
    """A class's prepared cache (``XAI_SHARED_CACHE``), read but never written; None when unset.

    An instructor fills it once (``python -m xai_helpers.classroom prepare --cache DIR``); every
    student's kernel then finds prepared arrays and checkpoints there and writes anything new to
    its own :func:`work_dir`.
    """
    env = os.environ.get(SHARED_CACHE_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else None


def lookup(path: str | os.PathLike) -> Path:
    """Where to READ a cache file whose own place is ``path`` (under :func:`work_dir`): ``path``
    itself when it exists, else the same file in the shared class cache when that has it, else
    ``path`` (where it will be written)."""
    path = Path(path)
    shared = shared_cache()
    if path.exists() or shared is None:
        return path
    try:
        rel = path.resolve().relative_to(work_dir())
    except ValueError:
        return path
    candidate = shared / rel
    return candidate if candidate.is_file() else path


def display_path(path: str | os.PathLike) -> str:
    """A path as a reader should see it in a printed message or a committed notebook output.

    Under ``XAI_DATA_ROOT`` / ``XAI_CACHE_DIR``: the variable's name (``$XAI_CACHE_DIR/checkpoints/x.pt``),
    under the home folder: ``~/...``; elsewhere the path itself. The reader learns where a file is
    without the notebook recording the folders of the machine that last ran it.
    """
    p = Path(path).expanduser()
    try:
        p = p.resolve()
    except OSError:
        pass
    for env in (CACHE_ENV, DATA_ROOT_ENV):
        base = os.environ.get(env, "").strip()
        if base:
            base_p = Path(base).expanduser().resolve()
            if p == base_p or base_p in p.parents:
                rel = p.relative_to(base_p).as_posix()
                return f"${env}" + ("" if rel == "." else f"/{rel}")
    home = Path.home()
    if home != Path("/") and (p == home or home in p.parents):
        rel = p.relative_to(home).as_posix()
        return "~" + ("" if rel == "." else f"/{rel}")
    return str(p)


def get_device(prefer: str | None = None):
    """The one place the workbook chooses a device: ``XAI_DEVICE`` or ``prefer``, else CUDA, MPS, CPU."""
    import torch

    wanted = (prefer or os.environ.get(DEVICE_ENV, "")).strip().lower()
    if wanted:
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"{DEVICE_ENV}/prefer asks for {wanted!r} but CUDA is not available here; "
                               "unset it or use 'cpu'.")
        if wanted == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RuntimeError(f"{DEVICE_ENV}/prefer asks for 'mps' but MPS is not available here; "
                               "unset it or use 'cpu'.")
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices). Call it in a notebook, never at import."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity: a container's or a batch job's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):                  # macOS, Windows: no affinity API
        return os.cpu_count() or 1


def set_cpu_threads(n: int | None = None) -> int:
    """Use ``n`` intra-op threads; returns the number set. Default: ``OMP_NUM_THREADS`` when set to a
    positive integer (a class server's or a parallel test run's share per process), else every usable core."""
    import torch

    if n is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        n = int(env) if env.isdigit() and int(env) > 0 else usable_cores()
    n = int(n)
    if n < 1:
        raise ValueError(f"set_cpu_threads needs n >= 1 threads (or None for the default); got {n}")
    torch.set_num_threads(n)
    return n


def describe(data: str | None = None) -> str:
    """One block for a notebook's setup cell: versions, device, mode and which data is in use."""
    from importlib.metadata import PackageNotFoundError, version

    lines = [f"python      {platform.python_version()}"]
    # read versions from package metadata: importing shap or captum just to print a number is slow
    for dist in ("torch", "torchvision", "numpy", "captum", "grad-cam", "zennit", "shap", "lime"):
        try:
            lines.append(f"{dist:<11} {version(dist)}")
        except PackageNotFoundError:
            lines.append(f"{dist:<11} (not installed)")
    lines.append(f"device      {get_device()}")
    lines.append(f"mode        {'FAST (XAI_FAST=1)' if fast_mode() else 'full'}")
    lines.append(f"data root   {display_path(data_root())}")
    lines.append(f"cache       {display_path(work_dir())}")
    if shared_cache() is not None:
        lines.append(f"class cache {display_path(shared_cache())} (read only)")
    if data:
        lines.append(f"data used   {data}")
    return "\n".join(lines)
