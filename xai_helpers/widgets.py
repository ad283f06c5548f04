"""Compare explanation methods side by side, interactively (ipywidgets + plotly).

    >>> from xai_helpers.widgets import MethodComparison
    >>> cmp = MethodComparison(model, x, display=ds.images[idx], masks=ds.masks[idx])
    >>> cmp.widget                     # in JupyterLab: pick an image, a target and methods

Maps are computed with :func:`xai_helpers.explain.explain` the first time they are shown and then
cached, so flipping back and forth costs nothing. Each panel's title gives the method, the class,
the model's score for that class, and (where a mask is given) whether the map's peak falls inside it
and the share of positive relevance inside it: numbers beside the pictures, never pictures alone.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from .evaluation import pointing_hits, relevance_mass, score_maps
from .explain import explain, resolve_targets
from .model_info import model_info, probabilities

DEFAULT_METHODS = ("gradcam", "lrp", "integrated_gradients", "random")


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

    def panel_title(self, i: int, target: int, method: str) -> str:
        m = self.explanation(i, target, method)
        parts = [method, f"{self.class_names[target]} p={float(self.scores[i, target]):.2f}"]
        if self.masks is not None and self.masks[i].any():
            hit = pointing_hits(m[None], self.masks[i][None])[0]
            mass = relevance_mass(m[None], self.masks[i][None])[0]
            parts.append(f"peak {'in' if hit >= 0.5 else 'out'} · mass {mass:.2f}")
        parts.append(f"{self._cache[(i, target, method)][1]:.2f}s")
        return "<br>".join(parts[:2]) + "<br>" + " · ".join(parts[2:])

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
    def figure(self, i: int = 0, target=None, methods=None, opacity: float = 0.5, show_mask: bool = True):
        """A plotly figure: the image, then one overlay per method (hover shows each pixel's value)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        methods = list(methods or self.methods)
        t = self._targets(target)[i]
        titles = [f"{self.titles[i]}<br>model says {self.class_names[self.predicted(i)]}"] + \
                 [self.panel_title(i, t, m) for m in methods]
        fig = make_subplots(rows=1, cols=1 + len(methods), subplot_titles=titles,
                            horizontal_spacing=0.02)
        rgb = _rgb(self.display[i])
        mask = self.masks[i] if (self.masks is not None and show_mask) else None
        for col in range(1, len(methods) + 2):
            fig.add_trace(go.Image(z=rgb, hoverinfo="skip"), row=1, col=col)
            if col > 1:
                m = self.explanation(i, t, methods[col - 2])
                lim = float(np.abs(m).max()) or 1.0
                signed = bool((m < 0).any())
                fig.add_trace(go.Heatmap(
                    z=m, opacity=opacity, colorscale="RdBu_r" if signed else "Jet",
                    zmin=-lim if signed else 0.0, zmax=lim, showscale=(col == len(methods) + 1),
                    hovertemplate=f"{methods[col - 2]}<br>x=%{{x}} y=%{{y}}<br>value=%{{z:.3g}}<extra></extra>"),
                    row=1, col=col)
            if mask is not None and mask.any():
                fig.add_trace(go.Contour(z=mask.astype(np.uint8), showscale=False, contours_coloring="lines",
                                         contours=dict(start=0.5, end=0.5, size=1), hoverinfo="skip",
                                         line=dict(color="lime", width=2)), row=1, col=col)
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False, autorange="reversed")
        fig.update_layout(height=300, width=230 * (len(methods) + 1), margin=dict(l=5, r=5, t=80, b=5),
                          font=dict(size=10))
        return fig

    @property
    def widget(self):
        """Image, target, methods, opacity and mask toggle; the figure redraws on every change."""
        if self._widget is None:
            self._widget = self._build_widget()
        return self._widget

    def _build_widget(self):
        import ipywidgets as W
        from .explain import available_methods

        image = W.Dropdown(options=[(t, k) for k, t in enumerate(self.titles)], value=0, description="image")
        target = W.Dropdown(options=[("predicted", "pred")] + [(c, c) for c in self.class_names],
                            value="pred", description="explain")
        methods = W.SelectMultiple(options=sorted(available_methods()), value=tuple(self.methods),
                                   rows=6, description="methods")
        opacity = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.1, description="opacity")
        show_mask = W.Checkbox(value=self.masks is not None, description="show mask",
                               disabled=self.masks is None)
        out = W.Output()

        def redraw(*_):
            # set the Output's contents directly instead of capturing with `with out:`: capture
            # routes iopub messages through the widget, which can block headless execution
            # (nbclient issue 312) and so hang a notebook under nbval
            out.outputs = ()
            if not methods.value:
                out.append_stdout("Pick at least one method.\n")
                return
            fig = self.figure(image.value, target.value, list(methods.value), opacity.value, show_mask.value)
            bundle = {"application/vnd.plotly.v1+json": json.loads(fig.to_json()),
                      "text/plain": f"<plotly figure: {', '.join(methods.value)}>"}
            out.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)

        for w in (image, target, methods, opacity, show_mask):
            w.observe(redraw, names="value")
        redraw()
        controls = W.HBox([W.VBox([image, target, opacity, show_mask]), methods])
        box = W.VBox([controls, out])
        box.controls = dict(image=image, target=target, methods=methods, opacity=opacity, show_mask=show_mask)
        box.output = out
        return box


__all__ = ["MethodComparison", "DEFAULT_METHODS"]
