"""HAM10000 dermoscopy: metadata CSV + ISIC_*.jpg images (+ optional expert lesion masks).

Three layouts are read: ``images/`` (what ``data_download`` produces), the Dataverse one (two part
folders) and the ISIC 2018 one. Groups are ``lesion_id``: several images can show one lesion.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..imageset import ImageSet
from .cache import cached
from .reading import (DataLayoutError, check_inside, csv_rows, dataset_dir, describe, not_found, read_csv,
                      read_many)

HAM_7CLASS = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]        # DermaMNIST's label order
HAM_LONG_NAMES = {
    "akiec": "actinic keratoses and intraepithelial carcinoma", "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesions", "df": "dermatofibroma", "mel": "melanoma",
    "nv": "melanocytic nevi", "vasc": "vascular lesions",
}
HAM_BINARY = ["benign/other", "melanoma"]
NOTE = "Groups = lesion_id (several images can show one lesion)."


def _find_images(d: Path, r: Path) -> dict:
    """image_id -> path, from the README layout (images/), the Dataverse one and the ISIC 2018 one."""
    folders = [d / "images", d / "HAM10000_images_part_1", d / "HAM10000_images_part_2",
               d / "ISIC2018_Task3_Training_Input", d]
    found = {}
    for f in folders:
        if f.is_dir():
            for e in os.scandir(f):
                if e.name.startswith("ISIC_") and e.name.lower().endswith((".jpg", ".jpeg", ".png")):
                    found.setdefault(e.name.rsplit(".", 1)[0], e.path)
    if not found:
        raise not_found("ham10000", r, d, "no ISIC_*.jpg images in images/, HAM10000_images_part_1/2/ or "
                        "ISIC2018_Task3_Training_Input/")
    return found


def _find_masks(d: Path, image_ids) -> list:
    """Expert lesion masks (optional): data_download puts them in masks/, the Dataverse zip in its own
    folder; used only when every loaded image has one (else [])."""
    for seg_dir in (d / "masks", d / "HAM10000_segmentations_lesion_tschandl"):
        cand = [os.path.join(seg_dir, f"{i}_segmentation.png") for i in image_ids]
        if seg_dir.is_dir() and all(os.path.isfile(p) for p in cand):
            return cand
    return []


def _lesion_note(meta, n_all: int) -> str:
    partial = f" PARTIAL: {len(meta):,} of the {n_all:,} images in the metadata are present here." \
        if len(meta) < n_all else ""
    per_lesion = meta.groupby("lesion_id").size()
    return partial + (f" {len(per_lesion):,} lesions, {int((per_lesion > 1).sum()):,} of them with several images"
                      f" (up to {int(per_lesion.max())}).")


def _clean_metadata(meta, meta_csv: Path):
    """Exact duplicate rows dropped (warning); two different rows for one image an error naming them;
    a blank lesion_id becomes the image's own group (warning), never one shared group 'nan'."""
    dup = meta.duplicated(keep="first")
    if dup.any():
        ids = meta.loc[dup, "image_id"].tolist()
        warnings.warn(f"{meta_csv}: dropped {len(ids)} exact duplicate row(s) for {ids[:5]}"
                      f"{' ...' if len(ids) > 5 else ''} (each image is loaded once)", stacklevel=3)
        meta = meta[~dup]
    clash = meta["image_id"].duplicated(keep=False)
    if clash.any():
        rows = meta[clash].sort_values("image_id")
        first = rows["image_id"].iloc[0]
        lines = [int(i) + 2 for i in rows.index[rows["image_id"] == first]]
        raise DataLayoutError(f"{meta_csv}: {rows['image_id'].nunique()} image(s) have conflicting rows, e.g. "
                              f"{first} on lines {lines} with different values "
                              f"({rows[rows['image_id'] == first][['lesion_id', 'dx']].to_dict('records')}); "
                              "keep one row per image_id (re-download the metadata if unsure).")
    blank = meta["lesion_id"].isna() | (meta["lesion_id"].astype(str).str.strip() == "")
    if blank.any():
        ids = meta.loc[blank, "image_id"].tolist()
        warnings.warn(f"{meta_csv}: {len(ids)} image(s) have a blank lesion_id ({ids[:5]}"
                      f"{' ...' if len(ids) > 5 else ''}); each becomes its own group (its image_id), so the "
                      "grouped split cannot keep it with other images of the same lesion", stacklevel=3)
        meta = meta.assign(lesion_id=meta["lesion_id"].where(~blank, meta["image_id"]))
    return meta


def load_ham10000(size: int, root=None, task: str = "binary", cache: bool = True) -> ImageSet:
    r, d = dataset_dir("ham10000", root)
    if task not in ("binary", "7class"):
        raise ValueError(f"ham10000 task must be 'binary' (melanoma vs rest) or '7class', got {task!r}")
    meta_csv = d / "HAM10000_metadata.csv"
    meta = read_csv(meta_csv, "ham10000", r, ["lesion_id", "image_id", "dx"], nonblank=("image_id", "dx"))
    found = _find_images(d, r)
    unknown = sorted(set(meta["dx"]) - set(HAM_7CLASS))
    if unknown:
        raise DataLayoutError(f"{meta_csv}: unexpected dx values {unknown}; expected {HAM_7CLASS}")
    meta = meta[meta["image_id"].isin(found)]
    meta = _clean_metadata(meta, meta_csv).sort_values("image_id").reset_index(drop=True)
    paths = [found[i] for i in meta["image_id"]]
    seg = _find_masks(d, meta["image_id"])
    check_inside(paths + seg, r, "ham10000")
    ids = meta["image_id"].to_numpy(str)

    def build():
        out = {"images": read_many(paths, size, "RGB", desc="HAM10000"), "ids": ids}
        if seg:
            out["masks"] = read_many(seg, size, "L", nearest=True, desc="HAM10000 masks") > 127
        return out

    arr = cached("ham10000", size, paths + seg + [meta_csv], build, root, cache, ids=ids)
    dx = meta["dx"].to_numpy(str)
    code = np.searchsorted(np.array(HAM_7CLASS), dx).astype(np.int64)   # HAM_7CLASS is sorted
    if task == "binary":
        labels, names, t = (dx == "mel").astype(np.int64), list(HAM_BINARY), "binary"
    else:
        labels, names, t = code, list(HAM_7CLASS), "multiclass"
    what = "melanoma (mel) vs the rest." if task == "binary" else "7 classes in DermaMNIST's order."
    return ImageSet(
        name="ham10000", source="real",
        description=describe("ham10000", NOTE) + f" Task {task}: " + what + _lesion_note(meta, csv_rows(meta_csv)),
        images=arr["images"], labels=labels, task=t, class_names=names,
        groups=meta["lesion_id"].to_numpy(str), ids=ids,
        masks=arr.get("masks"), extra={"meta": meta, "dx": dx, "dx_code": code,
                                       "class_long_names": [HAM_LONG_NAMES.get(c, c) for c in HAM_7CLASS]},
    )
