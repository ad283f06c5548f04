"""Shared fixtures: where the real data is, a throw-away cache, a small planted-evidence set.

Real-data tests are marked ``@pytest.mark.realdata`` and take the ``real_root`` fixture (or
``real_dataset("ham10000")``): they SKIP, with the reason, when the data root lacks the dataset.
The data root is ``XAI_DATA_ROOT`` if set, else ``../shared/data`` beside the repository.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_download.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]
FALLBACK_DATA = REPO.parent / "shared" / "data"

# the folder that marks each dataset as present under the data root: the downloader's registry says
DATASET_DIRS = {name: d.folder for name, d in DATASETS.items()}

# ---- `pytest -n N` (pytest-xdist, as the README runs the suite) ----------------------------------------------
# Each worker is its own process. torch would give each one thread per core: two processes with two
# threads each on two cores spin against each other. So each worker takes its share of the cores, and the
# notebook kernels it starts (nbval, the offline run, JupyterLab) inherit the share through OMP_NUM_THREADS
# (`config.set_cpu_threads()` keeps to it). A value the user set is kept.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if _WORKERS > 1:
    from xai_helpers.config import usable_cores

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // _WORKERS)))

# Files that each take minutes, run first so that the other worker(s) fill in around them (with
# `--dist loadfile --no-loadscope-reorder` from pyproject.toml, xdist hands out files in this order).
LONGEST_FIRST = ("test_offline_notebooks.py", "test_browser.py")


def pytest_collection_modifyitems(config, items):
    if _WORKERS > 1:
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))    # stable: the rest keep their order


def _data_root() -> Path | None:
    env = os.environ.get("XAI_DATA_ROOT", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return FALLBACK_DATA if FALLBACK_DATA.is_dir() else None


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real data root (XAI_DATA_ROOT, else ../shared/data); skips the test when there is none."""
    root = _data_root()
    if root is None or not root.is_dir():
        where = os.environ.get("XAI_DATA_ROOT") or f"{FALLBACK_DATA} (the default when XAI_DATA_ROOT is unset)"
        pytest.skip(f"no real data at {where}: fetch it with `python -m data_download get NAME --root DIR` "
                    f"(`python -m data_download list` names the sets) and set XAI_DATA_ROOT=DIR")
    return root


@pytest.fixture(scope="session")
def real_dataset(real_root):
    """``real_dataset("ph2")`` -> the data root, or a skip naming the missing folder and how to get it."""

    def need(name: str) -> Path:
        folder = real_root / DATASET_DIRS.get(name, name)
        if not folder.is_dir():
            pytest.skip(f"{name} not under the data root ({folder} missing): "
                        f"python -m data_download get {name} --root {real_root}")
        return real_root

    return need


@pytest.fixture(autouse=True, scope="session")
def _throwaway_cache(tmp_path_factory):
    """Every test writes caches/checkpoints into a temp dir, never into the (shared) data root."""
    old = os.environ.get("XAI_CACHE_DIR")
    os.environ["XAI_CACHE_DIR"] = str(tmp_path_factory.mktemp("xai-cache"))
    yield
    if old is None:
        os.environ.pop("XAI_CACHE_DIR", None)
    else:
        os.environ["XAI_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def planted():
    """A small planted-evidence skin set (64 images, 32 px, artifact correlated 0.8 with class 1)."""
    from xai_helpers.synthetic import make_planted

    return make_planted(n=64, size=32, kind="skin", spurious_corr=0.8, seed=0)


@pytest.fixture(scope="session")
def planted_chest():
    """A small planted-evidence chest set (64 images, 32 px, no artifact)."""
    from xai_helpers.synthetic import make_planted

    return make_planted(n=64, size=32, kind="chest", seed=0)


@pytest.fixture(scope="session")
def planted_positives():
    """``take(n)`` -> (planted-skin model, its first ``n`` unseen class-1 images as a tensor, their evidence
    masks, the ImageSet): the fast planted recipe, trained once per session (cached), and 40 fresh images."""
    import numpy as np

    from xai_helpers.model_info import model_info
    from xai_helpers.synthetic import make_planted
    from xai_helpers.training import get_trained_model, images_to_tensor

    model, _ = get_trained_model("planted_skin", fast=True, progress=False, verbose=False)
    info = model_info(model)
    ds = make_planted(n=40, size=info.input_size, kind="skin", seed=321)
    positives = np.flatnonzero(ds.labels == 1)

    def take(n: int):
        keep = positives[:n]
        return model.eval(), images_to_tensor(ds.images[keep], info.mean, info.std), ds.masks[keep], ds

    return take
