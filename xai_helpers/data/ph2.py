"""PH2 dermoscopy: 200 BMP images with expert lesion masks and a diagnosis table (PH2_dataset.txt).

Groups = image name (PH2 has one image per lesion).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_download.registry import PH2

from ..imageset import ImageSet
from .cache import cached
from .reading import DataLayoutError, check_inside, dataset_dir, describe, not_found, read_many

PH2_3CLASS = ["common nevus", "atypical nevus", "melanoma"]
PH2_BINARY = ["benign (nevus)", "melanoma"]
PH2_OFFICIAL_IMAGES = PH2.counts["images"]
NOTE = "Groups = image name (one image per lesion)."
_EXTS = (".bmp", ".png", ".BMP", ".PNG")


def _read_ph2_table(path: Path):
    """PH2_dataset.txt: tab-separated here, '||'-separated in the official release. -> DataFrame."""
    import pandas as pd

    lines = [ln.rstrip("\r\n") for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    rows = []
    sep = "||" if any("||" in ln for ln in lines[:5]) else "\t"
    header = None
    for ln in lines:
        cells = [c.strip() for c in ln.split(sep)]
        if sep == "||":
            cells = cells[1:-1] if len(cells) > 2 else cells
        if header is None:
            if any(c.lower() == "name" for c in cells):
                header = cells
            continue
        if cells and cells[0].startswith("IMD"):
            rows.append(cells[:len(header)] + [""] * (len(header) - len(cells)))
    if header is None or not rows:
        raise DataLayoutError(f"{path}: expected a table with a 'Name' and a 'Clinical Diagnosis' column "
                              "(tab- or '||'-separated, one IMDnnn row per image)")
    df = pd.DataFrame(rows, columns=header)
    if "Clinical Diagnosis" not in df.columns:
        raise DataLayoutError(f"{path}: no 'Clinical Diagnosis' column (found {list(df.columns)})")
    return df


def _image_and_mask_paths(df, img_root: Path) -> tuple[list, list, list]:
    """(table rows, image paths, mask paths) of the IMDnnn folders present under ``img_root``."""
    rows, paths, mpaths = [], [], []
    for _, row in df.iterrows():
        name = row["Name"]
        folder = img_root / name
        if not folder.is_dir():
            continue
        img = [folder / f"{name}_Dermoscopic_Image" / f"{name}{ext}" for ext in _EXTS]
        msk = [folder / f"{name}_lesion" / f"{name}_lesion{ext}" for ext in _EXTS]
        img, msk = [p for p in img if p.is_file()], [p for p in msk if p.is_file()]
        if not img or not msk:
            raise DataLayoutError(f"ph2: {folder} should hold {name}_Dermoscopic_Image/{name}.bmp (or .png) and "
                                  f"{name}_lesion/{name}_lesion.bmp (or .png)")
        rows.append(row)
        paths.append(img[0])
        mpaths.append(msk[0])
    return rows, paths, mpaths


def _diagnoses(meta, table: Path) -> np.ndarray:
    """'Clinical Diagnosis' as 0/1/2; anything else names the table, the images and the values."""
    raw = meta["Clinical Diagnosis"].astype(str).str.strip()
    bad = ~raw.isin(["0", "1", "2"])
    if bad.any():
        found = dict(zip(meta.loc[bad, "Name"], raw[bad]))
        raise DataLayoutError(f"{table}: Clinical Diagnosis must be 0 (common nevus), 1 (atypical nevus) or "
                              f"2 (melanoma); found {dict(list(found.items())[:5])} (image: value). "
                              "Re-download PH2 (python -m data_download get ph2) or correct the table.")
    return raw.astype(int).to_numpy()


def load_ph2(size: int, root=None, task: str = "3class", cache: bool = True) -> ImageSet:
    r, d = dataset_dir("ph2", root)
    if task not in ("3class", "binary"):
        raise ValueError(f"ph2 task must be '3class' (common / atypical nevus / melanoma) or 'binary', got {task!r}")
    base = d / "PH2Dataset" if (d / "PH2Dataset").is_dir() else d
    table = base / "PH2_dataset.txt"
    if not table.is_file():
        raise not_found("ph2", r, table, "PH2_dataset.txt missing")
    df = _read_ph2_table(table)
    img_root = base / "PH2 Dataset images"
    if not img_root.is_dir():
        raise DataLayoutError(f"ph2: expected the folder {img_root} with IMDnnn/IMDnnn_Dermoscopic_Image/IMDnnn.bmp|png")
    rows, paths, mpaths = _image_and_mask_paths(df, img_root)
    if not rows:
        raise not_found("ph2", r, img_root, "no IMDnnn image folders")
    check_inside([table, *paths, *mpaths], r, "ph2")
    import pandas as pd

    meta = pd.DataFrame(rows).reset_index(drop=True)
    diag = _diagnoses(meta, table)

    def build():
        return {"images": read_many(paths, size, "RGB", desc="PH2"),
                "masks": read_many(mpaths, size, "L", nearest=True, desc="PH2 masks") > 127,
                "ids": np.array([p.stem for p in paths])}

    ids = meta["Name"].to_numpy(str)
    arr = cached("ph2", size, paths + mpaths + [table], build, root, cache, ids=ids)
    if task == "3class":
        labels, names, t = diag.astype(np.int64), list(PH2_3CLASS), "multiclass"
    else:
        labels, names, t = (diag == 2).astype(np.int64), list(PH2_BINARY), "binary"
    n_all = max(len(df), PH2_OFFICIAL_IMAGES)
    partial = f" PARTIAL: {len(meta)} of the {n_all} images of the official release are present here." \
        if len(meta) < n_all else ""
    return ImageSet(name="ph2", source="real", description=describe("ph2", NOTE) + f" Task {task}." + partial,
                    images=arr["images"], labels=labels, task=t, class_names=names, groups=ids.copy(),
                    ids=ids, masks=arr["masks"], extra={"meta": meta, "diagnosis": diag})


# --------------------------------------------------------------------------------------------------
# colour-class regions (IMDnnn_roi/IMDnnn_Rk_Labelc): what a dermatologist names "blue-grey", "dark brown"
PH2_COLOURS = {1: "white", 2: "red", 3: "light brown", 4: "dark brown", 5: "blue-grey", 6: "black"}


def _roi_files(img_root: Path) -> list:
    """(image name, region file, colour class or None) for every IMDnnn_roi/IMDnnn_Rk_Label* file."""
    import re

    found = []
    for folder in sorted(p for p in img_root.iterdir() if p.is_dir() and p.name.startswith("IMD")):
        roi = folder / f"{folder.name}_roi"
        if not roi.is_dir():
            continue
        for f in sorted(roi.iterdir()):
            m = re.fullmatch(rf"{folder.name}_R\d+_Label(.*)", f.stem)
            if m is None or f.suffix not in _EXTS:
                continue
            c = int(m.group(1)) if m.group(1).isdigit() else None
            found.append((folder.name, f, c if c in PH2_COLOURS else None))
    return found


def load_ph2_colour_regions(size: int, root=None) -> dict:
    """PH2's colour-class regions: the areas of a lesion that the experts labelled with one of the six
    dermoscopic colours (Mendonça et al., 2013: white, red, light brown, dark brown, blue-grey, black).

    Reads ``PH2 Dataset images/IMDnnn/IMDnnn_roi/IMDnnn_Rk_Labelc.bmp`` (or .png), ``c`` = 1..6 as in
    :data:`PH2_COLOURS`; region files whose label is not a colour number (e.g. ``Label`` or
    ``LabelStreaks``) are left out and listed. Only some PH2 images have region files.

    Returns a dict: ``images`` uint8 (M, size, size, 3) and ``ids`` (M,) of the images that have regions;
    per region ``image_index`` (R,) into ``images``, ``colour`` (R,) names, ``label`` (R,) 1..6 and
    ``masks`` bool (R, size, size); ``skipped``: the region files left out (names relative to the root).
    """
    r, d = dataset_dir("ph2", root)
    base = d / "PH2Dataset" if (d / "PH2Dataset").is_dir() else d
    img_root = base / "PH2 Dataset images"
    if not img_root.is_dir():
        raise DataLayoutError(f"ph2: expected the folder {img_root} with IMDnnn/IMDnnn_roi/IMDnnn_Rk_Labelc.bmp|png")
    files = _roi_files(img_root)
    regions = [(name, f, c) for name, f, c in files if c is not None]
    skipped = [str(f.relative_to(r)) for _, f, c in files if c is None]
    if not regions:
        raise not_found("ph2", r, img_root, "no colour-class region files (IMDnnn_roi/IMDnnn_Rk_Labelc.bmp|png)")
    ids = sorted({name for name, _, _ in regions})
    paths = []
    for name in ids:
        cand = [img_root / name / f"{name}_Dermoscopic_Image" / f"{name}{ext}" for ext in _EXTS]
        cand = [p for p in cand if p.is_file()]
        if not cand:
            raise DataLayoutError(f"ph2: {name} has colour regions but no {name}_Dermoscopic_Image/{name}.bmp (or .png)")
        paths.append(cand[0])
    check_inside(paths + [f for _, f, _ in regions], r, "ph2")
    where = {name: i for i, name in enumerate(ids)}
    return {"images": read_many(paths, size, "RGB", desc="PH2 colour regions"), "ids": np.array(ids),
            "image_index": np.array([where[name] for name, _, _ in regions]),
            "colour": np.array([PH2_COLOURS[c] for _, _, c in regions]),
            "label": np.array([c for _, _, c in regions]),
            "masks": read_many([f for _, f, _ in regions], size, "L", nearest=True, desc="PH2 region masks") > 127,
            "skipped": skipped}
