"""data_download on bad input and local faults: no silent wrong answer, no lost record.

Each test reproduces one reported failure: a ``--from PATH`` that holds nothing of the dataset fell
back to a download; an import that skipped a required file said "ready"; a damaged manifest made
``check`` pass and was then overwritten; two processes updating the manifest lost entries; a full
disk was reported as exit 1 and left a ``.part`` behind; ``check --root FILE`` passed. Nothing here
uses the network: ``fetch.open_url`` is replaced by a stub that records any attempt.
"""
from __future__ import annotations

import errno
import io
import json
import multiprocessing as mp
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from data_download import check as chk, manifest
from data_download import cli
from data_download import extract as ex
from data_download import fetch
from data_download.install import get_dataset
from data_download.registry import PH2, Dataset, Remote

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Every attempt to open a URL is recorded and fails as 'offline'."""
    monkeypatch.setenv("XAI_DOWNLOAD_RETRIES", "1")
    monkeypatch.setenv("XAI_DOWNLOAD_BACKOFF", "0.01")
    monkeypatch.setenv("XAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("XAI_DATA_MIRROR", raising=False)
    monkeypatch.setattr(fetch, "ensure_free_space", lambda *a, **k: None)
    calls: list[str] = []

    def offline(url, offset=0, timeout=None):
        calls.append(url)
        raise fetch.urllib.error.URLError(ConnectionRefusedError(errno.ECONNREFUSED, "refused (test)"))

    monkeypatch.setattr(fetch, "open_url", offline)
    return calls


def png_bytes(seed: int, size: int = 16) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def make_tar(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ph2_folder(base: Path, cases=("IMD003", "IMD004")) -> Path:
    """An extracted PH2 folder (the official layout) with ``cases``; returns its PH2Dataset folder."""
    src = base / "PH2Dataset"
    for i, c in enumerate(cases):
        case = src / "PH2 Dataset images" / c
        (case / f"{c}_Dermoscopic_Image").mkdir(parents=True)
        (case / f"{c}_lesion").mkdir()
        (case / f"{c}_Dermoscopic_Image" / f"{c}.png").write_bytes(png_bytes(2 * i))
        (case / f"{c}_lesion" / f"{c}_lesion.png").write_bytes(png_bytes(2 * i + 1))
    (src / "PH2_dataset.txt").write_text("".join(f"|| {c} || 0 ||\n" for c in cases))
    return src


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------------------------------
# 8. --from PATH that holds nothing of the dataset: a usage error, never a download
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["missing", "text", "tar_for_zip", "rar_named_zip", "empty_folder"])
def test_get_from_unusable_path_is_usage_error_without_download(no_network, tmp_path, capsys, kind):
    src = tmp_path / "downloads"
    src.mkdir()
    path = {"missing": src / "ISIC2018_Task3_Training_Input.zip", "text": src / "notes.txt",
            "tar_for_zip": src / "images.tar.gz", "rar_named_zip": src / "archive.zip",
            "empty_folder": src}[kind]
    if kind == "text":
        path.write_text("not an archive\n")
    elif kind == "tar_for_zip":
        path.write_bytes(make_tar({"ISIC2018_Task3_Training_Input/ISIC_0024306.jpg": b"x"}))
    elif kind == "rar_named_zip":
        path.write_bytes(b"Rar!\x1a\x07\x00" + b"\x00" * 64)
    root = tmp_path / "root"
    rc, out, err = run_cli(capsys, "get", "ham10000", "--from", path, "--root", root, "-q")
    assert rc == cli.EXIT_USAGE, (rc, out, err)
    assert no_network == [], "a --from import must never download"
    assert str(path) in err and "ready" not in out
    assert "ISIC2018_Task3_Training_Input.zip" in err  # says what is expected
    if kind == "missing":
        assert "does not exist" in err
    assert not (root / "ham10000" / "images").exists()


def test_get_from_wrong_file_for_single_file_datasets(no_network, tmp_path, capsys):
    bad = tmp_path / "PH2Dataset.zip"
    bad.write_bytes(make_zip({"x.txt": b"x"}))
    rc, out, err = run_cli(capsys, "get", "ph2", "--from", bad, "--root", tmp_path / "root", "-q")
    assert rc == cli.EXIT_USAGE and "RAR" in err and str(bad) in err
    txt = tmp_path / "readme.txt"
    txt.write_text("hello")
    rc, out, err = run_cli(capsys, "get", "pneumoniamnist", "--from", txt, "--root", tmp_path / "root", "-q")
    assert rc == cli.EXIT_USAGE and "pneumoniamnist.npz" in err and str(txt) in err
    rc, out, err = run_cli(capsys, "get", "nih_cxr_bbox", "--from", txt, "--root", tmp_path / "root", "-q")
    assert rc == cli.EXIT_USAGE and "BBox_List_2017.csv" in err
    assert no_network == []


def test_exit_codes_are_documented_in_help():
    text = cli.EPILOG
    assert f"{cli.EXIT_USAGE} bad arguments" in text and "--from" in text
    assert f"{cli.EXIT_DISK} not enough disk space" in text


# --------------------------------------------------------------------------------------------------
# 9. an import that skipped a required file must not say "ready"
# --------------------------------------------------------------------------------------------------
def test_ph2_import_with_symlinked_required_file_fails_like_check(no_network, tmp_path, capsys):
    src = ph2_folder(tmp_path / "unpacked")
    real_txt = tmp_path / "elsewhere.txt"
    (src / "PH2_dataset.txt").rename(real_txt)
    (src / "PH2_dataset.txt").symlink_to(real_txt)
    root = tmp_path / "root"
    rc, out, err = run_cli(capsys, "get", "ph2", "--from", tmp_path / "unpacked", "--root", root, "-q")
    assert rc == cli.EXIT_FAIL, (rc, out, err)
    assert "ready" not in out and "PH2_dataset.txt" in err
    assert "link" in err  # says why it was not imported
    assert chk.check_ph2(root, progress=False).broken  # check agrees
    # the good copy imports and says ready
    good = ph2_folder(tmp_path / "good")
    rc, out, err = run_cli(capsys, "get", "ph2", "--from", good.parent, "--root", tmp_path / "root2", "-q")
    assert rc == cli.EXIT_OK and "ph2: ready" in out, err


# --------------------------------------------------------------------------------------------------
# 11. the manifest: damaged is reported, never silently overwritten; updates are atomic and locked
# --------------------------------------------------------------------------------------------------
def _imported_ph2(tmp_path) -> Path:
    root = tmp_path / "root"
    get_dataset(PH2, root, from_path=ph2_folder(tmp_path / "unpacked").parent, progress=False)
    man = json.loads((root / fetch.MANIFEST).read_text())
    assert len(man["ph2"]["files"]) == 5
    return root


def test_truncated_manifest_makes_check_fail_and_say_how_to_rebuild(no_network, tmp_path, capsys):
    root = _imported_ph2(tmp_path)
    m = root / fetch.MANIFEST
    m.write_bytes(m.read_bytes()[: len(m.read_bytes()) // 2])
    swapped = root / "ph2/PH2Dataset/PH2 Dataset images/IMD003/IMD003_lesion/IMD003_lesion.png"
    swapped.write_bytes(png_bytes(99))  # a valid image, but not the imported one
    before = m.read_bytes()
    for quick in ([], ["--quick"]):
        rc, out, err = run_cli(capsys, "check", "ph2", "--root", root, "-q", *quick)
        text = out + err
        assert rc == cli.EXIT_FAIL, (rc, text)
        assert "manifest.json" in text and "unreadable" in text and "unverified (no manifest)" not in text
        assert "rebuild" in text.lower()
    assert m.read_bytes() == before  # check never writes


def test_get_with_damaged_manifest_keeps_it_aside(no_network, tmp_path, capsys):
    root = _imported_ph2(tmp_path)
    m = root / fetch.MANIFEST
    damaged = m.read_bytes()[:-40]
    m.write_bytes(damaged)
    arc = tmp_path / "pack.zip"
    arc.write_bytes(make_zip({"images/a.png": png_bytes(7)}))
    ds = Dataset(name="toyarc", title="t", licence="-", citation="-", homepage="-", layout="images/",
                 remotes=(Remote(name="pack.zip", url="http://127.0.0.1:9/pack.zip", kind="zip"),),
                 manual="-", approx_size=1)
    capsys.readouterr()
    get_dataset(ds, root, from_path=arc, progress=False)
    err = capsys.readouterr().err
    aside = list(root.glob(fetch.MANIFEST + ".corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # the earlier records are kept
    assert str(aside[0].name) in err and "unreadable" in err
    man = json.loads(m.read_text())
    assert "images/a.png" in man["toyarc"]["files"]
    # check now says the earlier manifest was set aside
    rc, out, _ = run_cli(capsys, "check", "ph2", "--root", root, "-q")
    assert aside[0].name in out


def _add_entries(root: str, who: int, n: int) -> None:
    for i in range(n):
        manifest.update_manifest(Path(root), "race", "files", {f"{who}-{i}": f"{who:02d}{i:062d}"})


def test_two_processes_updating_the_manifest_lose_nothing(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_add_entries, args=(str(root), w, 100)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    files = json.loads((root / fetch.MANIFEST).read_text())["race"]["files"]
    assert len(files) == 200, f"lost {200 - len(files)} of 200 entries"
    assert not list(root.glob(fetch.MANIFEST + ".tmp*"))


# --------------------------------------------------------------------------------------------------
# 16. disk full, and a data root that is a file
# --------------------------------------------------------------------------------------------------
def _full_disk_copy(src, dst, *a, **k):
    with open(dst, "wb") as f:
        f.write(Path(src).read_bytes()[:100])
    raise OSError(errno.ENOSPC, "No space left on device", str(dst))


def test_disk_full_while_importing_a_file_exits_6_and_leaves_no_part(no_network, tmp_path, capsys,
                                                                       monkeypatch):
    src = tmp_path / "pneumoniamnist.npz"
    src.write_bytes(b"\x00" * 5000)
    root = tmp_path / "root"
    monkeypatch.setattr(shutil, "copyfile", _full_disk_copy)
    monkeypatch.setattr(shutil, "copyfileobj", lambda fsrc, fdst, *a, **k: _full_disk_copy(fsrc.name, fdst.name))
    rc, out, err = run_cli(capsys, "get", "pneumoniamnist", "--from", src, "--root", root, "-q")
    assert rc == cli.EXIT_DISK, (rc, err)
    assert "disk" in err.lower() and "ready" not in out
    assert not list(root.rglob("*.part")), "a half-written copy was left on the full disk"
    assert src.read_bytes() == b"\x00" * 5000
    assert no_network == []


def test_disk_full_while_extracting_is_not_called_a_damaged_archive(no_network, tmp_path, capsys,
                                                                     monkeypatch):
    real_write = ex._Stager.write
    n = {"calls": 0}

    def write(self, rel, src, declared, bar):
        n["calls"] += 1
        if n["calls"] == 2:
            (self.stage / "half").write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, rel, src, declared, bar)

    monkeypatch.setattr(ex._Stager, "write", write)
    good = ph2_folder(tmp_path / "unpacked")
    rc, out, err = run_cli(capsys, "get", "ph2", "--from", good.parent, "--root", tmp_path / "root", "-q")
    assert rc == cli.EXIT_DISK and "damaged" not in err and "space" in err.lower(), (rc, err)
    assert not list((tmp_path / "root").rglob(".staging-*"))
    n["calls"] = 0
    arc = tmp_path / "a.zip"
    arc.write_bytes(make_zip({"images/a.png": png_bytes(1), "images/b.png": png_bytes(2)}))
    with pytest.raises(OSError) as info:
        ex.extract(arc, tmp_path / "out", progress=False)
    assert not isinstance(info.value, ex.CorruptArchiveError)
    assert info.value.errno == errno.ENOSPC
    assert not list((tmp_path / "out").glob(".staging-*"))


def test_root_that_is_a_file_is_refused(no_network, tmp_path, capsys):
    f = tmp_path / "data.txt"
    f.write_text("x")
    for argv in (["check"], ["check", "ph2"], ["get", "pneumoniamnist"], ["list"]):
        rc, out, err = run_cli(capsys, *argv, "--root", f, "-q")
        assert rc == cli.EXIT_USAGE, (argv, rc, out, err)
        assert "is a file, not a folder" in err and "does not exist" not in out + err
    assert no_network == []


# --------------------------------------------------------------------------------------------------
# issue 15.7: the fault table comes after pytest's progress line, not inside it
# --------------------------------------------------------------------------------------------------
def test_fault_table_printed_after_progress_output(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/test_data_download.py", "-k", "test_500_then_success or test_no_network_message"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    lines = out.splitlines()
    progress = next(i for i, ln in enumerate(lines) if ln.rstrip().endswith("[100%]"))
    table = next(i for i, ln in enumerate(lines) if "data_download fault injection" in ln)
    assert lines[progress].startswith(".."), lines[progress]  # the dots and [100%] on one line
    assert table > progress
