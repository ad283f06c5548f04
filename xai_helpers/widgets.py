"""Compare explanation methods side by side, interactively (ipywidgets + plotly).

    >>> from xai_helpers.widgets import MethodComparison
    >>> cmp = MethodComparison(model, x, display=ds.images[idx], masks=ds.masks[idx])
    >>> cmp.widget                     # in JupyterLab: pick an image, a target and methods

Maps are computed with :func:`xai_helpers.explain.explain` the first time they are shown and then
cached, so flipping back and forth costs nothing. Each panel's title gives the method, the class,
the model's score for that class, and (where a mask is given) whether the map's peak falls inside it
and the share of positive relevance inside it: numbers beside the pictures, never pictures alone.

Panels wrap at four per row, in the order the methods were chosen. Maps come in two kinds, each with
one colour scale and one colour bar: signed maps (LRP, Integrated Gradients, SHAP, ...) on a diverging
scale centred on 0, unsigned maps (Grad-CAM, saliency, ...) on a sequential one. Every map is scaled to
its own largest magnitude (hover a pixel for its raw value). The mask is outlined in
``viz.MASK_COLOR``, which captions call ``viz.MASK_COLOR_NAME``.
"""
from __future__ import annotations

import numpy as np
import torch

from .evaluation import pointing_hits, relevance_mass, score_maps
from .explain import explain, resolve_targets
from .model_info import model_info, probabilities
from .viz import MASK_COLOR, MASK_COLOR_NAME, plotly_color
from .widget_layout import (CHAR_PX, DEFAULT_METHODS, FAMILIES, KINDS,  # noqa: F401  (CHAR_PX: re-exported)
                            TITLE_FONT, _coloraxis, _fit, _geometry, _title_chars, map_kind, short_name)

def _rgb(image) -> np.ndarray:
    """uint8 (H, W, 3) for plotly's Image trace, from uint8/float, grey/RGB, HWC/CHW."""
    from .viz import to_display

    img = to_display(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


class MethodComparison:
    """Side-by-side explanation maps for a few images, with scores, as a widget or a static figure.

    Parameters
    ----------
    model : classifier that declares its interface (built by ``xai_helpers.models``, or wrapped with
        ``xai_helpers.model_info.describe_model``): class names and task come from it.
    images : (N, C, H, W) float tensor, normalised as the model expects.
    display : the same images for display (uint8 (N, H, W, C) from the dataset); default: ``images``.
    masks : optional (N, H, W) bool ground truth (planted evidence, expert lesion masks, rasterised boxes).
    methods : method names for :func:`explain`; ``options`` maps a method name to its keyword options.
    """

    def __init__(self, model, images, display=None, masks=None, methods=DEFAULT_METHODS,
                 options: dict | None = None, titles=None, seed: int = 0):
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
        self.model = model.eval()
        self.images = images
        self.display = display if display is not None else images
        if len(self.display) != len(images):
            raise ValueError(f"display has {len(self.display)} images but images has {len(images)}")
        self.masks = None if masks is None else np.asarray(masks, dtype=bool)
        if self.masks is not None and self.masks.shape != (len(images), *images.shape[2:]):
            raise ValueError(f"masks must be (N, H, W) = {(len(images), *images.shape[2:])}; "
                             f"got {self.masks.shape}")
        self.methods = list(methods)
        self.options = dict(options or {})
        self.titles = list(titles) if titles is not None else [f"image {i}" for i in range(len(images))]
        self.seed = seed
        info = model_info(model)
        self.class_names = list(info.class_names)
        with torch.no_grad():
            logits = model(images.to(next(model.parameters()).device)).float().cpu()
        self.scores = probabilities(logits, info.task)
        self._cache: dict = {}
        self._widget = None
        self.card = None                    # the last scorecard (see :meth:`scorecard`)

    # ---- computation -------------------------------------------------------------------------
    def explanation(self, i: int, target: int, method: str) -> np.ndarray:
        """The (H, W) map of ``method`` for image ``i`` and output ``target`` (cached)."""
        self.compute(method, [i], [target])
        return self._cache[(i, target, method)][0]

    def compute(self, method: str, indices, targets) -> None:
        """Explain every (image, target) pair not cached yet, in ONE batched call of the method."""
        todo = [(i, int(t)) for i, t in zip(indices, targets) if (i, int(t), method) not in self._cache]
        if not todo:
            return
        idx = [i for i, _ in todo]
        exp = explain(self.model, self.images[idx], target=[[t] for _, t in todo], method=method,
                      seed=self.seed, **self.options.get(method, {}))
        per_image = exp.seconds / len(todo)
        for k, (i, t) in enumerate(todo):
            self._cache[(i, t, method)] = (exp.maps[k], per_image)

    def predicted(self, i: int) -> int:
        return int(self.scores[i].argmax())

    def score_table(self, target=None, methods=None):
        """Pointing game and relevance mass per method over *all* images (needs ``masks``).

        ``target`` None explains each image's predicted class. One pretty picture proves nothing:
        this is the table to read.
        """
        import pandas as pd

        if self.masks is None:
            raise ValueError("score_table needs ground-truth masks: pass masks= when you build the comparison")
        rows = []
        tg = self._targets(target)
        for method in methods or self.methods:
            s = score_maps(self.maps(method, target), self.masks)
            s["seconds / image"] = float(np.mean([self._cache[(i, t, method)][1] for i, t in enumerate(tg)]))
            rows.append({"method": method, **s})
        return pd.DataFrame(rows).set_index("method")

    def scorecard(self, target=None, methods=None, metrics=None, **options):
        """The evaluation scorecard (:func:`xai_helpers.evaluation.scorecard`) of these images: each
        method scored by each metric over ALL images, with bootstrap intervals and mean ranks. The maps
        the comparison has computed are reused, not recomputed. ``metrics`` default: deletion, insertion
        and SIC, plus pointing game and relevance mass when masks were given. Kept as ``self.card``:
        the widget shows it below the panels."""
        from .evaluation.scorecard import scorecard

        methods = list(methods or self.methods)
        if metrics is None:
            metrics = ("deletion", "insertion", "sic") + (("pointing_game", "relevance_mass")
                                                          if self.masks is not None else ())
        tg = self._targets(target)
        maps = {m: self.maps(m, target) for m in methods}
        card = scorecard(self.model, self.images, tg, methods, metrics=metrics, masks=self.masks, maps=maps,
                         seed=self.seed, **{"progress": False, **options})
        seconds = {m: float(np.mean([self._cache[(i, t, m)][1] for i, t in enumerate(tg)])) for m in methods}
        card.table["seconds_per_image"] = card.table["method"].map(seconds)
        self.card = card
        if self._widget is not None:                 # a widget on screen shows the new card below its panels
            self._widget.show_card(card)
        return card

    def maps(self, method: str, target=None) -> np.ndarray:
        """(N, H, W): the maps of ``method`` for every image (``target`` as in :meth:`score_table`)."""
        tg = self._targets(target)
        self.compute(method, range(len(tg)), tg)
        return np.stack([self._cache[(i, t, method)][0] for i, t in enumerate(tg)])

    def _targets(self, target) -> list[int]:
        """Per image, one output index: its predicted class for None / "pred", else ``target`` by explain's rules."""
        if target is None or (isinstance(target, str) and target == "pred"):
            return [self.predicted(i) for i in range(len(self.images))]   # stored scores: no extra forward pass
        resolved = resolve_targets(self.model, self.images[:1], target)[0]
        if len(resolved) != 1:
            raise ValueError(f"the comparison explains one output at a time; got {len(resolved)} for {target!r}")
        return resolved * len(self.images)

    # ---- display -----------------------------------------------------------------------------
    def panels(self, i: int = 0, target=None, methods=None) -> list[dict]:
        """What each method panel shows, in the order of ``methods``: method, kind ("signed" or
        "unsigned"), the raw map, the map divided by its own max |value| (``shown``) and two title lines."""
        t = self._targets(target)[i]
        out = []
        for method in list(methods or self.methods):
            raw = self.explanation(i, t, method)
            kind = map_kind(method, raw)
            top = float(np.abs(raw).max()) if kind == "signed" else float(raw.max())
            stats = []
            if self.masks is not None and self.masks[i].any():
                hit = pointing_hits(raw[None], self.masks[i][None])[0]
                mass = relevance_mass(raw[None], self.masks[i][None])[0]
                stats.append(f"peak {'in' if hit >= 0.5 else 'out'} · mass {mass:.2f}")
            stats.append(f"{self._cache[(i, t, method)][1]:.2f} s")
            out.append(dict(method=method, kind=kind, raw=raw, shown=raw / top if top > 0 else raw,
                            title=[short_name(method), " · ".join(stats)]))
        return out

    def headline(self, i: int, target=None) -> list[str]:
        """The figure's title: image, prediction, explained class with its score, and the mask colour."""
        t = self._targets(target)[i]
        mask = f" · {MASK_COLOR_NAME} outline: mask" if self.masks is not None else ""
        return [f"{self.titles[i]} · model says {self.class_names[self.predicted(i)]}",
                f"maps explain {self.class_names[t]} (p = {float(self.scores[i, t]):.2f}){mask}"]

    def figure(self, i: int = 0, target=None, methods=None, opacity: float = 0.5, show_mask: bool = True):
        """A plotly figure: the image, then one overlay per method, at most four panels per row (hover
        shows each pixel's raw value). One colour bar per kind of map shown."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        panels = self.panels(i, target, methods)
        g = _geometry(len(panels) + 1)
        n_chars = _title_chars()
        titles = [[self.titles[i], f"model: {self.class_names[self.predicted(i)]}"]] + [p["title"] for p in panels]
        fig = make_subplots(rows=g["rows"], cols=g["cols"], horizontal_spacing=g["hspace"],
                            vertical_spacing=g["vspace"],
                            subplot_titles=["<br>".join(_fit(s, n_chars) for s in t) for t in titles])
        rgb = _rgb(self.display[i])
        mask = self.masks[i] if (self.masks is not None and show_mask) else None
        kinds = [k for k in KINDS if any(p["kind"] == k for p in panels)]
        for k in range(len(panels) + 1):
            rc = dict(row=k // g["cols"] + 1, col=k % g["cols"] + 1)
            fig.add_trace(go.Image(z=rgb, hoverinfo="skip"), **rc)
            if k:
                p = panels[k - 1]
                axis = "coloraxis" + ("" if kinds.index(p["kind"]) == 0 else "2")
                fig.add_trace(go.Heatmap(
                    z=p["shown"], customdata=p["raw"], coloraxis=axis, opacity=opacity,
                    hovertemplate=f"{p['title'][0]}<br>x=%{{x}} y=%{{y}}<br>value=%{{customdata:.3g}}<extra></extra>"),
                    **rc)
            if mask is not None and mask.any():
                fig.add_trace(go.Contour(z=mask.astype(np.uint8), showscale=False, contours_coloring="none",
                                         contours=dict(start=0.5, end=0.5, size=1), hoverinfo="skip",
                                         line=dict(color=plotly_color(MASK_COLOR), width=2)), **rc)
        for j, kind in enumerate(kinds):
            fig.update_layout({"coloraxis" + ("" if j == 0 else "2"): _coloraxis(kind, j, len(kinds))})
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False, autorange="reversed")
        fig.update_annotations(font_size=TITLE_FONT)
        head = "<br>".join(_fit(s, int(g["width"] / (CHAR_PX * 12))) for s in self.headline(i, target))
        fig.update_layout(width=g["width"], height=g["height"], margin=g["margin"], font=dict(size=10),
                          showlegend=False, title=dict(text=head, font_size=12, x=0.01, xanchor="left", y=1,
                                                       yref="container", yanchor="top", pad=dict(t=16)))
        return fig

    def figure_matplotlib(self, i: int = 0, target=None, methods=None, opacity: float = 0.5,
                          show_mask: bool = True):
        """The same panels, titles and colour bars drawn with matplotlib (the static picture's fallback)."""
        import matplotlib.pyplot as plt
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        from .viz import draw_mask, style

        panels = self.panels(i, target, methods)
        g = _geometry(len(panels) + 1)
        with style():
            fig, axes = plt.subplots(g["rows"], g["cols"], squeeze=False,
                                     figsize=(g["width"] / 100, g["height"] / 100))
            titles = [[self.titles[i], f"model: {self.class_names[self.predicted(i)]}"]] + [p["title"] for p in panels]
            for k, ax in enumerate(axes.flat):
                ax.axis("off")
                if k > len(panels):
                    continue
                ax.imshow(_rgb(self.display[i]))
                if k:
                    spec = KINDS[panels[k - 1]["kind"]]
                    ax.imshow(panels[k - 1]["shown"], cmap=spec["mpl"], vmin=spec["cmin"], vmax=1.0, alpha=opacity)
                if self.masks is not None and show_mask:
                    draw_mask(ax, self.masks[i], linewidth=1.5)
                ax.set_title("\n".join(_fit(s, _title_chars()) for s in titles[k]), fontsize=7)
            for kind in [k for k in KINDS if any(p["kind"] == k for p in panels)]:
                spec = KINDS[kind]
                bar = fig.colorbar(ScalarMappable(Normalize(spec["cmin"], 1.0), spec["mpl"]), ax=axes, shrink=0.6,
                                   fraction=0.03, ticks=np.linspace(spec["cmin"], 1.0, len(spec["ticks"])))
                bar.ax.set_yticklabels(spec["ticks"])
                bar.set_label(kind)
            fig.suptitle("\n".join(self.headline(i, target)), fontsize=9, x=0.01, ha="left")
        return fig

    def png(self, i: int = 0, target=None, methods=None, opacity: float = 0.5, show_mask: bool = True):
        """PNG bytes of :meth:`figure` (plotly's exporter, else :meth:`figure_matplotlib`); None if neither."""
        from .viz import figure_png

        fig = self.figure(i, target, methods, opacity, show_mask)
        return figure_png(fig, fallback=lambda: self.figure_matplotlib(i, target, methods, opacity, show_mask))

    def show(self, i: int = 0, target=None, methods=None, opacity: float = 0.5, show_mask: bool = True) -> None:
        """Display :meth:`figure` as one output with the interactive figure AND a static picture of it
        (readers on GitHub, nbviewer, an HTML export or a printout see the picture)."""
        from .viz import show

        show(self.figure(i, target, methods, opacity, show_mask),
             fallback=lambda: self.figure_matplotlib(i, target, methods, opacity, show_mask))

    def caption(self) -> str:
        """The widget's legend: what the outline, the two colour scales and the scaling mean."""
        mask = (f"<b style='color:{plotly_color(MASK_COLOR)}'>━</b> {MASK_COLOR_NAME.capitalize()} outline: "
                "the ground-truth mask. ") if self.masks is not None else ""
        return (f"{mask}Signed maps (LRP, Integrated Gradients, SHAP, LIME, occlusion): blue–white–red, 0 in the "
                "middle, red speaks for the class (any map with a negative value is drawn this way). Unsigned maps "
                "(every other: the Grad-CAM family, saliency, SmoothGrad, the baselines): black–yellow. Each map is divided by its own largest value; hover a pixel for its raw value.")

    @property
    def widget(self):
        """Image, target, methods (in the order ticked), opacity and mask toggle; redraws on every change.

        Displayed, it also carries a static picture of its first view, which readers without a kernel
        (GitHub, nbviewer, an HTML export) see in its place."""
        if self._widget is None:
            self._widget = _build_widget(self)
        return self._widget


def _method_picker(chosen):
    """One row of checkboxes per family; ``picker.value`` is the ticked methods in the order ticked."""
    import ipywidgets as W
    import traitlets

    from .explain import available_methods

    described = available_methods()
    names = list(described) + [m for m in chosen if m not in described]
    rows = {f: [m for m in ms if m in names] for f, ms in FAMILIES.items()}
    rows["other"] = [m for m in names if not any(m in ms for ms in FAMILIES.values())]

    class MethodPicker(W.VBox):
        value = traitlets.Tuple()           # Python side only: the panels' order

    picker = MethodPicker(value=tuple(chosen))
    boxes = {m: W.Checkbox(value=m in chosen, description=short_name(m), indent=False,
                           tooltip=f"{m}: {described.get(m, '')}", layout=W.Layout(width="auto"))
             for ms in rows.values() for m in ms}

    def ticked(change):
        m = change["owner"].method
        order = [x for x in picker.value if x != m]
        picker.value = tuple(order + [m] if change["new"] else order)

    def sync(change):                       # value set from code: tick exactly those boxes
        for m, b in boxes.items():
            if b.value != (m in change["new"]):
                b.unobserve(ticked, names="value")
                b.value = m in change["new"]
                b.observe(ticked, names="value")

    for m, b in boxes.items():
        b.method = m
        b.observe(ticked, names="value")
    picker.observe(sync, names="value")
    picker.children = [W.HBox([W.Label(family, layout=W.Layout(width="95px"))] + [boxes[m] for m in ms])
                       for family, ms in rows.items() if ms]
    picker.boxes = boxes
    return picker


def _build_widget(cmp):
    """The controls around one output area; the first view's picture rides along for static readers."""
    import base64

    import ipywidgets as W

    from .viz import figure_png, mimebundle

    image = W.Dropdown(options=[(t, k) for k, t in enumerate(cmp.titles)], value=0, description="image")
    target = W.Dropdown(options=[("predicted", "pred")] + [(c, c) for c in cmp.class_names],
                        value="pred", description="explain")
    opacity = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.1, description="opacity")
    show_mask = W.Checkbox(value=cmp.masks is not None, description="show mask", disabled=cmp.masks is None)
    methods = _method_picker(cmp.methods)
    order = W.HTML()
    out = W.Output()

    def redraw(*_):
        # set the Output's contents directly instead of capturing with `with out:`: capture
        # routes iopub messages through the widget, which can block headless execution
        # (nbclient issue 312) and so hang a notebook under nbval
        order.value = "<b>panels, in the order ticked:</b> " + (" → ".join(map(short_name, methods.value)) or "none")
        out.outputs = ()
        if not methods.value:
            out.append_stdout("Pick at least one method.\n")
            return
        args = (image.value, target.value, list(methods.value), opacity.value, show_mask.value)
        fig = cmp.figure(*args)
        if box.static_png is None:            # the first view, as a picture, for the widget's own output
            png = figure_png(fig, fallback=lambda: cmp.figure_matplotlib(*args))
            box.static_png = base64.b64encode(png).decode("ascii") if png else ""
        # no PNG in the live output: jupyterlab-plotly would show the picture until the pointer enters it
        bundle = mimebundle(fig, png=b"")
        bundle["text/plain"] = f"<plotly figure: {', '.join(methods.value)}>"
        out.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)

    hint = W.HTML("<i>Tick a method to add its panel, untick to remove it; panels follow the order you tick "
                  "them. Hover a box for the method's key.</i>")
    score_button = W.Button(description="score ticked methods on all images", icon="table",
                            layout=W.Layout(width="auto"),
                            tooltip="deletion, insertion, SIC (and pointing game, relevance mass with masks) over "
                                    "every image, with 95% intervals: the scorecard of chapter 09")
    card_out = W.Output()

    def show_card(card):
        card_out.outputs = ()
        fig = card.figure
        bundle = mimebundle(fig, png=b"")
        bundle["text/plain"] = f"<scorecard: {', '.join(dict.fromkeys(card.table['method']))}>"
        table = card.wide("mean").round(3)
        card_out.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},
                            {"output_type": "display_data", "metadata": {},
                             "data": {"text/html": table.to_html(), "text/plain": table.to_string()}})

    def score(*_):
        if not methods.value:
            return
        score_button.disabled, score_button.description = True, "scoring..."
        try:
            target_value = None if target.value == "pred" else target.value
            show_card(cmp.scorecard(target=target_value, methods=list(methods.value)))
        finally:
            score_button.disabled, score_button.description = False, "score ticked methods on all images"

    score_button.on_click(score)
    box = _static_box()([W.HBox([image, target]), W.HBox([opacity, show_mask]), hint, methods, order,
                         W.HTML(cmp.caption()), out, score_button, card_out])
    for w in (image, target, methods, opacity, show_mask):
        w.observe(redraw, names="value")
    redraw()
    if cmp.card is not None:                  # a scorecard computed before the widget: show it at once
        show_card(cmp.card)
    box.controls = dict(image=image, target=target, methods=methods, opacity=opacity, show_mask=show_mask,
                        score=score_button)
    box.output, box.card_output, box.show_card = out, card_out, show_card
    return box


def _static_box():
    """A VBox whose display bundle also holds a PNG of its first view: JupyterLab shows the widget (its
    renderer ranks first), an untrusted notebook, GitHub, nbviewer and nbconvert show the picture."""
    import ipywidgets as W

    class ComparisonBox(W.VBox):
        static_png = None

        def _repr_mimebundle_(self, **kwargs):
            data = super()._repr_mimebundle_(**kwargs)
            if data is not None and self.static_png:
                data = dict(data, **{"image/png": self.static_png})
            return data

    return ComparisonBox


__all__ = ["MethodComparison", "DEFAULT_METHODS", "FAMILIES", "KINDS", "map_kind", "short_name"]
