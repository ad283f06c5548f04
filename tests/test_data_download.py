"""data_download under fire: a loopback HTTP server (127.0.0.1 only) serves archives built here, and
each test injects one fault. Every test records (fault, survived, files left corrupt) and the session
prints the table at the end. Nothing here touches any address but 127.0.0.1.
"""
from __future__ import annotations

import csv
import hashlib
import http.server
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from data_download import check as chk
from data_download import extract as ex
from data_download import fetch
from data_download.install import get_dataset
from data_download.registry import Dataset, Remote

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------
# the fault table
# --------------------------------------------------------------------------------------------------
FAULTS: list[dict] = []


def record(fault: str, survived: bool, corrupt: int) -> None:
    FAULTS.append({"fault": fault, "survived": bool(survived), "corrupt": int(corrupt)})


class _FaultTable:
    """Prints the table in pytest's terminal summary, after the progress line. (It used to be written
    from a session fixture's teardown with capture disabled, which lands in the middle of the progress
    dots of whatever test file runs last.)"""

    def pytest_terminal_summary(self, terminalreporter):
        if not FAULTS:
            return
        tr = terminalreporter
        w = max(len(f["fault"]) for f in FAULTS)
        tr.write_sep("-", "data_download fault injection (loopback server, 127.0.0.1 only)")
        tr.write_line(f"{'fault injected':<{w}}  survived  files left corrupt")
        for f in FAULTS:
            tr.write_line(f"{f['fault']:<{w}}  {'yes' if f['survived'] else 'NO':<8}  {f['corrupt']}")
        tr.write_line(f"{'TOTAL ' + str(len(FAULTS)) + ' faults':<{w}}  "
                      f"{sum(f['survived'] for f in FAULTS):<8}  {sum(f['corrupt'] for f in FAULTS)}")


@pytest.fixture(scope="session", autouse=True)
def _fault_table(request):
    pm = request.config.pluginmanager
    if not pm.has_plugin("data_download_fault_table"):
        pm.register(_FaultTable(), "data_download_fault_table")
    yield


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch, tmp_path):
    monkeypatch.setenv("XAI_DOWNLOAD_RETRIES", "3")
    monkeypatch.setenv("XAI_DOWNLOAD_BACKOFF", "0.01")
    monkeypatch.setenv("XAI_DOWNLOAD_TIMEOUT", "10")
    monkeypatch.setenv("XAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("XAI_DATA_MIRROR", raising=False)
    # a tiny fixture needs no 100 MB free-space margin on a tight CI disk
    monkeypatch.setattr(fetch, "ensure_free_space", lambda *a, **k: None)


# --------------------------------------------------------------------------------------------------
# loopback server with injectable faults
# --------------------------------------------------------------------------------------------------
class Server:
    """Serves ``files[path]``; ``faults[path]`` is a list consumed one per request:
    "500" (error), "drop" (half the body, then close), "norange" (ignore Range, send everything),
    "slow" (64 KB chunks with pauses). ``always_norange`` ignores Range for every request."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.always_norange: set[str] = set()
        self.requests: list[tuple[str, str | None, int]] = []
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                rng = self.headers.get("Range")
                data = srv.files.get(path)
                if data is None:
                    srv.requests.append((path, rng, 404))
                    self.send_error(404)
                    return
                queue = srv.faults.get(path) or []
                fault = queue.pop(0) if queue else None
                if fault == "500":
                    srv.requests.append((path, rng, 500))
                    self.send_error(500, "injected")
                    return
                start = 0
                if rng and fault != "norange" and path not in srv.always_norange:
                    start = int(rng.split("=")[1].split("-")[0])
                body = data[start:]
                status = 206 if start else 200
                srv.requests.append((path, rng, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                try:
                    if fault == "drop":
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                    elif fault == "slow":
                        for i in range(0, len(body), 65536):
                            self.wfile.write(body[i:i + 65536])
                            time.sleep(0.03)
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> list[tuple[str, str | None, int]]:
        return [r for r in self.requests if r[0] == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------------------------------
# fixture builders
# --------------------------------------------------------------------------------------------------
def payload(n: int = 700_000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def png_bytes(seed: int, size: int = 16) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpg_bytes(seed: int) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def make_zip(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            z.writestr(info, target)
    return buf.getvalue()


def make_tar(entries: dict[str, bytes], symlinks: dict[str, str] | None = None,
             hardlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
        for name, target in (hardlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.LNKTYPE, target
            t.addfile(info)
    return buf.getvalue()


def make_rar(entries: dict[str, bytes]) -> bytes:
    """A RAR 4 archive of *stored* (uncompressed) files, written by hand: rarfile reads stored
    members itself, so the RAR path is tested without an external tool."""

    def block(htype: int, flags: int, body: bytes) -> bytes:
        head = struct.pack("<BHH", htype, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head

    out = b"Rar!\x1a\x07\x00" + block(0x73, 0, b"\x00" * 6)
    for name, data in entries.items():
        nm = name.encode()
        body = struct.pack("<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), 0x5A000000, 20, 0x30,
                           len(nm), 0o100644) + nm
        out += block(0x74, 0x8000, body) + data
    return out + block(0x7B, 0x4000, b"")


def single_file_ds(server: Server, name: str, data: bytes, *, md5sum: str | None = None,
                   dsname: str = "toy") -> Dataset:
    server.files[f"/{dsname}/{name}"] = data
    return Dataset(name=dsname, title="toy", licence="-", citation="-", homepage="-", layout=name,
                   remotes=(Remote(name=name, url=server.url(f"/{dsname}/{name}"), target=name, md5=md5sum),),
                   manual="-", approx_size=len(data))


def archive_ds(server: Server, name: str, data: bytes, kind: str, select=None, dsname: str = "toyarc") -> Dataset:
    server.files[f"/{dsname}/{name}"] = data
    return Dataset(name=dsname, title="toy archive", licence="-", citation="-", homepage="-", layout="images/",
                   remotes=(Remote(name=name, url=server.url(f"/{dsname}/{name}"), kind=kind, select=select),),
                   manual="-", approx_size=len(data))


IGNORED = {fetch.MANIFEST}


def corrupt_files(root: Path, expected: dict[str, bytes]) -> int:
    """Files under ``root`` that are neither bookkeeping (locks, .part, quarantine, manifest, state)
    nor exactly one of the expected files: a half-written or hostile file counts as corrupt."""
    bad = 0
    for p in root.rglob("*"):
        if not p.is_file() or p.is_symlink():
            bad += p.is_symlink()
            continue
        rel = p.relative_to(root).as_posix()
        parts = rel.split("/")
        if (rel in IGNORED or p.name.endswith((".lock", fetch.PART_SUFFIX)) or parts[0] in (fetch.QUARANTINE, ".downloads")
                or p.name == ".download_state.json"):
            continue
        if rel not in expected or p.read_bytes() != expected[rel]:
            bad += 1
    return bad


# --------------------------------------------------------------------------------------------------
# network faults
# --------------------------------------------------------------------------------------------------
def test_connection_dropped_mid_file_resumes_with_range(server, tmp_path):
    data = payload()
    ds = single_file_ds(server, "a.npz", data, md5sum=md5(data))
    server.faults["/toy/a.npz"] = ["drop", "drop"]
    root = tmp_path / "root"
    ok = False
    try:
        get_dataset(ds, root, progress=False)
        ok = (root / "toy/a.npz").read_bytes() == data
    finally:
        record("connection dropped mid-file (x2)", ok, corrupt_files(root, {"toy/a.npz": data}))
    hits = server.hits("/toy/a.npz")
    assert ok and len(hits) == 3
    assert hits[1][1] == f"bytes={len(data) // 2}-" and hits[1][2] == 206  # resumed, not restarted


def test_500_then_success(server, tmp_path):
    data = payload(seed=1)
    ds = single_file_ds(server, "b.npz", data, md5sum=md5(data))
    server.faults["/toy/b.npz"] = ["500", "500"]
    root = tmp_path / "root"
    ok = False
    try:
        get_dataset(ds, root, progress=False)
        ok = (root / "toy/b.npz").read_bytes() == data
    finally:
        record("HTTP 500 twice, then success", ok, corrupt_files(root, {"toy/b.npz": data}))
    assert ok and [h[2] for h in server.hits("/toy/b.npz")] == [500, 500, 200]


def test_500_forever_gives_up_cleanly(server, tmp_path):
    data = payload(seed=2)
    ds = single_file_ds(server, "c.npz", data, md5sum=md5(data))
    server.faults["/toy/c.npz"] = ["500"] * 10
    root = tmp_path / "root"
    with pytest.raises(fetch.DownloadError, match="Gave up"):
        get_dataset(ds, root, progress=False)
    record("HTTP 500 on every try (gives up)", not (root / "toy/c.npz").exists(), corrupt_files(root, {}))
    assert not (root / "toy/c.npz").exists()


def test_wrong_checksum_is_quarantined(server, tmp_path):
    data = payload(seed=3)
    ds = single_file_ds(server, "d.npz", data, md5sum=md5(b"something else"))
    root = tmp_path / "root"
    with pytest.raises(fetch.ChecksumError, match="quarantine"):
        get_dataset(ds, root, progress=False)
    q = list((root / fetch.QUARANTINE).glob("d.npz.*.bad"))
    survived = not (root / "toy/d.npz").exists() and len(q) == 1 and q[0].read_bytes() == data
    record("wrong checksum (quarantined)", survived, corrupt_files(root, {}))
    assert survived
    assert not list(root.rglob("*.part"))


def test_range_ignored_restarts_cleanly(server, tmp_path):
    data = payload(seed=4)
    ds = single_file_ds(server, "e.npz", data, md5sum=md5(data))
    server.faults["/toy/e.npz"] = ["drop"]
    server.always_norange.add("/toy/e.npz")
    root = tmp_path / "root"
    ok = False
    try:
        get_dataset(ds, root, progress=False)
        ok = (root / "toy/e.npz").read_bytes() == data  # no duplicated prefix
    finally:
        record("Range ignored by server (200 on resume)", ok, corrupt_files(root, {"toy/e.npz": data}))
    hits = server.hits("/toy/e.npz")
    assert ok and hits[1][1] is not None and hits[1][2] == 200


def test_no_network_message(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/x.npz"
    with pytest.raises(fetch.NetworkUnavailable, match="Could not connect"):
        fetch.download(url, tmp_path / "x.npz", progress=False)
    record("no network (connection refused)", not (tmp_path / "x.npz").exists(), corrupt_files(tmp_path, {}))


def test_cli_starter_offline_prints_manual_steps_and_exits_4(tmp_path):
    env = dict(os.environ, XAI_DATA_MIRROR=f"http://127.0.0.1:{closed_port()}", XAI_DOWNLOAD_RETRIES="1",
               XAI_DOWNLOAD_BACKOFF="0.01", XAI_DATA_ROOT=str(tmp_path / "root"))
    p = subprocess.run([sys.executable, "-m", "data_download", "get", "--starter", "-q"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
    err = p.stderr
    survived = (p.returncode == 4 and "No network connection" in err and "zenodo.org/records/10519652" in err
                and "pneumoniamnist_64.npz" in err and str(tmp_path / "root" / "dermamnist") in err)
    record("CLI get --starter offline (exit 4)", survived, corrupt_files(tmp_path, {}))
    assert survived, (p.returncode, err)


# --------------------------------------------------------------------------------------------------
# interruption and concurrency
# --------------------------------------------------------------------------------------------------
class _InterruptingBar:
    def __init__(self, after: int):
        self.after, self.seen = after, 0

    def update(self, n):
        self.seen += n
        if self.seen >= self.after:
            raise KeyboardInterrupt

    def close(self):
        pass


def test_ctrl_c_mid_download_then_resume(server, tmp_path, monkeypatch):
    data = payload(3_000_000, seed=5)
    ds = single_file_ds(server, "f.npz", data, md5sum=md5(data))
    root = tmp_path / "root"
    monkeypatch.setattr(fetch, "CHUNK", 256 * 1024)
    monkeypatch.setattr(fetch, "_progress", lambda total, initial, desc, en: _InterruptingBar(1_000_000))
    with pytest.raises(KeyboardInterrupt):
        get_dataset(ds, root, progress=False)
    half_clean = not (root / "toy/f.npz").exists() and (root / "toy/f.npz.part").is_file()
    got = (root / "toy/f.npz.part").stat().st_size
    monkeypatch.undo()
    monkeypatch.setattr(fetch, "ensure_free_space", lambda *a, **k: None)
    get_dataset(ds, root, progress=False)
    ok = half_clean and (root / "toy/f.npz").read_bytes() == data
    record("Ctrl-C mid-download, then resumed", ok, corrupt_files(root, {"toy/f.npz": data}))
    assert ok and server.hits("/toy/f.npz")[-1][1] == f"bytes={got}-"


def test_ctrl_c_during_extraction_leaves_nothing(server, tmp_path, monkeypatch):
    entries = {f"pack/ISIC_{i:07d}.jpg": jpg_bytes(i) for i in range(20)}
    ds = archive_ds(server, "imgs.zip", make_zip(entries), "zip",
                    select=lambda n: "images/" + n.rsplit("/", 1)[-1])
    root = tmp_path / "root"
    monkeypatch.setattr(ex, "_progress", lambda total, desc, en, unit="B": _InterruptingBar(2000))
    with pytest.raises(KeyboardInterrupt):
        get_dataset(ds, root, progress=False)
    nothing = not (root / "toyarc/images").exists() and not list((root / "toyarc").glob(".staging-*"))
    monkeypatch.setattr(ex, "_progress", lambda total, desc, en, unit="B": ex._NullBar() if False else _NoBar())
    get_dataset(ds, root, progress=False)  # resumes: the verified archive is reused, not downloaded again
    expected = {f"toyarc/images/{k.rsplit('/', 1)[-1]}": v for k, v in entries.items()}
    ok = nothing and all((root / k).read_bytes() == v for k, v in expected.items())
    record("Ctrl-C during extraction, then resumed", ok, corrupt_files(root, expected))
    assert ok and len(server.hits("/toyarc/imgs.zip")) == 1
    assert not (root / ".downloads/imgs.zip").exists()  # deleted after extraction


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def test_two_concurrent_runs_do_not_collide(server, tmp_path):
    data = payload(1_500_000, seed=6)
    ds = single_file_ds(server, "g.npz", data, md5sum=md5(data))
    server.faults["/toy/g.npz"] = ["slow"]
    root = tmp_path / "root"
    errors = []

    def run():
        try:
            get_dataset(ds, root, progress=False, lock_timeout=30)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    with pytest.raises(fetch.LockBusy, match="Another data_download run"):
        get_dataset(ds, root, progress=False, lock_timeout=0)  # a third run that will not wait
    for t in threads:
        t.join(30)
    ok = not errors and (root / "toy/g.npz").read_bytes() == data and len(server.hits("/toy/g.npz")) == 1
    record("two concurrent runs (lock)", ok, corrupt_files(root, {"toy/g.npz": data}))
    assert ok, errors


# --------------------------------------------------------------------------------------------------
# hostile and broken archives
# --------------------------------------------------------------------------------------------------
def _hostile(server, tmp_path, fault, data, kind, exc=ex.UnsafeArchiveError, match=None):
    name = {"zip": "h.zip", "tar": "h.tar.gz", "rar": "h.rar"}[kind]
    base = tmp_path / "sandbox"
    root = base / "data" / "root"
    ds = archive_ds(server, name, data, kind)
    with pytest.raises(exc, match=match):
        get_dataset(ds, root, progress=False)
    quarantined = list((root / fetch.QUARANTINE).glob(f"{name}.*.bad"))
    nothing = not (root / "toyarc").exists() or not [p for p in (root / "toyarc").rglob("*") if p.is_file()
                                                       and not p.name.startswith(".")]
    outside = [p for p in base.rglob("*") if p.is_file() and root not in p.parents]
    survived = nothing and not outside and len(quarantined) == 1
    record(fault, survived, corrupt_files(root, {}) + len(outside))
    assert survived, (outside, quarantined)


def test_zip_with_dotdot_entry(server, tmp_path):
    data = make_zip({"ok/ISIC_0000001.jpg": b"x", "../../evil.txt": b"pwned"})
    _hostile(server, tmp_path, "zip entry with ../", data, "zip", match=r"\.\.")


def test_tar_with_dotdot_entry(server, tmp_path):
    data = make_tar({"images/a.png": b"x", "images/../../../evil.txt": b"pwned"})
    _hostile(server, tmp_path, "tar entry with ../", data, "tar", match=r"\.\.")


def test_zip_with_absolute_path(server, tmp_path):
    data = make_zip({"ok.txt": b"x", "/tmp/evil_abs.txt": b"pwned"})
    _hostile(server, tmp_path, "zip entry with absolute path", data, "zip", match="absolute")


def test_tar_with_absolute_path(server, tmp_path):
    data = make_tar({"ok.txt": b"x", "/tmp/evil_abs.txt": b"pwned"})
    _hostile(server, tmp_path, "tar entry with absolute path", data, "tar", match="absolute")


def test_tar_with_outward_symlink(server, tmp_path):
    data = make_tar({"images/a.png": b"x"}, symlinks={"images/link": "../../../../etc"})
    _hostile(server, tmp_path, "tar symlink pointing outside", data, "tar", match="outside")


def test_tar_with_outward_hardlink(server, tmp_path):
    data = make_tar({"images/a.png": b"x"}, hardlinks={"images/h": "../../etc/passwd"})
    _hostile(server, tmp_path, "tar hard link pointing outside", data, "tar", match="outside")


def test_zip_with_outward_symlink(server, tmp_path):
    data = make_zip({"a.txt": b"x"}, symlinks={"link": "/etc/passwd"})
    _hostile(server, tmp_path, "zip symlink pointing outside", data, "zip", match="absolute target")


def test_rar_with_dotdot_entry(server, tmp_path):
    data = make_rar({"PH2Dataset/ok.txt": b"x", "../evil.txt": b"pwned"})
    _hostile(server, tmp_path, "rar entry with ../", data, "rar", match=r"\.\.")


def test_zip_bomb_over_cap(server, tmp_path):
    data = make_zip({"bomb.bin": b"\0" * 5_000_000})
    assert len(data) < 20_000
    base = tmp_path / "sandbox"
    root = base / "root"
    ds = archive_ds(server, "bomb.zip", data, "zip")
    with pytest.raises(ex.UnsafeArchiveError, match="cap"):
        get_dataset(ds, root, progress=False, cap=1_000_000)
    survived = not (root / "toyarc" / "bomb.bin").exists()
    outside = [p for p in base.rglob("*") if p.is_file() and root not in p.parents]
    record("zip bomb (5 MB from 5 KB, cap 1 MB)", survived, corrupt_files(root, {}) + len(outside))
    assert survived


def test_zip_header_lying_about_size(tmp_path):
    """A bomb that declares small sizes but inflates to more: caught while writing."""
    raw = make_zip({"small.bin": b"\0" * 400_000})
    # patch the declared uncompressed size (local header and central directory) down to 1000 bytes
    z = bytearray(raw)
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = z.find(sig)
        z[i + off:i + off + 4] = struct.pack("<I", 1000)
    path = tmp_path / "liar.zip"
    path.write_bytes(bytes(z))
    with pytest.raises((ex.UnsafeArchiveError, ex.CorruptArchiveError)):
        ex.extract(path, tmp_path / "out", progress=False)
    survived = not (tmp_path / "out" / "small.bin").exists()
    record("zip header lying about expanded size", survived, corrupt_files(tmp_path / "out", {}) if
           (tmp_path / "out").exists() else 0)
    assert survived


def test_truncated_zip(server, tmp_path):
    full = make_zip({f"d/ISIC_{i:07d}.jpg": jpg_bytes(i) for i in range(10)})
    _hostile(server, tmp_path, "truncated zip archive", full[: len(full) * 2 // 3], "zip",
             exc=ex.CorruptArchiveError, match="truncated|damaged|not a readable")


def test_truncated_tar_gz(server, tmp_path):
    full = make_tar({f"images/{i:08d}_000.png": png_bytes(i, 64) for i in range(10)})
    _hostile(server, tmp_path, "truncated tar.gz archive", full[: len(full) // 2], "tar",
             exc=ex.CorruptArchiveError, match="truncated|damaged")


# --------------------------------------------------------------------------------------------------
# whole flows: manifest, check, RAR, NIH streaming
# --------------------------------------------------------------------------------------------------
def test_archive_flow_records_manifest_and_check_detects_change(server, tmp_path):
    imgs = {f"ISIC2018_Task3_Training_Input/ISIC_{i:07d}.jpg": jpg_bytes(i) for i in range(8)}
    imgs["ISIC2018_Task3_Training_Input/ATTRIBUTION.txt"] = b"cc"
    from data_download.registry import HAM10000

    server.files["/ham/in.zip"] = make_zip(imgs)
    rows = [["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]] + [
        [f"HAM_{i // 2:07d}", f"ISIC_{i:07d}", "mel" if i % 3 == 0 else "nv", "histo", "50", "male", "back"]
        for i in range(8)]
    meta = "\n".join(",".join(r) for r in rows).encode()
    server.files["/ham/meta.csv"] = meta
    ds = Dataset(name="ham10000", title="t", licence="-", citation="-", homepage="-", layout="-",
                 remotes=(Remote(name="in.zip", url=server.url("/ham/in.zip"), kind="zip",
                                 select=HAM10000.remotes[0].select),
                          Remote(name="meta.csv", url=server.url("/ham/meta.csv"), target="HAM10000_metadata.csv")),
                 manual="-", approx_size=1)
    root = tmp_path / "root"
    get_dataset(ds, root, progress=False)
    man = json.loads((root / fetch.MANIFEST).read_text())["ham10000"]
    assert set(man["downloads"]) == {"in.zip", "meta.csv"}
    assert len(man["files"]) == 8 and "images/ISIC_0000003.jpg" in man["files"]
    rep = chk.check_ham10000(root, progress=False)
    assert rep.status == "partial" and rep.images == 8 and "8 of 10,015" in rep.summary()
    assert "match the manifest" in rep.verification
    # a second run is a no-op: nothing downloaded again
    n = len(server.requests)
    get_dataset(ds, root, progress=False)
    assert len(server.requests) == n
    # the publisher's file changes: detected against the first download's SHA-256
    (root / "ham10000/HAM10000_metadata.csv").unlink()
    server.files["/ham/meta.csv"] = meta + b"\n"
    with pytest.raises(fetch.ChecksumError, match="first downloaded"):
        get_dataset(ds, root, progress=False)
    # a file corrupted on disk: check says broken, CLI exits 1
    (root / "ham10000/images/ISIC_0000002.jpg").write_bytes(b"\xff\xd8garbage")
    rep = chk.check_ham10000(root, progress=False)
    assert rep.broken and any("ISIC_0000002" in p for p in rep.problems)
    p = subprocess.run([sys.executable, "-m", "data_download", "check", "ham10000", "--root", str(root), "-q"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "BROKEN" in p.stdout


def test_rar_extraction_and_from_path(tmp_path):
    from data_download.registry import PH2

    case = "PH2Dataset/PH2 Dataset images/IMD002"
    entries = {"PH2Dataset/PH2_dataset.txt": b"Name\tClinical Diagnosis\tAsymmetry\nIMD002\t0\t0\n",
               f"{case}/IMD002_Dermoscopic_Image/IMD002.png": png_bytes(1),
               f"{case}/IMD002_lesion/IMD002_lesion.png": png_bytes(2)}
    rar = tmp_path / "PH2Dataset.rar"
    rar.write_bytes(make_rar(entries))
    root = tmp_path / "root"
    get_dataset(PH2, root, from_path=rar, progress=False)
    ok = all((root / "ph2" / k).read_bytes() == v for k, v in entries.items())
    rep = chk.check_ph2(root, progress=False)
    assert ok and rep.status == "partial" and rep.images == 1 and not rep.problems


@pytest.mark.skipif(not any(__import__("shutil").which(t) for t in ("bsdtar", "unrar", "7z", "unar")),
                    reason="no RAR tool installed (apt-get install libarchive-tools gives bsdtar)")
def test_rar_through_external_tool(tmp_path, monkeypatch):
    """Compressed RAR members (the real PH2 archive) go through a RAR tool: force that path."""
    entries = {"PH2Dataset/PH2_dataset.txt": b"IMD002 0\n",
               "PH2Dataset/PH2 Dataset images/IMD002/IMD002_lesion/IMD002_lesion.png": png_bytes(3)}
    rar = tmp_path / "PH2Dataset.rar"
    rar.write_bytes(make_rar(entries))
    real = ex._extract_rar
    monkeypatch.setattr(ex, "_extract_rar", lambda *a, **k: real(*a, force_tool=True))
    out = ex.extract(rar, tmp_path / "out", progress=False)
    assert sorted(out) == sorted(entries)
    assert all((tmp_path / "out" / k).read_bytes() == v for k, v in entries.items())
    assert not list((tmp_path / "out").glob(".staging-*"))


def test_nih_streams_only_boxed_images_and_resumes_archive_by_archive(server, tmp_path):
    names = [f"{i:08d}_000.png" for i in range(1, 9)]
    pngs = {n: png_bytes(i, 32) for i, n in enumerate(names)}
    boxed = {names[1], names[5], names[6]}
    server.files["/nih/images_001.tar.gz"] = make_tar({f"images/{n}": pngs[n] for n in names[:4]})
    server.files["/nih/images_002.tar.gz"] = make_tar({f"images/{n}": pngs[n] for n in names[4:]})
    root = tmp_path / "root"
    folder = root / "nih_cxr_bbox"
    folder.mkdir(parents=True)
    with open(folder / "BBox_List_2017.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", ""])
        for n in sorted(boxed):
            w.writerow([n, "Mass", 10, 20, 30, 40])
    with open(folder / "Data_Entry_2017_v2020.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID"])
        for i, n in enumerate(names):
            w.writerow([n, "No Finding", 0, i])
    ds = Dataset(name="nih_cxr_bbox", title="t", licence="-", citation="-", homepage="-", layout="-",
                 remotes=tuple(Remote(name=f"images_00{k}.tar.gz", url=server.url(f"/nih/images_00{k}.tar.gz"),
                                      kind="tar") for k in (1, 2)), manual="-", approx_size=1)
    server.faults["/nih/images_001.tar.gz"] = ["drop"]          # dropped mid-stream: reconnect with Range
    server.faults["/nih/images_002.tar.gz"] = ["500"] * 10      # archive 2 fails this run
    with pytest.raises(fetch.DownloadError):
        get_dataset(ds, root, progress=False)
    after_first = sorted(p.name for p in (folder / "images").glob("*.png"))
    assert after_first == [names[1]]  # archive 1's boxed image, complete; nothing of archive 2
    server.faults["/nih/images_002.tar.gz"] = ["drop"]
    get_dataset(ds, root, progress=False, extra=1)
    got = {p.name: p.read_bytes() for p in (folder / "images").glob("*.png")}
    assert boxed <= set(got) and all(got[n] == pngs[n] for n in got)
    expected_extra = set(got) - boxed
    assert len(expected_extra) <= 1  # the one extra unboxed image, if it lives in archive 2
    hits1 = server.hits("/nih/images_001.tar.gz")
    assert len(hits1) == 2 and hits1[1][2] == 206  # archive 1: one reconnect, never fetched again
    expected = {f"nih_cxr_bbox/images/{n}": pngs[n] for n in got}
    expected.update({f"nih_cxr_bbox/{c}": (folder / c).read_bytes() for c in
                     ("BBox_List_2017.csv", "Data_Entry_2017_v2020.csv")})
    record("NIH stream dropped + archive failing, resumed", True, corrupt_files(root, expected))
    rep = chk.check_nih(root, progress=False)
    assert rep.images == 3 and not rep.problems


def test_medmnist_check_shapes_and_md5(tmp_path):
    root = tmp_path / "root"
    (root / "pneumoniamnist").mkdir(parents=True)
    arrays = {}
    for split, n in {"train": 4708, "val": 524, "test": 624}.items():
        arrays[f"{split}_images"] = np.zeros((n, 28, 28), np.uint8)
        arrays[f"{split}_labels"] = np.zeros((n, 1), np.uint8)
    np.savez(root / "pneumoniamnist/pneumoniamnist.npz", **arrays)
    rep = chk.check_medmnist("pneumoniamnist", root, progress=False)
    assert rep.status == "ok" and rep.images == 5856 and "unverified" in rep.verification
    arrays["val_images"] = np.zeros((10, 28, 28), np.uint8)
    np.savez(root / "pneumoniamnist/pneumoniamnist.npz", **arrays)
    assert chk.check_medmnist("pneumoniamnist", root, progress=False).broken


def test_get_refuses_read_only_root(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        from data_download.registry import DATASETS

        with pytest.raises(fetch.DownloadError, match="read-only"):
            get_dataset(DATASETS["pneumoniamnist"], ro, progress=False)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_cli_help_and_list():
    p = subprocess.run([sys.executable, "-m", "data_download", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "exit codes" in p.stdout and "--starter" in p.stdout
    p = subprocess.run([sys.executable, "-m", "data_download", "list", "-v", "--no-present"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    for name in ("ham10000", "ph2", "nih_cxr_bbox", "dermamnist", "pneumoniamnist", "chestmnist",
                 "28209eda62fecd6e6a2d98b1501bb15f", "CC BY-NC 4.0"):
        assert name in p.stdout


def test_dataverse_metadata_resolved_md5_checked_and_tab_converted(server, tmp_path, monkeypatch):
    from data_download import install

    tab = b"lesion_id\timage_id\tdx\nHAM_0000001\tISIC_0000001\tmel\n"
    listing = {"status": "OK", "data": {"latestVersion": {"files": [
        {"dataFile": {"id": 7, "filename": "HAM10000_images_part1.zip", "md5": "0" * 32}},
        {"dataFile": {"id": 42, "filename": "HAM10000_metadata.tab", "originalFileName": "HAM10000_metadata",
                      "md5": md5(tab)}}]}}}
    server.files["/api/datasets/:persistentId/"] = json.dumps(listing).encode()
    server.files["/api/access/datafile/42"] = tab
    monkeypatch.setattr(install, "DATAVERSE", server.url(""))
    ds = Dataset(name="hamx", title="t", licence="-", citation="-", homepage="-", layout="-",
                 remotes=(Remote(name="HAM10000_metadata", url="dataverse:HAM10000_metadata",
                                 target="HAM10000_metadata.csv"),), manual="-", approx_size=1)
    root = tmp_path / "root"
    get_dataset(ds, root, progress=False)
    text = (root / "hamx/HAM10000_metadata.csv").read_text()
    assert text.splitlines()[0] == "lesion_id,image_id,dx" and "ISIC_0000001" in text
    # the published MD5 is enforced: a different file is quarantined
    (root / "hamx/HAM10000_metadata.csv").unlink()
    server.files["/api/access/datafile/42"] = tab + b"x"
    with pytest.raises(fetch.ChecksumError):
        get_dataset(ds, root, progress=False)
    assert not (root / "hamx/HAM10000_metadata.csv").exists()


def test_ham10000_from_manually_downloaded_files(tmp_path, monkeypatch):
    """`get ham10000 --from FOLDER` with the official file names: no network at all."""
    from data_download.registry import HAM10000

    monkeypatch.setenv("XAI_DATA_MIRROR", f"http://127.0.0.1:{closed_port()}")  # any network use fails
    src = tmp_path / "downloads"
    src.mkdir()
    imgs = {f"ISIC_{i:07d}.jpg": jpg_bytes(i) for i in range(24306, 24312)}
    (src / "ISIC2018_Task3_Training_Input.zip").write_bytes(
        make_zip({f"ISIC2018_Task3_Training_Input/{k}": v for k, v in imgs.items()} |
                 {"ISIC2018_Task3_Training_Input/LICENSE.txt": b"cc"}))
    (src / "ISIC2018_Task3_Training_GroundTruth.zip").write_bytes(
        make_zip({"ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv": b"image,MEL\n"}))
    meta = "lesion_id,image_id,dx,dx_type,age,sex,localization\n" + "".join(
        f"HAM_{i:07d},{k[:-4]},nv,histo,40,male,back\n" for i, k in enumerate(imgs))
    (src / "HAM10000_metadata.csv").write_text(meta)
    root = tmp_path / "root"
    get_dataset(HAM10000, root, from_path=src, progress=False)
    d = root / "ham10000"
    assert sorted(p.name for p in (d / "images").iterdir()) == sorted(imgs)
    assert (d / "HAM10000_metadata.csv").read_text() == meta
    assert (d / "ISIC2018_Task3_Training_GroundTruth.csv").is_file()
    assert (src / "ISIC2018_Task3_Training_Input.zip").is_file()  # the user's own copy is never deleted
    rep = chk.check_ham10000(root, progress=False)
    assert rep.status == "partial" and rep.images == 6 and not rep.problems


def test_ph2_from_extracted_folder(tmp_path):
    from data_download.registry import PH2

    src = tmp_path / "unpacked" / "PH2Dataset"
    case = src / "PH2 Dataset images" / "IMD003"
    (case / "IMD003_Dermoscopic_Image").mkdir(parents=True)
    (case / "IMD003_lesion").mkdir()
    (src / "PH2_dataset.txt").write_text("|| IMD003 || 0 ||\n")
    (case / "IMD003_Dermoscopic_Image" / "IMD003.png").write_bytes(png_bytes(5))
    (case / "IMD003_lesion" / "IMD003_lesion.png").write_bytes(png_bytes(6))
    root = tmp_path / "root"
    get_dataset(PH2, root, from_path=tmp_path / "unpacked", progress=False)
    rep = chk.check_ph2(root, progress=False)
    assert rep.images == 1 and not rep.problems, rep.summary()
    assert (root / "ph2/PH2Dataset/PH2 Dataset images/IMD003/IMD003_lesion/IMD003_lesion.png").is_file()


def test_cli_check_named_but_missing_exits_3(tmp_path):
    (tmp_path / "root").mkdir()
    p = subprocess.run([sys.executable, "-m", "data_download", "check", "chestmnist", "--root",
                        str(tmp_path / "root"), "-q"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 3 and "chestmnist" in p.stdout and "not present" in p.stdout


# --------------------------------------------------------------------------------------------------
# the real shared data (placed by hand): check reports it, exits 0, and writes nothing
# --------------------------------------------------------------------------------------------------
def _snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in [root, *root.rglob("*")]}


@pytest.mark.realdata
def test_check_real_shared_data_is_read_only_and_exits_0(real_dataset):
    real_dataset("pneumoniamnist")                  # each skips, saying how to fetch it, where it is missing
    root = real_dataset("ham10000")
    before = _snapshot(root)
    p = subprocess.run([sys.executable, "-m", "data_download", "check", "--root", str(root), "-q",
                        "ham10000", "ph2", "nih_cxr_bbox", "pneumoniamnist"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    for name in ("ham10000", "ph2", "nih_cxr_bbox", "pneumoniamnist"):
        assert name in out
    assert "4 present, 0 broken" in out
    assert "partial: 5,984 of 10,015 images" in out
    assert "unverified (no manifest)" in out and "corrupt" not in out.lower()
    assert _snapshot(root) == before  # nothing written, not even a manifest
