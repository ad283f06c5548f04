"""How the comparison widget lays out its panels: method families and short names, the two kinds of
map (signed and unsigned) with their colour scales, and the pixel geometry of a grid of panels.

Kept apart from :mod:`xai_helpers.widgets` so the figure's layout can be read (and tested) on its own.
"""
from __future__ import annotations

import numpy as np

DEFAULT_METHODS = ("gradcam", "lrp", "integrated_gradients", "random")
FAMILIES = {                     # the method picker's rows; a method missing here goes to "other"
    "CAM": ("gradcam", "gradcam++", "layercam", "scorecam"),
    "gradients": ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "expected_gradients"),
    "relevance": ("lrp",),
    "perturbation": ("lime", "shap", "shap_partition", "exact_shapley", "occlusion", "xrai"),
    "baselines": ("random", "edges", "centre"),
}
SHORT_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM", "scorecam": "Score-CAM",
               "saliency": "Saliency", "input_x_gradient": "Input×Grad", "integrated_gradients": "Int. Gradients",
               "smoothgrad": "SmoothGrad", "expected_gradients": "Exp. Gradients", "lrp": "LRP", "lime": "LIME",
               "shap": "SHAP", "shap_partition": "SHAP partition", "exact_shapley": "Exact Shapley",
               "occlusion": "Occlusion", "xrai": "XRAI", "random": "Random", "edges": "Edges", "centre": "Centre"}
# signed: the sign means "for" / "against" the class (occlusion too: a patch can RAISE the score).
# Any other method whose map has a negative value is drawn as signed as well.
SIGNED_METHODS = frozenset({"lrp", "integrated_gradients", "input_x_gradient", "expected_gradients", "shap",
                            "shap_partition", "exact_shapley", "lime", "occlusion"})
KINDS = {  # one colour scale and colour bar per kind; maps are divided by their own max |value|
    "signed": dict(plotly="RdBu_r", mpl="RdBu_r", cmin=-1.0, ticks=("−max", "0", "+max")),
    "unsigned": dict(plotly="Inferno", mpl="inferno", cmin=0.0, ticks=("0", "max")),
}
MAX_COLS, PANEL_PX, GAP_PX, TITLE_FONT = 4, 200, 12, 11   # 4 x 200 px: fits a JupyterLab output with the side bar open
CHAR_PX = 0.6                    # a character is at most ~0.6 font sizes wide (Open Sans, digits, capitals)


def short_name(method: str) -> str:
    return SHORT_NAMES.get(method, method)


def map_kind(method: str, m: np.ndarray) -> str:
    """"signed" for methods whose sign means for/against (or any map with a negative value), else "unsigned"."""
    return "signed" if method in SIGNED_METHODS or bool((np.asarray(m) < 0).any()) else "unsigned"


def _title_chars() -> int:
    """How many characters of a panel title fit in one panel's width."""
    return int(PANEL_PX / (CHAR_PX * TITLE_FONT))


def _fit(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _geometry(n: int) -> dict:
    """Pixel layout of ``n`` square panels, at most MAX_COLS per row, with room for two-line titles."""
    cols = min(MAX_COLS, n)
    rows = -(-n // cols)
    title_px = int(2 * 1.35 * TITLE_FONT) + 10          # two lines of subplot title above each row
    plot_w = cols * PANEL_PX + (cols - 1) * GAP_PX
    plot_h = rows * PANEL_PX + (rows - 1) * title_px
    margin = dict(l=10, r=75, t=40 + title_px, b=10)   # right: the colour bars; top: figure + first titles
    return dict(rows=rows, cols=cols, hspace=GAP_PX / plot_w, vspace=title_px / plot_h if rows > 1 else 0.0,
                width=plot_w + margin["l"] + margin["r"], height=plot_h + margin["t"] + margin["b"],
                margin=margin)


def _coloraxis(kind: str, j: int, n: int) -> dict:
    """The colour axis of one kind of map; its colour bar takes the j-th of n slots down the right edge."""
    spec = KINDS[kind]
    ticks = np.linspace(spec["cmin"], 1.0, len(spec["ticks"])).tolist()
    return dict(colorscale=spec["plotly"], cmin=spec["cmin"], cmax=1.0,
                colorbar=dict(title=dict(text=kind, side="top"), tickvals=ticks, ticktext=list(spec["ticks"]),
                              ticklabelposition="outside bottom",
                              len=0.9 / n, y=1 - (j + 0.5) / n, yanchor="middle", x=1.01, xanchor="left",
                              thickness=12))


__all__ = ["DEFAULT_METHODS", "FAMILIES", "SHORT_NAMES", "SIGNED_METHODS", "KINDS", "MAX_COLS", "PANEL_PX",
           "GAP_PX", "TITLE_FONT", "CHAR_PX", "short_name", "map_kind"]
