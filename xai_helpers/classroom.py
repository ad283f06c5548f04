"""Classroom mode: an instructor prepares once, a class of students reads, nobody waits or overwrites.

On the class server (JupyterHub or any shared machine), the instructor runs once::

    python -m xai_helpers.classroom prepare --cache /srv/xai/cache            # full mode (what a class runs)
    python -m xai_helpers.classroom prepare --cache /srv/xai/cache --fast     # also the fast-mode models
    chmod -R a-w /srv/xai/cache                                             # nobody writes there again

``prepare`` fetches what it can (``data_download get --starter``), builds the prepared arrays of every
dataset the notebooks read and trains every model they load (``get_trained_model`` for each recipe),
all into ``--cache``. Each student's kernel then needs::

    XAI_DATA_ROOT=/srv/xai/data          # the shared, read-only data
    XAI_SHARED_CACHE=/srv/xai/cache      # the prepared cache, read only
    # XAI_CACHE_DIR unset: each student's own ~/.cache/xai-medimg receives anything new

Loaders and ``get_trained_model`` look in the student's own cache first, then in the shared one
(:func:`xai_helpers.config.lookup`); a checkpoint that is missing or does not fit is trained into the
student's own cache. The shared cache is never written, even by root (its write bits decide).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from . import config

def chapter_models(fast: bool) -> tuple:
    """``(name, overrides)`` of every ``get_trained_model`` call in notebooks/*.ipynb, as the chapters make
    it in fast or full mode (``tests/test_classroom.py`` reads the notebooks and holds this list to them)."""
    def pick(fast_value, full_value):
        return fast_value if fast else full_value

    return (
        ("planted_skin", {}), ("planted_chest", {}), ("pneumonia", {}), ("skin_binary", {}), ("skin_7class", {}),
        ("cxr_multilabel", {}),
        # 04: a short ResNet run for trained BatchNorm statistics
        ("planted_skin", dict(arch="resnet18_small", size=pick(32, None), n=pick(192, None), epochs=pick(2, 3))),
        # 09: the small chest model after 1, 3 (and 10) epochs, in both modes
        *(("cxr_multilabel", dict(fast=True, epochs=e)) for e in pick((1, 3), (1, 3, 10))),
        # 12: chapter 01's skin model trained with ink on 90 % of the melanomas (the cheating model)
        ("skin_binary", dict(shortcut=("ink", 0.9))),
    )


def prepare(cache: str | os.PathLike, fast: bool = False, models=None, download: bool = True,
            progress: bool = True) -> list[dict]:
    """Fill ``cache`` with the prepared arrays and checkpoints the chapters load (``models``: default
    :func:`chapter_models` of the mode); returns one record per model (name, overrides, seconds,
    trained_now, checkpoint, test metric)."""
    from .training import get_trained_model

    cache = Path(cache).expanduser().resolve()
    if not config.writable(cache):
        raise PermissionError(f"{cache} is read-only: prepare writes the class cache there. Make it writable "
                              "for the preparation (chmod -R u+w), then read-only again (chmod -R a-w).")
    old = {k: os.environ.get(k) for k in (config.CACHE_ENV, config.SHARED_CACHE_ENV)}
    os.environ[config.CACHE_ENV] = str(cache)
    os.environ.pop(config.SHARED_CACHE_ENV, None)      # prepare writes a complete cache of its own
    records = []
    try:
        if download:
            _starter_download()
        for name, overrides in (chapter_models(fast) if models is None else models):
            t0 = time.perf_counter()
            kw = {"fast": fast, **overrides}               # a chapter may ask for a fast model in full mode (09)
            _, info = get_trained_model(name, progress=progress, **kw)
            m = info.get("metrics") or {}
            records.append(dict(name=name, overrides=overrides, seconds=round(time.perf_counter() - t0, 1),
                                trained_now=info["trained_now"], source=info["source"],
                                checkpoint=info["checkpoint"], auc=m.get("auc_macro")))
            print(f"[classroom] {name} {overrides or ''}: {info['source']} data, "
                  f"{'trained' if info['trained_now'] else 'already there'} in {records[-1]['seconds']} s")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return records


def _starter_download() -> None:
    """``data_download get --starter`` (small MedMNIST files); offline it says what to fetch and goes on."""
    rc = subprocess.call([sys.executable, "-m", "data_download", "get", "--starter"])
    if rc != 0:
        print(f"[classroom] data_download exited {rc}: the sets it could not fetch use their planted "
              "stand-ins until they are placed under the data root (see its message above).")


def student_environment(cache: str | os.PathLike) -> str:
    """The lines each student's kernel (or JupyterHub's ``Spawner.environment``) needs."""
    return (f"XAI_DATA_ROOT={config.data_root()}\n"
            f"XAI_SHARED_CACHE={Path(cache).expanduser().resolve()}\n"
            "# leave XAI_CACHE_DIR unset: each student's own ~/.cache/xai-medimg gets anything new")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xai_helpers.classroom", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="fetch data, prepare arrays and train every chapter's models into --cache")
    p.add_argument("--cache", required=True, help="the class cache to fill (made read-only afterwards)")
    p.add_argument("--fast", action="store_true", help="prepare the fast-mode models (XAI_FAST=1) as well")
    p.add_argument("--no-download", action="store_true", help="do not run data_download get --starter")
    sub.add_parser("env", help="print the environment a student's kernel needs").add_argument("--cache", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "env":
        print(student_environment(args.cache))
        return 0
    t0 = time.perf_counter()
    prepare(args.cache, fast=False, download=not args.no_download)
    if args.fast:
        prepare(args.cache, fast=True, download=False)
    print(f"\n[classroom] prepared in {time.perf_counter() - t0:.0f} s. Now make it read-only:\n"
          f"    chmod -R a-w {Path(args.cache).expanduser().resolve()}\n"
          f"and give every student's kernel:\n{student_environment(args.cache)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
