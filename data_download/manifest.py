"""The manifest: ``<root>/manifest.json`` records the SHA-256 of each file's first good download.

A later download that differs from that record is caught (the publisher changed the file, or it was
swapped), so the record must never be lost: it is updated read-modify-write under a file lock, written
atomically, and a manifest that cannot be read is reported (never taken for "no record") and kept aside
as ``manifest.json.corrupt-<time>`` rather than overwritten.
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .fetch import MANIFEST, DownloadError, LockBusy

class ManifestError(DownloadError):
    """``<root>/manifest.json`` exists but cannot be read (truncated, not JSON, not a mapping)."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} is unreadable ({reason}). {REBUILD_HINT}")


REBUILD_HINT = ("To rebuild it: restore manifest.json from a backup if you have one; otherwise move it "
                "aside (e.g. `mv manifest.json manifest.json.bad`): `check` then verifies by reading the "
                "files only (no checksums) and every later `get` records its downloads afresh. The next "
                "`get` also does this itself, keeping the damaged file as manifest.json.corrupt-<time>.")


def read_manifest(root: Path) -> dict:
    """The manifest as a dict; ``{}`` when there is none. A manifest that exists but cannot be read
    raises :class:`ManifestError`: an unreadable record is never mistaken for "no record"."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ManifestError(path, f"{type(e).__name__}: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ManifestError(path, "not a mapping of dataset -> records")
    return data


def manifest_problem(root: Path) -> str | None:
    """None when the manifest is readable (or absent), else a sentence saying what is wrong."""
    try:
        read_manifest(root)
    except ManifestError as e:
        return str(e)
    return None


def set_aside_manifests(root: Path) -> list[Path]:
    """Damaged manifests that :func:`update_manifest` moved aside (``manifest.json.corrupt-<time>``)."""
    return sorted(Path(root).glob(MANIFEST + ".corrupt-*"))


@contextmanager
def manifest_lock(root: Path, timeout: float = 600.0):
    """Serialises read-modify-write of ``<root>/manifest.json`` across processes and threads."""
    from filelock import FileLock, Timeout

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / ".manifest.lock"
    lock = FileLock(str(path), thread_local=False, is_singleton=False)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise LockBusy(f"Waited {timeout:.0f} s for another run to finish updating {root / MANIFEST} "
                       f"(lock {path}).") from None
    try:
        yield
    finally:
        lock.release()


def _set_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    return target


def _read_manifest_for_update(root: Path) -> dict:
    """Call with :func:`manifest_lock` held. A damaged manifest is moved aside (kept, never
    overwritten) with a warning on stderr, and a new one is started."""
    try:
        return read_manifest(root)
    except ManifestError as e:
        aside = _set_aside(Path(root) / MANIFEST)
        print(f"[data_download] WARNING: {e.path} is unreadable ({e.reason}); "
              f"it was kept as {aside.name} and a new manifest is started. The SHA-256 records in it "
              f"(earlier downloads) are no longer used: restore it from a backup to keep them.",
              file=sys.stderr, flush=True)
        return {}


def salvage_manifest(root: Path) -> None:
    """Before a `get` reads the manifest: set a damaged one aside (see :func:`update_manifest`)."""
    if (Path(root) / MANIFEST).exists() and manifest_problem(root):
        with manifest_lock(root):
            _read_manifest_for_update(root)


def write_json_atomic(path: Path, data) -> None:
    """Write JSON to a temporary file beside ``path``, fsync it, then ``os.replace`` it into place:
    a reader sees the old file or the new one, never half of either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def update_manifest(root: Path, dataset: str, section: str, entries: dict) -> None:
    """Merge ``entries`` into ``manifest[dataset][section]``: read-modify-write under
    :func:`manifest_lock`, written atomically, so concurrent runs lose no entry. A damaged manifest
    is kept aside as ``manifest.json.corrupt-<time>``, never overwritten."""
    with manifest_lock(root):
        man = _read_manifest_for_update(root)
        man.setdefault(dataset, {}).setdefault(section, {}).update(entries)
        write_json_atomic(Path(root) / MANIFEST, man)
