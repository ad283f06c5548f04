"""The prepared-array cache: resized images stored as one uncompressed ``.npz`` per dataset and size,
and the atomic file write that checkpoints use too.

* The file name holds a fingerprint of the source files: name, size, modification time in
  nanoseconds AND their content (every byte of files up to 64 KB; of larger files the first, middle
  and last 4 KB). A changed source is rebuilt even when its size and time were kept. Limit: in a file
  over 64 KB, a same-size change confined to the unsampled bytes, with the time put back, goes unseen.
  Cost, measured on HAM10000's 5,984 JPEGs here (88 MB, all under 64 KB, so every byte is hashed):
  0.5 s per load, against 0.05 s for size + mtime alone (the cached load went from 0.35 to 0.9 s).
  Hashing every byte of the full-resolution release (10,015 files, ~2.6 GB) would cost ~6 s per
  load with a warm disk, hence the sampling of large files (~0.5 s there).
* What is read back is checked: the expected arrays, one row per image, ``size`` pixels, the
  expected ids. A damaged or foreign file in the slot is rebuilt with a warning, never trusted.
* Writes go to ``<name>.xai-tmp<pid>-<random>`` in the same folder, then ``os.replace``: never a half file
  under the real name. A process killed mid-write leaves that temp file; the next write into the
  folder removes such orphans once they are an hour old (younger ones may belong to a live writer).
* The folder is ``config.cache_dir()``; a folder that :func:`config.writable` refuses (a read-only
  shared copy, even for root) is never written and only costs speed.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

from .. import config

TMP_MARK = "xai-tmp"                     # temp files are "<final name>.xai-tmp<pid>"
ORPHAN_AGE_S = 3600.0
_OLD_TMP = re.compile(r"\.(npz|pt)\.(tmp\d+|[A-Za-z0-9_]{6,12}\.tmp)$")   # names older versions used
_WHOLE, _BLOCK = 1 << 16, 1 << 12


def fingerprint(files) -> str:
    """Hash of the source files' names, sizes, mtimes (ns) and content (see the module docstring)."""
    h = hashlib.sha1()
    for f in sorted(os.fspath(p) for p in files):
        with open(f, "rb") as fh:
            st = os.fstat(fh.fileno())
            h.update(f"{os.path.basename(f)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            if st.st_size <= _WHOLE:
                h.update(fh.read())
            else:
                for off in (0, st.st_size // 2 - _BLOCK // 2, st.st_size - _BLOCK):
                    fh.seek(off)
                    h.update(fh.read(_BLOCK))
    return h.hexdigest()[:16]


def cache_path(name: str, size: int, fp: str, root) -> Path:
    return config.cache_dir(root) / f"{name}_{size}px_{fp}.npz"


def clean_orphans(folder: Path, max_age_s: float = ORPHAN_AGE_S) -> list[Path]:
    """Remove temp files of interrupted writes (ours, or the older ``*.npz.XXXX.tmp`` names) older
    than ``max_age_s``; returns what was removed."""
    removed = []
    now = time.time()
    with contextlib.suppress(OSError):
        for e in os.scandir(folder):
            if not (TMP_MARK in e.name or _OLD_TMP.search(e.name)) or not e.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                if now - e.stat(follow_symlinks=False).st_mtime > max_age_s:
                    os.remove(e.path)
                    removed.append(Path(e.path))
    return removed


def atomic_write(path: Path, write) -> Path:
    """``write(file_object)`` into ``<path>.xai-tmp<pid>-<random>``, then rename it to ``path``.

    Refuses (PermissionError) a folder that :func:`config.writable` calls read-only; removes old
    orphans of interrupted writes in the folder first; never leaves its own temp file behind.
    """
    path = Path(path)
    if not config.writable(path.parent):
        raise PermissionError(13, "read-only folder (no write permission bits)", str(path.parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_orphans(path.parent)
    tmp = path.with_name(f"{path.name}.{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path


def read_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception:  # a damaged cache file is rebuilt, never trusted
        return None


def write_cache(path: Path, arrays: dict) -> None:
    """Write uncompressed npz atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _problem(arrays: dict, size: int, ids, n: int | None) -> str | None:
    """Why cached arrays cannot be what the sources would give (None when they can)."""
    imgs = arrays.get("images")
    if imgs is None or imgs.ndim != 4 or imgs.shape[1:3] != (size, size) or imgs.dtype != np.uint8:
        return f"images {None if imgs is None else (imgs.shape, str(imgs.dtype))}, expected (N, {size}, {size}, C) uint8"
    want = len(ids) if ids is not None else n
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1 or (want is not None and len(imgs) != want):
        return f"array lengths {lengths}, expected {want} images"
    if "masks" in arrays and arrays["masks"].shape != imgs.shape[:3]:
        return f"masks {arrays['masks'].shape} vs images {imgs.shape}"
    if ids is not None and not np.array_equal(arrays.get("ids"), np.asarray(ids, dtype=str)):
        return "its image ids differ from the sources'"
    return None


def cached(name: str, size: int, sources, build, root, cache: bool, ids=None, n: int | None = None) -> dict:
    """Return ``build()``'s arrays from the cache when the sources are unchanged, else build and store.

    ``ids`` (the image ids ``build`` stores under "ids") or ``n`` (the number of images) let the cache
    check that what it holds belongs to these sources; a file that does not is rebuilt with a warning.
    """
    if not cache:
        return build()
    path = cache_path(name, size, fingerprint(sources), root)
    got = read_cache(config.lookup(path))      # ours, else the class's shared cache (read only)
    if got is not None:
        why = _problem(got, size, ids, n)
        if why is None:
            return got
        warnings.warn(f"the cached arrays {path} do not match the {name} sources ({why}); rebuilding it",
                      stacklevel=3)
    arrays = build()
    try:
        write_cache(path, arrays)
    except OSError as err:  # a read-only cache folder only costs speed
        warnings.warn(f"could not write the cache {path}: {err}; the arrays were built in memory. Set "
                      f"XAI_CACHE_DIR to a writable folder to make the next load fast", stacklevel=3)
    return arrays
