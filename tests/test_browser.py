"""What a class sees: the interactive notebooks run in a real JupyterLab, in a real (headless) browser.

nbval proves every cell runs, but not that a learner gets *controls*: a kernel without the widget
front end prints ``VBox(children=...)`` or "Error displaying widget", a missing plotly extension shows
nothing, and a redraw that never reaches the page looks fine to nbval. This test starts the venv's
``jupyter lab`` on a free port, opens every notebook whose source uses ipywidgets or
``MethodComparison``, runs all cells from the Run menu, and then checks in the page that

* every code cell ran (a number in its prompt, no ``[*]``, no traceback in the outputs);
* the widgets render as ipywidgets controls, never as their text repr or a widget error;
* every plotly figure renders (``.js-plotly-plot`` with its ``svg.main-svg``);
* changing the image, the class and the methods of each comparison widget redraws its figure;
* the browser console shows no error (the few harmless ones are listed in ``HARMLESS`` with why).

It drives a SYSTEM Chromium (Debian's ``chromium`` package, or ``XAI_CHROMIUM``) with the
``playwright`` Python package, and never downloads a browser (no ``playwright install``); it skips with
the reason where either is missing. ``XAI_SCREENSHOT_DIR`` set: a screenshot of each widget and of the
page is saved there. JupyterLab runs with autosave off and its settings and workspaces in a temp folder:
the notebooks in the repository are opened, run and never written (checked at the end).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
INTERACTIVE = re.compile(r"\bipywidgets\b|\bMethodComparison\b")
RUN_TIMEOUT_S = 900          # all cells of one notebook, fast mode (1-2 min on 2 cores, plus model training)
REDRAW_TIMEOUT_S = 180       # one control change: new maps for up to 9 methods (LIME, occlusion) on a shared CPU

# Console errors that say nothing about the workbook, each with the reason it is harmless.
HARMLESS = [
    # the browser asks every site for an icon; JupyterLab serves its own, a 404 here is not ours
    (re.compile(r"favicon"), "browser favicon request"),
    # JupyterLab asks the server for news/updates; the server has no internet in CI and answers 404/500
    (re.compile(r"/lab/api/(news|update)"), "JupyterLab news/update check without internet"),
]

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(2 * RUN_TIMEOUT_S)]


def interactive_notebooks() -> list[Path]:
    """Every notebook whose code uses ipywidgets or MethodComparison (found by scanning the sources)."""
    found = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        if INTERACTIVE.search(code):
            found.append(path)
    return found


def find_chromium() -> str | None:
    """``XAI_CHROMIUM``, else a Chromium/Chrome on PATH (Debian: ``apt-get install chromium``)."""
    env = os.environ.get("XAI_CHROMIUM", "").strip()
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_interactive_notebooks_are_found():
    """The scan behind the browser test must find the comparison notebook, or the browser test tests nothing."""
    names = [p.name for p in interactive_notebooks()]
    assert "08_compare_methods.ipynb" in names, names


# ---- the server -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(settings_dir: Path) -> None:
    """Autosave off (the run must not write into the repository's notebooks), every cell in the DOM
    (windowing would detach cells scrolled out of view), and no news pop-up over the screenshots."""
    settings = {
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }
    for name, values in settings.items():
        pkg, plugin = name.rsplit("/", 1)
        target = settings_dir / pkg / f"{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values), encoding="utf-8")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free port with a token; yields its base URL and token."""
    jupyter = Path(sys.executable).with_name("jupyter")
    if not jupyter.exists():
        pytest.skip(f"no `jupyter` beside {sys.executable}: install the project with pip install -e '.[dev]'")
    home = tmp_path_factory.mktemp("lab")
    _write_settings(home / "settings")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, XAI_FAST="1", JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               PYTHONUNBUFFERED="1")
    env.pop("MPLBACKEND", None)      # the kernels keep matplotlib's inline backend, as in a class
    log = open(home / "server.log", "w")
    cmd = [str(jupyter), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={REPO}", "--LabApp.news_url=", "--ServerApp.open_browser=False"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            tail = (home / "server.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"JupyterLab did not start on port {port} (exit code {proc.poll()}):\n{tail}")
        time.sleep(0.5)
    try:
        yield {"base": base, "token": token, "log": home / "server.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium through playwright; skips (with what to install) where either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[dev]' (never `playwright install`: "
                    "the test drives the system Chromium)")
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium found: apt-get install chromium (Debian/Ubuntu), or set XAI_CHROMIUM "
                    "to a Chromium/Chrome executable")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage"])  # root in a container
        try:
            yield b
        finally:
            b.close()


# ---- helpers in the page ----------------------------------------------------------------------
# A figure's fingerprint: its subplot titles, trace types and the rendered SVG (heat maps and images are
# data URLs in it), so a redraw that changes any map, title or panel count changes the fingerprint.
FINGERPRINT_JS = """
el => {
  const svg = el.querySelector('svg.main-svg');
  const titles = Array.from(el.querySelectorAll('.annotation-text')).map(a => a.textContent);
  const traces = (el.data || []).map(t => t.type);
  return JSON.stringify({titles, traces, svg: svg ? svg.outerHTML.length + ':' + hash(svg.outerHTML) : null});
  function hash(s) { let h = 0; for (let i = 0; i < s.length; i++) { h = (h * 31 + s.charCodeAt(i)) | 0; } return h; }
}
"""


def _wait_kernel_ready(page, lab, rel: str, timeout_s: float) -> None:
    """Until the server reports this notebook's kernel idle and the page has shown idle for 3 s.

    The page's indicator reads "idle" before the kernel has started; cells queued then can be dropped
    when the kernel connects, so Run All would run one cell and silently stop."""
    deadline = time.monotonic() + timeout_s
    idle_since = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{lab['base']}/api/sessions?token={lab['token']}", timeout=5) as r:
                sessions = json.loads(r.read())
        except OSError:
            sessions = []
        server_idle = any(s.get("path") == rel and (s.get("kernel") or {}).get("execution_state") == "idle"
                          for s in sessions)
        page_idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        if server_idle and page_idle:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= 3:
                return
        else:
            idle_since = None
        time.sleep(0.5)
    pytest.fail(f"the kernel of {rel} was not ready within {timeout_s:.0f} s; server log: "
                + lab["log"].read_text(errors="replace")[-2000:])


def _wait_all_cells_ran(page, n_code: int, timeout_s: float) -> None:
    """Until the kernel is idle, no prompt shows ``[*]`` and every code cell has an execution number."""
    deadline = time.monotonic() + timeout_s
    while True:
        prompts = page.eval_on_selector_all(
            ".jp-CodeCell .jp-InputArea-prompt", "els => els.map(e => e.textContent.trim())")
        idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        busy = [p for p in prompts if "*" in p]
        numbered = [p for p in prompts if re.fullmatch(r"\[\d+\]:", p)]
        if idle and not busy and len(prompts) == n_code and len(numbered) == n_code:
            return
        if idle and not busy and len(prompts) == n_code and numbered and len(numbered) < n_code:
            # Run All stops at a failing cell: the rest stay unnumbered and the kernel goes idle
            time.sleep(3)
            prompts2 = page.eval_on_selector_all(
                ".jp-CodeCell .jp-InputArea-prompt", "els => els.map(e => e.textContent.trim())")
            if prompts2 == prompts and page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count():
                tb = page.locator(".jp-OutputArea-output", has_text="Traceback")
                text = tb.first.inner_text()[-3000:] if tb.count() else "(no traceback shown)"
                pytest.fail(f"only {len(numbered)} of {n_code} code cells ran: {prompts}\n{text}")
        if time.monotonic() > deadline:
            pytest.fail(f"cells still running after {timeout_s:.0f} s: prompts {prompts}")
        time.sleep(2)


LAYOUT_JS = """
() => {
  const out = [];
  document.querySelectorAll('.jp-Notebook .jp-RenderedPlotly').forEach((el, k) => {
    const area = el.parentElement.closest('.jp-OutputArea').getBoundingClientRect();
    const svg = el.querySelector('svg.main-svg');
    const width = svg ? svg.getBoundingClientRect().width : 0;
    const boxes = Array.from(el.querySelectorAll('.annotation-text')).map(a => a.getBoundingClientRect());
    let overlaps = 0;
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i], b = boxes[j];
      if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1) overlaps++;
    }
    const clipped = boxes.filter(b => b.left < area.left - 1 || b.right > area.right + 1).length;
    out.push({k, width: Math.round(width), area: Math.round(area.width), overlaps, clipped, titles: boxes.length});
  });
  return out;
}
"""


def _layout_problems(page) -> list[str]:
    """Figures wider than their output, subplot titles that overlap or run past the output's edge."""
    notes = []
    for f in page.evaluate(LAYOUT_JS):
        if f["width"] > f["area"] + 1:
            notes.append(f"plotly figure {f['k']} is {f['width']} px wide in a {f['area']} px output")
        if f["overlaps"]:
            notes.append(f"plotly figure {f['k']}: {f['overlaps']} pairs of its {f['titles']} title texts overlap")
        if f["clipped"]:
            notes.append(f"plotly figure {f['k']}: {f['clipped']} title texts run past the output's edge")
    return notes


def _figure(widget):
    """The widget's plotly output (jupyterlab-plotly's renderer, drawn or still showing its picture)."""
    return widget.locator(".jp-RenderedPlotly").first


def _draw(page, fig, timeout_s: float = 60) -> bool:
    """Make ``fig`` an interactive plotly figure and wait for its ``svg.main-svg``; True if it first showed
    a picture. jupyterlab-plotly shows the bundle's image/png, when there is one, and draws the
    interactive figure only when the mouse enters that picture: the mouse does here what a learner's does."""
    from playwright.sync_api import Error as PlaywrightError

    image_first = False
    deadline = time.monotonic() + timeout_s   # plotly draws asynchronously: seconds on a busy CPU
    while time.monotonic() < deadline:
        if fig.locator("svg.main-svg").count():
            return image_first
        picture = fig.locator("img.plot-img")
        try:
            fig.scroll_into_view_if_needed(timeout=5_000)
            if picture.count() and picture.first.is_visible():
                image_first = True
                page.mouse.move(0, 0)           # leave first, so entering fires mouseenter
                picture.first.hover(force=True, timeout=5_000)
        except PlaywrightError:                 # the output was re-rendered under us: look again
            pass
        time.sleep(0.5)
    pytest.fail(f"a plotly output did not draw its figure within {timeout_s:.0f} s"
                + (" after the mouse entered its picture" if image_first else ""))


def _wait_redraw(page, widget, before: str, what: str) -> str:
    """Until the widget shows a drawn plotly figure whose fingerprint differs from ``before``."""
    deadline = time.monotonic() + REDRAW_TIMEOUT_S
    while time.monotonic() < deadline:
        fig = _figure(widget)
        if fig.count() and (fig.locator("svg.main-svg").count() or fig.locator("img.plot-img").count()):
            _draw(page, fig)
            now = fig.evaluate(FINGERPRINT_JS)
            if now != before:
                time.sleep(1.0)                     # let plotly finish, then read it once more
                fig = _figure(widget)
                if fig.count() and fig.locator("svg.main-svg").count():
                    return fig.evaluate(FINGERPRINT_JS)
        time.sleep(0.5)
    pytest.fail(f"changing {what} did not redraw the figure within {REDRAW_TIMEOUT_S} s")


def _screenshot(page, widget, path: Path) -> None:
    """The whole widget: the window grows to its height for the shot (JupyterLab fills the window, so a
    tall widget would otherwise be cut by the notebook's scroll area), then shrinks back."""
    size = page.viewport_size
    box = widget.bounding_box()
    if box and box["height"] + 300 > size["height"]:
        page.set_viewport_size({"width": size["width"], "height": int(box["height"]) + 300})
        page.wait_for_timeout(1000)
    widget.scroll_into_view_if_needed()
    widget.screenshot(path=str(path))
    page.set_viewport_size(size)
    page.wait_for_timeout(500)


def _labelled(widget, kind: str, pattern: str):
    """The ipywidgets control of DOM class ``kind`` whose description matches ``pattern`` (or None)."""
    controls = widget.locator(f".{kind}")
    for k in range(controls.count()):
        c = controls.nth(k)
        label = c.locator("label.widget-label, .widget-label").first
        text = label.inner_text().strip() if label.count() else ""
        if re.search(pattern, text, re.I):
            return c
    return None


def _change_image(page, widget) -> str:
    slider = _labelled(widget, "widget-slider", r"image")
    if slider is not None:
        handle = slider.locator(".noUi-handle, [role='slider']").first
        handle.focus()
        page.keyboard.press("ArrowRight")
        return "the image (slider)"
    dropdown = _labelled(widget, "widget-dropdown", r"image")
    assert dropdown is not None, "the comparison widget has no image slider or dropdown"
    select = dropdown.locator("select")
    assert select.locator("option").count() > 1, "the image control offers a single image"
    select.select_option(index=1)
    return "the image (dropdown)"


def _change_class(page, widget) -> str:
    dropdown = _labelled(widget, "widget-dropdown", r"class|explain|target")
    assert dropdown is not None, "the comparison widget has no class dropdown"
    select = dropdown.locator("select")
    options = select.locator("option")
    current = select.input_value()
    choices = [(options.nth(k).get_attribute("value"), options.nth(k).inner_text().replace("\xa0", " ").strip())
               for k in range(options.count())]
    other = [(v, label) for v, label in choices if v != current and not re.match(r"pred", label, re.I)]
    assert other, f"the class dropdown offers no other class than {current!r}"
    # a class the model does NOT predict (the figure says which it predicts), so the maps must change
    shown = _figure(widget).inner_text() if _figure(widget).count() else ""
    value, label = next(((v, label) for v, label in other if f"says {label}" not in shown), other[0])
    select.select_option(value=value)
    return f"the class (dropdown, {label!r})"


def _change_methods(page, widget) -> str:
    multi = _labelled(widget, "widget-select-multiple", r"method")
    if multi is not None:
        select = multi.locator("select")
        selected = select.evaluate("s => Array.from(s.selectedOptions).map(o => o.value)")
        keep = selected[:2] if len(selected) > 2 else selected[:1]
        select.select_option(value=keep)
        return f"the methods (select-multiple, kept {len(keep)} of {len(selected)})"
    # a picker of checkboxes, one per method (every checkbox but "show mask"): tick one more method
    boxes = widget.locator(".widget-checkbox").filter(has_not_text=re.compile("mask", re.I))
    assert boxes.count(), "the comparison widget has no method picker (select-multiple or checkboxes)"
    ticked = [boxes.nth(k).locator("input").is_checked() for k in range(boxes.count())]
    k = ticked.index(False) if False in ticked else 0
    name = boxes.nth(k).inner_text().strip()
    boxes.nth(k).locator("input").click()
    return f"the methods (checkbox {name!r} {'ticked' if not ticked[k] else 'unticked'})"


@pytest.mark.parametrize("notebook", interactive_notebooks(), ids=lambda p: p.stem)
def test_notebook_widgets_work_in_jupyterlab(notebook, browser, lab):   # browser first: skip before starting a server
    t0 = time.monotonic()
    rel = notebook.relative_to(REPO).as_posix()
    n_code = sum(c["cell_type"] == "code" for c in json.loads(notebook.read_text(encoding="utf-8"))["cells"])
    before_file = digest(notebook)
    shots = os.environ.get("XAI_SCREENSHOT_DIR", "").strip()
    shots = Path(shots) if shots else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)

    errors: list[str] = []
    ignored: list[str] = []

    def on_console(msg):
        if msg.type == "error":
            text = f"console: {msg.text} @ {msg.location.get('url', '')}"
            reason = next((why for pat, why in HARMLESS if pat.search(text)), None)
            (ignored if reason else errors).append(text if not reason else f"{text}  [ignored: {reason}]")

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.set_default_timeout(60_000)
    try:
        page.goto(f"{lab['base']}/lab/tree/{rel}?token={lab['token']}", wait_until="domcontentloaded")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        _wait_kernel_ready(page, lab, rel, timeout_s=180)
        t_open = time.monotonic() - t0

        # the committed outputs are cleared first (their numbered prompts would read as "already ran"),
        # then Run menu > Run All Cells, as a learner does
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Edit$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Clear Outputs of All Cells$")).click()
        page.wait_for_function("() => !Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))"
                               ".some(e => /\\d/.test(e.textContent))")
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        _wait_all_cells_ran(page, n_code, RUN_TIMEOUT_S)
        t_run = time.monotonic() - t0 - t_open

        outputs = page.locator(".jp-Notebook .jp-OutputArea")
        text = page.locator(".jp-Notebook").inner_text()
        assert "Traceback" not in text, "a cell's output shows a traceback"
        assert "Error displaying widget" not in text, "a widget failed to render in JupyterLab"
        assert not re.search(r"\b[HV]Box\(", text), "a widget shows as its text repr (HBox(...)): no widget front end"
        assert outputs.count() > 0

        widgets = page.locator(".jp-OutputArea-output .jupyter-widgets.widget-vbox, "
                               ".jp-OutputArea-output .jupyter-widgets.widget-box")
        assert page.locator(".jp-OutputArea-output .jupyter-widgets").count() > 0, "no widget rendered"
        assert page.locator(".jp-OutputArea-output .widget-dropdown").count() > 0, "no dropdown control rendered"

        # scroll through the notebook as a reader does (renderers may draw only what has been on screen),
        # then every plotly output must hold a drawn figure
        cells = page.locator(".jp-Notebook .jp-Cell")
        for k in range(cells.count()):
            cells.nth(k).scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        plotly_outputs = page.locator(".jp-Notebook .jp-RenderedPlotly")   # one per plotly output
        n_plots = plotly_outputs.count()
        assert n_plots > 0, "no plotly output in the notebook"
        n_pictures = sum(_draw(page, plotly_outputs.nth(k)) for k in range(n_plots))
        layout_notes = _layout_problems(page)

        # every top-level widget box holding a figure is a comparison: drive its controls
        comparisons = [w for w in (widgets.nth(k) for k in range(widgets.count()))
                       if w.locator(".jp-RenderedPlotly").count() and w.evaluate(
                           "e => !e.parentElement.closest('.jupyter-widgets.widget-vbox, .jupyter-widgets.widget-box')")]
        assert comparisons, "no widget with a plotly figure rendered"
        timings = []
        for n, widget in enumerate(comparisons):
            widget.scroll_into_view_if_needed()
            fig = _figure(widget)
            fp = fig.evaluate(FINGERPRINT_JS)
            if shots:
                _screenshot(page, widget, shots / f"{notebook.stem}-widget{n}-first-view.png")
            for change in (_change_image, _change_class, _change_methods):
                t1 = time.monotonic()
                what = change(page, widget)
                new = _wait_redraw(page, widget, fp, what)
                assert new != fp
                timings.append(f"{what}: {time.monotonic() - t1:.1f} s")
                fp = new
            fig = _figure(widget)
            assert fig.locator("svg.main-svg").count() > 0
            if shots:
                _screenshot(page, widget, shots / f"{notebook.stem}-widget{n}-after-changes.png")
        if shots:
            page.screenshot(path=str(shots / f"{notebook.stem}-page.png"))

        # let late console messages (a failing redraw, a renderer error) arrive
        page.wait_for_timeout(1000)
        assert not errors, "the browser reported errors:\n" + "\n".join(errors)
        print(f"\n{rel}: opened in {t_open:.0f} s, all {n_code} cells ran in {t_run:.0f} s; "
              f"{len(comparisons)} comparison widget(s), {n_plots} plotly figures ({n_pictures} shown as a picture "
              "until the mouse entered); redraws: "
              + "; ".join(timings) + (f"; ignored console: {ignored}" if ignored else ""))
        for note in layout_notes:    # what a learner sees, short of an error: reported, not failed
            warnings.warn(f"{rel}: {note}")
    finally:
        context.close()
    assert digest(notebook) == before_file, f"the test wrote into {rel}: autosave must be off"
