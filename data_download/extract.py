"""Safe extraction of zip, tar(.gz) and rar archives.

Every archive is treated as hostile until proven otherwise. Extraction refuses, before anything is
written: member names that are absolute (``/etc/x``, ``C:\\x``) or climb out with ``..``; symbolic or
hard links whose target lies outside the destination; device files; and archives whose declared or
actual expanded size exceeds a cap (a zip bomb). Members go to a staging folder first and are moved
into place only when the whole archive has been read without error, so a truncated or hostile
archive leaves nothing behind.

``select(name) -> relpath | None`` maps an archive member to where it belongs in the dataset's layout
(or None to skip it): this is how ``ISIC2018_Task3_Training_Input/ISIC_0024306.jpg`` becomes
``images/ISIC_0024306.jpg`` and how only the boxed NIH images are kept from a 4 GB tar stream.
"""
from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable

from .fetch import is_disk_full

DEFAULT_CAP = 64 * 1000 ** 3  # 64 GB expanded, far above any dataset here
COPY_CHUNK = 1 << 20


class UnsafeArchiveError(RuntimeError):
    """The archive holds an entry that would write outside the target, or expands too much."""


class CorruptArchiveError(RuntimeError):
    """The archive is truncated or damaged."""


def _check_name(name: str) -> str:
    """Return the normalised relative POSIX path of a member name, or raise UnsafeArchiveError."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":") or raw.startswith("//"):
        raise UnsafeArchiveError(f"refusing absolute path in archive: {name!r}")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"refusing path that climbs out with '..': {name!r}")
    return "/".join(parts)


def _check_link(name: str, target: str, hard: bool = False) -> None:
    """Refuse a link whose target resolves outside the extraction root."""
    norm = _check_name(name)
    t = target.replace("\\", "/")
    if t.startswith("/") or (len(t) > 1 and t[1] == ":"):
        raise UnsafeArchiveError(f"refusing link {name!r} -> {target!r}: absolute target")
    base = "" if hard else posixpath.dirname(norm)
    resolved = posixpath.normpath(posixpath.join(base, t))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(f"refusing link {name!r} -> {target!r}: points outside the target")


def _identity(name: str) -> str:
    return name


def _progress(total, desc, enabled, unit="B"):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, unit_scale=True, desc=desc, disable=not enabled, leave=False,
                mininterval=0.5)


class _Stager:
    """Writes selected members under ``dest/.staging-<tag>``; commit() moves them into place."""

    def __init__(self, dest: Path, tag: str, cap: int):
        self.dest = Path(dest)
        self.stage = self.dest / f".staging-{tag}"
        if self.stage.exists():
            shutil.rmtree(self.stage)
        self.stage.mkdir(parents=True)
        self.cap = cap
        self.total = 0
        self.files: list[str] = []

    def write(self, rel: str, src, declared: int | None, bar) -> None:
        rel = _check_name(rel)  # the mapped name must be safe too
        out = self.stage / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with open(out, "wb") as f:
            while True:
                block = src.read(COPY_CHUNK)
                if not block:
                    break
                written += len(block)
                self.total += len(block)
                if self.total > self.cap:
                    raise UnsafeArchiveError(
                        f"archive expands beyond the cap of {self.cap} bytes (zip bomb?)")
                if declared is not None and written > declared:
                    raise UnsafeArchiveError(f"{rel}: more data than its header declares")
                f.write(block)
                bar.update(len(block))
        if declared is not None and written != declared:
            raise CorruptArchiveError(f"{rel}: {written} bytes, header says {declared} (truncated)")
        self.files.append(rel)

    def commit(self) -> list[str]:
        for rel in self.files:
            target = self.dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.stage / rel, target)
        shutil.rmtree(self.stage, ignore_errors=True)
        return list(self.files)

    def abort(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)


def archive_kind(path: str | os.PathLike) -> str:
    name = str(path).lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")) or name.endswith(".gz"):
        return "tar"
    if name.endswith(".rar"):
        return "rar"
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        return "zip"
    if head.startswith(b"Rar!"):
        return "rar"
    return "tar"


def sniff_kind(path: str | os.PathLike) -> str | None:
    """What the file's bytes say it is: "zip", "rar", "tar" (plain or compressed), or None (e.g. a
    text file). Unlike :func:`archive_kind` this never guesses from the name."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head.startswith(b"Rar!\x1a\x07"):
        return "rar"
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, EOFError, tarfile.TarError, zlib_error()):
        pass
    return None


def extract(archive: str | os.PathLike, dest: str | os.PathLike, *,
            select: Callable[[str], str | None] | None = None, cap: int = DEFAULT_CAP,
            progress: bool = True, kind: str | None = None) -> list[str]:
    """Safely extract ``archive`` into ``dest``; returns the relative paths written.

    Raises :class:`UnsafeArchiveError` (nothing written) or :class:`CorruptArchiveError`.
    """
    archive, dest = Path(archive), Path(dest)
    kind = kind or archive_kind(archive)
    select = select or _identity
    stager = _Stager(dest, archive.name.replace(".", "_"), cap)
    try:
        if kind == "zip":
            _extract_zip(archive, select, stager, cap, progress)
        elif kind == "rar":
            _extract_rar(archive, select, stager, cap, progress)
        else:
            with open(archive, "rb") as f:
                _extract_tar_stream(f, select, stager, progress, archive.name)
    except BaseException:
        stager.abort()
        raise
    return stager.commit()


def _extract_zip(archive: Path, select, stager: _Stager, cap: int, progress: bool) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise CorruptArchiveError(f"{archive.name} is not a readable zip ({e}); it may be truncated: "
                                  f"delete it and download again.") from None
    with zf:
        infos = zf.infolist()
        declared = 0
        for info in infos:  # check everything before writing anything
            _check_name(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                _check_link(info.filename, zf.read(info).decode("utf-8", "replace"))
            declared += info.file_size
        if declared > cap:
            raise UnsafeArchiveError(f"{archive.name} declares {declared} bytes expanded, over the cap "
                                     f"of {cap} (zip bomb?)")
        bar = _progress(declared, f"extract {archive.name}", progress)
        try:
            for info in infos:
                if info.is_dir() or stat.S_ISLNK(info.external_attr >> 16):
                    continue
                rel = select(_check_name(info.filename))
                if rel is None:
                    continue
                try:
                    with zf.open(info) as src:
                        stager.write(rel, src, info.file_size, bar)
                except (zipfile.BadZipFile, EOFError, OSError) as e:
                    if isinstance(e, UnsafeArchiveError) or is_disk_full(e):
                        raise  # a full disk is not a damaged archive
                    raise CorruptArchiveError(f"{archive.name}: member {info.filename!r} is damaged "
                                              f"({e}); delete the archive and download again.") from None
        finally:
            bar.close()


def _extract_tar_stream(fileobj, select, stager: _Stager, progress: bool, label: str,
                        on_member: Callable[[str], None] | None = None) -> None:
    bar = _progress(None, f"extract {label}", progress)
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tf:
            for m in tf:
                name = _check_name(m.name)
                if m.issym():
                    _check_link(m.name, m.linkname)
                    continue  # links are never needed by the datasets: checked, then skipped
                if m.islnk():
                    _check_link(m.name, m.linkname, hard=True)
                    continue
                if m.ischr() or m.isblk() or m.isfifo():
                    raise UnsafeArchiveError(f"refusing device/fifo entry {m.name!r}")
                if not m.isfile():
                    continue
                rel = select(name)
                if rel is None:
                    continue
                src = tf.extractfile(m)
                stager.write(rel, src, m.size, bar)
                if on_member:
                    on_member(rel)
    except (tarfile.TarError, EOFError, OSError, zlib_error()) as e:
        if isinstance(e, (UnsafeArchiveError, CorruptArchiveError)) or is_disk_full(e):
            raise  # a full disk is not a damaged archive
        raise CorruptArchiveError(f"{label} is truncated or damaged ({e}); delete it and download "
                                  f"again.") from None
    finally:
        bar.close()


def zlib_error():
    import zlib

    return zlib.error


def stream_tar(fileobj, dest: str | os.PathLike, *, select: Callable[[str], str | None],
               tag: str, cap: int = DEFAULT_CAP, progress: bool = True) -> list[str]:
    """Extract the selected members of a tar(.gz) read from a stream (e.g. an HTTP response) with
    the same safety rules and staging as :func:`extract`. Nothing of the archive itself is stored."""
    stager = _Stager(Path(dest), tag, cap)
    try:
        _extract_tar_stream(fileobj, select, stager, progress, tag)
    except BaseException:
        stager.abort()
        raise
    return stager.commit()


def rar_tool_hint() -> str:
    return ("PH2's official archive is a RAR file; its compressed members need a RAR tool: install one "
            "with your system's package manager, e.g. `sudo apt-get install libarchive-tools` (bsdtar; "
            "Debian/Ubuntu; no RAR3 *solid* archives), `unrar` (non-free, any RAR), `brew install "
            "libarchive` (macOS) or 7-Zip on Windows. Or extract PH2Dataset.rar with any unpacker and "
            "run `python -m data_download get ph2 --from PATH/TO/PH2Dataset`.")


def _extract_rar(archive: Path, select, stager: _Stager, cap: int, progress: bool,
                 force_tool: bool = False) -> None:
    import rarfile

    try:
        rf = rarfile.RarFile(str(archive))
    except (rarfile.BadRarFile, rarfile.NotRarFile) as e:
        raise CorruptArchiveError(f"{archive.name} is not a readable RAR archive ({e}); it may be "
                                  f"truncated: delete it and download again.") from None
    with rf:
        infos = rf.infolist()
        declared = 0
        for info in infos:
            _check_name(info.filename)
            if info.is_symlink():
                try:
                    target = rf.read(info).decode("utf-8", "replace")
                except Exception:
                    target = "/"
                _check_link(info.filename, target)
            declared += info.file_size
        if declared > cap:
            raise UnsafeArchiveError(f"{archive.name} declares {declared} bytes expanded, over the cap "
                                     f"of {cap}")
        compressed = any(i.compress_type != 0x30 and i.file_size for i in infos if not i.is_dir())
        if compressed or force_tool:  # rarfile can only stream stored members itself: let a RAR tool unpack
            _rar_via_tool(archive, select, stager, progress)
            return
        bar = _progress(declared, f"extract {archive.name}", progress)
        try:
            for info in infos:
                if info.is_dir() or info.is_symlink():
                    continue
                rel = select(_check_name(info.filename))
                if rel is None:
                    continue
                try:
                    with rf.open(info) as src:
                        stager.write(rel, src, info.file_size, bar)
                except (rarfile.Error, EOFError) as e:
                    raise CorruptArchiveError(f"{archive.name}: member {info.filename!r} is damaged "
                                              f"({e})") from None
        finally:
            bar.close()


RAR_TOOLS = (  # (executable, argv builder(archive, outdir)); each refuses absolute and '..' paths itself
    ("bsdtar", lambda a, d: ["bsdtar", "-x", "-f", a, "-C", d]),
    ("unrar", lambda a, d: ["unrar", "x", "-o+", "-y", "-idq", a, d + "/"]),
    ("7z", lambda a, d: ["7z", "x", "-y", "-bd", f"-o{d}", a]),
    ("unar", lambda a, d: ["unar", "-q", "-f", "-o", d, a]),
)


def _rar_via_tool(archive: Path, select, stager: _Stager, progress: bool) -> None:
    """Unpack with the first RAR tool that works into a private folder inside the staging area,
    after the member names were checked; then pass every file through the same mapping and cap."""
    import subprocess

    raw = stager.stage / ".raw"
    errors = []
    for exe, argv in RAR_TOOLS:
        if not shutil.which(exe):
            continue
        if raw.exists():
            shutil.rmtree(raw)
        raw.mkdir(parents=True)
        p = subprocess.run(argv(str(archive), str(raw)), capture_output=True, text=True)
        if p.returncode == 0:
            break
        errors.append(f"{exe}: {(p.stderr or p.stdout).strip()[-300:]}")
    else:
        shutil.rmtree(raw, ignore_errors=True)
        detail = ("; ".join(errors) + ". ") if errors else "No RAR tool (bsdtar, unrar, 7z, unar) was found. "
        raise RuntimeError(detail + rar_tool_hint())
    files = sorted(q for q in raw.rglob("*") if q.is_file() and not q.is_symlink())
    bar = _progress(len(files), f"extract {archive.name}", progress, unit="file")
    try:
        for q in files:
            rel = select(_check_name(q.relative_to(raw).as_posix()))
            if rel is not None:
                with open(q, "rb") as f:
                    stager.write(rel, f, q.stat().st_size, _NullBar())
            bar.update(1)
    finally:
        bar.close()
        shutil.rmtree(raw, ignore_errors=True)


def copy_tree(src: Path, dest: Path, select: Callable[[str], str | None], progress: bool = True) -> list[str]:
    """Import an already-extracted folder (``--from PATH``) through the same mapping, staged."""
    src = Path(src)
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    stager = _Stager(Path(dest), "import", DEFAULT_CAP)
    bar = _progress(len(files), f"import {src.name}", progress, unit="file")
    try:
        for p in files:
            rel = select(p.relative_to(src).as_posix())
            if rel is None:
                continue
            with open(p, "rb") as f:
                stager.write(rel, f, p.stat().st_size, _NullBar())
            bar.update(1)
    except BaseException:
        stager.abort()
        raise
    finally:
        bar.close()
    return stager.commit()


class _NullBar:
    def update(self, n):
        pass


def names(archive: str | os.PathLike) -> Iterable[str]:
    """Member names (for tests and diagnostics)."""
    kind = archive_kind(archive)
    if kind == "zip":
        with zipfile.ZipFile(archive) as z:
            return z.namelist()
    if kind == "rar":
        import rarfile

        with rarfile.RarFile(str(archive)) as r:
            return r.namelist()
    with tarfile.open(archive) as t:
        return t.getnames()
