"""The one dataset type every loader and the synthetic generator return: images with labels, groups and ids.

Imports nothing from ``xai_helpers``, so ``data`` and ``synthetic`` both build on it without importing each
other. ``from xai_helpers.data import ImageSet`` keeps working (re-exported there).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(repr=False)
class ImageSet:
    """Images with labels, groups, ids and (where the source has them) expert annotations.

    ``images`` uint8 (N, H, W, C), C in {1, 3}; ``labels`` int64 (N,) for ``task`` "binary" or
    "multiclass", float32 (N, K) of 0/1 for "multilabel"; ``groups`` (N,) str: the unit a split must keep
    on one side (lesion, patient); ``masks`` bool (N, H, W) or None (expert masks; for synthetic data the
    ground-truth evidence); ``boxes`` None or, per image, a list of ``{label, x, y, w, h}`` in pixels of
    the loaded image; ``official_split`` None or (N,) of "train"/"val"/"test".
    """

    name: str
    source: str                      # "real" or "synthetic"
    description: str
    images: np.ndarray
    labels: np.ndarray
    task: str                        # "binary", "multiclass" or "multilabel"
    class_names: list
    groups: np.ndarray
    ids: np.ndarray
    masks: np.ndarray | None = None
    boxes: list | None = None
    official_split: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        n, h, w, c = self.images.shape
        ann = []
        if self.masks is not None:
            ann.append("masks")
        if self.boxes is not None:
            ann.append(f"boxes({sum(len(b) for b in self.boxes)})")
        if self.official_split is not None:
            ann.append("official_split")
        return (f"ImageSet({self.name!r}, {self.source}, {n} images {h}x{w}x{c}, task={self.task}, "
                f"classes={list(self.class_names)}{', ' + ', '.join(ann) if ann else ''})")

    # -- conveniences -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    def class_counts(self) -> dict:
        """Class name -> number of images (multi-label: number of positives per finding)."""
        if self.task == "multilabel":
            counts = self.labels.sum(axis=0).astype(int)
        else:
            counts = np.bincount(self.labels, minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.class_names, counts)}

    def subset(self, idx) -> "ImageSet":
        """A new ImageSet with the images at ``idx`` (an index array or a boolean mask)."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        n = len(self)
        extra = {}
        for key, val in self.extra.items():
            if isinstance(val, np.ndarray) and val.ndim >= 1 and len(val) == n:
                extra[key] = val[idx]
            elif hasattr(val, "iloc") and len(val) == n:  # pandas DataFrame / Series aligned with images
                extra[key] = val.iloc[idx].reset_index(drop=True)
            else:
                extra[key] = val
        return ImageSet(
            name=self.name, source=self.source, description=self.description,
            images=self.images[idx], labels=self.labels[idx], task=self.task,
            class_names=list(self.class_names), groups=self.groups[idx], ids=self.ids[idx],
            masks=None if self.masks is None else self.masks[idx],
            boxes=None if self.boxes is None else [self.boxes[i] for i in idx],
            official_split=None if self.official_split is None else self.official_split[idx],
            extra=extra,
        )

    def box_mask(self, i: int, label: str | None = None) -> np.ndarray:
        """Rasterise the boxes of image ``i`` (only those of finding ``label`` if given): bool (H, W)."""
        h, w = self.images.shape[1:3]
        out = np.zeros((h, w), dtype=bool)
        if self.boxes is None:
            return out
        for b in self.boxes[i]:
            if label is not None and b["label"] != label:
                continue
            x0 = int(np.floor(max(b["x"], 0)))
            y0 = int(np.floor(max(b["y"], 0)))
            x1 = int(np.ceil(min(b["x"] + b["w"], w)))
            y1 = int(np.ceil(min(b["y"] + b["h"], h)))
            out[y0:y1, x0:x1] = True
        return out


__all__ = ["ImageSet"]
