"""Every chapter follows the house style (CONVENTIONS.md) and is committed in a readable state.

nbval (run on notebooks/ by the same pytest command) checks that each notebook *runs*; this checks
what a learner opening it sees: objectives, a setup cell that says which data is used, a summary,
exercises and references, no stored error, and a size GitHub will render; and what a diff shows:
no execution timestamps, no paths of the machine that ran it.
"""
import json
import re
from pathlib import Path

import nbformat
import pytest

from xai_helpers import viz

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
MAX_BYTES = 1_000_000
TIMING_KEYS = ("execution", "ExecuteTime")          # per-cell timestamps: every re-run would change the file
# an absolute path of the machine that executed the notebook (not one inside a URL or base64 data)
MACHINE_PATH = re.compile(r"(?<![\w.+/-])(/tmp/|/work/|/home/[^/\s]+/|/root/)")
TEXT_TYPES = ("text/plain", "text/html", "text/markdown", "text/latex")


def test_notebooks_are_numbered_in_reading_order():
    names = [p.name for p in NOTEBOOKS]
    assert names, "no notebooks found"
    numbers = [int(re.match(r"(\d\d)_[a-z0-9_]+\.ipynb$", n).group(1)) for n in names]
    assert numbers == list(range(len(numbers))), f"gaps or duplicates in the numbering: {names}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_house_style(path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), "must open with a title"
    assert re.search(r"learning objectives", text, re.I), "learning objectives are missing"
    for heading in ("Summary", "Exercises", "References"):
        assert re.search(rf"^#+ .*{heading}", text, re.M | re.I), f"no '{heading}' section"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "describe(" in code, "the setup cell must print config.describe(data=...): versions, device, data"
    assert "\"cuda\"" not in code and "'cuda'" not in code, "device must come from config.get_device()"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_outputs_are_clean_and_small(path):
    size = path.stat().st_size
    assert size < MAX_BYTES, f"{path.name} is {size / 1e6:.1f} MB; keep committed outputs small"
    nb = json.loads(path.read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name} holds an error output: {errors[0].get('ename')}"
    streams = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                      for o in c.get("outputs", []))
    assert "data used" in streams, "the executed notebook must say which data it used"


def _output_texts(nb):
    """(cell index, text) of every printed or displayed text output (streams, reprs, HTML, tracebacks)."""
    for i, c in enumerate(nb["cells"]):
        for o in c.get("outputs", []):
            parts = [o.get("text", ""), o.get("traceback", [])] + [o.get("data", {}).get(m, "") for m in TEXT_TYPES]
            for part in parts:
                yield i, "".join(part) if isinstance(part, list) else part


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_outputs_carry_no_timestamps_or_machine_paths(path):
    nb = json.loads(path.read_text())
    timed = [i for i, c in enumerate(nb["cells"]) if any(k in c.get("metadata", {}) for k in TIMING_KEYS)]
    assert not timed, (f"{path.name}: cells {timed[:8]} store execution timestamps in their metadata; "
                       "strip cell metadata 'execution' before committing")
    paths = [(i, text[m.start():].split()[0][:60]) for i, text in _output_texts(nb) for m in MACHINE_PATH.finditer(text)]
    assert not paths, (f"{path.name}: outputs print paths of the machine that ran them (cell, path): {paths[:5]}; "
                       "print names relative to the data root / cache, or replace the prefix with <data root> / <cache>")


def test_the_path_check_sees_machine_paths_but_not_urls():
    assert MACHINE_PATH.search("cache       /tmp/xai-cache\n")
    assert MACHINE_PATH.search("from /home/alice/data/x.pt")
    assert MACHINE_PATH.search("'checkpoint': '/root/.cache/x.pt'")
    assert not MACHINE_PATH.search("see https://example.org/work/tmp/ and <cache>/checkpoints/x.pt")


# outputs that only a live front end draws: without a picture beside them GitHub, nbviewer, an HTML export
# and a printed handout show nothing (or the text "VBox(...)"). A tqdm progress bar is a widget too; its
# text line is all a reader needs, so it is exempt.
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
LIVE_ONLY = (viz.PLOTLY_MIME, WIDGET_MIME)
PROGRESS_BAR = re.compile(r"^[^|\n]*\d+%\|")


def _outputs_without_a_picture(nb) -> list[str]:
    missing = []
    for i, c in enumerate(nb["cells"]):
        for o in c.get("outputs", []):
            data = o.get("data", {})
            live = [m for m in LIVE_ONLY if m in data]
            if live == [WIDGET_MIME] and PROGRESS_BAR.match("".join(data.get("text/plain", ""))):
                continue
            if live and "image/png" not in data and "image/svg+xml" not in data:
                missing.append(f"cell {i}: {live[0]}")
    return missing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_interactive_output_has_a_static_picture(path):
    missing = _outputs_without_a_picture(json.loads(path.read_text()))
    assert not missing, (f"{path.name}: interactive output(s) with no static image for readers who do not run it: "
                         f"{missing}; show plotly figures with xai_helpers.viz.show and widgets with a first-view image (it adds a PNG)")


def test_the_picture_check_sees_a_bare_plotly_output():
    bare = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "display_data", "data": {"application/vnd.plotly.v1+json": {}, "text/plain": "Figure"}},
        {"output_type": "display_data", "data": {"application/vnd.plotly.v1+json": {}, "image/png": "iVBOR"}},
        {"output_type": "display_data", "data": {"application/vnd.jupyter.widget-view+json": {},
                                                 "text/plain": "VBox(children=(Dropdown(...),))"}},
        {"output_type": "display_data", "data": {"application/vnd.jupyter.widget-view+json": {},
                                                 "text/plain": "epochs:  40%|####      | 2/5 [00:03<00:04]"}}]}]}
    assert _outputs_without_a_picture(bare) == ["cell 0: application/vnd.plotly.v1+json",
                                                "cell 0: application/vnd.jupyter.widget-view+json"]
