"""The one registry: every dataset the workbook uses, where it comes from, how it is checked, and the
layout it produces under the data root (the layout ``xai_helpers.data`` reads).

Checksums: MedMNIST's MD5s are copied from the ``INFO`` dict of the ``medmnist`` package
(``medmnist/info.py``, v3.0.2, Zenodo record 10519652). HAM10000's Dataverse files carry MD5s in the
Dataverse API, read at download time. The ISIC, PH2 and NIH files have no published checksum: their
size and archive integrity are verified and the SHA-256 of the first good download is recorded in
``<root>/manifest.json`` so that a later change is detected.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

ZENODO = "https://zenodo.org/records/10519652/files/{name}?download=1"
ISIC = "https://isic-challenge-data.s3.amazonaws.com/2018/{name}"
DATAVERSE = "https://dataverse.harvard.edu"
HAM_DOI = "doi:10.7910/DVN/DBW86T"
NIH_BOX = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
PH2_PAGE = "https://www.fc.up.pt/addi/ph2%20database.html"

MB = 1000 ** 2
GB = 1000 ** 3


@dataclass(frozen=True)
class Remote:
    """One published file."""

    name: str                       # the file's published name
    url: str                        # official URL ("dataverse:<file name>" = resolved via the API)
    kind: str = "file"              # "file" (kept as is), "zip", "tar" (streamed), "rar"
    target: str | None = None       # for kind="file": path inside the dataset folder
    size: int | None = None         # exact bytes when published
    approx_size: int | None = None  # for listings and the disk-space check
    md5: str | None = None          # published MD5
    group: str = "main"             # e.g. MedMNIST size "28"/"64", "masks", "extra"
    optional: bool = False          # fetched only when its group is asked for
    select: Callable[[str], str | None] | None = None  # archive member -> layout path (or skip)


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    licence: str
    citation: str
    homepage: str
    layout: str                     # the folder layout produced, one line per item
    remotes: tuple[Remote, ...]
    manual: str                     # what to fetch by hand and where to put it
    approx_size: int                # default download, bytes
    counts: dict = field(default_factory=dict)  # official image / annotation counts
    needs: str = ""                 # runtime requirement (e.g. a RAR tool)
    kind: str = ""                  # "skin" or "chest": the modality (and the synthetic stand-in's kind)
    summary: str = ""               # one line for the learner: what it is, who made it (short citation)

    @property
    def folder(self) -> str:
        """The folder under the data root that holds this dataset (every layout line starts with it)."""
        return self.name

    def remotes_for(self, groups: set[str] | None) -> list[Remote]:
        out = []
        for r in self.remotes:
            if groups is None:
                if not r.optional:
                    out.append(r)
            elif r.group in groups:
                out.append(r)
        return out


# --------------------------------------------------------------------------------------------------
# MedMNIST v3 (MedMNIST+): 28, 64, 128, 224 pixels
# --------------------------------------------------------------------------------------------------
MEDMNIST_MD5 = {  # copied from medmnist/info.py INFO[flag]["MD5"], ["MD5_64"], ["MD5_128"], ["MD5_224"]
    "pneumoniamnist": {28: "28209eda62fecd6e6a2d98b1501bb15f", 64: "8f4eceb4ccffa70c672198ea285246c6",
                       128: "05b46931834c231683c68f40c47b2971", 224: "d6a3c71de1b945ea11211b03746c1fe1"},
    "dermamnist": {28: "0744692d530f8e62ec473284d019b0c7", 64: "b70a2f5635c6199aeaa28c31d7202e1f",
                   128: "2defd784463fa5243564e855ed717de1", 224: "8974907d8e169bef5f5b96bc506ae45d"},
    "chestmnist": {28: "02c8a6516a18b556561a56cbdd36c4a8", 64: "9de6cd0b934ebb5b7426cfba5efbae16",
                   128: "db107e5590b27930b62dbaf558aebee3", 224: "45bd33e6f06c3e8cdb481c74a89152aa"},
}
MEDMNIST_SAMPLES = {  # INFO[flag]["n_samples"]
    "pneumoniamnist": {"train": 4708, "val": 524, "test": 624},
    "dermamnist": {"train": 7007, "val": 1003, "test": 2005},
    "chestmnist": {"train": 78468, "val": 11219, "test": 22433},
}
MEDMNIST_CHANNELS = {"pneumoniamnist": 1, "dermamnist": 3, "chestmnist": 1}
MEDMNIST_LABELS = {"pneumoniamnist": 1, "dermamnist": 1, "chestmnist": 14}
MEDMNIST_SIZES = (28, 64, 128, 224)


def medmnist_file(flag: str, size: int) -> str:
    """MedMNIST+'s file naming: ``flag.npz`` at 28 px, ``flag_SIZE.npz`` at 64, 128 and 224 px."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _medmnist_approx(flag: str, size: int) -> int:
    n = sum(MEDMNIST_SAMPLES[flag].values())
    return int(n * size * size * MEDMNIST_CHANNELS[flag] * 1.02) + 10_000


def _medmnist(flag: str, title: str, licence: str, based_on: str, kind: str, summary: str) -> Dataset:
    remotes = tuple(
        Remote(name=medmnist_file(flag, s), url=ZENODO.format(name=medmnist_file(flag, s)),
               target=medmnist_file(flag, s), md5=MEDMNIST_MD5[flag][s],
               approx_size=_medmnist_approx(flag, s), group=str(s), optional=s != 28)
        for s in MEDMNIST_SIZES)
    n = MEDMNIST_SAMPLES[flag]
    return Dataset(
        name=flag, title=title, licence=licence,
        citation=("Yang J. et al., MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D "
                  "biomedical image classification, Scientific Data 10, 41 (2023); and the source: "
                  + based_on),
        homepage="https://medmnist.com/ (files: https://zenodo.org/records/10519652)",
        layout="\n".join(f"{flag}/{medmnist_file(flag, s)}   ({s}x{s}; keys train_images, train_labels, "
                         f"val_*, test_*)" for s in MEDMNIST_SIZES),
        remotes=remotes,
        manual=(f"Download {flag}.npz (28 px) and/or {flag}_64.npz, {flag}_128.npz, {flag}_224.npz from "
                f"https://zenodo.org/records/10519652 and put them in <data root>/{flag}/."),
        approx_size=_medmnist_approx(flag, 28),
        counts={"images": sum(n.values()), **n},
        kind=kind, summary=summary,
    )


# --------------------------------------------------------------------------------------------------
# HAM10000 (ISIC 2018 Task 3 + Harvard Dataverse)
# --------------------------------------------------------------------------------------------------
_ISIC_JPG = re.compile(r"(?:^|/)(ISIC_\d{7})\.jpg$", re.I)
_HAM_MASK = re.compile(r"(?:^|/)(ISIC_\d{7}_segmentation)\.png$", re.I)


def _ham_images(name: str) -> str | None:
    m = _ISIC_JPG.search(name)
    return f"images/{m.group(1)}.jpg" if m else None


def _ham_groundtruth(name: str) -> str | None:
    base = name.rsplit("/", 1)[-1]
    return base if base.lower().endswith(".csv") else None


def _ham_masks(name: str) -> str | None:
    m = _HAM_MASK.search(name)
    return f"masks/{m.group(1)}.png" if m else None


HAM10000 = Dataset(
    name="ham10000",
    title="HAM10000 dermoscopy (ISIC 2018 Task 3 training set), 10,015 images, 7 diagnoses",
    licence="CC BY-NC 4.0",
    citation=("Tschandl P., Rosendahl C., Kittler H., The HAM10000 dataset, a large collection of "
              "multi-source dermatoscopic images of common pigmented skin lesions, Sci Data 5, 180161 "
              "(2018); Codella N. et al., Skin Lesion Analysis Toward Melanoma Detection 2018, "
              "arXiv:1902.03368."),
    homepage=f"https://challenge.isic-archive.com/data/#2018 and {DATAVERSE}/dataset.xhtml?persistentId={HAM_DOI}",
    layout=("ham10000/HAM10000_metadata.csv      (lesion_id,image_id,dx,dx_type,age,sex,localization)\n"
            "ham10000/images/ISIC_*.jpg          (600x450)\n"
            "ham10000/ISIC2018_Task3_Training_GroundTruth.csv\n"
            "ham10000/masks/ISIC_*_segmentation.png   (optional: --with masks)"),
    remotes=(
        Remote(name="ISIC2018_Task3_Training_Input.zip", url=ISIC.format(name="ISIC2018_Task3_Training_Input.zip"),
               kind="zip", approx_size=2_770 * MB, select=_ham_images),
        Remote(name="ISIC2018_Task3_Training_GroundTruth.zip",
               url=ISIC.format(name="ISIC2018_Task3_Training_GroundTruth.zip"), kind="zip",
               approx_size=1 * MB, select=_ham_groundtruth),
        Remote(name="HAM10000_metadata", url="dataverse:HAM10000_metadata", target="HAM10000_metadata.csv",
               approx_size=1 * MB),
        Remote(name="HAM10000_segmentations_lesion_tschandl.zip",
               url="dataverse:HAM10000_segmentations_lesion_tschandl.zip", kind="zip", approx_size=30 * MB,
               group="masks", optional=True, select=_ham_masks),
    ),
    manual=("1) https://challenge.isic-archive.com/data/#2018 -> Task 3 Training Data: "
            "ISIC2018_Task3_Training_Input.zip and ISIC2018_Task3_Training_GroundTruth.zip; "
            f"2) {DATAVERSE}/dataset.xhtml?persistentId={HAM_DOI}: HAM10000_metadata (save as CSV) and, "
            "optionally, HAM10000_segmentations_lesion_tschandl.zip. Put the files in one folder and run "
            "`python -m data_download get ham10000 --from FOLDER`, or lay them out by hand as "
            "<data root>/ham10000/HAM10000_metadata.csv and <data root>/ham10000/images/ISIC_*.jpg."),
    approx_size=2_800 * MB,
    counts={"images": 10015, "metadata_rows": 10015, "masks": 10015},
    kind="skin",
    summary="HAM10000 dermoscopy (Tschandl et al., Sci Data 2018; ISIC 2018 Task 3 training set)",
)

# --------------------------------------------------------------------------------------------------
# PH2
# --------------------------------------------------------------------------------------------------


def _ph2_select(name: str) -> str | None:
    """Keep the official layout, rooted at PH2Dataset/ whatever folder the archive used."""
    i = name.find("PH2Dataset/")
    if i >= 0:
        return name[i:]
    if name.endswith("PH2_dataset.txt") or name.endswith("PH2_dataset.xlsx"):
        return "PH2Dataset/" + name.rsplit("/", 1)[-1]
    if "PH2 Dataset images/" in name:
        return "PH2Dataset/" + name[name.find("PH2 Dataset images/"):]
    return None


PH2 = Dataset(
    name="ph2",
    title="PH2 dermoscopy, 200 images with expert lesion masks (80 common nevi, 80 atypical, 40 melanoma)",
    licence="free for research and teaching (see the publisher's page); cite the paper",
    citation=("Mendonça T., Ferreira P. M., Marques J. S., Marçal A. R. S., Rozeira J., PH2 - A "
              "dermoscopic image database for research and benchmarking, IEEE EMBC 2013, 5437-5440."),
    homepage=PH2_PAGE,
    layout=("ph2/PH2Dataset/PH2_dataset.txt\n"
            "ph2/PH2Dataset/PH2 Dataset images/IMDnnn/IMDnnn_Dermoscopic_Image/IMDnnn.bmp\n"
            "ph2/PH2Dataset/PH2 Dataset images/IMDnnn/IMDnnn_lesion/IMDnnn_lesion.bmp\n"
            "ph2/PH2Dataset/PH2 Dataset images/IMDnnn/IMDnnn_roi/IMDnnn_Rk_Labelc.bmp"),
    remotes=(
        Remote(name="PH2Dataset.rar", url="https://www.dropbox.com/s/k88qukc20ljnbuo/PH2Dataset.rar?dl=1",
               kind="rar", approx_size=130 * MB, select=_ph2_select),
    ),
    manual=(f"Download PH2Dataset.rar via {PH2_PAGE} (the page links to the archive), then run "
            "`python -m data_download get ph2 --from PATH/TO/PH2Dataset.rar` (or --from the folder you "
            "extracted it to)."),
    approx_size=130 * MB,
    counts={"images": 200, "lesion_masks": 200},
    needs="a RAR tool for rarfile (bsdtar from libarchive-tools, unrar or 7z), unless --from a folder",
    kind="skin",
    summary="PH2 dermoscopy with expert lesion masks (Mendonça et al., EMBC 2013)",
)

# --------------------------------------------------------------------------------------------------
# NIH ChestX-ray14, boxed images only
# --------------------------------------------------------------------------------------------------
# The 12 archives, as linked by the NIH's own batch_download_zips.py in the Box folder.
NIH_ARCHIVES = (
    "vfk49d74nhbxq3nqjg0900w5nvkorp5c", "i28rlmbvmfjbl8p2n3ril0pptcmcu9d1",
    "f1t00wrtdk94satdfb9olcolqx20z2jp", "0aowwzs5lhjrceb3qp67ahp0rd1l1etg",
    "v5e3goj22zr6h8tzualxfsqlqaygfbsn", "asi7ikud9jwnkrnkj99jnpfkjdes7l6l",
    "jn1b4mw4n6lnh74ovmcjb8y48h8xj07n", "tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j",
    "upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj", "l6nilvfa9cg3s28tqv1qc1olm3gnz54p",
    "hhq8fkdgvcari67vfhs7ppg2w6ni4jze", "ioqwiy20ihqwyr8pf4c24eazhh281pbu",
)

NIH_CXR_BBOX = Dataset(
    name="nih_cxr_bbox",
    title="NIH ChestX-ray14: the 880 images with expert boxes (984 boxes, 8 findings) + the label CSV",
    licence="CC0 (public domain); acknowledge the NIH Clinical Center",
    citation=("Wang X. et al., ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on "
              "Weakly-Supervised Classification and Localization of Common Thorax Diseases, CVPR 2017."),
    homepage=NIH_BOX,
    layout=("nih_cxr_bbox/BBox_List_2017.csv\n"
            "nih_cxr_bbox/Data_Entry_2017_v2020.csv\n"
            "nih_cxr_bbox/images/NNNNNNNN_NNN.png   (1024x1024 grey; boxed images, plus --extra N)"),
    remotes=tuple(
        Remote(name=f"images_{i + 1:03d}.tar.gz", url=f"https://nihcc.box.com/shared/static/{key}.gz",
               kind="tar", approx_size=3_600 * MB)
        for i, key in enumerate(NIH_ARCHIVES)),
    manual=(f"From {NIH_BOX} download BBox_List_2017.csv and Data_Entry_2017_v2020.csv into "
            "<data root>/nih_cxr_bbox/ (the Box page needs a browser click; `get nih_cxr_bbox --from "
            "FOLDER` imports them from a folder). The images then stream from the 12 images_NNN.tar.gz "
            "archives, keeping only boxed ones; or, with the archives already downloaded, run "
            "`get nih_cxr_bbox --from FOLDER_WITH_ARCHIVES`."),
    approx_size=42 * GB,  # streamed over the network; only ~0.9 GB (the boxed PNGs) is kept on disk
    counts={"images": 880, "boxes": 984, "label_rows": 112120},
    needs="streams ~42 GB over the network but keeps only ~0.9 GB on disk; the two CSVs by hand first",
    kind="chest",
    summary="NIH ChestX-ray14, the images with expert boxes (Wang et al., CVPR 2017)",
)
NIH_CSVS = ("BBox_List_2017.csv", "Data_Entry_2017_v2020.csv")

DATASETS: dict[str, Dataset] = {d.name: d for d in (
    HAM10000, PH2, NIH_CXR_BBOX,
    _medmnist("dermamnist", "DermaMNIST (HAM10000 resized), 10,015 images, 7 classes", "CC BY-NC 4.0",
              "Tschandl et al., Sci Data 2018 (HAM10000).", "skin",
              "DermaMNIST (MedMNIST v2, Yang et al., Sci Data 2023; HAM10000 resized)"),
    _medmnist("pneumoniamnist", "PneumoniaMNIST, 5,856 paediatric chest X-rays, pneumonia vs normal",
              "CC BY 4.0", "Kermany D. S. et al., Cell 172(5), 2018.", "chest",
              "PneumoniaMNIST (MedMNIST v2, Yang et al., Sci Data 2023; from Kermany et al. 2018)"),
    # ChestMNIST: CC BY 4.0, the licence MedMNIST gives the file we download (medmnist/info.py v3.0.2,
    # INFO["chestmnist"]["license"]), although its source, NIH ChestX-ray14, is CC0 (see NIH_CXR_BBOX).
    _medmnist("chestmnist", "ChestMNIST (NIH ChestX-ray14 resized), 112,120 images, 14 labels",
              "CC BY 4.0", "Wang X. et al., CVPR 2017 (ChestX-ray14).", "chest",
              "ChestMNIST (MedMNIST v2, Yang et al., Sci Data 2023; NIH ChestX-ray14 resized)"),
)}

# What a learner needs first: small, checksummed, no tools needed.
STARTER = (("pneumoniamnist", ("28", "64")), ("dermamnist", ("28", "64")))


def get(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"Unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
