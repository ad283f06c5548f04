"""Bad input and faults in the data and training side (issue 16): no silent wrong answer, no lost record.

Every case builds its own tiny dataset folder under ``tmp_path``; nothing touches the shared data.
"""
from __future__ import annotations

import os
import stat
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from test_data import _fake_ham
from xai_helpers import config, data, training
from xai_helpers.data import cache as data_cache
from xai_helpers.training import CheckpointError, recipes


# --------------------------------------------------------------------------------------------------
# helpers
def _tiny_recipe(monkeypatch):
    """planted_chest, shrunk to seconds (160 images, 32 px, one epoch)."""
    monkeypatch.setitem(training.RECIPES, "planted_chest",
                        dict(training.RECIPES["planted_chest"], n=160, size=32, epochs=1,
                             fast=dict(n=160, epochs=1, width=8)))


def _get(**kw):
    return training.get_trained_model("planted_chest", fast=True, progress=False, verbose=False, **kw)


def _files(folder: Path) -> list:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).exists() else []


def _read_only(path: Path) -> None:
    """chmod -R a-w"""
    for p in [path, *path.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable_again(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("XAI_CACHE_DIR", str(cache))
    return cache


def _ham_meta(root: Path) -> Path:
    return root / "ham10000" / "HAM10000_metadata.csv"


def _fake_nih(root: Path, bbox_rows: list[str]) -> Path:
    from PIL import Image

    d = root / "nih_cxr_bbox"
    (d / "images").mkdir(parents=True)
    entries = ["Image Index,Finding Labels,Follow-up #,Patient ID"]
    for i in range(4):
        name = f"0000000{i}_000.png"
        Image.fromarray(np.full((64, 64), 40 * i, np.uint8)).save(d / "images" / name)
        entries.append(f"{name},Mass,0,{i}")
    (d / "Data_Entry_2017_v2020.csv").write_text("\n".join(entries) + "\n")
    rows = ["Image Index,Finding Label,Bbox [x,y,w,h],,,,,"] + bbox_rows
    (d / "BBox_List_2017.csv").write_text("\n".join(rows) + "\n")
    return root


_GOOD_BOXES = [f"0000000{i}_000.png,Mass,100,200,300,400,," for i in range(4)]


# --------------------------------------------------------------------------------------------------
# 2. a recipe override never shares the default checkpoint
def test_override_gets_its_own_checkpoint_and_a_polluted_default_is_set_aside(monkeypatch, own_cache):
    _tiny_recipe(monkeypatch)
    _, short = _get(epochs=2)
    _, default = _get()
    assert default["trained_now"], "the default call loaded the override's model"
    assert short["checkpoint"] != default["checkpoint"]
    assert Path(short["checkpoint"]).name.startswith(Path(default["checkpoint"]).stem)
    _, again = _get(epochs=2)                          # the same override is cached under its own name
    assert not again["trained_now"] and again["checkpoint"] == short["checkpoint"]
    # a default-named file trained with other settings (what the old code wrote) is not trusted
    Path(default["checkpoint"]).write_bytes(Path(short["checkpoint"]).read_bytes())
    _, fresh = _get()
    assert fresh["trained_now"]
    assert Path(default["checkpoint"]).with_name(Path(default["checkpoint"]).stem + ".stale.pt").is_file()


# --------------------------------------------------------------------------------------------------
# 5. HAM10000 metadata: duplicates and blank lesion ids; NIH boxes with unknown findings
def test_ham_exact_duplicate_row_is_dropped_with_a_warning(tmp_path, own_cache):
    root = _fake_ham(tmp_path / "d")
    meta = _ham_meta(root)
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join(lines + [lines[3]]) + "\n")
    with pytest.warns(UserWarning, match="duplicate.*ISIC_0000002"):
        ds = data.load("ham10000", size=16, root=root)
    assert len(ds) == 9 and len(set(ds.ids)) == 9


def test_ham_conflicting_duplicate_is_an_error_naming_the_rows(tmp_path, own_cache):
    root = _fake_ham(tmp_path / "d")
    meta = _ham_meta(root)
    lines = meta.read_text().splitlines()
    other = lines[3].split(",")
    other[2] = "mel" if other[2] != "mel" else "nv"
    meta.write_text("\n".join(lines + [",".join(other)]) + "\n")
    with pytest.raises(data.DataLayoutError, match=r"ISIC_0000002.*lines? .*4.*12|HAM10000_metadata.csv.*ISIC_0000002"):
        data.load("ham10000", size=16, root=root)


def test_ham_blank_lesion_ids_become_one_group_per_image(tmp_path, own_cache):
    root = _fake_ham(tmp_path / "d", n_lesions=6)
    meta = _ham_meta(root)
    lines = meta.read_text().splitlines()
    blank = [1, 2, 3]                                   # ISIC_0000000..2 (lesions 0 and 1)
    for i in blank:
        lines[i] = "," + lines[i].split(",", 1)[1]
    meta.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="lesion_id.*3 image"):
        ds = data.load("ham10000", size=16, root=root)
    for k in range(3):
        assert ds.groups[k] == ds.ids[k] == f"ISIC_{k:07d}"
    assert "nan" not in set(ds.groups)
    data.check_split(ds, data.split(ds, seed=0))


def test_nih_box_with_unknown_finding_is_dropped_with_a_warning(tmp_path, own_cache):
    root = _fake_nih(tmp_path / "d", _GOOD_BOXES + ["00000001_000.png,Dragon,10,10,50,50,,"])
    with pytest.warns(UserWarning, match="Dragon"):
        ds = data.load("nih_cxr_bbox", size=32, root=root)
    assert all(b["label"] in data.CXR14 for bs in ds.boxes for b in bs)
    assert [len(b) for b in ds.boxes] == [1, 1, 1, 1]


# --------------------------------------------------------------------------------------------------
# 6. the cache never hands back arrays that do not belong to the sources; no NaN model
def test_wrong_arrays_in_a_cache_slot_are_rebuilt(tmp_path, own_cache):
    root = _fake_ham(tmp_path / "d")
    first = data.load("ham10000", size=16, root=root)
    (slot,) = sorted((own_cache / "_cache").glob("ham10000_16px_*.npz"))
    np.savez(slot, images=first.images[:2], ids=first.ids[:2])          # valid npz, wrong contents
    with pytest.warns(UserWarning, match="do not match the ham10000 sources"):
        again = data.load("ham10000", size=16, root=root)
    assert np.array_equal(again.images, first.images) and np.array_equal(again.ids, first.ids)
    with np.load(slot) as z:                                           # and the slot is repaired
        assert len(z["images"]) == len(first)


def test_source_changed_with_same_size_and_mtime_is_not_served_stale(tmp_path, own_cache):
    from PIL import Image

    root = _fake_ham(tmp_path / "d")
    first = data.load("ham10000", size=16, root=root)
    jpg = root / "ham10000" / "images" / "ISIC_0000004.jpg"
    st = jpg.stat()
    other = tmp_path / "other.jpg"
    Image.fromarray(np.zeros((45, 60, 3), np.uint8)).save(other)       # a different picture, padded to
    new = other.read_bytes()                                            # the same size (JPEG readers
    assert len(new) < st.st_size                                        # ignore bytes after the end)
    jpg.write_bytes(new + b"\0" * (st.st_size - len(new)))
    os.utime(jpg, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert jpg.stat().st_size == st.st_size and jpg.stat().st_mtime_ns == st.st_mtime_ns
    fresh = data.load("ham10000", size=16, root=root, cache=False)
    assert not np.array_equal(fresh.images[4], first.images[4])
    again = data.load("ham10000", size=16, root=root)
    assert np.array_equal(again.images, fresh.images)


def test_checkpoint_with_nan_weights_is_refused_naming_the_tensors(tmp_path):
    from xai_helpers.models import build_model

    model = build_model("small_cnn", 2, in_channels=1, class_names=["a", "b"], task="binary", width=8)
    path = training.save_checkpoint(tmp_path / "m.pt", model)
    blob = torch.load(path, weights_only=True)
    key = next(k for k, v in blob["state_dict"].items() if v.is_floating_point() and v.ndim == 4)
    blob["state_dict"][key][0].fill_(float("nan"))
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match=r"not finite \(NaN.*" + key.replace(".", r"\.")):
        training.load_checkpoint(path)


# --------------------------------------------------------------------------------------------------
# 7. a data root without write bits is never written, even by root
def test_read_only_data_root_is_never_written(tmp_path, monkeypatch):
    root = _fake_ham(tmp_path / "shared")
    user = tmp_path / "user-cache"
    monkeypatch.delenv("XAI_CACHE_DIR", raising=False)
    monkeypatch.setattr(config, "default_data_root", lambda: user)
    _read_only(root)
    try:
        before = _files(root)
        assert not config.writable(root)
        assert config.work_dir(root) == user
        ds = data.load("ham10000", size=16, root=root)
        assert len(ds) == 9 and _files(root) == before and not (root / "_cache").exists()
        assert list((user / "_cache").glob("ham10000_16px_*.npz"))
    finally:
        _writable_again(root)


def test_writability_rule_is_the_downloaders(tmp_path):
    from data_download import fetch

    folder = tmp_path / "f"
    folder.mkdir()
    assert config.writable(folder) and config.writable(folder / "not" / "yet")
    folder.chmod(0o555)
    try:
        assert not config.writable(folder) and not config.writable(folder / "new")
        with pytest.raises(fetch.DownloadError, match="read-only"):
            fetch.assert_writable_root(folder)
    finally:
        folder.chmod(0o755)


# --------------------------------------------------------------------------------------------------
# 10. a link inside the data root that points outside it is refused, naming the link
def test_symlink_pointing_outside_the_data_root_is_refused(tmp_path, own_cache):
    root = _fake_ham(tmp_path / "d")
    outside = tmp_path / "elsewhere.jpg"
    img = root / "ham10000" / "images" / "ISIC_0000001.jpg"
    outside.write_bytes(img.read_bytes())
    img.unlink()
    img.symlink_to(outside)
    with pytest.raises(data.DataLayoutError, match="ISIC_0000001.jpg.*outside"):
        data.load("ham10000", size=16, root=root)
    img.unlink()                                       # a link that stays inside the root is fine
    inside = root / "ham10000" / "copy.jpg"
    inside.write_bytes(outside.read_bytes())
    img.symlink_to(inside)
    assert len(data.load("ham10000", size=16, root=root)) == 9


def test_dataset_folder_linked_from_outside_is_refused(tmp_path, own_cache):
    real = _fake_ham(tmp_path / "real")
    root = tmp_path / "root"
    root.mkdir()
    (root / "ham10000").symlink_to(real / "ham10000")
    with pytest.raises(data.DataLayoutError, match="ham10000.*outside"):
        data.load("ham10000", size=16, root=root)


# --------------------------------------------------------------------------------------------------
# 12. nowhere to save: the model is kept in memory with a warning before and after training
def test_nowhere_to_save_keeps_the_model_and_says_so_before_training(tmp_path, monkeypatch):
    _tiny_recipe(monkeypatch)
    root, cache = tmp_path / "root", tmp_path / "cache"
    root.mkdir()
    cache.mkdir()
    monkeypatch.setenv("XAI_CACHE_DIR", str(cache))
    _read_only(root)
    _read_only(cache)
    trained = []
    real_train = recipes._train
    monkeypatch.setattr(recipes, "_train", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    try:
        with pytest.warns(UserWarning, match="XAI_CACHE_DIR") as rec:
            model, info = _get(root=root)
        assert trained and info["trained_now"] and info["checkpoint"] is None
        assert not _files(root) and not _files(cache)
        assert any("not be saved" in str(w.message) for w in rec)
        assert isinstance(model, torch.nn.Module) and info["metrics"]
    finally:
        _writable_again(root)
        _writable_again(cache)


def test_save_failing_after_training_keeps_the_model(monkeypatch, own_cache):
    _tiny_recipe(monkeypatch)

    def read_only_fs(*a, **k):
        raise OSError(30, "Read-only file system", str(own_cache))

    monkeypatch.setattr(recipes, "save_checkpoint", read_only_fs)
    with pytest.warns(UserWarning, match="could not save.*Read-only file system.*XAI_CACHE_DIR"):
        model, info = _get()
    assert info["trained_now"] and info["checkpoint"] is None and info["metrics"]


# --------------------------------------------------------------------------------------------------
# 14. empty, corrupt and concurrently replaced checkpoints
def test_zero_byte_checkpoint_is_a_checkpoint_error(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt"):
        training.load_checkpoint(tmp_path / "empty.pt")


def test_zero_byte_cached_checkpoint_is_set_aside_and_retrained(monkeypatch, own_cache):
    _tiny_recipe(monkeypatch)
    _, info = _get()
    path = Path(info["checkpoint"])
    path.write_bytes(b"")
    _, again = _get()
    assert again["trained_now"] and path.stat().st_size > 0
    assert path.with_name(path.stem + ".stale.pt").stat().st_size == 0


def _worker_with_stale_checkpoint(cache: str, barrier, out) -> None:
    """One of three processes that all find the same stale checkpoint before any sets it aside."""
    os.environ["XAI_CACHE_DIR"] = cache
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    from xai_helpers import training
    from xai_helpers.training import recipes

    training.RECIPES["planted_chest"] = dict(training.RECIPES["planted_chest"], n=160, size=32, epochs=1,
                                             fast=dict(n=160, epochs=1, width=8))
    real = recipes._set_aside

    def together(*a, **k):
        barrier.wait(timeout=120)
        return real(*a, **k)

    recipes._set_aside = together
    try:
        _, info = training.get_trained_model("planted_chest", fast=True, progress=False, verbose=False)
        out.put(("ok", bool(info["trained_now"])))
    except BaseException as err:  # report it to the parent
        out.put(("error", f"{type(err).__name__}: {err}"))


def _plant_stale(path: Path) -> bytes:
    blob = torch.load(path, weights_only=True)
    key = next(k for k, v in blob["state_dict"].items() if v.ndim == 2)
    blob["state_dict"][key] = torch.zeros(blob["state_dict"][key].shape[0], 3)
    torch.save(blob, path)
    return path.read_bytes()


@pytest.mark.slow
def test_three_processes_meeting_one_stale_checkpoint_all_succeed(monkeypatch, own_cache):
    import multiprocessing as mp

    _tiny_recipe(monkeypatch)
    _, info = _get()
    path = Path(info["checkpoint"])
    tampered = _plant_stale(path)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_worker_with_stale_checkpoint, args=(str(own_cache), barrier, out))
             for _ in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(r[0] == "ok" for r in results), results
    stale = sorted(path.parent.glob(path.stem + ".stale*.pt"))
    assert [s.read_bytes() for s in stale] == [tampered]            # kept once, never overwritten
    training.load_checkpoint(path)
    assert not [p for p in path.parent.iterdir() if "tmp" in p.name]


# --------------------------------------------------------------------------------------------------
# 15. damaged metadata names the file and the real reason
def test_zero_byte_metadata_names_the_file(tmp_path, own_cache):
    root = _fake_ham(tmp_path / "d")
    _ham_meta(root).write_bytes(b"")
    with pytest.raises(data.DataLayoutError, match="HAM10000_metadata.csv.*empty"):
        data.load("ham10000", size=16, root=root)


def test_metadata_cut_off_mid_row_says_so(tmp_path, own_cache):
    root = _fake_ham(tmp_path / "d")
    meta = _ham_meta(root)
    text = meta.read_text()
    meta.write_text(text[: text.rindex("ISIC_0000008") + 8])           # cut inside the last listed image
    with pytest.raises(data.DataLayoutError, match="HAM10000_metadata.csv.*(cut off|truncated)"):
        data.load("ham10000", size=16, root=root)


def test_ph2_diagnosis_that_is_not_a_number_names_file_and_image(tmp_path, own_cache):
    from PIL import Image

    base = tmp_path / "ph2" / "PH2Dataset"
    rows = ["|| Name || Histological Diagnosis || Clinical Diagnosis || Asymmetry ||"]
    for i, dg in enumerate(["0", "melanoma", "2"]):
        name = f"IMD{i + 1:03d}"
        rows.append(f"|| {name} ||  || {dg} || 0 ||")
        for sub, arr in ((f"{name}_Dermoscopic_Image/{name}.bmp", np.full((20, 20, 3), 120, np.uint8)),
                         (f"{name}_lesion/{name}_lesion.bmp", np.pad(np.full((10, 10), 255, np.uint8), 5))):
            p = base / "PH2 Dataset images" / name / sub
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(p)
    (base / "PH2_dataset.txt").write_text("\n".join(rows) + "\n")
    with pytest.raises(data.DataLayoutError, match="PH2_dataset.txt.*IMD002.*melanoma"):
        data.load("ph2", size=16, root=tmp_path)


def test_nih_box_with_nan_coordinates_is_dropped_with_a_warning(tmp_path, own_cache):
    root = _fake_nih(tmp_path / "d", _GOOD_BOXES + ["00000002_000.png,Nodule,nan,10,50,50,,"])
    with pytest.warns(UserWarning, match="00000002_000.png.*Nodule"):
        ds = data.load("nih_cxr_bbox", size=32, root=root)
    for i in range(len(ds)):
        assert all(np.isfinite([b["x"], b["y"], b["w"], b["h"]]).all() for b in ds.boxes[i])
        ds.box_mask(i)


# --------------------------------------------------------------------------------------------------
# 16. an interrupted cache write leaves an orphan that the next write cleans (when it is old)
def test_old_orphan_temp_files_are_cleaned_on_the_next_write(tmp_path, own_cache):
    folder = own_cache / "_cache"
    folder.mkdir(parents=True)
    old_new_style = folder / f"ham10000_16px_0123.npz.{data_cache.TMP_MARK}1234"
    old_old_style = folder / "ham10000_16px_0123.npz.k2j3h4.tmp"
    recent = folder / f"ph2_16px_0123.npz.{data_cache.TMP_MARK}5678"
    for p in (old_new_style, old_old_style, recent):
        p.write_bytes(b"\0" * 1024)
    an_hour_ago = time.time() - 2 * 3600
    for p in (old_new_style, old_old_style):
        os.utime(p, (an_hour_ago, an_hour_ago))
    root = _fake_ham(tmp_path / "d")
    data.load("ham10000", size=16, root=root)
    assert not old_new_style.exists() and not old_old_style.exists()
    assert recent.exists()                                  # maybe another process is writing it now
    assert list(folder.glob("ham10000_16px_*.npz"))


def test_checkpoint_temp_files_are_recognisable_and_old_ones_cleaned(tmp_path):
    from xai_helpers.models import build_model

    orphan = tmp_path / f"m.pt.{data_cache.TMP_MARK}99"
    orphan.write_bytes(b"x")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    model = build_model("small_cnn", 2, in_channels=1, class_names=["a", "b"], task="binary", width=8)
    training.save_checkpoint(tmp_path / "m.pt", model)
    assert not orphan.exists() and [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training.load_checkpoint(tmp_path / "m.pt")
