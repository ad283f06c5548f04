"""``check``: what is present under the data root, complete and intact, per dataset. Read-only.

For each dataset: the files whose SHA-256 the manifest recorded (first good download) are re-hashed;
MedMNIST files are compared with the published MD5; everything else is opened and read in full
(images with PIL, ``.npz`` arrays with their shapes, CSV row counts) and the layout is checked.
A copy placed by hand with no manifest is reported as "unverified (no manifest)"; one with fewer
images than the official release as "partial: N of M images". Neither is an error. Only a file that
cannot be read, a wrong shape, a checksum that no longer matches the manifest, or a manifest that
exists but cannot be read (it is never taken for "no manifest") is "broken".

This module never writes anything.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import fetch
from . import manifest
from .registry import (DATASETS, MEDMNIST_CHANNELS, MEDMNIST_LABELS, MEDMNIST_MD5, MEDMNIST_SAMPLES,
                       MEDMNIST_SIZES, medmnist_file)

OK, PARTIAL, MISSING, BROKEN = "ok", "partial", "missing", "broken"
_DEEP = {"on": True}  # --quick turns off pixel decoding and re-hashing (layout, counts, headers only)


@dataclass
class Report:
    name: str
    status: str = MISSING
    images: int = 0
    expected_images: int | None = None
    annotations: list[str] = field(default_factory=list)
    verification: str = ""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def broken(self) -> bool:
        return self.status == BROKEN

    def summary(self) -> str:
        if self.status == MISSING:
            return f"{self.name:<15} not present   (python -m data_download get {self.name})"
        count = f"{self.images:,} images"
        if self.expected_images and self.images < self.expected_images:
            count = f"partial: {self.images:,} of {self.expected_images:,} images"
        lines = [f"{self.name:<15} {self.status.upper() if self.broken else self.status:<8} {count}"]
        if self.annotations:
            lines.append(f"{'':<15} annotations: {'; '.join(self.annotations)}")
        if self.verification:
            lines.append(f"{'':<15} integrity: {self.verification}")
        lines += [f"{'':<15} note: {n}" for n in self.notes]
        lines += [f"{'':<15} PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


def _read_image(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        if _DEEP["on"]:
            with Image.open(path) as im:  # verify() does not decode: load the pixels too
                im.load()
    except Exception as e:  # noqa: BLE001 - any failure to decode is the finding
        return f"{path.name}: unreadable image ({type(e).__name__}: {e})"
    return None


def _verify_images(paths: list[Path], rep: Report, progress: bool) -> None:
    from tqdm.auto import tqdm

    bad = []
    for p in tqdm(paths, desc=f"check {rep.name}", unit="img", disable=not progress, leave=False):
        err = _read_image(p)
        if err:
            bad.append(err)
    if bad:
        rep.problems += bad[:10] + ([f"... and {len(bad) - 10} more"] if len(bad) > 10 else [])


def _manifest_check(root: Path, rep: Report, folder: Path) -> tuple[int, int]:
    """Re-hash files the manifest records. Returns (verified, recorded); recorded -1: unreadable manifest."""
    if not _DEEP["on"]:
        return 0, 0
    try:
        entry = manifest.read_manifest(root).get(rep.name, {})
    except manifest.ManifestError as e:  # never read as "no manifest": that would hide a changed file
        rep.problems.append(f"cannot verify against {fetch.MANIFEST}: it is unreadable ({e.reason}); "
                            f"restore it from a backup, or move it aside to start a new one")
        return 0, -1
    files = entry.get("files", {})
    downloads = entry.get("downloads", {})
    recorded = dict(files)
    for key, entry in downloads.items():  # plain files downloaded straight into the folder
        if (folder / key).is_file() and key not in recorded:
            recorded[key] = entry.get("sha256")
    good = 0
    for rel, sha in recorded.items():
        p = folder / rel
        if not p.is_file():
            rep.problems.append(f"{rel}: recorded in the manifest but missing")
        elif sha and fetch.file_hash(p) != sha:
            rep.problems.append(f"{rel}: SHA-256 differs from the manifest (changed or corrupt)")
        else:
            good += 1
    return good, len(recorded)


def _verification_text(good: int, recorded: int, total_files: int) -> str:
    if not _DEEP["on"]:
        return "quick check: layout, counts and image headers only (run without --quick to verify)"
    if recorded < 0:
        return f"NOT verified: {fetch.MANIFEST} is unreadable"
    if recorded == 0:
        return "unverified (no manifest): every file reads and the layout is whole"
    if recorded >= total_files:
        return f"{good:,} of {recorded:,} files match the manifest's SHA-256"
    return (f"{good:,} of {recorded:,} recorded files match the manifest; "
            f"{total_files - recorded:,} not in the manifest (read-checked only)")


def _finish(rep: Report) -> Report:
    if rep.problems:
        rep.status = BROKEN
    elif rep.expected_images and rep.images < rep.expected_images:
        rep.status = PARTIAL
    else:
        rep.status = OK
    return rep


# --------------------------------------------------------------------------------------------------
def check_ham10000(root: Path, progress: bool = True) -> Report:
    rep = Report("ham10000", expected_images=DATASETS["ham10000"].counts["images"])
    folder = root / "ham10000"
    meta = folder / "HAM10000_metadata.csv"
    # images/ (this layout), the Dataverse part folders, or the ISIC 2018 folder: the loader reads all
    seen = {}
    for sub in ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", "ISIC2018_Task3_Training_Input"):
        if (folder / sub).is_dir():
            for p in (folder / sub).glob("ISIC_*.jpg"):
                seen.setdefault(p.name, p)
    imgs = sorted(seen.values())
    if not folder.is_dir() or (not meta.exists() and not imgs):
        return rep
    ids = set()
    if meta.is_file():
        try:
            with open(meta, newline="") as f:
                reader = csv.DictReader(f)
                need = {"lesion_id", "image_id", "dx"}
                if not need <= set(reader.fieldnames or []):
                    rep.problems.append(f"{meta.name}: columns {reader.fieldnames}, needs {sorted(need)}")
                rows = list(reader)
            ids = {r["image_id"] for r in rows if r.get("image_id")}
            rep.annotations.append(f"metadata {len(rows):,} rows with lesion_id "
                                   f"({len({r.get('lesion_id') for r in rows}):,} lesions)")
            if len(rows) != rep.expected_images:
                rep.notes.append(f"metadata has {len(rows):,} rows, the release has {rep.expected_images:,}")
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            rep.problems.append(f"{meta.name}: unreadable ({e})")
    else:
        rep.problems.append("HAM10000_metadata.csv missing (labels and lesion_id come from it)")
    rep.images = len(imgs)
    if ids:
        stray = [p.name for p in imgs if p.stem not in ids]
        if stray:
            rep.problems.append(f"{len(stray)} images not in the metadata, e.g. {stray[:3]}")
    masks = sorted((folder / "masks").glob("ISIC_*_segmentation.png")) if (folder / "masks").is_dir() else []
    rep.annotations.append(f"lesion masks: {len(masks):,}" if masks else "lesion masks: none (optional: get ham10000 --with masks)")
    _verify_images(imgs + masks, rep, progress)
    good, recorded = _manifest_check(root, rep, folder)
    rep.verification = _verification_text(good, recorded, len(imgs) + len(masks) + 1)
    return _finish(rep)


_IMD = re.compile(r"\bIMD\d{3}\b")


def check_ph2(root: Path, progress: bool = True) -> Report:
    rep = Report("ph2", expected_images=DATASETS["ph2"].counts["images"])
    base = root / "ph2" / "PH2Dataset"
    if not base.is_dir():
        return rep
    txt = base / "PH2_dataset.txt"
    listed = set()
    if txt.is_file():
        try:
            listed = set(_IMD.findall(txt.read_text(errors="replace")))
            rep.annotations.append(f"PH2_dataset.txt: diagnoses for {len(listed)} images")
        except OSError as e:
            rep.problems.append(f"PH2_dataset.txt unreadable ({e})")
    else:
        rep.problems.append("PH2Dataset/PH2_dataset.txt missing (the diagnoses)")
    imgdir = base / "PH2 Dataset images"
    cases = sorted(p for p in imgdir.iterdir() if p.is_dir()) if imgdir.is_dir() else []
    files, n_img, n_mask, n_roi = [], 0, 0, 0
    for case in cases:
        name = case.name
        derm = [p for ext in ("bmp", "png") for p in (case / f"{name}_Dermoscopic_Image").glob(f"{name}.{ext}")]
        lesion = [p for ext in ("bmp", "png") for p in (case / f"{name}_lesion").glob(f"{name}_lesion.{ext}")]
        roi = sorted((case / f"{name}_roi").glob(f"{name}_R*")) if (case / f"{name}_roi").is_dir() else []
        if not derm:
            rep.problems.append(f"{name}: dermoscopic image missing")
        if not lesion:
            rep.problems.append(f"{name}: lesion mask missing")
        if listed and name not in listed:
            rep.problems.append(f"{name}: not listed in PH2_dataset.txt")
        n_img += bool(derm)
        n_mask += bool(lesion)
        n_roi += len(roi)
        files += derm + lesion + roi
    rep.images = n_img
    rep.annotations.append(f"lesion masks {n_mask}, colour-class region masks {n_roi}")
    _verify_images(files, rep, progress)
    good, recorded = _manifest_check(root, rep, root / "ph2")
    rep.verification = _verification_text(good, recorded, len(files) + 1)
    return _finish(rep)


def check_nih(root: Path, progress: bool = True) -> Report:
    rep = Report("nih_cxr_bbox", expected_images=DATASETS["nih_cxr_bbox"].counts["images"])
    folder = root / "nih_cxr_bbox"
    if not folder.is_dir():
        return rep
    bbox, entry = folder / "BBox_List_2017.csv", folder / "Data_Entry_2017_v2020.csv"
    if not entry.is_file() and (folder / "Data_Entry_2017.csv").is_file():
        entry = folder / "Data_Entry_2017.csv"  # the 2017 release name: same columns
    boxed, labelled = {}, None
    if bbox.is_file():
        try:
            with open(bbox, newline="") as f:
                rows = [r for r in list(csv.reader(f))[1:] if r and r[0].strip()]
            for r in rows:
                float(r[2]), float(r[3]), float(r[4]), float(r[5])  # noqa: B018 - parse check
                boxed.setdefault(r[0].strip(), 0)
                boxed[r[0].strip()] += 1
            rep.annotations.append(f"BBox_List_2017.csv {len(rows):,} boxes on {len(boxed):,} images")
        except (OSError, csv.Error, ValueError, IndexError) as e:
            rep.problems.append(f"{bbox.name}: unreadable ({e})")
    else:
        rep.problems.append("BBox_List_2017.csv missing (the expert boxes)")
    if entry.is_file():
        try:
            with open(entry, newline="") as f:
                reader = csv.reader(f)
                header = next(reader)
                if "Finding Labels" not in header or "Patient ID" not in header:
                    rep.problems.append(f"{entry.name}: unexpected header {header[:4]}")
                labelled = {r[0] for r in reader if r}
            rep.annotations.append(f"Data_Entry_2017_v2020.csv labels for {len(labelled):,} images")
        except (OSError, csv.Error, StopIteration) as e:
            rep.problems.append(f"{entry.name}: unreadable ({e})")
    else:
        rep.problems.append("Data_Entry_2017_v2020.csv missing (labels, Patient ID)")
    imgs = sorted((folder / "images").glob("*.png")) if (folder / "images").is_dir() else []
    names = {p.name for p in imgs}
    with_box = names & set(boxed)
    rep.images = len(with_box) if boxed else len(imgs)
    if boxed:
        rep.annotations.append(f"{sum(boxed[n] for n in with_box):,} boxes on the images present")
    extra = len(names - set(boxed)) if boxed else 0
    if extra:
        rep.notes.append(f"{extra:,} extra unboxed images")
    if labelled is not None:
        unknown = sorted(names - labelled)
        if unknown:
            rep.problems.append(f"{len(unknown)} images not in Data_Entry_2017_v2020.csv, e.g. {unknown[:3]}")
    _verify_images(imgs, rep, progress)
    good, recorded = _manifest_check(root, rep, folder)
    rep.verification = _verification_text(good, recorded, len(imgs) + 2)
    return _finish(rep)


def check_medmnist(flag: str, root: Path, progress: bool = True) -> Report:
    import numpy as np

    rep = Report(flag)
    folder = root / flag
    present = [(s, folder / medmnist_file(flag, s)) for s in MEDMNIST_SIZES
               if (folder / medmnist_file(flag, s)).is_file()]
    if not present:
        return rep
    verif = []
    sizes_ok = []
    for s, path in present:
        try:
            with np.load(path, allow_pickle=False) as z:
                for split, n in MEDMNIST_SAMPLES[flag].items():
                    x, y = z[f"{split}_images"], z[f"{split}_labels"]  # reading checks every zip CRC
                    want = (n, s, s) + ((3,) if MEDMNIST_CHANNELS[flag] == 3 else ())
                    if x.shape != want or x.dtype != np.uint8:
                        rep.problems.append(f"{path.name}: {split}_images {x.shape} {x.dtype}, expected {want} uint8")
                    if y.shape != (n, MEDMNIST_LABELS[flag]):
                        rep.problems.append(f"{path.name}: {split}_labels {y.shape}, expected {(n, MEDMNIST_LABELS[flag])}")
        except Exception as e:  # noqa: BLE001 - unreadable is the finding
            rep.problems.append(f"{path.name}: unreadable ({type(e).__name__}: {e})")
            continue
        sizes_ok.append(s)
        if not _DEEP["on"]:
            verif.append(f"{path.name}: arrays read, official shapes (MD5 not computed: --quick)")
        elif fetch.file_hash(path, "md5") == MEDMNIST_MD5[flag][s]:
            verif.append(f"{path.name}: MD5 matches the published one")
        else:
            verif.append(f"{path.name}: unverified (MD5 differs from the published file, e.g. a re-packed "
                         f"copy; arrays read and have the official shapes)")
    n = MEDMNIST_SAMPLES[flag]
    rep.images = sum(n.values()) if sizes_ok else 0
    rep.annotations.append(f"labels for every image; official split train/val/test "
                           f"{n['train']:,}/{n['val']:,}/{n['test']:,}")
    rep.notes.append("sizes present: " + ", ".join(f"{s}x{s}" for s, _ in present))
    rep.verification = "; ".join(verif)
    return _finish(rep)


CHECKERS = {
    "ham10000": check_ham10000,
    "ph2": check_ph2,
    "nih_cxr_bbox": check_nih,
    "dermamnist": lambda root, progress=True: check_medmnist("dermamnist", root, progress),
    "pneumoniamnist": lambda root, progress=True: check_medmnist("pneumoniamnist", root, progress),
    "chestmnist": lambda root, progress=True: check_medmnist("chestmnist", root, progress),
}


def check(root: Path, names: list[str] | None = None, progress: bool = True,
          quick: bool = False) -> list[Report]:
    """Reports for ``names`` (default: every dataset). ``quick``: no decoding, no hashing."""
    _DEEP["on"] = not quick
    try:
        return [CHECKERS[n](Path(root), progress) for n in (names or list(CHECKERS))]
    finally:
        _DEEP["on"] = True
