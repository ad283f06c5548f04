"""MedMNIST v2/v3 (PneumoniaMNIST, DermaMNIST, ChestMNIST): one ``.npz`` per size, official split kept.

File names and sizes come from the registry (``medmnist_file``, ``MEDMNIST_SIZES``), the same function
the downloader uses. MedMNIST has no patient ids: groups = image index.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_download.registry import MEDMNIST_SIZES, medmnist_file
from data_download.registry import get as registry_entry

from .. import config
from ..imageset import ImageSet
from .cache import cached
from .ham10000 import HAM_7CLASS, HAM_LONG_NAMES
from .nih import CXR14
from .reading import DataLayoutError, UnreadableImageError, check_inside, describe, not_found

MEDMNIST = ("pneumoniamnist", "dermamnist", "chestmnist")
NOTES = {
    "pneumoniamnist": "Official train/val/test split kept.",
    "dermamnist": "Official train/val/test split kept.",
    "chestmnist": "14 findings, multi-label. Official train/val/test split kept.",
}
_PARTS = ("train", "val", "test")


def _candidates(name: str, root) -> tuple[Path, Path, dict]:
    """(data root, dataset folder, {size: file}) for the MedMNIST(+) files present (folder first, then root)."""
    r = config.data_root(root)
    d = r / registry_entry(name).folder
    cands = {}
    for folder in (d, r):
        for s in MEDMNIST_SIZES:
            p = folder / medmnist_file(name, s)
            if p.is_file():
                cands.setdefault(s, p)
    return r, d, cands


def medmnist_present(name: str, root=None) -> bool:
    return bool(_candidates(name, root)[2])


def _medmnist_file(name: str, root, size: int) -> tuple[Path, int]:
    """Pick the MedMNIST(+) file to read: the requested size if there, else the nearest larger, else largest."""
    r, d, cands = _candidates(name, root)
    if not cands:
        raise not_found(name, r, d, f"no {name}.npz or {name}_{{64,128,224}}.npz")
    larger = [s for s in cands if s > size]
    s = size if size in cands else (min(larger) if larger else max(cands))
    check_inside([cands[s]], r, name)
    return cands[s], s


def _n_images(path: Path) -> int | None:
    """How many images the file holds (its three label arrays are small); None if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return sum(len(z[f"{p}_labels"]) for p in _PARTS)
    except Exception:
        return None         # _read_npz says what is wrong when it reads the file


def _read_npz(path: Path, size: int) -> dict:
    """The three official parts concatenated: images uint8 (N, size, size, C), labels, split."""
    keys = [f"{p}_{k}" for p in _PARTS for k in ("images", "labels")]
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise DataLayoutError(f"{path}: expected the MedMNIST keys {keys}, missing {missing}")
            parts = {k: z[k] for k in keys}
    except DataLayoutError:
        raise
    except Exception as err:
        raise UnreadableImageError(f"cannot read {path}: {err}; re-download it") from err
    imgs = np.concatenate([parts[f"{p}_images"] for p in _PARTS])
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    if imgs.ndim != 4 or imgs.shape[-1] not in (1, 3) or imgs.shape[1] != imgs.shape[2]:
        raise DataLayoutError(f"{path}: images should be (N, H, W) or (N, H, W, 3), got {imgs.shape}")
    if imgs.shape[1] != size:
        from PIL import Image
        mode = "L" if imgs.shape[-1] == 1 else "RGB"
        imgs = np.stack([np.asarray(Image.fromarray(im[..., 0] if mode == "L" else im, mode).resize(
            (size, size), Image.Resampling.BICUBIC)) for im in imgs])
        if mode == "L":
            imgs = imgs[..., None]
    labels = np.concatenate([parts[f"{p}_labels"] for p in _PARTS])
    split = np.concatenate([np.full(len(parts[f"{p}_labels"]), p) for p in _PARTS])
    return {"images": imgs.astype(np.uint8), "labels": labels, "split": split}


def _labels(name: str, lab: np.ndarray, path: Path) -> tuple[np.ndarray, list, str]:
    """(labels, class names, task) from the file's label array, checked."""
    n = len(lab)
    if name == "chestmnist":
        if lab.ndim != 2 or lab.shape[1] != len(CXR14):
            raise DataLayoutError(f"{path}: chestmnist labels should be (N, 14), got {lab.shape}")
        return lab.astype(np.float32), list(CXR14), "multilabel"
    labels = lab.reshape(n, -1)[:, 0].astype(np.int64)
    names = ["normal", "pneumonia"] if name == "pneumoniamnist" else list(HAM_7CLASS)
    if labels.min() < 0 or labels.max() >= len(names):
        raise DataLayoutError(f"{path}: labels should be 0..{len(names) - 1}, found {labels.min()}..{labels.max()}")
    return labels, names, "binary" if name == "pneumoniamnist" else "multiclass"


def load_medmnist(name: str, size: int, root=None, task=None, cache: bool = True) -> ImageSet:
    path, src_size = _medmnist_file(name, root, size)
    if src_size != size:
        arr = cached(name, size, [path], lambda: _read_npz(path, size), root, cache, n=_n_images(path))
    else:
        arr = _read_npz(path, size)
    labels, names, t = _labels(name, arr["labels"], path)
    ids = np.array([f"{name}_{i:06d}" for i in range(len(labels))])
    note = (f" Read from {path.name} ({src_size} px)" + (f", resized to {size} px." if src_size != size else ".") +
            " MedMNIST has no patient ids: groups = image index, so a grouped split cannot protect against the "
            "same patient appearing twice; use the official split.")
    extra = {"source_size": src_size}
    if name == "dermamnist":
        extra["class_long_names"] = [HAM_LONG_NAMES[c] for c in HAM_7CLASS]
    return ImageSet(name=name, source="real", description=describe(name, NOTES[name]) + note,
                    images=arr["images"], labels=labels, task=t, class_names=names, groups=ids.copy(), ids=ids,
                    official_split=arr["split"].astype(str), extra=extra)
