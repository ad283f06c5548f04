"""LIME, SHAP (expected gradients, Partition), exact Shapley and XRAI: correctness, seeding, cross-checks.

* our LIME equals ``lime_image`` (backend="library") on the same superpixels and seed;
* expected gradients equal ``shap.GradientExplainer`` with the same seed;
* exact Shapley values (all 2^M coalitions) equal KernelSHAP on the same superpixel game;
* same seed -> identical maps; another seed -> a different (but correlated) map;
* grayscale (C=1) and RGB inputs; bad options raise clear errors;
* on planted-evidence data with a model trained there, the maximum of LIME, SHAP and XRAI lies in
  the evidence region for >= 90 % of 50 held-out images (pointing game).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from xai_helpers.explain import available_methods, explain
from xai_helpers.explain import lime as L
from xai_helpers.explain import shap as S
from xai_helpers.explain import speed
from xai_helpers.explain.superpixels import coalition_outputs, default_n_segments, segment
from xai_helpers.imaging import to_display
from xai_helpers.model_info import describe_model

SIZE = 48


def tiny_cnn(c: int, k: int = 2) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, k))


def _tensor(images, mean, std):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


@pytest.fixture(scope="module")
def planted_model():
    """A small CNN trained (seconds) on planted-evidence skin images; 50 held-out class-1 images."""
    from xai_helpers.synthetic import make_planted

    torch.manual_seed(0)
    train = make_planted(n=400, size=SIZE, kind="skin", seed=1)
    test = make_planted(n=100, size=SIZE, kind="skin", seed=2)
    flat = train.images.reshape(-1, 3) / 255.0
    mean, std = flat.mean(0).astype(np.float32).tolist(), flat.std(0).astype(np.float32).tolist()
    X, y = _tensor(train.images, mean, std), torch.as_tensor(train.labels)
    model = tiny_cnn(3)
    describe_model(model, class_names=["benign", "malignant"], task="binary", mean=mean, std=std)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for ep in range(7):
        model.train()
        perm = torch.randperm(len(X))
        for i in range(0, len(X), 48):
            b = perm[i:i + 48]
            xb = X[b].flip(3) if ep % 2 else X[b]
            loss = nn.functional.cross_entropy(model(xb), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    Xt = _tensor(test.images, mean, std)
    with torch.no_grad():
        acc = (model(Xt).argmax(1).numpy() == test.labels).mean()
    keep = np.flatnonzero((test.labels == 1) & test.masks.any(axis=(1, 2)))[:50]
    return model, Xt[keep], test.masks[keep], float(acc)


@pytest.fixture(scope="module")
def rgb_model():
    torch.manual_seed(0)
    m = describe_model(tiny_cnn(3).eval(), class_names=["benign", "malignant"], task="binary",
                       mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    x = nn.functional.avg_pool2d(torch.randn(2, 3, 32, 32) * 3, 7, 1, 3)  # smooth, so SLIC finds regions
    return m, x


def test_methods_registered():
    names = available_methods()
    for m in ("lime", "shap", "expected_gradients", "shap_partition", "exact_shapley", "xrai"):
        assert m in names, f"{m} not registered"


def test_our_lime_equals_lime_image(rgb_model):
    model, x = rgb_model
    seg = segment(to_display(x, model)[0], n_segments=16)
    assert seg.max() + 1 >= 6
    a = L.lime_one(model, x[0], 1, seg, num_samples=100, random_state=3)
    b = L.lime_image_one(model, x[0], 1, seg, num_samples=100, random_state=3)
    scale = np.abs(b["weights"]).max()
    assert scale > 0
    np.testing.assert_allclose(a["weights"], b["weights"], atol=1e-3 * scale)
    assert abs(a["score"] - b["score"]) < 1e-4
    # a different seed gives a different neighbourhood, so (slightly) different weights
    c = L.lime_one(model, x[0], 1, seg, num_samples=150, random_state=4)
    assert not np.allclose(a["weights"], c["weights"])


def test_lime_grayscale_through_lime_image():
    torch.manual_seed(1)
    model = tiny_cnn(1).eval()
    describe_model(model, class_names=["benign", "malignant"], task="binary", mean=[0.5], std=[0.25])
    x = nn.functional.avg_pool2d(torch.randn(1, 1, 32, 32) * 3, 7, 1, 3)
    e_fast = explain(model, x, 0, "lime", num_samples=100, n_segments=12, precision="float32")
    e_lib = explain(model, x, 0, "lime", num_samples=100, n_segments=12, backend="library")
    assert e_fast.maps.shape == (1, 32, 32)
    np.testing.assert_allclose(e_fast.maps, e_lib.maps, atol=1e-3 * np.abs(e_lib.maps).max())


def test_lime_bfloat16_agrees_with_float32(rgb_model):
    """bfloat16 forward passes (the default where the hardware runs them natively) change the
    probabilities by ~1e-3: the LIME weights stay within a few % of float32's, far inside LIME's
    seed-to-seed spread."""
    model, x = rgb_model
    seg = segment(to_display(x, model)[0], n_segments=16)
    f32 = L.lime_one(model, x[0], 1, seg, num_samples=300, random_state=3, precision="float32")
    b16 = L.lime_one(model, x[0], 1, seg, num_samples=300, random_state=3, precision="bfloat16")
    other_seed = L.lime_one(model, x[0], 1, seg, num_samples=300, random_state=4, precision="float32")
    assert np.abs(f32["y"] - b16["y"]).max() < 0.02
    precision_gap = np.abs(f32["weights"] - b16["weights"]).max()
    seed_gap = np.abs(f32["weights"] - other_seed["weights"]).max()
    assert precision_gap < 0.5 * seed_gap, (precision_gap, seed_gap)
    assert np.corrcoef(f32["weights"], b16["weights"])[0, 1] > 0.95
    assert speed.resolve_precision("auto", "cpu") in ("float32", "bfloat16")
    with pytest.raises(ValueError, match="precision must be"):
        explain(model, x, 1, "lime", num_samples=10, precision="half")


@pytest.mark.parametrize("precision, side, switched", [("float32", 48, False), ("float32", 128, True),
                                                        ("bfloat16", 48, True)])
def test_channels_last_layout_switches_and_restores(rgb_model, precision, side, switched):
    """channels-last is used where it was measured faster (float32 >= 112 px; bfloat16 always) and the
    model leaves the context manager in the layout it came in: explaining must not change the model."""
    model, _ = rgb_model
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    like = torch.zeros(3, side, side)
    with speed.inference_mode(model, "cpu", precision, like=like):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == switched
        assert conv.weight.is_contiguous() == (not switched)
    assert conv.weight.is_contiguous()


def test_fused_copy_computes_the_same_function_and_follows_the_parameters(rgb_model):
    """LIME's forward passes run on a copy with BatchNorm folded into the convolutions: same outputs,
    refreshed when the parameters change, and the model itself where folding does not apply."""
    import copy

    base, x = rgb_model
    model = copy.deepcopy(base)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3), m.running_var.uniform_(0.5, 2), m.weight.normal_(1, 0.2)
    fused = speed.fused_for_inference(model, like=x[0])
    assert fused is not model and not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)
        assert speed.fused_for_inference(model, like=x[0]) is fused                # cached
        model[1].running_mean.add_(1.0)                                       # parameters change in place
        refreshed = speed.fused_for_inference(model, like=x[0])
        assert refreshed is not fused
        torch.testing.assert_close(refreshed(x), model(x), rtol=1e-4, atol=1e-5)
    model.train()
    assert speed.fused_for_inference(model, like=x[0]) is model                   # batch statistics: no folding
    model.eval()

    class Untraceable(nn.Module):                                             # data-dependent control flow
        def __init__(self):
            super().__init__()
            self.net = copy.deepcopy(base)

        def forward(self, z):
            return self.net(z) if float(z.mean()) > -1e9 else -self.net(z)

    odd = Untraceable().eval()
    assert speed.fused_for_inference(odd, like=x[0]) is odd
    # what LIME computes through the fused copy equals the model on the same composed images
    seg = segment(to_display(x, model)[0], n_segments=12)
    Z = np.random.RandomState(0).randint(0, 2, (16, int(seg.max()) + 1))
    fill = torch.zeros_like(x[0])
    got = coalition_outputs(model, x[0], seg, Z, fill, precision="float32")
    mask = torch.as_tensor(Z[:, seg], dtype=x.dtype)[:, None]
    with torch.no_grad():
        torch.testing.assert_close(got, model(fill + mask * (x[0] - fill)), rtol=1e-4, atol=1e-5)


def test_same_seed_same_map_other_seed_differs(rgb_model):
    model, x = rgb_model
    for method, kw in [("lime", dict(num_samples=100)), ("shap", dict(nsamples=16, background=torch.randn(4, 3, 32, 32)))]:
        a = explain(model, x, 1, method, seed=5, **kw).maps
        b = explain(model, x, 1, method, seed=5, **kw).maps
        c = explain(model, x, 1, method, seed=6, **kw).maps
        assert np.array_equal(a, b), f"{method}: same seed, different maps"
        assert not np.array_equal(a, c), f"{method}: the seed has no effect"


def test_expected_gradients_bfloat16_within_sampling_noise(rgb_model):
    """bfloat16 expected gradients (the default where the hardware runs them natively) move the map
    far less than drawing other samples does, and 'float32' stays the default of the shap-equal function."""
    model, x = rgb_model
    bg = torch.randn(6, 3, 32, 32)
    t = torch.tensor([1, 0])
    f32 = S.expected_gradients(model, x, t, background=bg, nsamples=32, random_state=3)
    b16 = S.expected_gradients(model, x, t, background=bg, nsamples=32, random_state=3, precision="bfloat16")
    other = S.expected_gradients(model, x, t, background=bg, nsamples=32, random_state=4)
    assert b16.dtype == torch.float32 and b16.shape == f32.shape
    assert not torch.equal(f32, b16), "precision='bfloat16' ran in float32"
    precision_gap = (f32 - b16).norm() / f32.norm()
    seed_gap = (f32 - other).norm() / f32.norm()
    assert precision_gap < 0.25 * seed_gap, (float(precision_gap), float(seed_gap))
    auto = explain(model, x, t, "shap", nsamples=32, background=bg, random_state=3, precision="auto").maps
    want = b16 if speed.resolve_precision("auto", "cpu") == "bfloat16" else f32
    np.testing.assert_allclose(auto, want.sum(1).numpy(), atol=1e-5 * float(want.abs().max()))


def test_expected_gradients_equal_shap(rgb_model):
    model, x = rgb_model
    bg = torch.randn(5, 3, 32, 32)
    mine = S.expected_gradients(model, x, torch.tensor([1, 0]), background=bg, nsamples=12, random_state=7)
    lib = S.shap_gradient_library(model, x, [1, 0], background=bg, nsamples=12, random_state=7)
    np.testing.assert_allclose(mine.numpy(), lib, atol=1e-5 * np.abs(lib).max())


def test_exact_shapley_matches_kernel_shap_and_efficiency(rgb_model):
    model, x = rgb_model
    seg = segment(to_display(x, model)[0], "grid", n_segments=9)
    assert seg.max() + 1 == 9
    r = S.exact_shapley_one(model, x[0], 1, seg)
    # efficiency: the values add up to v(all) - v(none)
    assert abs(r["phi"].sum() - (r["values"][-1] - r["values"][0])) < 1e-6 * (1 + abs(r["values"][-1]))
    k = S.kernel_shap_superpixels(model, x[0], 1, seg)
    np.testing.assert_allclose(r["phi"], k, atol=1e-4 * (np.abs(k).max() + 1e-12))


def test_shapley_from_values_on_a_known_game():
    # v(S) = |S|^2 on 3 symmetric players: phi_j = v(N)/3 = 3; additive game: phi = weights
    v = np.array([bin(s).count("1") ** 2 for s in range(8)], dtype=float)
    np.testing.assert_allclose(S.shapley_from_values(v), [3, 3, 3])
    w = np.array([1.0, -2.0, 5.0, 0.5])
    v = np.array([sum(w[j] for j in range(4) if s >> j & 1) for s in range(16)])
    np.testing.assert_allclose(S.shapley_from_values(v), w)


def test_clear_errors(rgb_model):
    model, x = rgb_model
    with pytest.raises(ValueError, match="more than 12"):
        explain(model, x[:1], 1, "exact_shapley", segmentation="grid", n_segments=16)
    with pytest.raises(ValueError, match="unknown segmentation"):
        explain(model, x[:1], 1, "lime", segmentation="watershed")
    with pytest.raises(ValueError, match="hide"):
        explain(model, x[:1], 1, "lime", hide="purple", num_samples=10)
    with pytest.raises(ValueError, match="background"):
        explain(model, x[:1], 1, "shap", background=torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="backend='library'"):
        explain(model, x[:1], 1, "lime", engine="lime_image", num_samples=10)
    with pytest.raises(ValueError, match="backend='ours'"):
        explain(model, x[:1], 1, "lime", backend="fast", num_samples=10)


def test_segmentation_scales_with_size():
    """lime's default quickshift gives a handful of regions on small images; our SLIC default scales."""
    from xai_helpers.synthetic import make_planted

    for kind in ("skin", "chest"):
        for size in (28, 64):
            img = make_planted(n=2, size=size, kind=kind, seed=0).images[0] / 255.0
            n_slic = segment(img, "slic").max() + 1
            n_qs = segment(img, "quickshift").max() + 1
            assert n_slic >= 0.5 * default_n_segments(size, size), f"SLIC: {n_slic} regions at {size} px"
            assert n_qs < n_slic / 4, f"quickshift gave {n_qs} regions at {size} px (expected a handful)"
    assert default_n_segments(224, 224) > default_n_segments(64, 64) > default_n_segments(28, 28)


def test_shap_partition_runs_on_grayscale():
    torch.manual_seed(0)
    model = tiny_cnn(1).eval()
    describe_model(model, class_names=["benign", "malignant"], task="binary", mean=[0.5], std=[0.25])
    x = torch.randn(1, 1, 32, 32)
    e = explain(model, x, 1, "shap_partition", max_evals=64)
    assert e.maps.shape == (1, 32, 32) and np.isfinite(e.maps).all() and np.abs(e.maps).max() > 0


@pytest.mark.slow
def test_pointing_game_on_planted_evidence(planted_model):
    from xai_helpers.evaluation import pointing_game

    model, x, masks, acc = planted_model
    assert acc >= 0.85, f"the planted model did not learn (accuracy {acc:.2f}); the test would mean nothing"
    assert len(x) >= 50
    area = masks.mean()
    for method, kw in [("lime", dict(num_samples=100)), ("shap", dict(nsamples=16)), ("xrai", dict(steps=8))]:
        e = explain(model, x, 1, method, **kw)
        pg = pointing_game(e.maps, masks)
        assert pg >= 0.9, f"{method}: pointing game {pg:.2f} < 0.9 (evidence covers {area:.1%} of the image)"
