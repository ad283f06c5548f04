"""One dataset type for every source, loaders for the real datasets, splits and torch adapters.

    >>> from xai_helpers import data
    >>> ds = data.load("ham10000", size=64, task="binary")   # real data (DatasetNotFoundError if absent)
    >>> ds = data.load_or_synthetic("ham10000", size=64)     # real, else a LOUDLY announced stand-in
    >>> parts = data.split(ds, seed=0)                       # grouped + stratified (or official)
    >>> loader = data.make_loader(ds, parts["train"], batch_size=64, shuffle=True, augment=True)
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config


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


# ==================================================================================================
# errors
class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not under the data root. The message names the folder and the download command."""


class DataLayoutError(ValueError):
    """The files are there but not laid out as expected; the message says what was expected."""


class UnreadableImageError(OSError):
    """An image file could not be decoded; the message names the file."""


# ==================================================================================================
# registry: what each loader reads, and what to tell the learner about it
HAM_7CLASS = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]        # DermaMNIST's label order
HAM_LONG_NAMES = {
    "akiec": "actinic keratoses and intraepithelial carcinoma", "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesions", "df": "dermatofibroma", "mel": "melanoma",
    "nv": "melanocytic nevi", "vasc": "vascular lesions",
}
HAM_BINARY = ["benign/other", "melanoma"]
PH2_3CLASS = ["common nevus", "atypical nevus", "melanoma"]
PH2_BINARY = ["benign (nevus)", "melanoma"]
CXR14 = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
         "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
BOX_LABEL_FIX = {"Infiltrate": "Infiltration"}        # BBox_List_2017.csv spells one finding differently
MEDMNIST_SIZES = (28, 64, 128, 224)
PH2_OFFICIAL_IMAGES = 200
NIH_BOXED_IMAGES = 880

DATASETS = {
    "ham10000": dict(
        kind="skin", folder="ham10000",
        about="HAM10000 dermoscopy (Tschandl et al., Sci Data 2018; ISIC 2018 Task 3 training set), "
              "licence CC BY-NC 4.0. Groups = lesion_id (several images can show one lesion)."),
    "ph2": dict(
        kind="skin", folder="ph2",
        about="PH2 dermoscopy with expert lesion masks (Mendonça et al., EMBC 2013), free for research and "
              "teaching with citation. Groups = image name (one image per lesion)."),
    "nih_cxr_bbox": dict(
        kind="chest", folder="nih_cxr_bbox",
        about="NIH ChestX-ray14, the images with expert boxes (Wang et al., CVPR 2017), licence CC0. "
              "14 findings, multi-label, from Data_Entry_2017_v2020.csv; boxes from BBox_List_2017.csv "
              "scaled from the 1024-px release to the loaded size. Groups = Patient ID."),
    "pneumoniamnist": dict(
        kind="chest", folder="pneumoniamnist",
        about="PneumoniaMNIST (MedMNIST v2, Yang et al., Sci Data 2023; from Kermany et al. 2018), licence "
              "CC BY 4.0. Official train/val/test split kept."),
    "dermamnist": dict(
        kind="skin", folder="dermamnist",
        about="DermaMNIST (MedMNIST v2, Yang et al., Sci Data 2023; HAM10000 resized), licence CC BY-NC 4.0. "
              "Official train/val/test split kept."),
    "chestmnist": dict(
        kind="chest", folder="chestmnist",
        about="ChestMNIST (MedMNIST v2, Yang et al., Sci Data 2023; NIH ChestX-ray14 resized), licence CC0. "
              "14 findings, multi-label. Official train/val/test split kept."),
}


def _not_found(name: str, root: Path, looked: Path, what: str = "") -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name}: {what or 'dataset not found'} (looked in {looked}). Get it with:\n"
        f"    python -m data_download get {name} --root {root}\n"
        f"or point XAI_DATA_ROOT (or root=...) at the folder that holds '{DATASETS[name]['folder']}/'.")


# ==================================================================================================
# image reading, resizing and the prepared-array cache
def _open_image(path: Path, size: int, mode: str, nearest: bool = False) -> np.ndarray:
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


def _read_many(paths, size: int, mode: str, nearest: bool = False, desc: str = "") -> np.ndarray:
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
        out[i] = _open_image(paths[i], size, mode, nearest)

    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(work, range(n))
        if tqdm is not None and n > 200:
            it = tqdm(it, total=n, desc=desc or f"reading {n} images", leave=False)
        for _ in it:
            pass
    return out


def _fingerprint(files) -> str:
    """Hash of (name, size, mtime) of the source files: the cache is rebuilt when any of them changes."""
    h = hashlib.sha1()
    for f in sorted(os.fspath(p) for p in files):
        st = os.stat(f)
        h.update(f"{os.path.basename(f)}|{st.st_size}|{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


def _cache_path(name: str, size: int, fingerprint: str, root) -> Path:
    return config.cache_dir(root) / f"{name}_{size}px_{fingerprint}.npz"


def _cache_load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception:  # a damaged cache file is rebuilt, never trusted
        return None


def _cache_save(path: Path, arrays: dict) -> None:
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


def _cached(name: str, size: int, sources, build, root, cache: bool) -> dict:
    """Return ``build()``'s arrays from the cache when the sources are unchanged, else build and store."""
    if not cache:
        return build()
    path = _cache_path(name, size, _fingerprint(sources), root)
    got = _cache_load(path)
    if got is not None:
        return got
    arrays = build()
    try:
        _cache_save(path, arrays)
    except OSError as err:  # a read-only cache folder only costs speed
        warnings.warn(f"could not write the cache {path}: {err}; set XAI_CACHE_DIR to a writable folder")
    return arrays


def _read_csv(path: Path, name: str, root: Path, required: list, **kw):
    import pandas as pd

    if not path.is_file():
        raise _not_found(name, root, path, f"{path.name} missing")
    df = pd.read_csv(path, **kw)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataLayoutError(f"{path}: expected columns {required}, missing {missing} (found {list(df.columns)[:12]})")
    return df


def _dataset_dir(name: str, root) -> tuple[Path, Path]:
    r = config.data_root(root)
    d = r / DATASETS[name]["folder"]
    if not d.is_dir():
        raise _not_found(name, r, d)
    return r, d


# ==================================================================================================
# loaders
def _load_ham10000(size: int, root=None, task: str = "binary", cache: bool = True) -> ImageSet:
    r, d = _dataset_dir("ham10000", root)
    if task not in ("binary", "7class"):
        raise ValueError(f"ham10000 task must be 'binary' (melanoma vs rest) or '7class', got {task!r}")
    meta = _read_csv(d / "HAM10000_metadata.csv", "ham10000", r, ["lesion_id", "image_id", "dx"])
    # the README layout (images/), the Dataverse one (two part folders) and the ISIC 2018 one
    folders = [d / "images", d / "HAM10000_images_part_1", d / "HAM10000_images_part_2",
               d / "ISIC2018_Task3_Training_Input", d]
    found = {}
    for f in folders:
        if f.is_dir():
            for e in os.scandir(f):
                if e.name.startswith("ISIC_") and e.name.lower().endswith((".jpg", ".jpeg", ".png")):
                    found.setdefault(e.name.rsplit(".", 1)[0], e.path)
    if not found:
        raise _not_found("ham10000", r, d, "no ISIC_*.jpg images in images/, HAM10000_images_part_1/2/ or "
                         "ISIC2018_Task3_Training_Input/")
    unknown = sorted(set(meta["dx"]) - set(HAM_7CLASS))
    if unknown:
        raise DataLayoutError(f"{d / 'HAM10000_metadata.csv'}: unexpected dx values {unknown}; expected {HAM_7CLASS}")
    meta = meta[meta["image_id"].isin(found)].sort_values("image_id").reset_index(drop=True)
    paths = [found[i] for i in meta["image_id"]]
    # expert lesion masks (optional): data_download puts them in masks/, the Dataverse zip in its own folder;
    # used only when every loaded image has one
    seg = []
    for seg_dir in (d / "masks", d / "HAM10000_segmentations_lesion_tschandl"):
        cand = [os.path.join(seg_dir, f"{i}_segmentation.png") for i in meta["image_id"]]
        if seg_dir.is_dir() and all(os.path.isfile(p) for p in cand):
            seg = cand
            break

    def build():
        out = {"images": _read_many(paths, size, "RGB", desc="HAM10000"), "ids": meta["image_id"].to_numpy(str)}
        if seg:
            out["masks"] = _read_many(seg, size, "L", nearest=True, desc="HAM10000 masks") > 127
        return out

    arr = _cached("ham10000", size, paths + seg + [d / "HAM10000_metadata.csv"], build, root, cache)
    if not np.array_equal(arr["ids"], meta["image_id"].to_numpy(str)):
        raise DataLayoutError("ham10000 cache does not match the metadata; delete " + str(config.cache_dir(root)))
    dx = meta["dx"].to_numpy(str)
    code = np.searchsorted(np.array(HAM_7CLASS), dx).astype(np.int64)   # HAM_7CLASS is sorted
    if task == "binary":
        labels, names, t = (dx == "mel").astype(np.int64), list(HAM_BINARY), "binary"
    else:
        labels, names, t = code, list(HAM_7CLASS), "multiclass"
    n_all = int(pd_len(d / "HAM10000_metadata.csv"))
    partial = f" PARTIAL: {len(meta):,} of the {n_all:,} images in the metadata are present here." \
        if len(meta) < n_all else ""
    per_lesion = meta.groupby("lesion_id").size()
    partial += (f" {len(per_lesion):,} lesions, {int((per_lesion > 1).sum()):,} of them with several images"
                f" (up to {int(per_lesion.max())}).")
    return ImageSet(
        name="ham10000", source="real",
        description=DATASETS["ham10000"]["about"] + f" Task {task}: " +
        ("melanoma (mel) vs the rest." if task == "binary" else "7 classes in DermaMNIST's order.") + partial,
        images=arr["images"], labels=labels, task=t, class_names=names,
        groups=meta["lesion_id"].to_numpy(str), ids=meta["image_id"].to_numpy(str),
        masks=arr.get("masks"), extra={"meta": meta, "dx": dx, "dx_code": code,
                                       "class_long_names": [HAM_LONG_NAMES.get(c, c) for c in HAM_7CLASS]},
    )


def pd_len(csv_path: Path) -> int:
    """Number of data rows of a CSV (without reading it into memory twice)."""
    with open(csv_path, "rb") as f:
        return max(0, sum(1 for _ in f) - 1)


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


def _load_ph2(size: int, root=None, task: str = "3class", cache: bool = True) -> ImageSet:
    r, d = _dataset_dir("ph2", root)
    if task not in ("3class", "binary"):
        raise ValueError(f"ph2 task must be '3class' (common / atypical nevus / melanoma) or 'binary', got {task!r}")
    base = d / "PH2Dataset" if (d / "PH2Dataset").is_dir() else d
    table = base / "PH2_dataset.txt"
    if not table.is_file():
        raise _not_found("ph2", r, table, "PH2_dataset.txt missing")
    df = _read_ph2_table(table)
    img_root = base / "PH2 Dataset images"
    if not img_root.is_dir():
        raise DataLayoutError(f"ph2: expected the folder {img_root} with IMDnnn/IMDnnn_Dermoscopic_Image/IMDnnn.bmp|png")
    rows, paths, mpaths = [], [], []
    for _, row in df.iterrows():
        name = row["Name"]
        folder = img_root / name
        if not folder.is_dir():
            continue
        img = [folder / f"{name}_Dermoscopic_Image" / f"{name}{ext}" for ext in (".bmp", ".png", ".BMP", ".PNG")]
        msk = [folder / f"{name}_lesion" / f"{name}_lesion{ext}" for ext in (".bmp", ".png", ".BMP", ".PNG")]
        img, msk = [p for p in img if p.is_file()], [p for p in msk if p.is_file()]
        if not img or not msk:
            raise DataLayoutError(f"ph2: {folder} should hold {name}_Dermoscopic_Image/{name}.bmp (or .png) and "
                                  f"{name}_lesion/{name}_lesion.bmp (or .png)")
        rows.append(row)
        paths.append(img[0])
        mpaths.append(msk[0])
    if not rows:
        raise _not_found("ph2", r, img_root, "no IMDnnn image folders")

    def build():
        return {"images": _read_many(paths, size, "RGB", desc="PH2"),
                "masks": _read_many(mpaths, size, "L", nearest=True, desc="PH2 masks") > 127,
                "ids": np.array([p.stem for p in paths])}

    arr = _cached("ph2", size, paths + mpaths + [table], build, root, cache)
    import pandas as pd

    meta = pd.DataFrame(rows).reset_index(drop=True)
    diag = meta["Clinical Diagnosis"].astype(int).to_numpy()
    if set(diag) - {0, 1, 2}:
        raise DataLayoutError(f"{table}: Clinical Diagnosis must be 0, 1 or 2, found {sorted(set(diag))}")
    if task == "3class":
        labels, names, t = diag.astype(np.int64), list(PH2_3CLASS), "multiclass"
    else:
        labels, names, t = (diag == 2).astype(np.int64), list(PH2_BINARY), "binary"
    n_all = max(len(df), PH2_OFFICIAL_IMAGES)
    partial = f" PARTIAL: {len(meta)} of the {n_all} images of the official release are present here." \
        if len(meta) < n_all else ""
    ids = meta["Name"].to_numpy(str)
    return ImageSet(name="ph2", source="real",
                    description=DATASETS["ph2"]["about"] + f" Task {task}." + partial,
                    images=arr["images"], labels=labels, task=t, class_names=names, groups=ids.copy(),
                    ids=ids, masks=arr["masks"], extra={"meta": meta, "diagnosis": diag})


def _read_bbox_csv(path: Path, r: Path):
    """BBox_List_2017.csv: the header has extra empty columns; the first six fields are what matter."""
    import csv

    if not path.is_file():
        raise _not_found("nih_cxr_bbox", r, path, "BBox_List_2017.csv missing")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if len(header) < 3 or header[0].strip() != "Image Index" or "Finding" not in header[1]:
            raise DataLayoutError(f"{path}: expected the header 'Image Index,Finding Label,Bbox [x,y,w,h]', "
                                  f"found {header[:6]}")
        out = {}
        for row in reader:
            if len(row) < 6 or not row[0].strip():
                continue
            try:
                x, y, w, h = (float(v) for v in row[2:6])
            except ValueError as err:
                raise DataLayoutError(f"{path}: row {row[:6]} does not end with four numbers x,y,w,h") from err
            lab = BOX_LABEL_FIX.get(row[1].strip(), row[1].strip())
            out.setdefault(row[0].strip(), []).append((lab, x, y, w, h))
    return out


def _load_nih_cxr_bbox(size: int, root=None, task: str = "multilabel", cache: bool = True) -> ImageSet:
    r, d = _dataset_dir("nih_cxr_bbox", root)
    if task != "multilabel":
        raise ValueError(f"nih_cxr_bbox task is 'multilabel' (14 findings), got {task!r}")
    entry_csv = d / "Data_Entry_2017_v2020.csv"
    if not entry_csv.is_file() and (d / "Data_Entry_2017.csv").is_file():
        entry_csv = d / "Data_Entry_2017.csv"
    entries = _read_csv(entry_csv, "nih_cxr_bbox", r, ["Image Index", "Finding Labels", "Patient ID"])
    boxes_raw = _read_bbox_csv(d / "BBox_List_2017.csv", r)
    img_dir = d / "images"
    if not img_dir.is_dir():
        raise _not_found("nih_cxr_bbox", r, img_dir, "images/ folder missing")
    present = {e.name: e.path for e in os.scandir(img_dir) if e.name.lower().endswith(".png")}
    wanted = sorted(set(boxes_raw) & set(present))
    if not wanted:
        raise _not_found("nih_cxr_bbox", r, img_dir, "none of the images named in BBox_List_2017.csv")
    meta = entries[entries["Image Index"].isin(wanted)].sort_values("Image Index").reset_index(drop=True)
    missing_rows = sorted(set(wanted) - set(meta["Image Index"]))
    if missing_rows:
        raise DataLayoutError(f"{entry_csv}: no label row for {missing_rows[:5]} (expected one per image)")
    paths = [present[i] for i in meta["Image Index"]]

    def build():
        return {"images": _read_many(paths, size, "L", desc="NIH CXR")[..., None],
                "ids": meta["Image Index"].to_numpy(str)}

    arr = _cached("nih_cxr_bbox", size, paths + [entry_csv, d / "BBox_List_2017.csv"], build, root, cache)
    labels = np.zeros((len(meta), len(CXR14)), dtype=np.float32)
    for i, s in enumerate(meta["Finding Labels"].astype(str)):
        for f in s.split("|"):
            f = f.strip()
            if f in CXR14:
                labels[i, CXR14.index(f)] = 1
            elif f != "No Finding":
                raise DataLayoutError(f"{entry_csv}: unknown finding {f!r}; expected {CXR14} or 'No Finding'")
    scale = size / 1024.0                       # boxes live in the 1024-px space of the released PNGs
    boxes = [[{"label": lab, "x": x * scale, "y": y * scale, "w": w * scale, "h": h * scale}
              for lab, x, y, w, h in boxes_raw[i]] for i in meta["Image Index"]]
    n_box_images = max(len(boxes_raw), NIH_BOXED_IMAGES)
    partial = f" PARTIAL: {len(meta)} of the {n_box_images} boxed images are present here." \
        if len(meta) < n_box_images else ""
    return ImageSet(name="nih_cxr_bbox", source="real",
                    description=DATASETS["nih_cxr_bbox"]["about"] + partial,
                    images=arr["images"], labels=labels, task="multilabel", class_names=list(CXR14),
                    groups=meta["Patient ID"].astype(str).to_numpy(str), ids=meta["Image Index"].to_numpy(str),
                    boxes=boxes, extra={"meta": meta, "box_scale": scale})


def _medmnist_file(name: str, d: Path, r: Path, size: int) -> tuple[Path, int]:
    """Pick the MedMNIST(+) file to read: the requested size if there, else the nearest larger, else largest."""
    cands = {}
    for folder in (d, r):
        for s in MEDMNIST_SIZES:
            p = folder / (f"{name}.npz" if s == 28 else f"{name}_{s}.npz")
            if p.is_file():
                cands.setdefault(s, p)
    if not cands:
        raise _not_found(name, r, d, f"no {name}.npz or {name}_{{64,128,224}}.npz")
    if size in cands:
        return cands[size], size
    larger = [s for s in cands if s > size]
    s = min(larger) if larger else max(cands)
    return cands[s], s


def _load_medmnist(name: str, size: int, root=None, task=None, cache: bool = True) -> ImageSet:
    r = config.data_root(root)
    d = r / DATASETS[name]["folder"]
    path, src_size = _medmnist_file(name, d, r, size)
    keys = [f"{p}_{k}" for p in ("train", "val", "test") for k in ("images", "labels")]

    def build():
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
        imgs = np.concatenate([parts[f"{p}_images"] for p in ("train", "val", "test")])
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
        labels = np.concatenate([parts[f"{p}_labels"] for p in ("train", "val", "test")])
        split = np.concatenate([np.full(len(parts[f"{p}_labels"]), p) for p in ("train", "val", "test")])
        return {"images": imgs.astype(np.uint8), "labels": labels, "split": split}

    arr = _cached(name, size, [path], build, root, cache and src_size != size) if src_size != size else build()
    lab = arr["labels"]
    n = len(lab)
    if name == "chestmnist":
        if lab.ndim != 2 or lab.shape[1] != len(CXR14):
            raise DataLayoutError(f"{path}: chestmnist labels should be (N, 14), got {lab.shape}")
        labels, names, t = lab.astype(np.float32), list(CXR14), "multilabel"
    else:
        labels = lab.reshape(n, -1)[:, 0].astype(np.int64)
        names = ["normal", "pneumonia"] if name == "pneumoniamnist" else list(HAM_7CLASS)
        t = "binary" if name == "pneumoniamnist" else "multiclass"
        if labels.min() < 0 or labels.max() >= len(names):
            raise DataLayoutError(f"{path}: labels should be 0..{len(names) - 1}, found {labels.min()}..{labels.max()}")
    ids = np.array([f"{name}_{i:06d}" for i in range(n)])
    note = (f" Read from {path.name} ({src_size} px)" + (f", resized to {size} px." if src_size != size else ".") +
            " MedMNIST has no patient ids: groups = image index, so a grouped split cannot protect against the "
            "same patient appearing twice; use the official split.")
    extra = {"source_size": src_size}
    if name == "dermamnist":
        extra["class_long_names"] = [HAM_LONG_NAMES[c] for c in HAM_7CLASS]
    return ImageSet(name=name, source="real", description=DATASETS[name]["about"] + note,
                    images=arr["images"], labels=labels, task=t, class_names=names, groups=ids.copy(), ids=ids,
                    official_split=arr["split"].astype(str), extra=extra)


_LOADERS = {
    "ham10000": _load_ham10000,
    "ph2": _load_ph2,
    "nih_cxr_bbox": _load_nih_cxr_bbox,
    "pneumoniamnist": lambda size, root=None, task=None, cache=True: _load_medmnist("pneumoniamnist", size, root, task, cache),
    "dermamnist": lambda size, root=None, task=None, cache=True: _load_medmnist("dermamnist", size, root, task, cache),
    "chestmnist": lambda size, root=None, task=None, cache=True: _load_medmnist("chestmnist", size, root, task, cache),
}


def load(name: str, size: int = 64, root=None, task: str | None = None, cache: bool = True) -> ImageSet:
    """Load a real dataset, resized to ``size`` x ``size``, from the data root (``root`` or XAI_DATA_ROOT).

    name: ham10000 (task "binary" = melanoma vs rest [default] or "7class"), ph2 (task "3class" [default] or
    "binary"), nih_cxr_bbox (14 findings, multi-label, boxes), pneumoniamnist, dermamnist, chestmnist.
    The prepared arrays are cached under ``config.cache_dir()`` (keyed by name, size and a fingerprint of the
    source files) so the second load is fast; ``cache=False`` reads the sources every time.
    Raises DatasetNotFoundError (with the download command) when the dataset is not there.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(_LOADERS)}")
    if not isinstance(size, (int, np.integer)) or not 8 <= size <= 1024:
        raise ValueError(f"size must be an integer number of pixels in [8, 1024], got {size!r}")
    kw = {} if task is None else {"task": task}
    return _LOADERS[name](int(size), root=root, cache=cache, **kw)


def available(name: str, root=None) -> bool:
    """True when ``load(name)`` would find the dataset (without reading the images)."""
    r = config.data_root(root)
    d = r / DATASETS[name]["folder"]
    if name in ("pneumoniamnist", "dermamnist", "chestmnist"):
        return any((folder / (f"{name}.npz" if s == 28 else f"{name}_{s}.npz")).is_file()
                   for folder in (d, r) for s in MEDMNIST_SIZES)
    return d.is_dir()


def load_or_synthetic(name: str, size: int = 64, root=None, task: str | None = None, n_synthetic: int | None = None,
                      seed: int = 0, **synthetic_kw) -> ImageSet:
    """The real dataset if it is under the data root; else a planted-evidence stand-in, announced LOUDLY.

    The stand-in is ``synthetic.make_planted(kind=...)`` (skin for ham10000/ph2/dermamnist, chest for the
    X-ray sets); it has 2 classes (up to 4 when the real task has more) and is never multi-label, so a
    notebook should branch on ``ds.source``.
    """
    try:
        return load(name, size=size, root=root, task=task)
    except DatasetNotFoundError as err:
        from . import synthetic

        kind = DATASETS[name]["kind"]
        n_cls = synthetic_kw.pop("n_classes", 2 if task in (None, "binary") else 4)
        n = n_synthetic or config.pick(512, 2048)
        ds = synthetic.make_planted(n=n, size=size, kind=kind, n_classes=n_cls, seed=seed, **synthetic_kw)
        bar = "!" * 78
        print(f"{bar}\n!! REAL DATA NOT FOUND: {name} is not under {config.data_root(root)}\n"
              f"!! Using SYNTHETIC planted-evidence '{kind}' images instead ({n} images, {n_cls} classes).\n"
              f"!! Results below are about synthetic images, not about {name}.\n"
              f"!! {str(err).splitlines()[-2].strip() if len(str(err).splitlines()) > 1 else ''}\n{bar}")
        ds.extra["stand_in_for"] = name
        return ds


# ==================================================================================================
# splits
def _strata(ds: ImageSet) -> np.ndarray:
    """One stratum per image: the label (single-label) or the rarest positive finding (-1 = none)."""
    if ds.task == "multilabel":
        lab = ds.labels > 0.5
        freq = lab.sum(axis=0)
        rank = np.argsort(np.argsort(freq, kind="stable"), kind="stable")   # 0 = rarest finding
        r = np.where(lab, rank[None, :], len(freq))
        best = r.min(axis=1)
        order = np.argsort(rank)
        return np.where(best < len(freq), order[np.clip(best, 0, len(freq) - 1)], -1)
    return np.asarray(ds.labels).astype(np.int64)


def split(ds: ImageSet, val: float = 0.15, test: float = 0.15, seed: int = 0,
          use_official: bool = True) -> dict:
    """Indices ``{"train", "val", "test"}``: the official split when the set has one (and
    ``use_official``), else stratified AND grouped: every group (lesion, patient) lies on one side only.

    A group is stratified by its rarest label (so every class, and every finding, reaches each side);
    groups of each stratum are shuffled with ``seed`` and dealt out until each side has its share of
    images. Deterministic for a given ``seed``.
    """
    if ds.official_split is not None and use_official:
        return {p: np.flatnonzero(ds.official_split == p) for p in ("train", "val", "test")}
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val and test are fractions with val + test < 1, got val={val}, test={test}")
    strata = _strata(ds)
    groups = np.asarray(ds.groups).astype(str)
    uniq, ginv = np.unique(groups, return_inverse=True)
    gsize = np.bincount(ginv)
    # a group's stratum: the rarest stratum among its images (least frequent overall)
    s_vals, s_inv = np.unique(strata, return_inverse=True)
    s_freq = np.bincount(s_inv)
    s_rank = np.argsort(np.argsort(s_freq, kind="stable"), kind="stable")
    g_rank = np.full(len(uniq), len(s_vals))
    np.minimum.at(g_rank, ginv, s_rank[s_inv])
    rng = np.random.default_rng(seed)
    side = np.empty(len(uniq), dtype="<U5")
    for r in range(len(s_vals)):
        gs = np.flatnonzero(g_rank == r)
        if not len(gs):
            continue
        gs = gs[rng.permutation(len(gs))]
        total = gsize[gs].sum()
        cum = np.cumsum(gsize[gs]) - gsize[gs] / 2.0            # image count at each group's middle
        side[gs] = np.where(cum < test * total, "test", np.where(cum < (test + val) * total, "val", "train"))
    img_side = side[ginv]
    return {p: np.flatnonzero(img_side == p) for p in ("train", "val", "test")}


def check_split(ds: ImageSet, parts: dict) -> None:
    """Raise AssertionError if an image is on two sides, or a group crosses sides."""
    seen = {}
    for p, idx in parts.items():
        for g in np.unique(np.asarray(ds.groups)[idx]):
            if g in seen and seen[g] != p:
                raise AssertionError(f"group {g!r} is in both {seen[g]} and {p}")
            seen[g] = p
    allidx = np.concatenate([np.asarray(v) for v in parts.values()])
    if len(np.unique(allidx)) != len(allidx):
        raise AssertionError("an image is in two parts of the split")


# ==================================================================================================
# torch adapters
def channel_stats(ds: ImageSet, indices=None) -> tuple:
    """Per-channel mean and std of ``ds.images[indices]`` in [0, 1] units: ((m,...), (s,...))."""
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices)
    c = ds.images.shape[-1]
    s1 = np.zeros(c)
    s2 = np.zeros(c)
    n = 0
    for start in range(0, len(idx), 1024):
        x = ds.images[idx[start:start + 1024]].reshape(-1, c).astype(np.float64) / 255.0
        s1 += x.sum(0)
        s2 += (x ** 2).sum(0)
        n += len(x)
    mean = s1 / max(n, 1)
    std = np.sqrt(np.clip(s2 / max(n, 1) - mean ** 2, 1e-12, None))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _norm_params(mean, std, c):
    import torch

    m = torch.zeros(c) if mean is None else torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    s = torch.ones(c) if std is None else torch.as_tensor(std, dtype=torch.float32).reshape(-1)
    if len(m) == 1 and c > 1:
        m, s = m.repeat(c), s.repeat(c)
    if len(m) != c or len(s) != c:
        raise ValueError(f"mean/std need {c} values (one per channel), got {len(m)} / {len(s)}")
    return m.view(c, 1, 1), s.view(c, 1, 1)


def images_to_tensor(images: np.ndarray, mean=None, std=None):
    """uint8 (N, H, W, C) -> float (N, C, H, W): [0, 1], then ``(x - mean) / std`` per channel if given."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    m, s = _norm_params(mean, std, x.shape[1])
    return (x - m) / s


def to_tensor(ds: ImageSet, indices=None, mean=None, std=None):
    """Images as a float tensor (N, C, H, W): [0, 1], then ``(x - mean) / std`` per channel if given."""
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices)
    return images_to_tensor(ds.images[idx], mean, std)


def _augment_one(x, mode: str):
    """Random flips / small rotations and crops on one (C, H, W) tensor, using torch's RNG."""
    import torch
    import torch.nn.functional as F

    if torch.rand(()) < 0.5:
        x = x.flip(-1)
    if mode == "skin":                       # dermoscopy has no up/down: any flip or right angle is fine
        if torch.rand(()) < 0.5:
            x = x.flip(-2)
        k = int(torch.randint(0, 4, ()))
        x = torch.rot90(x, k, dims=(-2, -1))
        max_deg, max_shift, scale = 15.0, 0.06, (0.9, 1.1)
    else:                                    # X-ray: the heart is on the left; only mild geometry
        max_deg, max_shift, scale = 5.0, 0.04, (0.95, 1.05)
    ang = (torch.rand(()) * 2 - 1) * max_deg * np.pi / 180
    sc = scale[0] + torch.rand(()) * (scale[1] - scale[0])
    tx, ty = ((torch.rand(2) * 2 - 1) * max_shift * 2).tolist()
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=x.dtype)[None]
    grid = F.affine_grid(theta, (1, *x.shape), align_corners=False)
    return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]


_AUGMENT_ALIASES = {"dermoscopy": "skin", "derm": "skin", "chest": "xray", "cxr": "xray", "x-ray": "xray"}


class TorchImageSet:
    """A map-style torch dataset (what ``DataLoader`` needs: ``__len__``, ``__getitem__``) over ``ds`` at ``indices``: items ``(x, y)`` with x float (C, H, W) normalised by
    mean/std (if given; else in [0, 1]) and y int64 (class) or float32 (K,) for multi-label.

    augment: False, True (skin-style for RGB, X-ray-style for grey), "skin" / "dermoscopy" (flips, right
    angles, +-15 deg, small shifts/zoom) or "xray" / "chest" (horizontal flip, +-5 deg, small shifts/zoom).
    """

    def __init__(self, ds: ImageSet, indices=None, augment=False, mean=None, std=None):
        import torch

        self.ds = ds
        self.indices = np.arange(len(ds)) if indices is None else np.asarray(indices)
        if augment is True:
            augment = "skin" if ds.channels == 3 else "xray"
        augment = _AUGMENT_ALIASES.get(augment, augment)
        if augment not in (False, None, "skin", "xray"):
            raise ValueError(f"augment must be False, True, 'skin' (alias 'dermoscopy') or 'xray' (alias 'chest', "
                             f"'cxr'), got {augment!r}")
        self.augment = augment or None
        self.mean, self.std = _norm_params(mean, std, ds.channels)
        lab = ds.labels[self.indices]
        self._labels = torch.as_tensor(lab, dtype=torch.float32 if ds.task == "multilabel" else torch.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        import torch

        img = self.ds.images[self.indices[i]]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
        if self.augment:
            x = _augment_one(x, self.augment)
        return (x - self.mean) / self.std, self._labels[i]


def make_loader(ds: ImageSet, indices=None, batch_size: int = 64, shuffle: bool = False, augment=False,
                mean=None, std=None, num_workers: int = 0, seed: int | None = None, drop_last: bool = False):
    """A ``torch.utils.data.DataLoader`` over :class:`TorchImageSet` (shuffling seeded by ``seed`` if given)."""
    import torch
    from torch.utils.data import DataLoader

    gen = None
    if seed is not None:
        gen = torch.Generator()
        gen.manual_seed(int(seed))
    return DataLoader(TorchImageSet(ds, indices, augment=augment, mean=mean, std=std), batch_size=batch_size,
                      shuffle=shuffle, num_workers=num_workers, generator=gen, drop_last=drop_last)
