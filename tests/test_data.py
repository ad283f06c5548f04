"""Loaders, cache, splits and tensors: on the real data (marked realdata) and on tiny fakes."""
from __future__ import annotations

import os

import numpy as np
import pytest

from xai_helpers import config, data

HAM_COUNTS = {"nv": 4323, "bkl": 583, "mel": 491, "bcc": 264, "akiec": 183, "vasc": 80, "df": 60}


# --------------------------------------------------------------------------------------------------
# real data
@pytest.fixture(scope="module")
def ham(real_dataset):
    return data.load("ham10000", size=32, task="7class", root=real_dataset("ham10000"))


@pytest.fixture(scope="module")
def nih(real_dataset):
    return data.load("nih_cxr_bbox", size=64, root=real_dataset("nih_cxr_bbox"))


@pytest.mark.realdata
def test_ham10000_counts_and_groups(ham):
    assert len(ham) == 5984 and ham.images.shape == (5984, 32, 32, 3) and ham.images.dtype == np.uint8
    assert ham.class_names == data.HAM_7CLASS and ham.task == "multiclass"
    assert ham.class_counts() == {k: HAM_COUNTS[k] for k in data.HAM_7CLASS}
    assert "PARTIAL" in ham.description and "5,984 of the 10,015" in ham.description
    # groups are the metadata's lesion ids (this copy happens to hold one image per lesion; the full
    # release has up to 6, which is why the split is grouped)
    assert np.array_equal(ham.groups, ham.extra["meta"]["lesion_id"].to_numpy(str))
    assert all(g.startswith("HAM_") for g in ham.groups)


@pytest.mark.realdata
def test_ham10000_binary_is_melanoma_vs_rest(real_dataset, ham):
    b = data.load("ham10000", size=32, task="binary", root=real_dataset("ham10000"))
    assert b.task == "binary" and len(b.class_names) == 2 and b.labels.dtype == np.int64
    assert int(b.labels.sum()) == HAM_COUNTS["mel"]
    assert np.array_equal(b.labels == 1, ham.labels == data.HAM_7CLASS.index("mel"))
    assert np.array_equal(b.images, ham.images)           # same cached arrays, only the labels differ


@pytest.mark.realdata
def test_ham10000_grouped_split_keeps_lesions_on_one_side(ham):
    parts = data.split(ham, val=0.15, test=0.15, seed=0)
    data.check_split(ham, parts)
    sides = [set(ham.groups[parts[p]]) for p in ("train", "val", "test")]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert sum(len(v) for v in parts.values()) == len(ham)
    for p, frac in (("val", 0.15), ("test", 0.15)):
        assert abs(len(parts[p]) / len(ham) - frac) < 0.02
        for k in range(7):                                 # stratified: every class near its share
            share = (ham.labels[parts[p]] == k).mean()
            assert abs(share - (ham.labels == k).mean()) < 0.03
    again = data.split(ham, seed=0)
    other = data.split(ham, seed=1)
    assert all(np.array_equal(parts[p], again[p]) for p in parts)
    assert not np.array_equal(parts["test"], other["test"])


@pytest.mark.realdata
def test_ph2_150_images_with_masks(real_dataset):
    ds = data.load("ph2", size=48, root=real_dataset("ph2"))
    assert len(ds) == 150 and ds.masks.shape == (150, 48, 48) and ds.masks.dtype == bool
    assert ds.masks.any(axis=(1, 2)).all() and not ds.masks.all(axis=(1, 2)).any()
    assert ds.class_counts() == {"common nevus": 60, "atypical nevus": 60, "melanoma": 30}
    assert "PARTIAL" in ds.description
    b = data.load("ph2", size=48, task="binary", root=real_dataset("ph2"))
    assert b.labels.sum() == 30 and len(b.class_names) == 2


@pytest.mark.realdata
def test_nih_650_images_boxes_inside_after_scaling(nih, real_dataset):
    assert len(nih) == 650 and nih.images.shape == (650, 64, 64, 1) and nih.task == "multilabel"
    assert nih.labels.shape == (650, 14) and nih.labels.dtype == np.float32 and nih.class_names == data.CXR14
    assert all(len(b) > 0 for b in nih.boxes)
    for s, ds in ((64, nih), (256, data.load("nih_cxr_bbox", size=256, root=real_dataset("nih_cxr_bbox")))):
        for boxes in ds.boxes:
            for b in boxes:
                assert b["label"] in data.CXR14                  # "Infiltrate" mapped to "Infiltration"
                assert 0 <= b["x"] and 0 <= b["y"] and b["w"] > 0 and b["h"] > 0
                assert b["x"] + b["w"] <= s + 1e-6 and b["y"] + b["h"] <= s + 1e-6
    assert any(b["label"] == "Infiltration" for bs in nih.boxes for b in bs)
    i = 0
    m = nih.box_mask(i)
    b = nih.boxes[i][0]
    assert m.shape == (64, 64) and m[int(b["y"] + b["h"] / 2), int(b["x"] + b["w"] / 2)]
    assert not nih.box_mask(i, label="no such finding").any()


@pytest.mark.realdata
def test_nih_grouped_split_keeps_patients_on_one_side(nih):
    assert len(np.unique(nih.groups)) < len(nih)               # some patients have several images
    parts = data.split(nih, seed=0)
    data.check_split(nih, parts)
    assert set(nih.groups[parts["train"]]).isdisjoint(nih.groups[parts["test"]])
    assert set(nih.groups[parts["val"]]).isdisjoint(nih.groups[parts["test"]])


@pytest.mark.realdata
def test_pneumoniamnist_official_split(real_dataset):
    ds = data.load("pneumoniamnist", size=28, root=real_dataset("pneumoniamnist"))
    parts = data.split(ds)
    assert [len(parts[p]) for p in ("train", "val", "test")] == [4708, 524, 624]
    assert ds.images.shape == (5856, 28, 28, 1) and ds.task == "binary" and ds.class_names[1] == "pneumonia"
    big = data.load("pneumoniamnist", size=64, root=real_dataset("pneumoniamnist"))
    assert big.images.shape == (5856, 64, 64, 1) and np.array_equal(big.labels, ds.labels)
    assert "no patient ids" in ds.description


@pytest.mark.realdata
def test_cache_round_trip_identical_and_outside_the_data_root(real_dataset):
    root = real_dataset("ph2")
    first = data.load("ph2", size=40, root=root)
    cached = sorted(config.cache_dir(root).glob("ph2_40px_*.npz"))
    assert len(cached) == 1 and str(cached[0]).startswith(os.environ["XAI_CACHE_DIR"])
    assert not str(cached[0]).startswith(str(root))
    second = data.load("ph2", size=40, root=root)
    fresh = data.load("ph2", size=40, root=root, cache=False)
    for other in (second, fresh):
        assert np.array_equal(first.images, other.images) and np.array_equal(first.masks, other.masks)
        assert np.array_equal(first.labels, other.labels) and np.array_equal(first.ids, other.ids)


# --------------------------------------------------------------------------------------------------
# tiny fake layouts (no real data needed)
def _fake_ham(root, n_lesions=6, corrupt=None):
    from PIL import Image

    d = root / "ham10000"
    (d / "images").mkdir(parents=True)
    rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    dxs = data.HAM_7CLASS
    rng = np.random.default_rng(0)
    k = 0
    for les in range(n_lesions):
        for _ in range(1 + les % 2):
            iid = f"ISIC_{k:07d}"
            rows.append(f"HAM_{les:07d},{iid},{dxs[les % 7]},histo,50,male,back")
            Image.fromarray(rng.integers(0, 255, (45, 60, 3), dtype=np.uint8)).save(d / "images" / f"{iid}.jpg")
            k += 1
    rows.append("HAM_9999999,ISIC_9999999,nv,histo,50,male,back")     # listed but not present
    (d / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    if corrupt is not None:
        (d / "images" / f"ISIC_{corrupt:07d}.jpg").write_bytes(b"this is not a jpeg")
    return root


def test_fake_ham_loads_resizes_and_notes_partial(tmp_path):
    root = _fake_ham(tmp_path)
    ds = data.load("ham10000", size=16, root=root)
    assert ds.images.shape == (9, 16, 16, 3) and ds.source == "real"
    assert "PARTIAL: 9 of the 10" in ds.description
    assert ds.labels.tolist() == [int(d == "mel") for d in ds.extra["dx"]]
    assert len(np.unique(ds.groups)) == 6


def test_unreadable_image_names_the_file_and_writes_no_cache(tmp_path, monkeypatch):
    root = _fake_ham(tmp_path / "data", corrupt=3)
    cache = tmp_path / "cache"
    monkeypatch.setenv("XAI_CACHE_DIR", str(cache))
    with pytest.raises(data.UnreadableImageError, match="ISIC_0000003.jpg"):
        data.load("ham10000", size=16, root=root)
    leftovers = list(cache.rglob("*")) if cache.exists() else []
    assert not [p for p in leftovers if p.is_file()], leftovers


def test_missing_dataset_names_command_and_path(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load("ham10000", size=32, root=tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "python -m data_download get ham10000" in msg and str(tmp_path / "ham10000") in msg
    with pytest.raises(data.DatasetNotFoundError, match="data_download get chestmnist"):
        data.load("chestmnist", size=28, root=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("mnist", root=tmp_path)


def test_unexpected_layout_says_what_was_expected(tmp_path):
    d = tmp_path / "nih_cxr_bbox"
    (d / "images").mkdir(parents=True)
    (d / "Data_Entry_2017_v2020.csv").write_text("Image Index,Finding Labels,Patient ID\na.png,No Finding,1\n")
    (d / "BBox_List_2017.csv").write_text("name,box\na.png,1 2 3 4\n")
    with pytest.raises(data.DataLayoutError, match="Image Index,Finding Label,Bbox"):
        data.load("nih_cxr_bbox", size=32, root=tmp_path)
    m = tmp_path / "dermamnist"
    m.mkdir()
    np.savez(m / "dermamnist.npz", train_images=np.zeros((2, 28, 28, 3), np.uint8))
    with pytest.raises(data.DataLayoutError, match="val_images"):
        data.load("dermamnist", size=28, root=tmp_path)


def _fake_medmnist(root, flag, size, n=(10, 4, 6), rgb=False, k=None, classes=7):
    d = root / flag
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size)
    arrays = {}
    for part, m in zip(("train", "val", "test"), n):
        shape = (m, size, size, 3) if rgb else (m, size, size)
        arrays[f"{part}_images"] = rng.integers(0, 255, shape, dtype=np.uint8)
        arrays[f"{part}_labels"] = (rng.integers(0, 2, (m, k)) if k else rng.integers(0, classes, (m, 1))).astype(np.uint8)
    name = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    np.savez_compressed(d / name, **arrays)
    return arrays


def test_fake_dermamnist_and_chestmnist_official_layout(tmp_path):
    a28 = _fake_medmnist(tmp_path, "dermamnist", 28, rgb=True)
    a64 = _fake_medmnist(tmp_path, "dermamnist", 64, rgb=True)
    ds = data.load("dermamnist", size=28, root=tmp_path)
    assert ds.images.shape == (20, 28, 28, 3) and ds.task == "multiclass" and ds.class_names == data.HAM_7CLASS
    assert np.array_equal(ds.images[:10], a28["train_images"])
    assert np.array_equal(ds.labels[10:14], a28["val_labels"][:, 0])
    assert [len(v) for v in data.split(ds).values()] == [10, 4, 6]
    ds64 = data.load("dermamnist", size=64, root=tmp_path)          # the _64 file, read as is
    assert np.array_equal(ds64.images[10:14], a64["val_images"])
    ds48 = data.load("dermamnist", size=48, root=tmp_path)          # resized from the nearest larger (64)
    assert ds48.images.shape == (20, 48, 48, 3) and ds48.extra["source_size"] == 64
    c = _fake_medmnist(tmp_path, "chestmnist", 28, k=14)
    cx = data.load("chestmnist", size=32, root=tmp_path)
    assert cx.images.shape == (20, 32, 32, 1) and cx.task == "multilabel" and cx.labels.shape == (20, 14)
    assert cx.labels.dtype == np.float32 and np.array_equal(cx.labels[:10], c["train_labels"].astype(np.float32))
    assert list(cx.official_split[:10]) == ["train"] * 10


def test_ph2_official_bmp_layout_and_table(tmp_path):
    from PIL import Image

    base = tmp_path / "ph2" / "PH2Dataset"
    rows = ["|| Name || Histological Diagnosis || Clinical Diagnosis || Asymmetry ||"]
    for i, dg in enumerate([0, 1, 2]):
        name = f"IMD{i + 1:03d}"
        rows.append(f"|| {name} ||  || {dg} || 0 ||")
        for sub, arr in ((f"{name}_Dermoscopic_Image/{name}.bmp", np.full((56, 77, 3), 120, np.uint8)),
                         (f"{name}_lesion/{name}_lesion.bmp", np.pad(np.full((20, 30), 255, np.uint8), 15))):
            p = base / "PH2 Dataset images" / name / sub
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(p)
    (base / "PH2_dataset.txt").write_text("\n".join(rows) + "\n")
    ds = data.load("ph2", size=24, root=tmp_path)
    assert ds.labels.tolist() == [0, 1, 2] and ds.masks.shape == (3, 24, 24) and ds.masks.any(axis=(1, 2)).all()


def test_load_or_synthetic_is_loud(tmp_path, capsys):
    ds = data.load_or_synthetic("pneumoniamnist", size=32, root=tmp_path, n_synthetic=20)
    out = capsys.readouterr().out
    assert ds.source == "synthetic" and ds.images.shape[-1] == 1 and "REAL DATA NOT FOUND" in out
    assert "SYNTHETIC" in out and ds.extra["stand_in_for"] == "pneumoniamnist"
    _fake_medmnist(tmp_path, "pneumoniamnist", 28, classes=2)
    real = data.load_or_synthetic("pneumoniamnist", size=28, root=tmp_path)
    assert real.source == "real" and "REAL DATA NOT FOUND" not in capsys.readouterr().out


def test_nih_stand_in_has_boxes_round_its_evidence(tmp_path, capsys):
    # offline, the boxed-NIH chapters run on the planted chest set: its boxes are the known evidence
    from xai_helpers.evaluation import box_mask

    ds = data.load_or_synthetic("nih_cxr_bbox", size=48, root=tmp_path, n_synthetic=40)
    assert ds.source == "synthetic" and "REAL DATA NOT FOUND" in capsys.readouterr().out
    assert len(ds.boxes) == len(ds) and ds.labels.min() == 0 < ds.labels.max()
    for boxes, m, y in zip(ds.boxes, ds.masks, ds.labels):
        if y == 0:                                       # the look-alike class: nothing to box
            assert boxes == []
            continue
        (b,) = boxes
        assert b["label"] == ds.class_names[y]
        bm = box_mask(b, m.shape)
        assert (bm | ~m).all()                           # the box holds all of the evidence ...
        rows, cols = np.flatnonzero(bm.any(1)), np.flatnonzero(bm.any(0))
        assert m[rows[0]].any() and m[rows[-1]].any() and m[:, cols[0]].any() and m[:, cols[-1]].any()  # ... tightly
    kept = ds.subset(np.flatnonzero(ds.labels == 1)[:3])
    assert all(len(b) == 1 for b in kept.boxes)
    with pytest.raises(ValueError, match="one label per image"):
        data.boxes_from_masks(ds.masks, ds.labels[:-1], ds.class_names)


# --------------------------------------------------------------------------------------------------
# splits and torch adapters
def test_split_on_multilabel_groups(planted):
    rng = np.random.default_rng(0)
    n = 200
    ds = planted.subset(np.arange(len(planted)).repeat(4)[:n])
    ds.labels = (rng.random((n, 5)) < [0.4, 0.2, 0.1, 0.05, 0.02]).astype(np.float32)
    ds.task = "multilabel"
    ds.class_names = list("abcde")
    ds.groups = np.array([f"p{i // 3}" for i in range(n)])
    parts = data.split(ds, seed=2)
    data.check_split(ds, parts)
    assert sum(len(v) for v in parts.values()) == n and len(parts["test"]) > 10
    bad = {"train": parts["train"], "val": parts["val"], "test": np.r_[parts["test"], parts["train"][:1]]}
    with pytest.raises(AssertionError):
        data.check_split(ds, bad)


def test_torch_adapters(planted):
    import torch

    mean, std = data.channel_stats(planted)
    assert len(mean) == 3 and all(0 < m < 1 for m in mean)
    x = data.to_tensor(planted, None, mean, std)
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2)
    raw = data.to_tensor(planted, [0])
    assert torch.allclose(raw[0], torch.from_numpy(planted.images[0]).permute(2, 0, 1).float() / 255)
    ref = (planted.images[:2].astype(np.float64) / 255 - np.array(mean)) / np.array(std)      # (N, H, W, C)
    got = data.images_to_tensor(planted.images[:2], mean, std).double().permute(0, 2, 3, 1).numpy()
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    with pytest.raises(ValueError, match="mean"):
        data.to_tensor(planted, [0], mean=(0.5, 0.5), std=(1, 1))


def test_training_loader_over_data_tensors(planted):
    """The one batching/augmentation path (training.TensorLoader) on data.to_tensor's output."""
    import torch

    from xai_helpers.training import TensorLoader

    mean, std = data.channel_stats(planted)
    x = data.to_tensor(planted, None, mean, std)
    y1 = [y for _, y in TensorLoader(x, planted.labels, batch_size=16, shuffle=True, seed=7)]
    y2 = [y for _, y in TensorLoader(x, planted.labels, batch_size=16, shuffle=True, seed=7)]
    assert all(torch.equal(a, b) for a, b in zip(y1, y2)) and sum(len(b) for b in y1) == len(planted)
    assert sorted(torch.cat(y1).tolist()) == sorted(planted.labels.tolist())
    xa, _ = next(iter(TensorLoader(x, planted.labels, batch_size=64, augment="dermoscopy", seed=0)))
    assert xa.shape == x.shape and not torch.allclose(xa, x)
