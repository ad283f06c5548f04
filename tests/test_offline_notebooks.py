"""Every notebook runs without the real data, on the planted stand-ins, and says so.

The README promises a newcomer offline (no data root, nothing downloaded) a workbook that runs top to
bottom on planted-evidence data, with a banner wherever a real set is missing, never silently. nbval
checks the notebooks on whatever data root the run has: in CI that is the real data, so this test runs
them once more against an EMPTY data root (each in its own kernel, in order, one throw-away cache that
chapter 01 fills and the later chapters load from, as a student's would be).

Without the real data the nbval run is already this run, so the test skips then (and says so).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from data_download.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REAL_SETS = ("ham10000", "ph2", "nih_cxr_bbox", "pneumoniamnist")
BANNER = "REAL DATA NOT FOUND"
# an output that calls stand-in data real, e.g. "12 HAM10000 test images (real)" printed offline
CLAIMS_REAL = re.compile(r"\(real\b|\breal data[;)]", re.IGNORECASE)


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(str(out["data"].get("text/plain", "")))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory, real_root):
    present = [n for n in REAL_SETS if (real_root / DATASETS[n].folder).is_dir()]
    if not present:
        pytest.skip("the data root holds none of the real sets: the nbval run of the notebooks is the offline run")
    empty = tmp_path_factory.mktemp("empty-data-root")
    cache = tmp_path_factory.mktemp("offline-cache")
    keep = {k: os.environ.get(k) for k in ("XAI_DATA_ROOT", "XAI_CACHE_DIR", "XAI_SHARED_CACHE", "XAI_FAST")}
    os.environ.update(XAI_DATA_ROOT=str(empty), XAI_CACHE_DIR=str(cache), XAI_FAST="1")   # the kernels inherit them
    os.environ.pop("XAI_SHARED_CACHE", None)
    yield empty
    for k, v in keep.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name[:2] for p in NOTEBOOKS])
def test_notebook_runs_offline_on_the_planted_stand_ins(path, offline_env):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    nb = nbformat.read(path, as_version=4)
    try:
        nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}}).execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name} fails without the real data (empty data root):\n{str(err)[-3000:]}")
    assert not any(offline_env.iterdir()), f"{path.name} wrote into the (empty) data root"
    text = _outputs_text(nb)
    assert BANNER in text or "synthetic" in text.lower(), f"{path.name} ran offline without saying which data it used"
    claims = sorted({m.group(0) for m in CLAIMS_REAL.finditer(text)})
    assert not claims, f"{path.name} calls its planted stand-in data real offline: {claims}"
