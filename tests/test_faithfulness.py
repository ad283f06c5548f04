"""Faithfulness scores: deletion / insertion (= Quantus 0.6 PixelFlipping), AOPC, AIC / SIC (= PAIR's
saliency.metrics.pic), their properties on a model trained on planted evidence, and bad input."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from xai_helpers.evaluation.faithfulness import (Curves, area_under_curve, deletion, gaussian_blur, insertion,
                                                 perturbation_curve, pic_curves, pixel_flipping,
                                                 random_pixel_masks)
from xai_helpers.explain import explain
from xai_helpers.model_info import model_info


@pytest.fixture(scope="session")
def planted_eval(planted_positives):
    """The planted-skin model (fast recipe, trained once per session) and 12 unseen class-1 images."""
    model, x, _, ds = planted_positives(12)
    with torch.no_grad():
        assert (model(x).argmax(1) == 1).float().mean() > 0.8, "the planted model should see the evidence"
    return model, x, ds.images[np.flatnonzero(ds.labels == 1)[:12]]


@pytest.fixture(scope="module")
def maps(planted_eval):
    model, x, _ = planted_eval
    cam = explain(model, x, 1, "gradcam").maps
    rnd = np.random.default_rng(0).random(cam.shape).astype(np.float32)
    # Grad-CAM has ties (ReLU zeros, flat upsampling); Quantus sorts with an unstable argsort, so the
    # reference comparison uses maps with distinct values: Grad-CAM plus a tie-breaking 1e-4 ramp
    distinct = cam + 1e-4 * rnd
    return {"gradcam": cam, "random": rnd, "distinct": distinct}


def _quantus_curve(model, x, a, target, start, per_step, baseline=None, source=None):
    quantus = pytest.importorskip("quantus", reason="quantus is a reference only: pip install --no-deps quantus "
                                  "cachetools (see pyproject: it would pull a second OpenCV)")
    kw = {}
    if source is not None:         # insertion: "perturbing" a feature restores it from the original image
        def restore(arr, indices, source, **_):
            out = arr.copy()
            out[np.arange(len(arr))[:, None], indices] = source[np.arange(len(arr))[:, None], indices]
            return out
        kw = dict(perturb_func=restore, perturb_func_kwargs={"source": source.reshape(len(source), -1)})
    metric = quantus.PixelFlipping(features_in_step=x.shape[1] * per_step, perturb_baseline=baseline,
                                   disable_warnings=True, **kw)
    out = metric(model=copy.deepcopy(model), x_batch=start.numpy(), y_batch=np.full(len(x), target),
                 a_batch=a[:, None], channel_first=True, device="cpu", softmax=True)
    return np.asarray(out, dtype=np.float64)


def test_deletion_and_insertion_equal_quantus(planted_eval, maps):
    """Quantus's PixelFlipping on the same maps. Conventions that differ, matched by arguments:
    its curve starts after the first step (ours also holds the unperturbed score), its
    ``features_in_step`` counts channel values (C x our ``per_step``), its AUC is the trapezoid with
    unit spacing (``rule="quantus"``), its "black" is each image's minimum over all channels in the
    model's units (ours: pixel value 0 per channel; pass that minimum as an explicit replacement).
    Quantus also asserts that H x W (not C x H x W) is a multiple of ``features_in_step``, which no
    whole-pixel step meets at 64 x 64 with 3 channels: the test crops the centre 48 x 48 (the small
    CNN pools globally, so it reads any size)."""
    model, x, _ = planted_eval
    x, a = x[:6, :, 8:56, 8:56].contiguous(), maps["distinct"][:6, 8:56, 8:56]
    per = 64                                                        # 36 steps at 48 x 48
    ours = deletion(model, x, a, 1, per_step=per)
    theirs = _quantus_curve(model, x, a, 1, x, per, baseline=0.0)
    assert theirs.shape == (6, 36) and ours.scores.shape == (6, 37)
    np.testing.assert_allclose(ours.scores[:, 1:], theirs, atol=2e-5)
    np.testing.assert_allclose(ours.auc("quantus"), np.trapezoid(theirs, dx=1, axis=1), rtol=1e-5)
    assert np.ptp(ours.scores) > 0.3, "the curves should move, or the comparison proves little"

    black = x.amin(dim=(1, 2, 3), keepdim=True)
    ours_b = deletion(model, x, a, 1, per_step=per, replacement=black)
    np.testing.assert_allclose(ours_b.scores[:, 1:], _quantus_curve(model, x, a, 1, x, per, baseline="black"),
                               atol=2e-5)

    start = gaussian_blur(x, 5.0)
    ours_i = insertion(model, x, a, 1, per_step=per)               # default: start from the blur, sigma 5
    theirs_i = _quantus_curve(model, x, a, 1, start, per, baseline=0.0, source=x.numpy())
    np.testing.assert_allclose(ours_i.scores[:, 1:], theirs_i, atol=2e-5)


def test_auc_rules_and_aopc_by_hand():
    scores = np.array([[1.0, 0.5, 0.25, 0.0]])
    fr = np.array([0.0, 0.4, 0.8, 1.0])
    assert area_under_curve(scores, fr)[0] == pytest.approx(0.4 * 0.75 + 0.4 * 0.375 + 0.2 * 0.125)
    assert area_under_curve(scores, fr, "quantus")[0] == pytest.approx(0.375 + 0.125)
    c = Curves(fr, scores, "deletion", "morf", np.array([1]))
    assert c.aopc()[0] == pytest.approx((0 + 0.5 + 0.75 + 1.0) / 4)           # Samek et al. eq. 12
    with pytest.raises(ValueError, match="rule"):
        area_under_curve(scores, fr, "simpson")


def test_gradcam_beats_random_map(planted_eval, maps):
    """On planted evidence, Grad-CAM's deletion area is below a random map's and its insertion area
    above, by a margin; MoRF AOPC beats LeRF AOPC for Grad-CAM."""
    model, x, _ = planted_eval
    kw = dict(steps=32, batch_size=128)
    d_cam, d_rnd = (deletion(model, x, maps[k], 1, **kw).auc().mean() for k in ("gradcam", "random"))
    i_cam, i_rnd = (insertion(model, x, maps[k], 1, **kw).auc().mean() for k in ("gradcam", "random"))
    assert d_cam < d_rnd - 0.15, (d_cam, d_rnd)
    assert i_cam > i_rnd + 0.15, (i_cam, i_rnd)
    morf = pixel_flipping(model, x, maps["gradcam"], 1, order="morf", patch=4, steps=16).aopc().mean()
    lerf = pixel_flipping(model, x, maps["gradcam"], 1, order="lerf", patch=4, steps=16).aopc().mean()
    assert morf > lerf + 0.2, (morf, lerf)


def test_model_that_ignores_its_input_gives_flat_curves(planted_eval, maps):
    model, x, imgs = planted_eval
    const = copy.deepcopy(model)
    with torch.no_grad():
        for p in const.parameters():
            p.zero_()
        last = [m for m in const.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias.copy_(torch.tensor([0.3, -0.2]))                # output = bias only
    for c in (deletion(const, x, maps["gradcam"], 1, steps=8), insertion(const, x, maps["gradcam"], 1, steps=8),
              pixel_flipping(const, x, maps["gradcam"], 1, steps=8)):
        assert np.ptp(c.scores) < 1e-9
        np.testing.assert_allclose(c.scores, torch.softmax(torch.tensor([0.3, -0.2]), 0)[1].item(), atol=1e-7)
    sic = pic_curves(const, imgs[:3], maps["gradcam"][:3], 1, min_pred=0.0)["sic"]
    assert all(r is not None and "blurred image is not lower" in r for r in sic.skipped)


def test_steps_patches_and_replacements(planted_eval, maps):
    model, x, _ = planted_eval
    c = perturbation_curve(model, x[:2], maps["random"][:2], 1, per_step=1000, replacement="black")
    np.testing.assert_allclose(c.fractions, [0, 1000 / 4096, 2000 / 4096, 3000 / 4096, 4000 / 4096, 1.0])
    c = pixel_flipping(model, x[:2], maps["random"][:2], 1, patch=9, per_step=1)   # 8 x 8 regions at 64 px
    assert c.scores.shape == (2, 65)
    # deleting everything gives the replacement image's score, whatever the order
    for repl in ("mean", "black", "blur", "uniform", 0.5):
        a = deletion(model, x[:2], maps["random"][:2], 1, steps=4, replacement=repl)
        b = pixel_flipping(model, x[:2], maps["gradcam"][:2], 1, order="lerf", steps=7, replacement=repl)
        np.testing.assert_allclose(a.scores[:, -1], b.scores[:, -1], atol=1e-6)
    with pytest.raises(ValueError, match="replacement"):
        deletion(model, x[:2], maps["random"][:2], 1, replacement="gray")


def test_pic_equals_pair_saliency(planted_eval, maps, monkeypatch):
    """PAIR's compute_pic_metric on the same images, maps and random masks. PAIR calls np.trapz,
    which NumPy 2.4 removed: the test lends it np.trapezoid (the same rule)."""
    pic = pytest.importorskip("saliency.metrics.pic", reason="PAIR's saliency is a reference only: pip install saliency")
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    model, x, imgs = planted_eval
    n = 4
    masks = random_pixel_masks(n, 64, 64, 0.01, seed=3)
    ours = pic_curves(model, imgs[:n], maps["gradcam"][:n], 1, random_masks=masks, min_pred=0.5)

    def pred(kind):
        def f(batch):
            from xai_helpers.training import images_to_tensor
            with torch.no_grad():
                z = model(images_to_tensor(batch, model_info(model).mean, model_info(model).std))
            return (torch.softmax(z, 1)[:, 1] if kind == "sic" else (z.argmax(1) == 1).double()).tolist()
        return f

    scored = 0
    for kind in ("sic", "aic"):
        for i in range(n):
            try:
                ref = pic.compute_pic_metric(imgs[i], maps["gradcam"][i], masks[i], pred(kind),
                                             list(pic_thresholds()), min_pred_value=0.5)
            except pic.ComputePicMetricError:
                assert ours[kind].skipped[i] is not None
                continue
            scored += 1
            assert ours[kind].skipped[i] is None
            np.testing.assert_allclose(ours[kind].curve_y[i], ref.curve_y, atol=1e-6)
            assert ours[kind].auc[i] == pytest.approx(ref.auc, abs=1e-6)
    assert scored >= 4, "most planted images should be scorable, or the comparison proves little"


def pic_thresholds():
    from xai_helpers.evaluation.faithfulness import PIC_THRESHOLDS
    return PIC_THRESHOLDS


def test_bad_input_and_no_side_effects(planted_eval, maps):
    model, x, imgs = planted_eval
    a = maps["gradcam"][:2]
    with pytest.raises(ValueError, match="shape"):
        deletion(model, x[:2], a[:, :32])
    with pytest.raises(ValueError, match="NaN"):
        deletion(model, x[:2], np.where(a > a.mean(), np.nan, a))
    with pytest.raises(ValueError, match="out of range"):
        deletion(model, x[:2], a, target=5)
    with pytest.raises(ValueError, match="uint8"):
        pic_curves(model, x[:2].numpy(), a)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch_rng, np_rng = torch.get_rng_state(), np.random.get_state()
    pixel_flipping(model, x[:2], a, 1, replacement="uniform", steps=4)
    pic_curves(model, imgs[:2], a, 1, min_pred=0.0)
    assert torch.equal(torch_rng, torch.get_rng_state())
    assert all(np.array_equal(u, v) for u, v in zip(np_rng[1:3], np.random.get_state()[1:3]))
    assert not model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            insertion(model, x[:2], a, 1)
        assert model.training, "the refusal must not change the mode either"
    finally:
        model.eval()


def test_compressed_size_reads_grey_images_with_or_without_a_channel_axis():
    from xai_helpers.evaluation.faithfulness import compressed_size

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (32, 40), dtype=np.uint8)
    grey[:16] = 7                                              # half flat: compresses to less than noise
    assert compressed_size(grey[..., None]) == compressed_size(grey)
    assert compressed_size(grey) < compressed_size(rng.integers(0, 256, (32, 40), dtype=np.uint8))
    assert compressed_size(np.repeat(grey[..., None], 3, -1)) > 0
    for bad in (grey.astype(np.float32), np.zeros((32, 40, 2), np.uint8), np.zeros((2, 32, 40, 3), np.uint8)):
        with pytest.raises(ValueError, match="compressed_size needs one uint8 image"):
            compressed_size(bad)


def test_localization_scores_equal_quantus():
    """Pointing game, relevance mass and relevance rank accuracy against quantus 0.6 on the same maps and
    masks (non-negative maps with no ties: quantus's argmax and top-k then pick the same pixels; quantus
    normalises each map by its maximum, which changes no ratio)."""
    quantus = pytest.importorskip("quantus", reason="quantus is a reference only: pip install --no-deps quantus "
                                  "cachetools (see pyproject: it would pull a second OpenCV)")
    from xai_helpers.evaluation import pointing_hits, relevance_mass, relevance_rank_accuracy

    rng = np.random.default_rng(3)
    n, h, w = 12, 24, 24
    maps = rng.random((n, h, w)) ** 3                       # skewed, strictly positive, no ties
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        y, x = rng.integers(0, 14, 2)
        masks[i, y:y + rng.integers(4, 10), x:x + rng.integers(4, 10)] = True
    maps[::3] += 2.0 * masks[::3]                           # a third of the maps peak inside the mask
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(h * w, 2)).eval()
    args = dict(model=model, x_batch=rng.random((n, 1, h, w)).astype(np.float32), y_batch=np.ones(n, int),
                a_batch=maps[:, None].astype(np.float32), s_batch=masks[:, None], channel_first=True, device="cpu")
    for name, ours in (("PointingGame", pointing_hits(maps, masks)),
                       ("RelevanceMassAccuracy", relevance_mass(maps, masks)),
                       ("RelevanceRankAccuracy", relevance_rank_accuracy(maps, masks))):
        theirs = np.asarray(getattr(quantus, name)(disable_warnings=True)(**args), np.float64)
        np.testing.assert_allclose(np.asarray(ours, np.float64), theirs, atol=1e-6, err_msg=name)
    assert 0 < pointing_hits(maps, masks).mean() < 1                      # both outcomes occur
