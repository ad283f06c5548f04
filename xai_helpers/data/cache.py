"""The prepared-array cache: resized images stored as one uncompressed ``.npz`` per dataset and size.

The file name holds a fingerprint of the source files (name, size, mtime), so a changed source is
rebuilt; a damaged cache file is rebuilt, never trusted; a read-only cache folder only costs speed.
The folder is ``config.cache_dir()`` (``XAI_CACHE_DIR``), never the data root.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .. import config


def fingerprint(files) -> str:
    """Hash of (name, size, mtime) of the source files: the cache is rebuilt when any of them changes."""
    h = hashlib.sha1()
    for f in sorted(os.fspath(p) for p in files):
        st = os.stat(f)
        h.update(f"{os.path.basename(f)}|{st.st_size}|{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


def cache_path(name: str, size: int, fp: str, root) -> Path:
    return config.cache_dir(root) / f"{name}_{size}px_{fp}.npz"


def read_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception:  # a damaged cache file is rebuilt, never trusted
        return None


def write_cache(path: Path, arrays: dict) -> None:
    """Write uncompressed npz atomically: a temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def cached(name: str, size: int, sources, build, root, cache: bool) -> dict:
    """Return ``build()``'s arrays from the cache when the sources are unchanged, else build and store."""
    if not cache:
        return build()
    path = cache_path(name, size, fingerprint(sources), root)
    got = read_cache(path)
    if got is not None:
        return got
    arrays = build()
    try:
        write_cache(path, arrays)
    except OSError as err:  # a read-only cache folder only costs speed
        warnings.warn(f"could not write the cache {path}: {err}; set XAI_CACHE_DIR to a writable folder")
    return arrays
