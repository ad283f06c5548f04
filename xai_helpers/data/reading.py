"""What every loader shares: the error types, the dataset's folder, reading CSVs and images.

The facts about each dataset (folder, licence, citation, counts) come from the one registry,
:mod:`data_download.registry`; this module only reads files.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from data_download.registry import get as registry_entry

from .. import config


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not under the data root. The message names the folder and the download command."""


class DataLayoutError(ValueError):
    """The files are there but not laid out as expected; the message says what was expected."""


class UnreadableImageError(OSError):
    """An image file could not be decoded; the message names the file."""


def describe(name: str, note: str) -> str:
    """The learner's one-paragraph description: the registry's summary and licence, then the loader's note."""
    d = registry_entry(name)
    return f"{d.summary}, licence {d.licence}. {note}"


def not_found(name: str, root: Path, looked: Path, what: str = "") -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name}: {what or 'dataset not found'} (looked in {looked}). Get it with:\n"
        f"    python -m data_download get {name} --root {root}\n"
        f"or point XAI_DATA_ROOT (or root=...) at the folder that holds '{registry_entry(name).folder}/'.")


def redownload(name: str, root: Path) -> str:
    return f"Re-download it: python -m data_download get {name} --root {root}"


def check_inside(paths, root: Path, name: str) -> None:
    """Refuse files (or folders) that, following symbolic links, lie outside the data root.

    A link out of the root could swap other data in unnoticed (the downloader never makes one), so
    the loaders read only what really lies inside; a link that stays inside the root is fine. Cheap:
    each folder is resolved once, and only the entries that are links themselves are resolved again.
    """
    top = os.path.realpath(root)
    real_dirs: dict = {}
    for p in paths:
        p = os.fspath(p)
        folder, base = os.path.split(p)
        if folder not in real_dirs:
            real_dirs[folder] = os.path.realpath(folder)
        real = os.path.realpath(p) if os.path.islink(p) else os.path.join(real_dirs[folder], base)
        if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
            link = p if os.path.islink(p) else _first_link(p, root)
            raise DataLayoutError(
                f"{name}: {link} is a symbolic link to {os.path.realpath(link)}, outside the data root {root}. "
                "The loaders read only files inside the data root (a link out of it can swap other data in "
                "unnoticed). Copy the files into the data root, or point XAI_DATA_ROOT (or root=...) at the "
                "folder that really holds them.")


def _first_link(path: str, root: Path) -> str:
    """The first component of ``path`` below ``root`` that is a symbolic link (else ``path``)."""
    p = Path(path)
    for part in reversed(p.parents):
        if root in part.parents and part.is_symlink():
            return str(part)
    return str(p)


def dataset_dir(name: str, root) -> tuple[Path, Path]:
    """(data root, the dataset's folder under it); DatasetNotFoundError when the folder is missing,
    DataLayoutError when it is a link out of the data root."""
    r = config.data_root(root)
    d = r / registry_entry(name).folder
    if not d.is_dir():
        raise not_found(name, r, d)
    check_inside([d], r, name)
    return r, d


def read_csv(path: Path, name: str, root: Path, required: list, nonblank: tuple = (), **kw):
    """A dataset's CSV as a DataFrame. Every damage names the file and the reason: empty, not CSV,
    missing columns, a last row cut off, a blank value in a ``nonblank`` column."""
    import pandas as pd

    if not path.is_file():
        raise not_found(name, root, path, f"{path.name} missing")
    check_inside([path], root, name)
    if path.stat().st_size == 0:
        raise DataLayoutError(f"{path} is empty (0 bytes): an interrupted download or copy. {redownload(name, root)}")
    try:
        df = pd.read_csv(path, **kw)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataLayoutError(f"{path} cannot be read as a CSV table ({err}). {redownload(name, root)}") from err
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataLayoutError(f"{path}: expected columns {required}, missing {missing} (found {list(df.columns)[:12]})")
    _check_last_row(path, len(df.columns), name, root)
    for col in nonblank:
        blank = np.flatnonzero(df[col].isna().to_numpy() | (df[col].astype(str).str.strip() == "").to_numpy())
        if len(blank):
            lines = [int(i) + 2 for i in blank[:5]]
            raise DataLayoutError(f"{path}: {len(blank)} row(s) have no {col} (line(s) {lines}"
                                  f"{' ...' if len(blank) > 5 else ''}); every row needs one. {redownload(name, root)}")
    return df


def _check_last_row(path: Path, n_cols: int, name: str, root: Path) -> None:
    """A last row with fewer fields than the header: the file was cut off mid-row."""
    import csv

    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 65536))
        tail = f.read().decode("utf-8", errors="replace")
    last = [ln for ln in tail.splitlines() if ln.strip()][-1:]
    if last and not tail.endswith(("\n", "\r")):
        fields = next(csv.reader(last), [])
        if len(fields) < n_cols:
            raise DataLayoutError(f"{path} is cut off: its last line {last[0][:80]!r} has {len(fields)} of the "
                                  f"{n_cols} fields and no line end (an interrupted download or copy). "
                                  f"{redownload(name, root)}")


def csv_rows(csv_path: Path) -> int:
    """Number of data rows of a CSV (without reading it into memory twice)."""
    with open(csv_path, "rb") as f:
        return max(0, sum(1 for _ in f) - 1)


def open_image(path: Path, size: int, mode: str, nearest: bool = False) -> np.ndarray:
    """Read one image, convert to ``mode`` ("RGB" / "L"), resize to size x size (antialiased or nearest)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if not nearest and im.format == "JPEG" and min(im.size) >= 2 * size:
                im.draft(mode, (size, size))           # DCT-domain downscale: same result, much faster
            im = im.convert(mode)
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}. Re-download the dataset "
                                   f"(python -m data_download get ... ) or delete the broken file.") from err


def read_many(paths, size: int, mode: str, nearest: bool = False, desc: str = "") -> np.ndarray:
    """Read and resize many images with a few threads (PIL releases the GIL while decoding)."""
    from concurrent.futures import ThreadPoolExecutor

    n = len(paths)
    shape = (n, size, size) if mode in ("L", "1") else (n, size, size, 3)
    out = np.empty(shape, dtype=np.uint8)
    workers = max(1, min(4, os.cpu_count() or 1))
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None

    def work(i):
        out[i] = open_image(paths[i], size, mode, nearest)

    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(work, range(n))
        if tqdm is not None and n > 200:
            it = tqdm(it, total=n, desc=desc or f"reading {n} images", leave=False)
        for _ in it:
            pass
    return out
