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


def dataset_dir(name: str, root) -> tuple[Path, Path]:
    """(data root, the dataset's folder under it); DatasetNotFoundError when the folder is missing."""
    r = config.data_root(root)
    d = r / registry_entry(name).folder
    if not d.is_dir():
        raise not_found(name, r, d)
    return r, d


def read_csv(path: Path, name: str, root: Path, required: list, **kw):
    import pandas as pd

    if not path.is_file():
        raise not_found(name, root, path, f"{path.name} missing")
    df = pd.read_csv(path, **kw)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataLayoutError(f"{path}: expected columns {required}, missing {missing} (found {list(df.columns)[:12]})")
    return df


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
