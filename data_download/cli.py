"""Command line: ``python -m data_download {list,get,check}``. Exit codes are listed in ``--help``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import extract as ex
from . import fetch
from . import manifest
from .registry import DATASETS, STARTER, medmnist_file

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_MISSING, EXIT_OFFLINE, EXIT_BUSY, EXIT_DISK, EXIT_INTERRUPTED = (
    0, 1, 2, 3, 4, 5, 6, 130)

EPILOG = f"""\
examples:
  python -m data_download list                      what exists, sizes, licences, what is present
  python -m data_download get --starter             the small sets a learner needs first
                                                    (PneumoniaMNIST and DermaMNIST, 28 and 64 px)
  python -m data_download get pneumoniamnist --size 28 64
  python -m data_download get ham10000 --with masks
  python -m data_download get ph2 --from ~/Downloads/PH2Dataset.rar
  python -m data_download get nih_cxr_bbox --extra 2000
  python -m data_download check                     is what is present complete and intact?

data root: --root DIR, else $XAI_DATA_ROOT, else the per-user cache folder (~/.cache/xai-medimg).
A class mirror: XAI_DATA_MIRROR=http://host/path serves every file as <mirror>/<dataset>/<file>.

exit codes: {EXIT_OK} ok | {EXIT_FAIL} failed or broken (checksum, unsafe/corrupt archive, unreadable file
  or manifest.json, an import that `check` would call broken)
  | {EXIT_USAGE} bad arguments (also: a --from PATH that does not exist or holds nothing of the dataset;
  a --root that is a file) | {EXIT_MISSING} a dataset named to `check` is not present
  | {EXIT_OFFLINE} no network, or a step must be done by hand: the instructions were printed
  | {EXIT_BUSY} another run holds
  the lock | {EXIT_DISK} not enough disk space (also: the disk filled up while writing; nothing
  half-written is left) | {EXIT_INTERRUPTED} interrupted (Ctrl-C; run again to resume)
"""


class UsageError(Exception):
    """Bad arguments: printed as ``error: ...`` with exit code 2."""


def _root(args) -> Path:
    from xai_helpers import config

    root = config.data_root(args.root)
    if root.exists() and not root.is_dir():
        raise UsageError(f"the data root {root} is a file, not a folder: pass --root DIR (or set "
                         f"XAI_DATA_ROOT) to the folder that holds, or will hold, the datasets")
    return root


def _manual(names) -> str:
    lines = ["No network connection could be made. Fetch these by hand and put them where shown:"]
    for n in names:
        ds = DATASETS[n]
        lines.append(f"\n* {n}: {ds.title}\n  {ds.manual}\n  layout:\n    " + ds.layout.replace("\n", "\n    "))
    lines.append("\nThen run `python -m data_download check` to verify them.")
    return "\n".join(lines)


def _presence(root: Path, name: str) -> str:
    """A quick look (no hashing, no decoding) for `list`."""
    folder = root / name
    if not folder.is_dir():
        return "not present"
    n = sum(1 for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png", ".bmp", ".npz"))
    return f"present ({n:,} image/array files)"


def cmd_list(args) -> int:
    root = _root(args)
    reports = {n: _presence(root, n) for n in DATASETS} if args.present else {}
    print(f"data root: {root}\n")
    for ds in DATASETS.values():
        print(f"{ds.name:<15} {ds.title}")
        print(f"{'':<15} download ~{fetch.human(ds.approx_size)}; licence {ds.licence}")
        if ds.name.endswith("mnist"):
            sizes = ", ".join(f"{r.group}px ~{fetch.human(r.approx_size)}" for r in ds.remotes)
            print(f"{'':<15} sizes: {sizes}")
        if ds.needs:
            print(f"{'':<15} needs: {ds.needs}")
        if args.verbose:
            print(f"{'':<15} source: {ds.homepage}")
            for r in ds.remotes:
                print(f"{'':<17}{r.name}  {r.url}" + (f"  md5 {r.md5}" if r.md5 else ""))
            print(f"{'':<15} cite: {ds.citation}")
            print(f"{'':<15} layout:\n" + "\n".join(f"{'':<17}{ln}" for ln in ds.layout.splitlines()))
        if ds.name in reports:
            print(f"{'':<15} here: {reports[ds.name]}  (`check` verifies it)")
        print()
    return EXIT_OK


def _groups_for(ds_name, args):
    if ds_name.endswith("mnist"):
        return {str(s) for s in (args.size or [28])}
    if args.with_:
        return {"main", *args.with_}
    return None


def cmd_get(args) -> int:
    from .install import get_dataset

    jobs = []
    if args.starter:
        jobs += [(n, set(groups)) for n, groups in STARTER]
    for n in args.names:
        if n not in DATASETS:
            print(f"error: unknown dataset {n!r}; known: {', '.join(DATASETS)}", file=sys.stderr)
            return EXIT_USAGE
        jobs.append((n, _groups_for(n, args)))
    if not jobs:
        print("error: name one or more datasets, or --starter (see `python -m data_download list`)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.from_ and len(jobs) != 1:
        print("error: --from PATH imports one dataset at a time", file=sys.stderr)
        return EXIT_USAGE
    root = _root(args)
    offline, failed = [], []
    for name, groups in jobs:
        if offline:  # no network for the first one: do not wait on the rest, list them too
            offline.append(name)
            continue
        try:
            folder = get_dataset(DATASETS[name], root, groups=groups, from_path=args.from_,
                                 extra=args.extra, keep_archives=args.keep_archives,
                                 progress=not args.quiet, lock_timeout=args.lock_timeout)
            print(f"{name}: ready in {folder}")
        except fetch.FromPathError as e:
            print(f"{name}: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except fetch.NetworkUnavailable as e:
            print(f"{name}: {e}", file=sys.stderr)
            offline.append(name)
        except fetch.ManualStepNeeded as e:
            print(f"{name}: manual step needed: {e}", file=sys.stderr)
            return EXIT_OFFLINE
        except fetch.LockBusy as e:
            print(f"{name}: {e}", file=sys.stderr)
            return EXIT_BUSY
        except fetch.DiskSpaceError as e:
            print(f"{name}: {e}", file=sys.stderr)
            return EXIT_DISK
        except (fetch.DownloadError, ex.UnsafeArchiveError, ex.CorruptArchiveError, RuntimeError, OSError) as e:
            if fetch.is_disk_full(e):  # a full disk outside get_dataset's own handling
                print(f"{name}: {fetch.disk_full_error(e, root)}", file=sys.stderr)
                return EXIT_DISK
            print(f"{name}: FAILED: {e}", file=sys.stderr)
            failed.append(name)
        except KeyboardInterrupt:
            print(f"\n{name}: interrupted. Nothing half-written was installed; run the same command "
                  f"again to resume.", file=sys.stderr)
            return EXIT_INTERRUPTED
    if offline:
        print(_manual(offline), file=sys.stderr)
        for name in offline:
            ds = DATASETS[name]
            if name.endswith("mnist"):
                groups = dict(STARTER).get(name, ("28",)) if args.starter else [str(s) for s in (args.size or [28])]
                print(f"  -> put them at: {root / name}/" + ", ".join(medmnist_file(name, int(g)) for g in groups),
                      file=sys.stderr)
            else:
                print(f"  -> put {name} under: {root / ds.name}/", file=sys.stderr)
        return EXIT_FAIL if failed else EXIT_OFFLINE
    return EXIT_FAIL if failed else EXIT_OK


def cmd_check(args) -> int:
    from .check import check

    root = _root(args)
    for n in args.names:
        if n not in DATASETS:
            print(f"error: unknown dataset {n!r}; known: {', '.join(DATASETS)}", file=sys.stderr)
            return EXIT_USAGE
    if not root.is_dir():
        print(f"data root {root} does not exist: nothing downloaded yet (python -m data_download get --starter)")
        return EXIT_MISSING if args.names else EXIT_OK
    print(f"data root: {root}  (read-only check; nothing is written)\n")
    manifest_problem = manifest.manifest_problem(root)
    if manifest_problem:  # said once here; each dataset's report says it cannot verify against it
        print(f"PROBLEM: {manifest_problem}\n")
    for aside in manifest.set_aside_manifests(root):
        print(f"note: an earlier, damaged manifest was kept as {aside}; its SHA-256 records are not used "
              f"(restore it from a backup to verify against them)\n")
    reports = check(root, args.names or None, progress=not args.quiet, quick=args.quick)
    for rep in reports:
        print(rep.summary())
    present = [r for r in reports if r.status != "missing"]
    broken = [r.name for r in reports if r.broken]
    missing = [r.name for r in reports if r.status == "missing" and r.name in args.names]
    print(f"\n{len(present)} present, {len(broken)} broken" + (f" ({', '.join(broken)})" if broken else "")
          + (f"; asked for but missing: {', '.join(missing)}" if missing else ""))
    if manifest_problem:
        print(f"{root / fetch.MANIFEST} is unreadable: see PROBLEM above")
    if broken or manifest_problem:
        return EXIT_FAIL
    return EXIT_MISSING if missing else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_download",
        description="Download, verify and inspect the medical-imaging datasets used by the workbook. "
                    "Downloads resume after a dropped connection or Ctrl-C, are checked against published "
                    "checksums (or the first good download's, kept in <root>/manifest.json), and never "
                    "leave a half-written file.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--root", metavar="DIR", help="data root (default: $XAI_DATA_ROOT or the user cache)")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    sp = sub.add_parser("list", help="datasets, download sizes, licences, and what is present")
    common(sp)
    sp.add_argument("-v", "--verbose", action="store_true", help="also URLs, checksums, citation, layout")
    sp.add_argument("--no-present", dest="present", action="store_false",
                    help="skip reading the data root (faster)")
    sp.set_defaults(func=cmd_list)

    sp = sub.add_parser("get", help="download datasets into the data root",
                        description="Download datasets into the data root, verified and resumable.",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(sp)
    sp.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(DATASETS)}")
    sp.add_argument("--starter", action="store_true",
                    help="the small sets needed first: pneumoniamnist and dermamnist at 28 and 64 px "
                         "(offline: prints what to fetch by hand and exits 4)")
    sp.add_argument("--size", type=int, nargs="+", choices=(28, 64, 128, 224),
                    help="MedMNIST image sizes (default 28)")
    sp.add_argument("--with", dest="with_", nargs="+", choices=("masks",), default=[],
                    help="optional parts (ham10000: masks = the expert lesion masks)")
    sp.add_argument("--from", dest="from_", metavar="PATH",
                    help="import a manually downloaded archive/file, or a folder of them or of the "
                         "extracted files, instead of downloading (a PATH that does not exist or holds "
                         "nothing of the dataset is an error, exit 2: nothing is downloaded)")
    sp.add_argument("--extra", type=int, default=0, metavar="N",
                    help="nih_cxr_bbox: also keep N unboxed images (for training)")
    sp.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after extraction")
    sp.add_argument("--lock-timeout", type=float, default=None, metavar="S",
                    help="seconds to wait for another run on the same dataset (0: fail at once)")
    sp.set_defaults(func=cmd_get)

    sp = sub.add_parser("check", help="is what is present complete and intact? (never writes)")
    common(sp)
    sp.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: all)")
    sp.add_argument("--quick", action="store_true",
                    help="layout, counts and image headers only: no pixel decoding, no checksums")
    sp.set_defaults(func=cmd_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted; nothing half-written was installed. Run the command again to resume.",
              file=sys.stderr)
        return EXIT_INTERRUPTED
