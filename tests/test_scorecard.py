"""Expert-box scores (SHAMSUL protocol) on synthetic boxes, and the scorecard on the planted model."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from xai_helpers.evaluation import box_mask, box_scores, box_summary, otsu_iou, scorecard, scorecard_figure
from xai_helpers.evaluation.boxes import finding_masks, score_box_maps
from xai_helpers.model_info import describe_model

H = W = 32
BOX = {"label": "Mass", "x": 4.0, "y": 6.0, "w": 10.0, "h": 8.0}


def test_box_mask_rasterises_pixel_centres():
    m = box_mask(BOX, (H, W))
    assert m.sum() == 10 * 8 and m[6:14, 4:14].all()
    tiny = box_mask(("Nodule", 10.2, 10.2, 0.3, 0.3), (H, W))       # no pixel centre inside: its own pixel
    assert tiny.sum() == 1 and tiny[10, 10]
    clipped = box_mask({"label": "Mass", "x": 28, "y": 28, "w": 10, "h": 10}, (H, W))
    assert clipped.sum() == 4 * 4


def test_a_map_equal_to_the_box_scores_perfectly():
    mask = box_mask(BOX, (H, W))[None]
    s = score_box_maps(mask.astype(float), mask)
    assert s["pointing"][0] == 1.0 and s["mass"][0] == pytest.approx(1.0) and s["iou"][0] == pytest.approx(1.0)
    assert s["area_fraction"][0] == pytest.approx(80 / (H * W))


def test_random_maps_score_about_the_area_fraction():
    mask = box_mask(BOX, (H, W))
    rng = np.random.default_rng(0)
    maps = rng.random((400, H, W))
    s = score_box_maps(maps, np.broadcast_to(mask, maps.shape))
    frac = mask.mean()
    assert abs(s["pointing"].mean() - frac) < 0.04
    assert abs(s["mass"].mean() - frac) < 0.01
    # Otsu splits uniform noise near its middle: IoU ~ (frac / 2) / (1 / 2 + frac / 2), far below a hit
    assert abs(s["iou"].mean() - frac / (1 + frac)) < 0.02


def test_constant_map_marks_no_region():
    mask = box_mask(BOX, (H, W))[None]
    assert otsu_iou(np.ones((1, H, W)), mask)[0] == 0.0


@pytest.mark.parametrize("box, match", [
    ({"label": "Mass", "x": 3, "y": 3, "w": 0, "h": 5}, "empty"),
    ({"label": "Mass", "x": 3, "y": 3, "w": float("nan"), "h": 5}, "empty"),
    ({"label": "Mass", "x": 40, "y": 3, "w": 5, "h": 5}, "outside"),
    ({"label": "Mass", "x": -20, "y": 3, "w": 5, "h": 5}, "outside"),
    ({"label": "Mass", "x": 3, "y": 3}, "keys"),
])
def test_bad_boxes_are_refused_with_the_reason(box, match):
    with pytest.raises(ValueError, match=match):
        box_mask(box, (H, W))


def test_no_boxes_at_all_is_an_error():
    with pytest.raises(ValueError, match="no boxes"):
        finding_masks([[], []], (H, W))


class _BoxModel(torch.nn.Module):
    """Multi-label toy: finding k's logit is the mean of channel 0 inside box k; 3 findings."""

    def __init__(self, masks):
        super().__init__()
        self.register_buffer("m", torch.as_tensor(np.stack(masks), dtype=torch.float32))

    def forward(self, x):
        return (x[:, :1] * self.m[None]).flatten(2).sum(-1) / self.m.flatten(1).sum(-1)


@pytest.fixture(scope="module")
def box_model():
    boxes = [BOX, {"label": "Nodule", "x": 20, "y": 20, "w": 6, "h": 6}, {"label": "Effusion", "x": 0, "y": 24, "w": 32, "h": 8}]
    model = _BoxModel([box_mask(b, (H, W)) for b in boxes])
    describe_model(model, class_names=["Mass", "Nodule", "Effusion"], task="multilabel", mean=(0.5,), std=(0.25,))
    return model.eval(), boxes


def test_box_scores_explain_each_findings_output(box_model):
    model, boxes = box_model
    x = torch.rand(3, 1, H, W, generator=torch.Generator().manual_seed(0)) + 0.5       # positive pixels
    per_image = [[boxes[0], boxes[1]], [boxes[2]], []]
    t = box_scores(model, x, per_image, "input_x_gradient", ids=["a", "b", "c"])
    assert list(t.columns) == ["image", "finding", "method", "pointing", "mass", "iou", "area_fraction", "seconds"]
    assert list(t["image"]) == ["a", "a", "b"] and list(t["finding"]) == ["Mass", "Nodule", "Effusion"]
    # each logit reads only its box, so its gradient map lives in the box: perfect scores
    assert (t["pointing"] == 1).all() and np.allclose(t["mass"], 1.0)
    r = box_scores(model, x, per_image, "random")
    assert r["mass"].between(0, 1).all() and (r["mass"] < 0.6).all()
    s = box_summary(pd.concat([t, r]), n_boot=200)
    assert s.loc[("input_x_gradient", "Mass"), "pointing"] == 1.0
    assert s.loc[("random", "Mass"), "chance"] == pytest.approx(80 / (H * W))
    assert s.loc[("random", "Mass"), "n"] == 1


def test_box_scores_refuse_findings_the_model_lacks(box_model):
    model, _ = box_model
    x = torch.rand(1, 1, H, W)
    with pytest.raises(ValueError, match="not outputs of this model"):
        box_scores(model, x, [[{"label": "Hernia", "x": 1, "y": 1, "w": 5, "h": 5}]], "random")
    with pytest.raises(ValueError, match="one list of boxes per image"):
        box_scores(model, x, [[BOX], [BOX]], "random")


# ---------------------------------------------------------------------------------------------- scorecard
@pytest.fixture(scope="session")
def planted_card():
    from xai_helpers.synthetic import make_planted
    from xai_helpers.training import get_trained_model

    model, info = get_trained_model("planted_skin", fast=True, progress=False, verbose=False)
    ds = make_planted(n=60, size=info["input_size"], kind="skin", seed=321)
    keep = np.flatnonzero(ds.labels == 1)[:16]
    card = scorecard(model.eval(), ds.images[keep], 1, ["gradcam", "random", "edges"], masks=ds.masks[keep],
                     metrics=("deletion", "insertion", "sic", "pointing_game"), n_boot=300, progress=False,
                     metric_options={"deletion": {"steps": 16}, "insertion": {"steps": 16}})
    return card, len(keep)


def test_scorecard_table_shape_and_intervals(planted_card):
    card, n = planted_card
    t = card.table
    assert len(t) == 3 * 4 and set(t["method"]) == {"gradcam", "random", "edges"}
    assert {"mean", "low", "high", "rank", "seconds_per_image", "n"} <= set(t.columns)
    assert ((t["low"] <= t["mean"] + 1e-12) & (t["mean"] <= t["high"] + 1e-12)).all()
    assert len(card.per_image) == 3 * 4 * n
    assert (t.loc[t.metric != "sic", "n"] == n).all()
    # ranks: the mean ranks of 3 methods sum to 1 + 2 + 3
    assert np.allclose(t.groupby("metric")["rank"].sum(), 6.0)


def test_gradcam_ranks_above_random_on_planted_evidence(planted_card):
    card, _ = planted_card
    rank, mean = card.wide("rank"), card.wide("mean")
    for metric in ("deletion", "pointing_game"):
        assert rank.loc["gradcam", metric] < rank.loc["random", metric], (metric, rank)
    assert mean.loc["gradcam", "deletion"] < mean.loc["random", "deletion"]
    assert mean.loc["gradcam", "pointing_game"] > 0.75 > mean.loc["random", "pointing_game"]


def test_scorecard_figure_has_one_legend_group_per_method(planted_card):
    card, _ = planted_card
    fig = scorecard_figure(card.table)
    assert {tr.legendgroup for tr in fig.data} == {"gradcam", "random", "edges"}
    assert sum(tr.showlegend for tr in fig.data) == 3
    assert len(fig.data) == 3 * 4
    wide = card.table.copy()                              # five metrics, as the widget's card: fits an output
    wide = pd.concat([wide, wide[wide.metric == "deletion"].assign(metric="relevance_mass")], ignore_index=True)
    assert len(set(wide.metric)) == 5 and scorecard_figure(wide).layout.width <= 960


def test_rank_figure_shows_mean_ranks_with_the_critical_difference(planted_card):
    from xai_helpers.evaluation import critical_difference, friedman

    card, _ = planted_card
    fig = card.rank_figure("deletion")
    wide = card.per_image[card.per_image.metric == "deletion"].pivot(index="image", columns="method",
                                                                     values="value").dropna()
    ranks = friedman(-wide).mean_ranks                    # deletion: lower is better
    assert dict(zip(fig.data[0].y, fig.data[0].x)) == pytest.approx(ranks)
    assert fig.data[0].error_x.value == pytest.approx(critical_difference(3, len(wide)) / 2)
    assert list(fig.data[0].x) == sorted(fig.data[0].x)  # best (lowest mean rank) first
    with pytest.raises(ValueError, match="no 'aic' scores"):
        card.rank_figure("aic")


def test_unsupported_method_is_listed_not_fatal(planted_card):
    from xai_helpers.explain.support import unsupported_reason
    from xai_helpers.synthetic import make_planted

    class Odd(torch.nn.Module):             # an operation LRP has no rule for
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.sin(self.conv(x)).mean((2, 3)))

    model = describe_model(Odd().eval(), class_names=["a", "b"], task="binary", mean=(0.5,) * 3, std=(0.25,) * 3,
                           cam_layer="conv")
    assert unsupported_reason(model, "lrp") is not None
    ds = make_planted(n=8, size=32, kind="skin", seed=1)
    card = scorecard(model, ds.images, 1, ["lrp", "random", "gradcam"], metrics=("deletion",), n_boot=50,
                     progress=False, metric_options={"deletion": {"steps": 4}})
    assert "lrp" in card.skipped and "LRP" in card.skipped["lrp"]
    assert set(card.table["method"]) == {"random", "gradcam"}


def test_scorecard_bad_input(planted_card):
    from xai_helpers.training import get_trained_model

    model, _ = get_trained_model("planted_skin", fast=True, progress=False, verbose=False)
    imgs = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="need masks"):
        scorecard(model.eval(), imgs, 1, ["random"], metrics=("pointing_game",), progress=False)
    with pytest.raises(ValueError, match="unknown metrics"):
        scorecard(model.eval(), imgs, 1, ["random"], metrics=("accuracy",), progress=False)


def test_scorecard_reuses_given_maps(planted_card):
    card, _ = planted_card
    from xai_helpers.synthetic import make_planted
    from xai_helpers.training import get_trained_model

    model, info = get_trained_model("planted_skin", fast=True, progress=False, verbose=False)
    ds = make_planted(n=60, size=info["input_size"], kind="skin", seed=321)
    keep = np.flatnonzero(ds.labels == 1)[:16]
    again = scorecard(model.eval(), ds.images[keep], 1, ["gradcam"], metrics=("deletion",), n_boot=300,
                      progress=False, maps={"gradcam": card.maps["gradcam"]},
                      metric_options={"deletion": {"steps": 16}})
    old = card.table[(card.table.method == "gradcam") & (card.table.metric == "deletion")].iloc[0]
    assert again.table.iloc[0]["mean"] == pytest.approx(old["mean"], rel=1e-9)
    assert np.isnan(again.table.iloc[0]["seconds_per_image"])


def test_scorecard_on_a_grey_multilabel_model_reads_each_finding(box_model):
    model, boxes = box_model
    g = torch.Generator().manual_seed(1)
    imgs = (torch.rand(6, 1, H, W, generator=g) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    card = scorecard(model, imgs, ["Mass", "Nodule", "Effusion"] * 2, ["input_x_gradient", "random", "gradcam"],
                     metrics=("sic", "aic"), n_boot=50, progress=False, metric_options={"sic": {"min_pred": 0.0}})
    assert "gradcam" in card.skipped                       # no conv layer to read: listed, not fatal
    assert set(card.table["metric"]) == {"sic", "aic"} and len(card.per_image) == 2 * 2 * 6
    v = card.per_image["value"].dropna()
    assert ((v >= 0) & (v <= 1)).all()
