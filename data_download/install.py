"""``get``: fetch a dataset into the data root, in the registry's layout, verified, resumable.

Per dataset, under ``<root>/<name>/``: plain files are downloaded and verified in place (tmp + rename);
archives are downloaded to ``<root>/.downloads/``, verified, extracted through a staging folder and
then deleted (``keep_archives=True`` keeps them); the NIH archives are streamed and only the wanted
members are written. ``<root>/<name>/.download_state.json`` lists the archives already done, so an
interrupted run resumes archive by archive. A per-dataset lock keeps two runs from colliding.

Faults are never silent: a ``--from PATH`` that is missing or holds nothing of the dataset is refused
before anything is written or downloaded; what was installed is verified as ``check`` verifies it, so
"ready" is never said of a dataset ``check`` calls broken; a full disk is reported as such and leaves
no half-written copy (an interrupted *download*'s ``.part`` is kept to resume).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from . import extract as ex
from . import fetch
from . import manifest
from .registry import (DATAVERSE, HAM_DOI, NIH_CSVS, Dataset, Remote)

STATE = ".download_state.json"


def _log(msg: str) -> None:
    print(f"[data_download] {msg}", file=sys.stderr, flush=True)


def mirror_url(ds: Dataset, remote: Remote) -> str | None:
    """``XAI_DATA_MIRROR=URL`` serves every file as ``URL/<dataset>/<file name>`` (a class mirror)."""
    base = os.environ.get("XAI_DATA_MIRROR", "").strip().rstrip("/")
    return f"{base}/{ds.name}/{remote.name}" if base else None


def resolve_dataverse(remote: Remote, timeout: float | None = None) -> tuple[str, str | None, int | None]:
    """Find ``remote.name`` in the HAM10000 Dataverse record; return (url, md5, size)."""
    api = f"{DATAVERSE}/api/datasets/:persistentId/?persistentId={HAM_DOI}"
    tries = max(fetch.default_retries(), 1)
    for attempt in range(tries + 1):
        try:
            with fetch.open_url(api, timeout=timeout) as resp:
                info = json.loads(resp.read().decode("utf-8"))
            break
        except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
            code = getattr(e, "code", None)
            if code is not None and code < 500:
                raise fetch.DownloadError(f"{api} answered HTTP {code}; {remote.name} must be fetched "
                                          f"by hand from {DATAVERSE}/dataset.xhtml?persistentId={HAM_DOI}") from None
            if fetch._is_offline_error(e) and attempt >= 1:
                raise fetch.NetworkUnavailable(f"Could not connect to {DATAVERSE} ({e}).") from None
            if attempt == tries:
                raise fetch.DownloadError(f"Could not read the Dataverse record {HAM_DOI}: {e}") from None
            time.sleep(fetch.default_backoff() * 2 ** attempt)
    wanted = remote.url.split(":", 1)[1]
    stem = wanted.rsplit(".", 1)[0] if wanted.endswith(".zip") else wanted
    for f in info["data"]["latestVersion"]["files"]:
        df = f.get("dataFile", {})
        names = {df.get("filename", ""), df.get("originalFileName", "")}
        if any(n == wanted or n.rsplit(".", 1)[0] == stem for n in names if n):
            md5 = df.get("md5") or (df.get("checksum") or {}).get("value")
            original = bool(df.get("originalFileName"))
            url = f"{DATAVERSE}/api/access/datafile/{df['id']}" + ("?format=original" if original else "")
            size = None if original else df.get("filesize")
            return url, md5, size
    raise fetch.DownloadError(f"{wanted} is not listed in the Dataverse record {HAM_DOI} any more; "
                              f"download it by hand from {DATAVERSE}/dataset.xhtml?persistentId={HAM_DOI}.")


def _read_state(folder: Path) -> dict:
    try:
        return json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        return {"done": {}}


def _mark_done(folder: Path, name: str, info: dict) -> None:
    st = _read_state(folder)
    st.setdefault("done", {})[name] = info
    manifest.write_json_atomic(folder / STATE, st)


def _hash_files(folder: Path, rels: list[str]) -> dict:
    return {rel: fetch.file_hash(folder / rel) for rel in rels}


def _check_against_manifest(root: Path, ds: Dataset, key: str, sha: str, path: Path) -> None:
    """First good download: record. Later: a different SHA-256 means the publisher's file changed."""
    man = manifest.read_manifest(root).get(ds.name, {}).get("downloads", {})
    old = man.get(key, {}).get("sha256")
    if old and old != sha:
        q = fetch.quarantine(path, root, f"{key}: sha256 {sha} differs from first download {old}")
        raise fetch.ChecksumError(
            f"{key} differs from the copy first downloaded (SHA-256 recorded in {root / fetch.MANIFEST}). "
            f"It was moved to {q}. If the publisher really updated the file, delete that entry from "
            f"the manifest and run again.")


def _record(root: Path, ds: Dataset, key: str, url: str, path: Path | None, sha: str | None = None,
            size: int | None = None) -> None:
    if sha is None and path is not None:
        sha = fetch.file_hash(path)
        size = path.stat().st_size
    manifest.update_manifest(root, ds.name, "downloads", {key: {
        "sha256": sha, "size": size, "url": url, "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}})


def get_dataset(ds: Dataset, root: str | os.PathLike | None = None, *, groups: set[str] | None = None,
                from_path: str | os.PathLike | None = None, extra: int = 0, keep_archives: bool = False,
                progress: bool = True, lock_timeout: float | None = None,
                retries: int | None = None, backoff: float | None = None,
                cap: int = ex.DEFAULT_CAP) -> Path:
    """Fetch ``ds`` into ``<root>/<ds.name>`` and return that folder. See the module docstring.

    ``from_path`` that holds nothing of ``ds`` raises :class:`fetch.FromPathError` before anything is
    written or downloaded. For the registry's image datasets, what was installed is then verified as
    ``check`` verifies it; a broken result raises :class:`NotReady`. A full disk raises
    :class:`fetch.DiskSpaceError`."""
    from xai_helpers import config

    root = config.data_root(root)
    if root.exists() and not root.is_dir():
        raise fetch.DownloadError(f"The data root {root} is a file, not a folder: pass --root DIR (or set "
                                  f"XAI_DATA_ROOT) to the folder that holds, or will hold, the datasets.")
    remotes = ds.remotes_for(groups)
    if from_path:
        from_path = Path(from_path).expanduser()
        _validate_from(ds, from_path, remotes)
    fetch.assert_writable_root(root)
    folder = root / ds.name
    try:
        with fetch.dataset_lock(root, ds.name, lock_timeout):
            folder.mkdir(parents=True, exist_ok=True)
            manifest.salvage_manifest(root)
            skipped_links: list[str] = []
            if ds.name == "nih_cxr_bbox":
                _get_nih(ds, root, folder, remotes, from_path, extra, progress, retries, backoff, cap)
            else:
                need = sum((r.approx_size or 0) for r in remotes if not _remote_done(folder, r))
                if not from_path:
                    fetch.ensure_free_space(root, need * (2 if any(r.kind != "file" for r in remotes) else 1),
                                            f"{ds.name} (download + extraction)")
                for r in remotes:
                    _get_remote(ds, r, root, folder, from_path, keep_archives, progress, retries, backoff,
                                cap, skipped_links, remotes)
            _verify_installed(ds, root, progress, skipped_links)
    except OSError as e:
        if fetch.is_disk_full(e):
            raise fetch.disk_full_error(e, root, f"writing {ds.name}") from e
        raise
    return folder


class NotReady(fetch.DownloadError):
    """What was installed does not pass ``check``: the message says what is missing or broken."""


def _verify_installed(ds: Dataset, root: Path, progress: bool, skipped_links: list[str]) -> None:
    """The same verification as ``python -m data_download check NAME``, so that `get` never says
    "ready" for what `check` calls broken. MedMNIST files are already MD5-verified: not re-read."""
    from . import check as chk

    if ds.name not in chk.CHECKERS or ds.name.endswith("mnist"):
        return
    rep = chk.check(root, [ds.name], progress=progress)[0]
    if not rep.broken:
        return
    why = "\n  ".join(rep.problems)
    links = ""
    if skipped_links:
        links = (f"\nNot imported because they are symbolic links (links are never followed): "
                 f"{', '.join(skipped_links[:5])}{' ...' if len(skipped_links) > 5 else ''}. Copy the "
                 f"files themselves into the folder, then run the command again.")
    raise NotReady(f"{ds.name} was installed in {root / ds.name} but is not complete; "
                   f"`python -m data_download check {ds.name}` reports:\n  {why}{links}")


def _describe(r: Remote) -> str:
    what = {"zip": "a zip archive", "tar": "a tar(.gz) archive", "rar": "a RAR archive"}.get(r.kind, "a file")
    return f"{r.target or r.name} ({what})" if r.kind == "file" else f"{r.name} ({what})"


def _expected(ds: Dataset, remotes: list[Remote]) -> str:
    if ds.name == "nih_cxr_bbox":
        return (f"{ds.name} --from expects a folder holding {' and/or '.join(NIH_CSVS)}, and/or the "
                f"downloaded images_NNN.tar.gz archives")
    items = "; ".join(_describe(r) for r in remotes)
    folder = (" or the files extracted from the archives" if any(r.kind in ("zip", "rar") for r in remotes)
              else "")
    return (f"{ds.name} --from expects one of: {items}; or a folder holding them{folder} "
            f"(layout: {ds.layout.splitlines()[0].split('   ')[0].strip()} ...)")


def _optional_hint(ds: Dataset, p: Path, remotes: list[Remote]) -> str:
    for r in ds.remotes:
        if r not in remotes and _local_source(p, r, list(ds.remotes)) is not None:
            return f" It is {r.name}, an optional part: add --with {r.group}."
    return ""


def _validate_from(ds: Dataset, p: Path, remotes: list[Remote]) -> None:
    """Refuse, before anything is written or downloaded, a --from PATH that is missing or holds
    nothing of ``ds``: without this a typo silently fell back to a (multi-GB) download."""
    if not p.exists():
        raise fetch.FromPathError(f"--from {p} does not exist. {_expected(ds, remotes)}.")
    if ds.name == "nih_cxr_bbox":
        if p.is_dir() and any((p / n).is_file() for n in (*NIH_CSVS, *(r.name for r in remotes))):
            return
        raise fetch.FromPathError(f"--from {p} holds nothing of {ds.name}. {_expected(ds, remotes)}.")
    if p.is_file():
        if any(_local_source(p, r, remotes) is not None for r in remotes):
            return
        sniffed = ex.sniff_kind(p)
        kind = {"zip": "a zip archive", "tar": "a tar archive", "rar": "a RAR archive"}.get(
            sniffed, "not an archive (no zip, tar or RAR header)")
        raise fetch.FromPathError(f"--from {p} is {kind} and is not one of the files {ds.name} needs."
                                  f"{_optional_hint(ds, p, remotes)} {_expected(ds, remotes)}.")
    if p.is_dir():
        if any(_local_source(p, r, remotes) is not None for r in remotes):
            return
        for r in remotes:
            if r.kind in ("zip", "rar"):  # an extracted folder: does any file map into the layout?
                select = r.select or (lambda n: n)
                for q in p.rglob("*"):
                    if q.is_file() and select(q.relative_to(p).as_posix()) is not None:
                        return
        raise fetch.FromPathError(f"--from {p} (a folder) holds nothing of {ds.name}. "
                                  f"{_expected(ds, remotes)}.")
    raise fetch.FromPathError(f"--from {p} is neither a file nor a folder. {_expected(ds, remotes)}.")


def _remote_done(folder: Path, r: Remote) -> bool:
    if r.kind == "file":
        return (folder / (r.target or r.name)).exists()
    return r.name in _read_state(folder).get("done", {})


def _file_matches(p: Path, r: Remote, remotes: list[Remote]) -> bool:
    """Is the file ``p`` the published file ``r``? By name; else an archive whose bytes are of
    ``r``'s kind (when no other wanted archive has that kind), or a plain file with ``r``'s suffix
    (when no other wanted plain file has it). Checksums and extraction verify it afterwards."""
    if p.name in (r.name, r.target):
        return True
    if any(p.name in (o.name, o.target) for o in remotes):
        return False  # it is another part, by name
    if r.kind == "file":
        suffix = Path(r.target or r.name).suffix.lower()
        same = [o for o in remotes if o.kind == "file" and Path(o.target or o.name).suffix.lower() == suffix]
        return bool(suffix) and p.suffix.lower() == suffix and same == [r]
    same = [o for o in remotes if o.kind == r.kind]
    if len(same) > 1 and not p.name.startswith(r.name.split(".")[0]):
        return False  # e.g. two zips for ham10000: only a name tells them apart
    return ex.sniff_kind(p) == r.kind


def _local_source(from_path, r: Remote, remotes: list[Remote] | None = None) -> Path | None:
    if not from_path:
        return None
    p = Path(from_path).expanduser()
    if p.is_file() and _file_matches(p, r, remotes or [r]):
        return p
    if p.is_dir():
        for cand in (p / r.name, p / (r.target or "")):
            if cand.is_file():
                return cand
        stem = r.name.split(".")[0]
        hits = sorted(q for q in p.iterdir() if q.is_file() and q.name.startswith(stem))
        if hits:
            return hits[0]
    return None


def _copy_in(src: Path, tmp: Path) -> None:
    """Copy to ``tmp``; on any failure (a full disk) remove the half-written copy."""
    try:
        shutil.copyfile(src, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _get_remote(ds, r: Remote, root, folder, from_path, keep_archives, progress, retries, backoff, cap,
                skipped_links=None, remotes=None):
    local = _local_source(from_path, r, remotes)
    if r.kind == "file":
        target = folder / (r.target or r.name)
        if local is not None:
            tmp = target.with_name(target.name + ".part")
            _copy_in(local, tmp)
            problem = fetch.verify_file(tmp, r.size, r.md5)
            if problem:
                fetch.quarantine(tmp, root, f"{local}: {problem}")
                raise fetch.ChecksumError(f"{local} does not match the published file: {problem}")
            os.replace(tmp, target)
            _log(f"{ds.name}: imported {local.name} -> {target.relative_to(root)}")
            return
        if target.exists():
            problem = fetch.verify_file(target, r.size, r.md5)
            if problem is None:
                _log(f"{ds.name}: {target.name} present" + (" (MD5 matches the published one)" if r.md5 else ""))
                return
            _log(f"{ds.name}: {target.name} present but {problem}; downloading the official file "
                 f"(the present copy is replaced only once the new one is verified)")
        url, md5, size = mirror_url(ds, r), r.md5, r.size
        if url is None and r.url.startswith("dataverse:"):
            url, md5, size = resolve_dataverse(r)
        url = url or r.url
        fetch.download(url, target, size=size, md5=md5, root=root, retries=retries, backoff=backoff,
                       progress=progress, desc=f"{ds.name}/{r.name}")
        if target.suffix == ".csv":
            _tab_to_csv(target)
        if not md5:
            _check_against_manifest(root, ds, r.name, fetch.file_hash(target), target)
        _record(root, ds, r.name, url, target)
        _log(f"{ds.name}: {target.name} OK")
        return

    # an archive
    if r.name in _read_state(folder).get("done", {}) and local is None:
        _log(f"{ds.name}: {r.name} already extracted")
        return
    if local is None and from_path and Path(from_path).is_dir() and r.kind in ("zip", "rar"):
        files = ex.copy_tree(Path(from_path), folder, r.select, progress)  # an extracted folder
        if skipped_links is not None:
            select = r.select or (lambda n: n)
            skipped_links += [q.relative_to(from_path).as_posix() for q in sorted(Path(from_path).rglob("*"))
                              if q.is_symlink() and select(q.relative_to(from_path).as_posix()) is not None]
        if not files:
            raise fetch.DownloadError(f"{from_path} holds nothing that belongs to {ds.name} "
                                      f"({r.name}); expected layout:\n{ds.layout}")
        _record_files(root, ds, folder, files)
        _mark_done(folder, r.name, {"files": len(files), "from": str(from_path)})
        _log(f"{ds.name}: imported {len(files)} files from {from_path}")
        return
    if local is not None:
        archive, url = local, str(local)
    else:
        downloads = root / ".downloads"
        archive = downloads / r.name
        url = mirror_url(ds, r)
        md5, size = r.md5, r.size
        if url is None and r.url.startswith("dataverse:"):
            url, md5, size = resolve_dataverse(r)
        url = url or r.url
        fetch.download(url, archive, size=size, md5=md5, root=root, retries=retries, backoff=backoff,
                       progress=progress, desc=f"{ds.name}/{r.name}")
    sha = fetch.file_hash(archive)
    if local is None:
        _check_against_manifest(root, ds, r.name, sha, archive)
    try:
        files = ex.extract(archive, folder, select=r.select, cap=cap, progress=progress, kind=r.kind)
    except (ex.CorruptArchiveError, ex.UnsafeArchiveError) as e:
        if local is None:
            q = fetch.quarantine(archive, root, f"{r.name}: {e}")
            raise type(e)(f"{e} The archive was moved to {q}; nothing was installed.") from None
        raise
    if not files:
        raise ex.CorruptArchiveError(f"{r.name} holds nothing of the expected layout:\n{ds.layout}")
    _record(root, ds, r.name, url, None, sha, archive.stat().st_size)
    _record_files(root, ds, folder, files)
    _mark_done(folder, r.name, {"files": len(files), "sha256": sha})
    if local is None and not keep_archives:
        archive.unlink()
    _log(f"{ds.name}: {r.name}: {len(files)} files extracted")


def _tab_to_csv(path: Path) -> None:
    """Dataverse may serve an ingested table tab-separated: rewrite it as CSV (tmp + rename)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        head = f.readline()
    if "\t" not in head or "," in head:
        return
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = [[c.strip('"') for c in r] for r in csv.reader(f, delimiter="\t")]
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _record_files(root, ds, folder, files):
    manifest.update_manifest(root, ds.name, "files", _hash_files(folder, files))


# --------------------------------------------------------------------------------------------------
# NIH: stream the 12 archives, keep only wanted members
# --------------------------------------------------------------------------------------------------
def nih_wanted(folder: Path, extra: int = 0) -> set[str]:
    """Boxed image names from BBox_List_2017.csv, plus ``extra`` unboxed ones chosen deterministically
    (smallest MD5 of the name) from Data_Entry_2017_v2020.csv."""
    with open(folder / "BBox_List_2017.csv", newline="") as f:
        rows = list(csv.reader(f))
    boxed = {r[0].strip() for r in rows[1:] if r and r[0].strip()}
    wanted = set(boxed)
    if extra:
        with open(folder / "Data_Entry_2017_v2020.csv", newline="") as f:
            names = [r[0].strip() for r in list(csv.reader(f))[1:] if r and r[0].strip() not in boxed]
        names.sort(key=lambda n: hashlib.md5(n.encode()).hexdigest())
        wanted |= set(names[:extra])
    return wanted


def _get_nih(ds, root, folder, remotes, from_path, extra, progress, retries, backoff, cap):
    src = Path(from_path) if from_path else None
    for name in NIH_CSVS:
        target = folder / name
        if src is not None and (src / name).is_file() and not target.exists():
            tmp = target.with_name(name + ".part")
            _copy_in(src / name, tmp)
            os.replace(tmp, target)
        if not target.exists():
            raise fetch.ManualStepNeeded(
                f"{name} is needed first (it says which images carry boxes) and must be fetched by hand: "
                f"{ds.manual}")
    wanted = nih_wanted(folder, extra)
    images = folder / "images"
    state = _read_state(folder)

    def missing():
        return {n for n in wanted if not (images / n).exists()}

    if not missing():
        _log(f"{ds.name}: all {len(wanted)} wanted images present")
        return
    fetch.ensure_free_space(root, len(missing()) * 1_000_000, "NIH boxed images")
    for r in remotes:
        if r.name in state.get("done", {}):
            continue
        if not missing():
            break
        local = (src / r.name) if src is not None and (src / r.name).is_file() else None

        def select(member: str) -> str | None:
            base = member.rsplit("/", 1)[-1]
            return f"images/{base}" if base in wanted and not (images / base).exists() else None

        if local is not None:
            with open(local, "rb") as f:
                files = ex.stream_tar(f, folder, select=select, tag=r.name, cap=cap, progress=progress)
            sha, url = None, str(local)
        else:
            url = mirror_url(ds, r) or r.url
            with fetch.ResumingReader(url, retries=retries, backoff=backoff, progress=progress,
                                      desc=f"{ds.name}/{r.name}") as reader:
                files = ex.stream_tar(reader, folder, select=select, tag=r.name, cap=cap,
                                      progress=False)
                # drain the rest so the hash covers the whole archive
                while reader.read(fetch.CHUNK):
                    pass
                sha = reader.sha256.hexdigest()
            _check_stream(root, ds, r.name, sha)
            _record(root, ds, r.name, url, None, sha, reader.pos)
        _record_files(root, ds, folder, files)
        _mark_done(folder, r.name, {"files": len(files), "sha256": sha})
        _log(f"{ds.name}: {r.name}: kept {len(files)} images; {len(missing())} still wanted")
    left = missing()
    if left and all(r.name in _read_state(folder).get("done", {}) for r in remotes):
        _log(f"{ds.name}: {len(left)} wanted images were in none of the archives (e.g. {sorted(left)[:3]})")


def _check_stream(root, ds, key, sha):
    old = manifest.read_manifest(root).get(ds.name, {}).get("downloads", {}).get(key, {}).get("sha256")
    if old and old != sha:
        raise fetch.ChecksumError(f"{key} streamed with SHA-256 {sha}, but the first download recorded "
                                  f"{old}: the archive changed. Delete the manifest entry to accept it.")
