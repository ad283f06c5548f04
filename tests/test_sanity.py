"""Sanity checks (Adebayo et al., 2018): cascading / independent randomisation (= Quantus 0.6 MPRT),
the edge detector passing localisation yet failing randomisation, Grad-CAM decorrelating, data
randomisation, the similarity measures, and that the user's model is never touched."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from xai_helpers.evaluation.sanity import (data_randomisation, hog_similarity, model_randomisation,
                                           randomisable_layers, randomised_models, similarities, spearman_abs,
                                           ssim, train_on_permuted_labels)
from xai_helpers.explain import explain
from xai_helpers.model_info import model_info


@pytest.fixture(scope="session")
def planted_sanity(planted_positives):
    """The planted-skin model (fast recipe, trained once per session), 8 unseen class-1 images and masks."""
    return planted_positives(8)


def _snapshot(model):
    return model.training, {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, snap):
    training, state = snap
    return model.training == training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_edge_detector_passes_localisation_but_fails_randomisation(planted_sanity):
    """The Sobel edges point at the planted evidence far above chance, yet are identical for every
    randomised model: localisation alone cannot tell an explanation from an edge detector."""
    from xai_helpers.evaluation import area_fraction, pointing_game

    model, x, masks, _ = planted_sanity
    edges = explain(model, x, 1, "edges").maps
    assert pointing_game(edges, masks) > area_fraction(masks).mean() + 0.2
    for mode in ("cascading", "independent"):
        r = model_randomisation(model, x, 1, "edges", mode=mode)
        assert len(r.layers) == len(randomisable_layers(model)) == 9
        for k in ("spearman", "ssim", "hog"):
            assert np.nanmin(r.similarity[k]) >= 0.99, (mode, k)


def test_gradcam_decorrelates_under_full_randomisation(planted_sanity):
    model, x, _, _ = planted_sanity
    snap = _snapshot(model)
    torch_rng, np_rng = torch.get_rng_state(), np.random.get_state()
    r = model_randomisation(model, x, 1, "gradcam", mode="cascading")
    assert r.layers[0] == "classifier" and r.layers[-1] == "features.0.0"      # top layer first
    assert np.nanmean(r.final("spearman")) < 0.3
    assert np.nanmean(r.final("ssim")) < 0.5 and np.nanmean(r.final("hog")) < 0.3
    assert r.maps.shape == (9, len(x), 64, 64)
    assert _unchanged(model, snap), "randomisation must work on a copy"
    assert torch.equal(torch_rng, torch.get_rng_state())
    assert all(np.array_equal(u, v) for u, v in zip(np_rng[1:3], np.random.get_state()[1:3]))


def test_randomised_models_cascade_and_independent(planted_sanity):
    model, *_ = planted_sanity
    names = randomisable_layers(model)
    params = {n: [p.clone() for p in model.get_submodule(n).parameters(recurse=False)] for n in names}

    def changed(m):
        return {n for n in names if any(not torch.equal(p, q) for p, q in
                                        zip(m.get_submodule(n).parameters(recurse=False), params[n]))}

    seen = []
    for name, m in randomised_models(model, "cascading", seed=1):
        seen.append(name)
        assert changed(m) == set(seen) and m is not model and not m.training
    for name, m in randomised_models(model, "independent", seed=1):
        assert changed(m) == {name}
    with pytest.raises(ValueError, match="cannot randomise"):
        next(randomised_models(model, layers=["pool"]))
    with pytest.raises(ValueError, match="mode"):
        next(randomised_models(model, mode="bottom_up"))


def test_blocks_are_randomised_together(planted_sanity):
    """layers={block: [names]}: one step per block, output block first; a block of one layer equals that layer."""
    model, x, _, _ = planted_sanity
    names = randomisable_layers(model)
    blocks = {"features.0": names[0:2], "features.1": names[2:4], "features.2": names[4:6],
              "features.3": names[6:8], "classifier": [names[8]]}
    seen = []
    for label, m in randomised_models(model, "cascading", layers=blocks):
        seen.append(label)
        done = {n for b in seen for n in blocks[b]}
        for n in names:
            same = all(torch.equal(p, q) for p, q in zip(m.get_submodule(n).parameters(recurse=False),
                                                          model.get_submodule(n).parameters(recurse=False)))
            assert same == (n not in done), (label, n)
    assert seen == list(blocks)[::-1]
    by_block = model_randomisation(model, x[:3], 1, "gradcam", layers=blocks, which=("spearman",))
    by_layer = model_randomisation(model, x[:3], 1, "gradcam", which=("spearman",))
    assert by_block.layers == seen and by_block.maps.shape[0] == 5
    np.testing.assert_allclose(by_block.similarity["spearman"][0], by_layer.similarity["spearman"][0])  # classifier
    np.testing.assert_allclose(by_block.similarity["spearman"][-1], by_layer.similarity["spearman"][-1])  # all
    with pytest.raises(ValueError, match="cannot randomise"):
        next(randomised_models(model, layers={"pool": ["pool"]}))


def test_cascading_randomisation_equals_quantus_mprt(planted_sanity):
    """Quantus's MPRT (top-down, spearman of |map|) on the same model, images and method. Its
    convention: before each layer it seeds ``seed + 1`` globally, so our ``seed=43`` is its 42."""
    quantus = pytest.importorskip("quantus", reason="quantus is a reference only: pip install --no-deps quantus "
                                  "cachetools (see pyproject: it would pull a second OpenCV)")
    model, x, _, _ = planted_sanity
    x = x[:4]
    ours = model_randomisation(model, x, 1, "gradcam", seed=43, which=("spearman",))

    def explain_func(model, inputs, targets, **_):
        return explain(model, torch.as_tensor(inputs), torch.as_tensor(targets).tolist(), "gradcam").maps[:, None]

    metric = quantus.MPRT(layer_order="top_down", seed=42, disable_warnings=True)
    theirs = metric(model=copy.deepcopy(model), x_batch=x.numpy(), y_batch=np.ones(len(x), int), a_batch=None,
                    explain_func=explain_func, channel_first=True, device="cpu")
    layers = [k for k in theirs if k != "original"]
    assert layers == ours.layers
    q = np.array([theirs[k] for k in layers], dtype=np.float64)
    np.testing.assert_allclose(ours.similarity["spearman"], q, atol=1e-6, equal_nan=True)


def test_similarity_measures_by_hand():
    rng = np.random.default_rng(0)
    a = rng.random((2, 32, 32))
    s = similarities(a, a)
    for k in ("spearman", "ssim", "hog"):
        np.testing.assert_allclose(s[k], 1.0, atol=1e-9)
    np.testing.assert_allclose(spearman_abs(a, -a), 1.0)                      # absolute value
    np.testing.assert_allclose(spearman_abs(a, a.max() - a), -1.0)            # reversed ranking
    b = rng.random((2, 32, 32))
    assert np.abs(spearman_abs(a, b)).max() < 0.1 and ssim(a, b).max() < 0.2 and hog_similarity(a, b).max() < 0.5
    assert np.isnan(spearman_abs(a, np.zeros_like(a))).all()                 # a flat map has no ranking
    with pytest.raises(ValueError, match="same shape"):
        similarities(a, b[:, :16])
    with pytest.raises(ValueError, match="unknown similarity"):
        similarities(a, b, ("pearson",))


def test_data_randomisation(planted_sanity):
    """A copy trained (3 epochs) on permuted labels: labels really permuted, the user's model
    untouched, and its Grad-CAM maps far from the trained model's."""
    from xai_helpers.training import images_to_tensor

    model, x, _, ds = planted_sanity
    info = model_info(model)
    snap = _snapshot(model)
    torch_rng = torch.get_rng_state()
    rnd = train_on_permuted_labels(model, images_to_tensor(ds.images, info.mean, info.std), ds.labels, epochs=3)
    assert sorted(rnd.permuted_labels) == sorted(ds.labels) and (rnd.permuted_labels != ds.labels).any()
    assert _unchanged(model, snap) and torch.equal(torch_rng, torch.get_rng_state())
    assert model_info(rnd) == info and not rnd.training
    s = data_randomisation(model, rnd, x, 1, "gradcam")
    assert np.nanmean(s["spearman"]) < 0.5
    e = data_randomisation(model, rnd, x, 1, "edges")
    np.testing.assert_allclose(e["spearman"], 1.0)


def test_bad_input(planted_sanity):
    model, x, _, _ = planted_sanity
    with pytest.raises(ValueError, match="out of range"):
        model_randomisation(model, x[:2], 7, "gradcam")
    with pytest.raises(ValueError, match="unknown method"):
        model_randomisation(model, x[:2], 1, "nonsense")
    with pytest.raises(ValueError, match="labels"):
        train_on_permuted_labels(model, x, np.zeros(3, int))
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            model_randomisation(model, x[:2], 1, "gradcam")
        assert model.training
    finally:
        model.eval()


def test_stacked_ssim_and_hog_equal_skimage_map_by_map():
    # the randomisation test computes SSIM and HOG for whole stacks of maps; skimage does one map at a time
    from skimage.feature import hog
    from skimage.metrics import structural_similarity

    from xai_helpers.evaluation import sanity as S

    rng = np.random.default_rng(0)
    for shape in [(5, 40, 40), (3, 64, 64), (4, 33, 47), (2, 16, 16)]:
        a, b = rng.random(shape) ** 3, rng.random(shape)
        b[0] = 0.0                                                       # a flat map too
        ua, ub = S._unit(a), S._unit(b)
        cell, win = max(4, min(shape[1:]) // 8), S._ssim_window(ua.shape)
        ref = np.array([hog(m, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2)) for m in ua])
        np.testing.assert_allclose(S._hog_features(a), ref - ref.mean(1, keepdims=True), atol=1e-12)
        np.testing.assert_allclose(S.ssim(a, b), [structural_similarity(x, y, data_range=1.0, win_size=win)
                                                   for x, y in zip(ua, ub)], atol=1e-12)
