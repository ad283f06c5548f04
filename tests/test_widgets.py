"""The interactive comparison: figures, controls that redraw, and the score table."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from xai_helpers.model_info import ModelInfoError, describe_model
from xai_helpers.widgets import MethodComparison


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


def test_figure_has_one_panel_per_method_plus_the_image(comparison):
    fig = comparison.figure(0, target="present")
    images = [t for t in fig.data if t.type == "image"]
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(images) == 3 and len(heatmaps) == 2
    titles = [a.text for a in fig.layout.annotations]
    assert titles[1].startswith("integrated_gradients") and "present" in titles[1]
    assert "peak in" in titles[1]                     # the model only reads the region


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
