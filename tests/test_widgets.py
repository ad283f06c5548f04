"""The interactive comparison: figures, controls that redraw, and the score table."""
import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from xai_helpers import viz
from xai_helpers.explain import available_methods
from xai_helpers.model_info import ModelInfoError, describe_model
from xai_helpers.widgets import CHAR_PX, FAMILIES, MethodComparison, map_kind

NINE = ["gradcam", "gradcam++", "layercam", "saliency", "input_x_gradient", "integrated_gradients",
        "smoothgrad", "random", "edges"]


class RegionModel(nn.Module):
    """Class 1's logit reads only the pixels inside ``region``: a model whose true evidence is known."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("region", region.float())
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():                    # bright pixels in the region speak for "present"
            self.conv.weight.abs_()
            self.fc.weight[1].abs_()
            self.fc.weight[0] = -self.fc.weight[1]
        describe_model(self, class_names=["absent", "present"], task="binary", mean=(0.0,) * 3, std=(1.0,) * 3)

    def forward(self, x):
        a = torch.relu(self.conv(x)) * self.region
        return self.fc(a.sum((2, 3)) / self.region.sum())


@pytest.fixture(scope="module")
def comparison():
    g = torch.Generator().manual_seed(0)
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[8:16, 18:28] = True
    x = torch.rand(4, 3, 32, 32, generator=g)
    masks = region[None].repeat(4, 1, 1).numpy()
    display = (x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    return MethodComparison(RegionModel(region), x, display=display, masks=masks,
                            methods=("integrated_gradients", "random"))


@pytest.fixture(autouse=True)
def _matplotlib_pictures(monkeypatch):
    """Static pictures by the matplotlib fallback here (fast); tests/test_viz.py covers plotly's exporter."""
    monkeypatch.setitem(viz._KALEIDO, "ok", False)


def test_figure_has_one_panel_per_method_plus_the_image(comparison):
    fig = comparison.figure(0, target="present")
    images = [t for t in fig.data if t.type == "image"]
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(images) == 3 and len(heatmaps) == 2
    titles = [a.text for a in fig.layout.annotations]
    assert titles[1].startswith("Int. Gradients")
    assert "peak in" in titles[1]                     # the model only reads the region
    assert "present" in fig.layout.title.text and "p = " in fig.layout.title.text
    raw = comparison.explanation(0, 1, "integrated_gradients")   # hover reads the raw values
    assert np.allclose(np.asarray(heatmaps[0].customdata, dtype=float), raw)


def _panel_names(fig):
    return [a.text.split("<br>")[0] for a in fig.layout.annotations][1:]


def test_panels_follow_the_order_chosen(comparison):
    fig = comparison.figure(0, methods=["random", "edges", "saliency"])
    assert _panel_names(fig) == ["Random", "Edges", "Saliency"]
    picker = comparison.widget.controls["methods"]
    for m in list(picker.value):
        picker.boxes[m].value = False                 # untick everything, then tick in a new order
    for m in ["edges", "integrated_gradients", "random"]:
        picker.boxes[m].value = True
    assert picker.value == ("edges", "integrated_gradients", "random")
    shown = comparison.widget.output.outputs[0]["data"][viz.PLOTLY_MIME]
    names = [a["text"].split("<br>")[0] for a in shown["layout"]["annotations"]][1:]
    assert names == ["Edges", "Int. Gradients", "Random"]
    picker.value = ("saliency", "random")             # set from code: the boxes follow
    assert [m for m, b in picker.boxes.items() if b.value] == ["saliency", "random"]


def _colour_bars(fig):
    return {k: fig.layout[k] for k in fig.layout if k.startswith("coloraxis") and fig.layout[k].colorbar.title.text}


def test_one_colour_bar_per_kind_of_map(comparison):
    fig = comparison.figure(0, target="present", methods=["integrated_gradients", "random", "saliency", "edges"])
    bars = _colour_bars(fig)
    kinds = {map_kind(m, comparison.explanation(0, 1, m)) for m in ["integrated_gradients", "random", "saliency"]}
    assert kinds == {"signed", "unsigned"} and len(bars) == 2
    by_kind = {ax.colorbar.title.text: (name, ax) for name, ax in bars.items()}
    signed_axis, signed = by_kind["signed"]
    assert signed.cmin == -signed.cmax and signed.colorscale != by_kind["unsigned"][1].colorscale
    assert by_kind["unsigned"][1].cmin == 0
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert heat[0].coloraxis == signed_axis and len({t.coloraxis for t in heat[1:]}) == 1
    for t in heat:                                   # each map within its scale, its max magnitude at the end
        z = np.asarray(t.z, dtype=float)
        assert np.isclose(np.abs(z).max(), 1.0) and z.min() >= (-1 if t.coloraxis == signed_axis else 0) - 1e-6
    assert len(_colour_bars(comparison.figure(0, methods=["random", "edges"]))) == 1


def test_nine_methods_wrap_and_their_titles_fit(comparison):
    fig = comparison.figure(0, methods=NINE, )
    lay = fig.layout
    assert lay.width <= 1000                  # a JupyterLab output is ~970 px with the side bar open
    plot_w = lay.width - lay.margin.l - lay.margin.r
    plot_h = lay.height - lay.margin.t - lay.margin.b
    tops = sorted({round(lay[k].domain[1], 6) for k in lay if k.startswith("yaxis")}, reverse=True)
    assert len(tops) == 3                                        # 10 panels, 4 per row
    font = lay.annotations[0].font.size
    for k, a in enumerate(lay.annotations):
        x_dom = lay["xaxis" + ("" if k == 0 else str(k + 1))].domain
        panel_px = (x_dom[1] - x_dom[0]) * plot_w
        lines = a.text.split("<br>")
        assert max(len(s) for s in lines) * font * CHAR_PX <= panel_px, a.text
        y_dom = lay["yaxis" + ("" if k == 0 else str(k + 1))].domain
        above = [t for t in tops if t > y_dom[1] + 1e-6]         # the panel row above ends where?
        bottom_above = min(lay[k2].domain[0] for k2 in lay if k2.startswith("yaxis")
                           and round(lay[k2].domain[1], 6) == min(above)) if above else 1 + lay.margin.t / plot_h
        assert (bottom_above - y_dom[1]) * plot_h >= len(lines) * font * 1.2, a.text


def test_mask_colour_named_as_drawn(comparison):
    fig = comparison.figure(0)
    outlines = [t for t in fig.data if t.type == "contour"]
    assert outlines
    for t in outlines:                  # "lines" colouring would take the colour scale, not line.color
        assert t.contours.coloring == "none" and t.line.color == viz.plotly_color(viz.MASK_COLOR)
    assert viz.color_name(viz.MASK_COLOR) == viz.MASK_COLOR_NAME
    assert f"{viz.MASK_COLOR_NAME} outline" in fig.layout.title.text
    assert f"{viz.MASK_COLOR_NAME.capitalize()} outline" in comparison.caption()
    nb = json.loads((Path(__file__).parents[1] / "notebooks" / "08_compare_methods.ipynb").read_text())
    text = " ".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    named = re.findall(r"\b(\w+) (?:mask|outline|contour)", text)
    colours = {"red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta", "lime", "white", "black"}
    assert {w.lower() for w in named} & colours <= {viz.MASK_COLOR_NAME}


def test_method_picker_groups_every_method_and_ticks_the_defaults(comparison):
    w = comparison.widget
    picker = w.controls["methods"]
    assert set(picker.boxes) == set(available_methods())
    rows = {row.children[0].value: [b.method for b in row.children[1:]] for row in picker.children}
    for family, methods in FAMILIES.items():
        assert rows[family] == [m for m in methods if m in available_methods()]
    fresh = MethodComparison(comparison.model, comparison.images, methods=("edges", "saliency"))
    p = fresh.widget.controls["methods"]
    assert p.value == ("edges", "saliency") and {m for m, b in p.boxes.items() if b.value} == {"edges", "saliency"}
    assert any("order you tick" in getattr(c, "value", "") for c in fresh.widget.children)


def test_widget_carries_a_picture_of_its_first_view(comparison):
    fresh = MethodComparison(comparison.model, comparison.images, masks=comparison.masks, methods=("random",))
    bundle = fresh.widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle      # JupyterLab: the live widget
    png = bundle["image/png"]                                          # everyone else: its first view
    assert base64.b64decode(png).startswith(b"\x89PNG")
    # the live output has none: jupyterlab-plotly would show a bundle's PNG until the pointer enters it
    assert "image/png" not in fresh.widget.output.outputs[0]["data"]


def test_score_table_separates_a_real_method_from_random(comparison):
    table = comparison.score_table(target="present")
    assert list(table.index) == ["integrated_gradients", "random"]
    chance = table.loc["random", "chance (area fraction)"]
    assert table.loc["integrated_gradients", "pointing_game"] == 1.0
    # not 1.0: the 3x3 conv also reads the one-pixel ring just outside the region (~25% of its area)
    assert table.loc["integrated_gradients", "relevance_mass"] > 0.8
    assert abs(table.loc["random", "relevance_mass"] - chance) < 0.1


def test_controls_redraw_and_cache(comparison):
    w = comparison.widget
    before = len(comparison._cache)
    w.controls["methods"].value = ("saliency",)
    w.controls["image"].value = 2
    assert (2, comparison.predicted(2), "saliency") in comparison._cache
    assert len(comparison._cache) > before
    w.controls["target"].value = "absent"
    assert (2, 0, "saliency") in comparison._cache
    shown = w.output.outputs
    assert len(shown) == 1 and "application/vnd.plotly.v1+json" in shown[0]["data"]
    w.controls["methods"].value = ()
    assert w.output.outputs[0]["text"].startswith("Pick at least one method")


def test_bad_input_is_named():
    model = RegionModel(torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="masks must be"):
        MethodComparison(model, torch.rand(2, 3, 8, 8), masks=np.ones((2, 4, 4), bool))
    cmp = MethodComparison(model, torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown target 'x'"):
        cmp.figure(0, target="x")
    with pytest.raises(ValueError, match="needs ground-truth masks"):
        cmp.score_table()
    with pytest.raises(ModelInfoError, match="describe_model"):     # a foreign model is told what to declare
        MethodComparison(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), torch.rand(2, 3, 8, 8))


def test_maps_are_the_cached_maps_for_every_image(comparison):
    maps = comparison.maps("integrated_gradients", target="present")
    assert maps.shape == (4, 32, 32)
    assert np.array_equal(maps[3], comparison.explanation(3, 1, "integrated_gradients"))
    with pytest.raises(ValueError, match="out of range"):
        comparison.maps("random", target=5)


def test_scorecard_reuses_the_shown_maps_and_appears_in_the_widget(comparison, monkeypatch):
    from xai_helpers import widgets
    from xai_helpers.evaluation.scorecard import scorecard

    fresh = MethodComparison(comparison.model, comparison.images, display=comparison.display,
                             masks=comparison.masks, methods=("integrated_gradients", "random"))
    w = fresh.widget                                     # computes the first view's maps
    assert not w.card_output.outputs                     # no scorecard until asked
    fresh.maps("integrated_gradients", target="present")
    fresh.maps("random", target="present")
    calls = []
    monkeypatch.setattr(widgets, "explain", lambda *a, **k: calls.append(a) or pytest.fail("explained again"))
    card = fresh.scorecard(target="present", n_boot=200)
    assert not calls and fresh.card is card
    # the same numbers as the evaluation module's own call on the same maps
    ref = scorecard(fresh.model, fresh.images, 1, ["integrated_gradients", "random"],
                    metrics=("deletion", "insertion", "sic", "pointing_game", "relevance_mass"), masks=fresh.masks,
                    maps={m: fresh.maps(m, target="present") for m in ("integrated_gradients", "random")},
                    n_boot=200, progress=False)
    np.testing.assert_allclose(card.wide("mean").to_numpy(), ref.wide("mean").to_numpy(), equal_nan=True)
    assert card.table["seconds_per_image"].notna().all()  # the seconds of the maps the widget computed
    means = card.wide("mean")
    assert means.loc["integrated_gradients", "pointing_game"] > means.loc["random", "pointing_game"]
    # the button scores the ticked methods (target as chosen) and shows the figure and the table
    monkeypatch.undo()
    w.controls["target"].value = "present"
    w.controls["methods"].value = ("random",)
    w.controls["score"].click()
    shown = w.card_output.outputs
    assert "application/vnd.plotly.v1+json" in shown[0]["data"] and "<table" in shown[1]["data"]["text/html"]
    assert list(fresh.card.wide("mean").index) == ["random"]
    assert not w.controls["score"].disabled
    fresh.scorecard(target="present", methods=["integrated_gradients"], metrics=("pointing_game",), n_boot=50)
    assert "integrated_gradients" in w.card_output.outputs[1]["data"]["text/plain"]   # called from code: shown too
