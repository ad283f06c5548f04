"""One plotting style for the workbook: image grids, heat-map overlays with a colour bar, boxes.

Nothing here changes matplotlib's global settings: every function draws inside
``with style():``, a context that applies the workbook style only while it draws.
Helpers may ADD functions at the end of this module (append-only; do not rewrite others').
"""
from __future__ import annotations

import contextlib

import numpy as np

from .imaging import to_display  # noqa: F401  (one implementation; chapters call viz.to_display)

STYLE = {
    "figure.dpi": 90,
    "savefig.dpi": 90,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.titleweight": "regular",
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.interpolation": "nearest",
    "figure.constrained_layout.use": True,
}
HEATMAP_CMAP = "jet"            # unsigned maps (Grad-CAM, |gradient|, occlusion drop)
SIGNED_CMAP = "bwr"             # signed maps (LRP, Integrated Gradients): red for, blue against
MASK_COLOR = (0.0, 1.0, 0.2)    # expert masks / ground-truth evidence: green contour
BOX_COLOR = (1.0, 0.85, 0.0)    # boxes: yellow
ARTIFACT_COLOR = (1.0, 0.2, 1.0)


@contextlib.contextmanager
def style():
    """Apply the workbook style only inside the ``with`` block (no import-time rcParams change)."""
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        yield


def _grid(n: int, ncols: int | None, panel: float):
    import matplotlib.pyplot as plt

    ncols = ncols or min(n, 8)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel * ncols, panel * nrows + 0.2), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat[:n]


def draw_mask(ax, mask, color=MASK_COLOR, linewidth: float = 1.2, label: str | None = None):
    """Outline a boolean mask (H, W) on ``ax`` as a contour."""
    mask = np.asarray(mask, dtype=float)
    if mask.any():
        ax.contour(mask, levels=[0.5], colors=[color], linewidths=linewidth)
    if label:
        ax.plot([], [], color=color, label=label)


def draw_boxes(ax, boxes, color=BOX_COLOR, linewidth: float = 1.2, show_label: bool = True, fontsize: int = 7):
    """Draw ``[{label, x, y, w, h}, ...]`` (pixels) on ``ax``."""
    from matplotlib.patches import Rectangle

    for b in boxes or []:
        ax.add_patch(Rectangle((b["x"] - 0.5, b["y"] - 0.5), b["w"], b["h"], fill=False,
                               edgecolor=color, linewidth=linewidth))
        if show_label and b.get("label"):
            ax.text(b["x"], b["y"] - 1, b["label"], color=color, fontsize=fontsize, va="bottom",
                    bbox=dict(facecolor="black", alpha=0.5, pad=0.5, linewidth=0))


def show_images(images, titles=None, masks=None, boxes=None, ncols: int | None = None, panel: float = 1.9,
                suptitle: str | None = None, mask_color=MASK_COLOR, extra_masks=None, extra_color=ARTIFACT_COLOR):
    """A grid of images, optionally with mask contours (green) and boxes (yellow). Returns the figure
    (end the notebook line with ``;`` so Jupyter does not show it twice).

    images  sequence or array (N, H, W[, C]) uint8/float, or (N, C, H, W) tensors.
    titles  one string per image (or None); masks (N, H, W) bool or None per image;
    boxes   per image a list of ``{label, x, y, w, h}``; extra_masks: second set of contours (e.g. artifacts).
    """

    n = len(images)
    with style():
        fig, axes = _grid(n, ncols, panel)
        for i, ax in enumerate(axes):
            img = to_display(images[i])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            if masks is not None and masks[i] is not None:
                draw_mask(ax, masks[i], color=mask_color)
            if extra_masks is not None and extra_masks[i] is not None:
                draw_mask(ax, extra_masks[i], color=extra_color)
            if boxes is not None and boxes[i]:
                draw_boxes(ax, boxes[i])
            if titles is not None and titles[i] is not None:
                ax.set_title(str(titles[i]))
            ax.set_xticks([])
            ax.set_yticks([])
        if suptitle:
            fig.suptitle(suptitle)
    return fig


def overlay(image, heatmap, ax=None, title: str | None = None, cmap: str | None = None, alpha: float = 0.5,
            signed: bool | None = None, colorbar: bool = True, mask=None, vmin=None, vmax=None):
    """Show ``heatmap`` (H, W) over ``image`` with a colour bar; returns the axes.

    Unsigned maps use ``HEATMAP_CMAP`` on [0, max]; signed maps (any negative value, or ``signed=True``)
    use ``SIGNED_CMAP`` symmetric around 0. ``mask`` (bool (H, W)) is outlined in green, e.g. the expert
    lesion mask or the planted evidence, so that a reader can judge the map against it.
    """
    import matplotlib.pyplot as plt

    if hasattr(heatmap, "detach"):
        heatmap = heatmap.detach().cpu().numpy()
    hm = np.asarray(heatmap, dtype=np.float32)
    if hm.ndim == 3:
        hm = hm.sum(axis=0) if hm.shape[0] in (1, 3) else hm.sum(axis=-1)
    img = to_display(image)
    if signed is None:
        signed = bool(np.nanmin(hm) < 0)
    if signed:
        lim = float(np.nanmax(np.abs(hm))) or 1.0
        vmin, vmax = (-lim if vmin is None else vmin), (lim if vmax is None else vmax)
        cmap = cmap or SIGNED_CMAP
    else:
        vmin = 0.0 if vmin is None else vmin
        vmax = (float(np.nanmax(hm)) or 1.0) if vmax is None else vmax
        cmap = cmap or HEATMAP_CMAP
    with style():
        if ax is None:
            _, ax = plt.subplots(figsize=(3.2, 2.8))
        gray = img if img.ndim == 2 else img.mean(axis=-1)
        ax.imshow(gray if img.ndim == 2 else img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        im = ax.imshow(hm, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax, interpolation="bilinear")
        if mask is not None:
            draw_mask(ax, mask)
        if colorbar:
            ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        if title:
            ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    return ax


def bar_counts(counts: dict, title: str | None = None, ax=None, color="#4C72B0", log: bool = False,
               xlabel: str = "images"):
    """Horizontal bar chart of ``{name: count}`` with the count printed at each bar."""
    import matplotlib.pyplot as plt

    names, vals = list(counts.keys()), [int(v) for v in counts.values()]
    with style():
        if ax is None:
            _, ax = plt.subplots(figsize=(4.2, 0.28 * len(names) + 0.8))
        ax.barh(range(len(names)), vals, color=color)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:,}", va="center", fontsize=7)
        if vals and not log:
            ax.set_xlim(0, max(vals) * 1.15)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        if title:
            ax.set_title(title)
    return ax



# ---- plotly figures that readers without a kernel can see ------------------------------------------
# A plotly output carries only the figure's JSON: GitHub, nbviewer, `jupyter nbconvert --to html` and a
# printout show nothing there. `show(fig)` publishes ONE output with both the interactive figure and a
# static PNG of it; JupyterLab picks the interactive one, everything else the picture.
PLOTLY_MIME = "application/vnd.plotly.v1+json"
MASK_COLOR_NAME = "green"       # the word every caption uses for MASK_COLOR (tests check they agree)
_KALEIDO = {"ok": None, "log": []}   # ok: None not tried yet, False failed once in this process (do not
                                     # retry); log: the exporter's messages during the last export
_EXPORTER_LOGGERS = ("choreographer", "kaleido", "logistro")


@contextlib.contextmanager
def _exporter_logs_kept():
    """Keep the exporter's log messages out of the notebook during one export.

    kaleido drives Chromium through choreographer, which logs what it recovers from by itself (for
    example "JSONError decoding message. Ignoring" with a full traceback, when the browser writes a
    garbled message on its pipe). With no logging configured, Python prints such records on stderr,
    which in a kernel is the cell's output: a reader would see a traceback beside a figure that came
    out fine. The records go to ``_KALEIDO["log"]`` instead (read them when an export misbehaves);
    a failed export still falls back to matplotlib or to the interactive figure alone."""
    import logging

    records: list = []

    class _Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    keep = _Keep(level=logging.DEBUG)
    saved = []
    for name in _EXPORTER_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate))
        logger.addHandler(keep)
        logger.propagate = False
    try:
        yield records
    finally:
        for logger, propagate in saved:
            logger.removeHandler(keep)
            logger.propagate = propagate
        _KALEIDO["log"] = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records]


def plotly_color(rgb) -> str:
    """A matplotlib-style (r, g, b) in [0, 1] as a CSS colour plotly accepts: ``rgb(0,255,51)``."""
    r, g, b = (int(round(255 * float(c))) for c in rgb[:3])
    return f"rgb({r},{g},{b})"


def color_name(rgb) -> str:
    """The plain word for an (r, g, b) colour in [0, 1], from its hue: what a caption should call it."""
    import colorsys

    h, s, v = colorsys.rgb_to_hsv(*(float(c) for c in rgb[:3]))
    if v < 0.2:
        return "black"
    if s < 0.2:
        return "white" if v > 0.8 else "grey"
    names = [(15, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (195, "cyan"), (255, "blue"),
             (290, "purple"), (335, "magenta"), (360, "red")]
    return next(name for limit, name in names if h * 360 <= limit)


def figure_png(fig, fallback=None, scale: float = 1.0) -> bytes | None:
    """PNG bytes of a plotly figure, or None when nothing can draw it (never raises).

    First plotly's own exporter (kaleido >= 1.0, which drives the system's Chromium; it never downloads
    one here), then ``fallback()`` (a matplotlib Figure of the same content; default: a redrawing of
    the figure's line and bar traces with matplotlib, None for other kinds)."""
    if _KALEIDO["ok"] is not False:
        try:
            with _exporter_logs_kept():
                png = fig.to_image(format="png", scale=scale)
            _KALEIDO["ok"] = True
            return png
        except (ImportError, RuntimeError, OSError):   # no kaleido, no Chromium, a browser that will not
            _KALEIDO["ok"] = False                     # start: do not try again in this process
        except Exception:                              # this figure only: draw it the next way
            pass
    try:
        mfig = fallback() if fallback is not None else matplotlib_figure(fig)
        return None if mfig is None else _png_of(mfig)
    except Exception:
        return None


def _png_of(mfig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    mfig.savefig(buf, format="png", dpi=STYLE["savefig.dpi"])
    plt.close(mfig)
    return buf.getvalue()


def mimebundle(fig, fallback=None, png: bytes | None = None) -> dict:
    """The display bundle of ``fig``: plotly JSON, a static PNG where one can be drawn, and a text line."""
    import base64
    import json

    title = fig.layout.title.text if fig.layout.title and fig.layout.title.text else "plotly figure"
    bundle = {PLOTLY_MIME: json.loads(fig.to_json()), "text/plain": f"<{title}>"}
    png = figure_png(fig, fallback) if png is None else png
    if png:
        bundle["image/png"] = base64.b64encode(png).decode("ascii")
    return bundle


def show(fig, fallback=None) -> None:
    """Display a plotly figure as ONE output holding the interactive figure AND a static PNG of it.

    Use instead of ``fig.show()``: GitHub, nbviewer, ``jupyter nbconvert --to html`` and a printout show
    the picture; in JupyterLab, jupyterlab-plotly shows the picture until the pointer enters it and then
    swaps in the interactive figure (hover, zoom). Without any way to draw the picture (no
    kaleido/Chromium, no matplotlib fallback) only the interactive figure is shown."""
    from IPython.display import display

    display(mimebundle(fig, fallback), raw=True)


def matplotlib_figure(fig):
    """Redraw a plotly figure made of line/marker scatter and bar traces with matplotlib (None otherwise).

    The fallback picture when plotly's exporter is unavailable: same traces, titles and dashed
    reference lines, without plotly's hover text."""
    import matplotlib.pyplot as plt

    if not fig.data or any(t.type not in ("scatter", "bar") for t in fig.data):
        return None
    lay = fig.layout
    w, h = (lay.width or 700) / 100, (lay.height or 450) / 100
    with style():
        mfig, ax = plt.subplots(figsize=(w, h))
        for t in fig.data:
            if t.type == "bar":
                err = t.error_y
                yerr = None if err is None or err.array is None else \
                    [list(err.arrayminus if err.arrayminus is not None else err.array), list(err.array)]
                ax.bar([str(v) for v in t.x], t.y, yerr=yerr, capsize=3, label=t.name)
            else:
                dash = "--" if t.line is not None and t.line.dash else "-"
                ax.plot(t.x, t.y, dash, marker="o" if t.mode and "markers" in t.mode else None,
                        color=(t.line.color if t.line is not None else None), label=t.name)
        for s in lay.shapes or ():
            if s.type == "line" and s.y0 == s.y1 and str(s.xref).endswith("domain"):
                ax.axhline(s.y0, linestyle=":", color="grey")
        ax.set_title(lay.title.text or "")
        ax.set_xlabel(lay.xaxis.title.text or "")
        ax.set_ylabel(lay.yaxis.title.text or "")
        if lay.yaxis.range:
            ax.set_ylim(*lay.yaxis.range)
        if any(t.name for t in fig.data):
            ax.legend(fontsize=7)
    return mfig
