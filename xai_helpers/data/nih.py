"""NIH ChestX-ray14, the images with expert boxes: 14 findings (multi-label) and boxes.

Labels from ``Data_Entry_2017_v2020.csv``, boxes from ``BBox_List_2017.csv`` scaled from the 1024-px
release to the loaded size. Groups = Patient ID.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from data_download.registry import NIH_CXR_BBOX

from ..imageset import ImageSet
from .cache import cached
from .reading import DataLayoutError, check_inside, dataset_dir, describe, not_found, read_csv, read_many

CXR14 = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
         "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
BOX_LABEL_FIX = {"Infiltrate": "Infiltration"}        # BBox_List_2017.csv spells one finding differently
NIH_BOXED_IMAGES = NIH_CXR_BBOX.counts["images"]
NOTE = ("14 findings, multi-label, from Data_Entry_2017_v2020.csv; boxes from BBox_List_2017.csv "
        "scaled from the 1024-px release to the loaded size. Groups = Patient ID.")


def _read_bbox_csv(path: Path, r: Path):
    """BBox_List_2017.csv: the header has extra empty columns; the first six fields are what matter.

    A row whose finding is not one of the 14, or whose box is not finite with positive width and
    height, is dropped with a warning naming it (it would mark the wrong pixels, or none, later).
    """
    import csv

    if not path.is_file():
        raise not_found("nih_cxr_bbox", r, path, "BBox_List_2017.csv missing")
    check_inside([path], r, "nih_cxr_bbox")
    out, dropped = {}, []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if len(header) < 3 or header[0].strip() != "Image Index" or "Finding" not in header[1]:
            raise DataLayoutError(f"{path}: expected the header 'Image Index,Finding Label,Bbox [x,y,w,h]', "
                                  f"found {header[:6]}")
        for line, row in enumerate(reader, start=2):
            if len(row) < 6 or not row[0].strip():
                continue
            try:
                x, y, w, h = (float(v) for v in row[2:6])
            except ValueError as err:
                raise DataLayoutError(f"{path}: row {row[:6]} does not end with four numbers x,y,w,h") from err
            lab = BOX_LABEL_FIX.get(row[1].strip(), row[1].strip())
            if lab not in CXR14:
                dropped.append(f"line {line} {row[0].strip()} {row[1].strip()!r}: unknown finding")
            elif not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
                dropped.append(f"line {line} {row[0].strip()} {lab}: box {row[2:6]} is not finite with w, h > 0")
            else:
                out.setdefault(row[0].strip(), []).append((lab, x, y, w, h))
    if dropped:
        warnings.warn(f"{path}: dropped {len(dropped)} box row(s): " + "; ".join(dropped[:5]) +
                      (" ..." if len(dropped) > 5 else ""), stacklevel=3)
    return out


def _finding_labels(meta, entry_csv: Path) -> np.ndarray:
    """'Finding Labels' ("A|B" or "No Finding") -> float32 (N, 14) of 0/1 in CXR14's order."""
    labels = np.zeros((len(meta), len(CXR14)), dtype=np.float32)
    for i, s in enumerate(meta["Finding Labels"].astype(str)):
        for f in s.split("|"):
            f = f.strip()
            if f in CXR14:
                labels[i, CXR14.index(f)] = 1
            elif f != "No Finding":
                raise DataLayoutError(f"{entry_csv}: unknown finding {f!r}; expected {CXR14} or 'No Finding'")
    return labels


def load_nih_cxr_bbox(size: int, root=None, task: str = "multilabel", cache: bool = True) -> ImageSet:
    r, d = dataset_dir("nih_cxr_bbox", root)
    if task != "multilabel":
        raise ValueError(f"nih_cxr_bbox task is 'multilabel' (14 findings), got {task!r}")
    entry_csv = d / "Data_Entry_2017_v2020.csv"
    if not entry_csv.is_file() and (d / "Data_Entry_2017.csv").is_file():
        entry_csv = d / "Data_Entry_2017.csv"
    entries = read_csv(entry_csv, "nih_cxr_bbox", r, ["Image Index", "Finding Labels", "Patient ID"],
                       nonblank=("Image Index", "Finding Labels", "Patient ID"))
    boxes_raw = _read_bbox_csv(d / "BBox_List_2017.csv", r)
    img_dir = d / "images"
    if not img_dir.is_dir():
        raise not_found("nih_cxr_bbox", r, img_dir, "images/ folder missing")
    present = {e.name: e.path for e in os.scandir(img_dir) if e.name.lower().endswith(".png")}
    wanted = sorted(set(boxes_raw) & set(present))
    if not wanted:
        raise not_found("nih_cxr_bbox", r, img_dir, "none of the images named in BBox_List_2017.csv")
    meta = entries[entries["Image Index"].isin(wanted)].sort_values("Image Index").reset_index(drop=True)
    missing_rows = sorted(set(wanted) - set(meta["Image Index"]))
    if missing_rows:
        raise DataLayoutError(f"{entry_csv}: no label row for {missing_rows[:5]} (expected one per image)")
    paths = [present[i] for i in meta["Image Index"]]
    check_inside(paths, r, "nih_cxr_bbox")
    ids = meta["Image Index"].to_numpy(str)

    def build():
        return {"images": read_many(paths, size, "L", desc="NIH CXR")[..., None], "ids": ids}

    arr = cached("nih_cxr_bbox", size, paths + [entry_csv, d / "BBox_List_2017.csv"], build, root, cache, ids=ids)
    labels = _finding_labels(meta, entry_csv)
    scale = size / 1024.0                       # boxes live in the 1024-px space of the released PNGs
    boxes = [[{"label": lab, "x": x * scale, "y": y * scale, "w": w * scale, "h": h * scale}
              for lab, x, y, w, h in boxes_raw[i]] for i in meta["Image Index"]]
    n_box_images = max(len(boxes_raw), NIH_BOXED_IMAGES)
    partial = f" PARTIAL: {len(meta)} of the {n_box_images} boxed images are present here." \
        if len(meta) < n_box_images else ""
    return ImageSet(name="nih_cxr_bbox", source="real", description=describe("nih_cxr_bbox", NOTE) + partial,
                    images=arr["images"], labels=labels, task="multilabel", class_names=list(CXR14),
                    groups=meta["Patient ID"].astype(str).to_numpy(str), ids=ids,
                    boxes=boxes, extra={"meta": meta, "box_scale": scale})
