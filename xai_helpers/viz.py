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
    import matplotlib.pyplot as plt

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

