"""HTTP downloads that survive bad networks: resume, retry, verify, and never leave a half-written file.

Only the standard library speaks HTTP here (``urllib``), so nothing new has to be installed.

How one file is fetched (:func:`download`):

1. the bytes go to ``NAME.part`` beside the destination; the final name only ever appears, by an atomic
   ``os.replace``, once the size and checksum are right;
2. an existing ``NAME.part`` (an interrupted run, Ctrl-C, a dropped connection) is resumed with an
   HTTP ``Range`` request; a server that ignores ``Range`` (answers 200) is restarted cleanly from 0;
3. connection errors, time-outs and 5xx answers are retried with exponential back-off;
4. a checksum mismatch moves the file to ``<root>/.quarantine/`` and says so;
5. free disk space is checked before a large download.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

USER_AGENT = "xai-medimg-workbook data_download (+python urllib)"
CHUNK = 1 << 20
PART_SUFFIX = ".part"
QUARANTINE = ".quarantine"
MANIFEST = "manifest.json"


class DownloadError(RuntimeError):
    """A file could not be fetched; the message says what to do."""


class NetworkUnavailable(DownloadError):
    """No connection could be made at all (offline, DNS failure, connection refused)."""


class ChecksumError(DownloadError):
    """The bytes arrived but do not match the published (or first recorded) checksum."""


class DiskSpaceError(DownloadError):
    """Not enough free space for the download."""


class ManualStepNeeded(DownloadError):
    """A file must be fetched by hand first (e.g. behind a web page that needs a click)."""


class LockBusy(DownloadError):
    """Another run holds the lock for this dataset."""


class FromPathError(DownloadError):
    """``--from PATH`` is missing or holds nothing of the dataset: a usage error, never a download."""


# a full disk (or quota): reported as such (exit 6), never as a damaged archive
DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_error(exc: OSError, root: Path | None, what: str = "") -> DiskSpaceError:
    where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
    return DiskSpaceError(
        f"The disk ran out of space{' while ' + what if what else ''} ({exc.strerror or exc}{where}). "
        f"Nothing half-written was installed. Free some space, or choose another data root with "
        f"--root DIR (or XAI_DATA_ROOT), and run the command again"
        + (f" (free space now: {human(shutil.disk_usage(nearest_existing(Path(root))).free)})."
           if root is not None else "."))


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def default_retries() -> int:
    """``XAI_DOWNLOAD_RETRIES`` (default 6)."""
    return _env_int("XAI_DOWNLOAD_RETRIES", 6)


def default_backoff() -> float:
    """First back-off in seconds, doubled each try (``XAI_DOWNLOAD_BACKOFF``, default 2)."""
    return _env_float("XAI_DOWNLOAD_BACKOFF", 2.0)


def default_timeout() -> float:
    """Socket time-out in seconds (``XAI_DOWNLOAD_TIMEOUT``, default 60)."""
    return _env_float("XAI_DOWNLOAD_TIMEOUT", 60.0)


# --------------------------------------------------------------------------------------------------
# hashing, sizes, disk space
# --------------------------------------------------------------------------------------------------
def file_hash(path: str | os.PathLike, algo: str = "sha256", chunk: int = CHUNK) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"


def nearest_existing(path: Path) -> Path:
    p = Path(path)
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def ensure_free_space(path: str | os.PathLike, need_bytes: int | None, what: str = "download") -> None:
    """Raise :class:`DiskSpaceError` when the file system holding ``path`` has less than
    ``need_bytes`` plus a 5 % / 100 MB margin free."""
    if not need_bytes:
        return
    probe = nearest_existing(Path(path))
    free = shutil.disk_usage(probe).free
    margin = max(int(need_bytes * 0.05), 100 * 1000 * 1000)
    if free < need_bytes + margin:
        raise DiskSpaceError(
            f"Not enough disk space for {what}: needs about {human(need_bytes + margin)}, "
            f"{human(free)} free on the disk holding {probe}. Free some space or choose another "
            f"data root with --root DIR (or the XAI_DATA_ROOT environment variable).")


def assert_writable_root(root: Path) -> None:
    """Refuse to write into a folder marked read-only (no write bit), even when running as root:
    a shared class copy of the data must never be modified by a download."""
    probe = nearest_existing(Path(root))
    mode = probe.stat().st_mode
    if not (mode & 0o222) or not os.access(probe, os.W_OK):
        raise DownloadError(
            f"The data root {root} is read-only ({probe} has no write permission). Downloads never "
            f"write into a read-only (shared) copy: pass --root DIR with a writable folder, or set "
            f"XAI_DATA_ROOT to one.")


# --------------------------------------------------------------------------------------------------
# lock
# --------------------------------------------------------------------------------------------------
@contextmanager
def dataset_lock(root: Path, name: str, timeout: float | None = None):
    """Hold ``<root>/.<name>.lock`` so two runs never write the same dataset at once.

    ``timeout``: seconds to wait for another run (None: ``XAI_DOWNLOAD_LOCK_TIMEOUT``, default 3 h);
    0 fails at once. The waiting run then finds the files already verified and has nothing to do.
    """
    from filelock import FileLock, Timeout

    if timeout is None:
        timeout = _env_float("XAI_DOWNLOAD_LOCK_TIMEOUT", 3 * 3600.0)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".{name}.lock"
    lock = FileLock(str(path), thread_local=False, is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if timeout == 0:
            raise LockBusy(f"Another data_download run is writing {name!r} into {root} (lock {path}). "
                           f"Wait for it to finish, then run the command again.") from None
        print(f"[data_download] another run is writing {name!r} in {root}; waiting for it "
              f"(up to {timeout:.0f} s)...", file=sys.stderr, flush=True)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise LockBusy(f"Gave up waiting {timeout:.0f} s for the other run writing {name!r} "
                           f"(lock {path}).") from None
    try:
        yield path
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------
def _is_offline_error(exc: BaseException) -> bool:
    """True for errors that mean 'no connection could be made at all'."""
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, (ConnectionRefusedError, socket.gaierror, TimeoutError)):
        return True
    if isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH,
                                                         errno.ECONNREFUSED, errno.EADDRNOTAVAIL):
        return True
    return False


def open_url(url: str, offset: int = 0, timeout: float | None = None):
    """Open ``url`` (GET), asking for bytes from ``offset`` on. Returns the response object."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(req, timeout=timeout or default_timeout())


def _progress(total, initial, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc, disable=not enabled, leave=False, mininterval=0.5)


def _total_from(resp, offset: int) -> int | None:
    if resp.status == 206:
        cr = resp.headers.get("Content-Range", "")
        if "/" in cr and cr.rsplit("/", 1)[1].strip().isdigit():
            return int(cr.rsplit("/", 1)[1])
        cl = resp.headers.get("Content-Length")
        return offset + int(cl) if cl and cl.isdigit() else None
    cl = resp.headers.get("Content-Length")
    return int(cl) if cl and cl.isdigit() else None


def quarantine(path: Path, root: Path | None, reason: str) -> Path:
    qdir = Path(root or path.parent) / QUARANTINE
    qdir.mkdir(parents=True, exist_ok=True)
    target = qdir / f"{path.name.removesuffix(PART_SUFFIX)}.{time.strftime('%Y%m%d-%H%M%S')}.bad"
    os.replace(path, target)
    (qdir / (target.name + ".txt")).write_text(reason + "\n")
    return target


def verify_file(path: Path, size: int | None = None, md5: str | None = None,
                sha256: str | None = None) -> str | None:
    """Return None when ``path`` matches every given expectation, else a sentence saying what differs."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"size {actual} bytes, expected {size}"
    if md5 and file_hash(path, "md5") != md5.lower():
        return f"MD5 {file_hash(path, 'md5')} differs from the published {md5}"
    if sha256 and file_hash(path, "sha256") != sha256.lower():
        return f"SHA-256 differs from the expected {sha256}"
    return None


def _try_once(url, dest, part, have, size, timeout, desc, progress):
    """One request, appending what arrives to ``part``. Returns ``(have, status, error, offline)``:
    status "done" (the server sent everything; the caller verifies), "again" (retry at once: a
    stale part was dropped), "progress" (the connection broke after new bytes: fresh tries) or
    "failed"; ``offline`` when the error means no connection could be made at all."""
    try:
        resp = open_url(url, have, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # range not satisfiable: our part is complete or stale
            if size is None or have >= size:
                return have, "done", None, False
            part.unlink()
            return 0, "again", None, False
        if e.code < 500 and e.code not in (408, 429):
            raise DownloadError(f"{url} answered HTTP {e.code} ({e.reason}). The file may have "
                                f"moved: download it by hand (see `python -m data_download "
                                f"list`) and place it at {dest}.") from None
        return have, "failed", e, False
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        return have, "failed", e, _is_offline_error(e)
    with resp:
        if have and resp.status == 200:  # server ignored Range: restart cleanly
            have = 0
        total = _total_from(resp, have)
        expected = total if size is None and total is not None else size
        if expected is not None:
            ensure_free_space(dest.parent, expected - have, dest.name)
        start = have
        have, err = _stream(resp, part, have, expected, desc or dest.name, progress)
    if expected is not None and have > expected:
        part.unlink()
        return 0, "failed", DownloadError("server sent more bytes than announced"), False
    if expected is None or have == expected:
        return have, "done", None, False
    err = err or DownloadError(f"connection closed after {have} of {expected} bytes")
    return have, ("progress" if have > start else "failed"), err, False


def _stream(resp, part, have, expected, desc, progress):
    """Copy the response into ``part`` (appending when resuming), fsync it; ``(have, read error)``."""
    err = None
    bar = _progress(expected, have, desc, progress)
    try:
        with open(part, "ab" if have else "wb") as f:
            while True:
                try:
                    block = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    err = e
                    break
                if not block:
                    break
                f.write(block)
                have += len(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    finally:
        bar.close()
    return have, err


def download(url: str, dest: str | os.PathLike, *, size: int | None = None, md5: str | None = None,
             sha256: str | None = None, root: str | os.PathLike | None = None,
             retries: int | None = None, backoff: float | None = None, timeout: float | None = None,
             progress: bool = True, desc: str | None = None) -> Path:
    """Fetch ``url`` to ``dest`` safely (see the module docstring). Returns ``dest``.

    ``dest`` appears only when complete and verified. Raises :class:`NetworkUnavailable` when no
    connection could be made, :class:`ChecksumError` (file quarantined) on a mismatch,
    :class:`DownloadError` for other failures after ``retries`` tries.
    """
    dest = Path(dest)
    retries = default_retries() if retries is None else retries
    backoff = default_backoff() if backoff is None else backoff
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and verify_file(dest, size, md5, sha256) is None:
        return dest
    part = dest.with_name(dest.name + PART_SUFFIX)
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:  # a stale, longer part: start again
        part.unlink()
        have = 0
    ensure_free_space(dest.parent, (size - have) if size else None, f"{dest.name}")

    attempt, offline_only, last_err = 0, True, None
    while not (size is not None and have == size):  # a complete part: a run interrupted before the rename
        have, status, last_err, offline = _try_once(url, dest, part, have, size, timeout, desc, progress)
        if status == "done":
            break
        if status == "again":
            continue
        offline_only = offline_only and offline
        if status == "progress":
            attempt = 0  # progress was made: a flaky link gets fresh tries
        attempt += 1
        if offline_only and attempt >= min(retries, 2) + 1:
            # refused / no route / no DNS on every try so far: offline, say so quickly
            raise NetworkUnavailable(f"Could not connect to {url.split('/')[2]} ({last_err}).")
        if attempt > retries:
            if offline_only:
                raise NetworkUnavailable(f"Could not connect to {url.split('/')[2]} ({last_err}).")
            raise DownloadError(f"Gave up on {url} after {retries + 1} tries: {last_err}. "
                                f"The partial file {part} is kept; run the command again to resume.")
        wait = backoff * (2 ** (attempt - 1))
        if progress:
            print(f"[data_download] {dest.name}: {last_err}; retry {attempt}/{retries} in {wait:.1f} s",
                  file=sys.stderr, flush=True)
        time.sleep(wait)

    problem = verify_file(part, size, md5, sha256)
    if problem:
        q = quarantine(part, Path(root) if root else None, f"{url}: {problem}")
        raise ChecksumError(f"{dest.name} from {url} failed verification ({problem}). The file was "
                            f"moved to {q}; nothing was installed. Run the command again; if it "
                            f"keeps failing the publisher's file has changed: report it.")
    os.replace(part, dest)
    return dest


class ResumingReader:
    """A read-only file object over an HTTP download that reconnects (with ``Range``) when the
    connection drops, so a streaming decoder (``tarfile`` mode ``r|gz``) never sees the break.
    If the server ignores ``Range`` the already-read bytes are skipped. Hashes what it reads."""

    def __init__(self, url: str, *, retries: int | None = None, backoff: float | None = None,
                 timeout: float | None = None, progress: bool = True, desc: str | None = None):
        self.url, self.pos = url, 0
        self.retries = default_retries() if retries is None else retries
        self.backoff = default_backoff() if backoff is None else backoff
        self.timeout = timeout
        self.sha256 = hashlib.sha256()
        self.total = None
        self.reconnects = 0
        self._resp = None
        self._progress = progress
        self._desc = desc
        self._bar = None
        self._connect()

    def _connect(self):
        attempt, offline_only, last = 0, True, None
        while True:
            try:
                resp = open_url(self.url, self.pos, self.timeout)
                if self.pos and resp.status == 200:
                    skip = self.pos
                    while skip:
                        got = resp.read(min(CHUNK, skip))
                        if not got:
                            raise DownloadError("stream ended while skipping to resume point")
                        skip -= len(got)
                if self.total is None:
                    self.total = _total_from(resp, self.pos)
                self._resp = resp
                if self._bar is None:
                    self._bar = _progress(self.total, self.pos, self._desc or "stream", self._progress)
                return
            except urllib.error.HTTPError as e:
                offline_only, last = False, e
                if e.code < 500 and e.code not in (408, 429):
                    raise DownloadError(f"{self.url} answered HTTP {e.code} ({e.reason}).") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException, DownloadError) as e:
                last = e
                offline_only = offline_only and _is_offline_error(e)
            attempt += 1
            if attempt > self.retries:
                if offline_only and self.pos == 0:
                    raise NetworkUnavailable(f"Could not connect to {self.url.split('/')[2]} ({last}).")
                raise DownloadError(f"Gave up on {self.url} at byte {self.pos}: {last}")
            time.sleep(self.backoff * (2 ** (attempt - 1)))

    def read(self, n: int = -1) -> bytes:
        while True:
            try:
                data = self._resp.read(n if n and n > 0 else CHUNK)
            except (OSError, http.client.HTTPException):
                data = None
            if data:
                self.pos += len(data)
                self.sha256.update(data)
                self._bar.update(len(data))
                return data
            if data == b"" and (self.total is None or self.pos >= self.total):
                return b""
            # dropped (error or early EOF): reconnect from self.pos
            self.reconnects += 1
            if self.reconnects > 10 * max(self.retries, 1):
                raise DownloadError(f"{self.url}: too many dropped connections")
            try:
                self._resp.close()
            except Exception:
                pass
            time.sleep(self.backoff)
            self._connect()

    def readable(self):
        return True

    def close(self):
        if self._resp is not None:
            self._resp.close()
        if self._bar is not None:
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
