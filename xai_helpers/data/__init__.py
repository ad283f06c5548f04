"""One dataset type for every source, loaders for the real datasets, splits and tensors.

    >>> from xai_helpers import data
    >>> ds = data.load("ham10000", size=64, task="binary")   # real data (DatasetNotFoundError if absent)
    >>> ds = data.load_or_synthetic("ham10000", size=64)     # real, else a LOUDLY announced stand-in
    >>> parts = data.split(ds, seed=0)                       # grouped + stratified (or official)
    >>> x = data.to_tensor(ds, parts["train"], *data.channel_stats(ds, parts["train"]))

What each dataset is, its licence, citation and file layout: ``data.DATASETS`` (the downloader's
registry, :mod:`data_download.registry`). One module per source: ``ham10000``, ``ph2``, ``nih``,
``medmnist``; ``cache`` (the prepared-array cache), ``splits``, ``tensors``. Batches and augmentation
for training: :class:`xai_helpers.training.TensorLoader`.
"""
from __future__ import annotations

import numpy as np

from data_download.registry import DATASETS, MEDMNIST_SIZES

from .. import config
from ..imageset import ImageSet
from .ham10000 import HAM_7CLASS, HAM_BINARY, HAM_LONG_NAMES, load_ham10000
from .medmnist import MEDMNIST, load_medmnist, medmnist_present
from .nih import BOX_LABEL_FIX, CXR14, NIH_BOXED_IMAGES, load_nih_cxr_bbox
from .ph2 import PH2_3CLASS, PH2_BINARY, PH2_OFFICIAL_IMAGES, load_ph2
from .reading import DataLayoutError, DatasetNotFoundError, UnreadableImageError
from .splits import check_split, split
from .tensors import channel_stats, images_to_tensor, to_tensor


def _medmnist_loader(name: str):
    def load_one(size, root=None, task=None, cache=True):
        return load_medmnist(name, size, root, task, cache)
    return load_one


_LOADERS = {"ham10000": load_ham10000, "ph2": load_ph2, "nih_cxr_bbox": load_nih_cxr_bbox,
            **{name: _medmnist_loader(name) for name in MEDMNIST}}


def load(name: str, size: int = 64, root=None, task: str | None = None, cache: bool = True) -> ImageSet:
    """Load a real dataset, resized to ``size`` x ``size``, from the data root (``root`` or XAI_DATA_ROOT).

    name: ham10000 (task "binary" = melanoma vs rest [default] or "7class"), ph2 (task "3class" [default] or
    "binary"), nih_cxr_bbox (14 findings, multi-label, boxes), pneumoniamnist, dermamnist, chestmnist.
    The prepared arrays are cached under ``config.cache_dir()`` (keyed by name, size and a fingerprint of the
    source files) so the second load is fast; ``cache=False`` reads the sources every time.
    Raises DatasetNotFoundError (with the download command) when the dataset is not there, and
    DataLayoutError naming the file and the reason for damaged metadata (empty, cut off, conflicting
    rows) and for a symbolic link that leads out of the data root (only files inside it are read).
    Rows that cannot be used (exact duplicates, boxes with unknown findings or non-finite coordinates)
    are dropped with a warning naming them; a blank HAM10000 lesion_id becomes the image's own group.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(_LOADERS)}")
    if not isinstance(size, (int, np.integer)) or not 8 <= size <= 1024:
        raise ValueError(f"size must be an integer number of pixels in [8, 1024], got {size!r}")
    kw = {} if task is None else {"task": task}
    return _LOADERS[name](int(size), root=root, cache=cache, **kw)


def available(name: str, root=None) -> bool:
    """True when ``load(name)`` would find the dataset (without reading the images)."""
    if name in MEDMNIST:
        return medmnist_present(name, root)
    return (config.data_root(root) / DATASETS[name].folder).is_dir()


def load_or_synthetic(name: str, size: int = 64, root=None, task: str | None = None, n_synthetic: int | None = None,
                      seed: int = 0, **synthetic_kw) -> ImageSet:
    """The real dataset if it is under the data root; else a planted-evidence stand-in, announced LOUDLY.

    The stand-in is ``synthetic.make_planted(kind=...)`` (skin for ham10000/ph2/dermamnist, chest for the
    X-ray sets); it has 2 classes (up to 4 when the real task has more) and is never multi-label, so a
    notebook should branch on ``ds.source``. Its ``masks`` are the planted evidence; for a set with expert
    boxes (nih_cxr_bbox) it also has ``boxes``: one per image of a finding (class > 0), the box round its
    evidence region, labelled with the class name (images of class 0, the look-alike, have none), so
    box-based evaluation runs against a known truth.
    """
    try:
        return load(name, size=size, root=root, task=task)
    except DatasetNotFoundError as err:
        from .. import synthetic

        kind = DATASETS[name].kind
        n_cls = synthetic_kw.pop("n_classes", 2 if task in (None, "binary") else 4)
        n = n_synthetic or config.pick(512, 2048)
        ds = synthetic.make_planted(n=n, size=size, kind=kind, n_classes=n_cls, seed=seed, **synthetic_kw)
        bar = "!" * 78
        print(f"{bar}\n!! REAL DATA NOT FOUND: {name} is not under {config.display_path(config.data_root(root))}\n"
              f"!! Using SYNTHETIC planted-evidence '{kind}' images instead ({n} images, {n_cls} classes).\n"
              f"!! Results below are about synthetic images, not about {name}.\n"
              f"!! {str(err).splitlines()[-2].strip() if len(str(err).splitlines()) > 1 else ''}\n{bar}")
        ds.extra["stand_in_for"] = name
        if name == "nih_cxr_bbox":
            ds.boxes = boxes_from_masks(ds.masks, ds.labels, ds.class_names)
        return ds


def boxes_from_masks(masks: np.ndarray, labels: np.ndarray, class_names, skip_class: int | None = 0) -> list:
    """Per image, ``[{label, x, y, w, h}]``: the box round its mask (pixels of the image), labelled with
    its class name; ``[]`` for an empty mask and for images of ``skip_class`` (None: box every class)."""
    masks = np.asarray(masks, bool)
    if masks.ndim != 3 or len(masks) != len(labels):
        raise ValueError(f"masks must be (N, H, W) with one label per image; got masks {masks.shape}, "
                         f"{len(labels)} labels")
    out = []
    for m, y in zip(masks, np.asarray(labels)):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if (skip_class is not None and int(y) == skip_class) or not len(rows):
            out.append([])
            continue
        out.append([{"label": str(class_names[int(y)]), "x": float(cols[0]), "y": float(rows[0]),
                     "w": float(cols[-1] + 1 - cols[0]), "h": float(rows[-1] + 1 - rows[0])}])
    return out


__all__ = [
    "ImageSet", "DATASETS", "MEDMNIST_SIZES", "DatasetNotFoundError", "DataLayoutError", "UnreadableImageError",
    "load", "available", "load_or_synthetic", "boxes_from_masks", "split", "check_split", "channel_stats", "images_to_tensor",
    "to_tensor", "HAM_7CLASS", "HAM_BINARY", "HAM_LONG_NAMES", "PH2_3CLASS", "PH2_BINARY", "CXR14",
    "BOX_LABEL_FIX", "PH2_OFFICIAL_IMAGES", "NIH_BOXED_IMAGES",
]
