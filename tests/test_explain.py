"""explain(): every method checked against a library or a law, and against planted ground truth.

* Grad-CAM by hand == captum LayerGradCam == pytorch-grad-cam GradCAM (1e-5, same layer, like with like);
  Grad-CAM++ and LayerCAM (backend="ours") == pytorch-grad-cam (backend="library")
* LRP by the gradient trick (one backward) == zennit's hooks, on a ResNet and a trained model
* Integrated Gradients == captum for every rule captum names alike; completeness within 1 %
* LRP: conservation within 1 % with the canonizer and biases excluded; biases absorb relevance
  otherwise; captum's LRP fails the check on a ResNet; DenseNet / MobileNetV2 (torch.cat, residual sums
  outside a known block) get a clear error
* on planted-evidence data with a trained model: every attribution method points into the evidence
  (pointing game >= 0.9 over >= 50 images) and the random baseline scores about the area fraction
* targets and images are checked with errors that say what is valid; a model without the declared
  interface gets ModelInfoError until it is described; old backend spellings name the new one
* explain() leaves the global random state (Python, NumPy, torch) as it found it, for every method
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from xai_helpers.evaluation import area_fraction, pointing_game, pointing_hits, relevance_mass
from xai_helpers.explain import available_methods, explain
from xai_helpers.explain.cam import default_target_layer, gradcam_lowres
from xai_helpers.explain.gradients import completeness, integrated_gradients_attr
from xai_helpers.explain.lrp import LRPUnsupportedError, check_lrp_support, conservation
from xai_helpers.model_info import ModelInfoError, describe_model, model_info

UNIT_NORM = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))    # the random-input tests' images: no normalisation

ATTRIBUTION_METHODS = ["gradcam", "gradcam++", "scorecam", "layercam", "lrp", "integrated_gradients",
                       "saliency", "smoothgrad", "occlusion"]
# cheaper settings for the ground-truth test (same methods, fewer samples)
FAST_OPTIONS = {"integrated_gradients": dict(steps=16), "smoothgrad": dict(n_samples=8),
                "occlusion": dict(patch=16, stride=8), "scorecam": dict(batch_size=128)}
TOLERANCE = 4   # px at 64 px: Zhang et al.'s 15 px tolerance at 224 px, scaled


@pytest.fixture(scope="module")
def resnet():
    """A ResNet-18 with non-trivial BatchNorm statistics and biases (random init, 2 outputs)."""
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=2)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
                mod.bias.normal_(0, 0.1)
    describe_model(m, class_names=["benign", "malignant"], task="binary", cam_layer="layer4", **UNIT_NORM)
    return m.eval()


@pytest.fixture(scope="module")
def xr():
    torch.manual_seed(1)
    return torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 1])


# ---------------------------------------------------------------------------------------------------
# a model trained on planted evidence (one per test session, ~1 min on 2 CPU cores)
@pytest.fixture(scope="session")
def planted_model():
    """TRAIN's planted-skin model (fast recipe) and FRESH planted images it never saw, class 1 only.

    The pointing game is played on the images that carry the finding ("dotted network", class 1),
    explaining that class: as with expert boxes, the mask marks the evidence *for* the finding.
    (Class 0's look-alike patch is evidence by absence; the notebooks show those scores too.)
    """
    from xai_helpers.synthetic import make_planted
    from xai_helpers.training import get_trained_model, images_to_tensor

    model, info = get_trained_model("planted_skin", fast=True, progress=False, verbose=False)
    info = model_info(model)
    ds = make_planted(n=104, size=info.input_size, kind="skin", seed=123)   # seed unseen in training
    keep = ds.labels == 1
    x = images_to_tensor(ds.images[keep], info.mean, info.std)
    y = torch.ones(len(x), dtype=torch.long)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean()
    assert acc > 0.9, f"the planted model should have learned the planted evidence (accuracy {acc:.2f})"
    return model, x, y, ds.masks[keep]


# ---------------------------------------------------------------------------------------------------
def test_registered_methods():
    names = set(available_methods())
    assert set(ATTRIBUTION_METHODS) | {"random", "edges"} <= names


def test_gradcam_matches_captum_and_pytorch_grad_cam(resnet, xr):
    from captum.attr import LayerGradCam
    import cv2
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, t = xr
    ours = gradcam_lowres(resnet, x, t, layer=resnet.layer3)              # (N, 2, 2): layer resolution
    assert default_target_layer(resnet) is resnet.layer4
    cap = LayerGradCam(resnet, resnet.layer3).attribute(x, target=t, relu_attributions=True)[:, 0]
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, cap, atol=1e-5, rtol=1e-5)

    # pytorch-grad-cam returns min-max scaled maps resized with cv2: apply the same to ours
    with pgc.GradCAM(model=resnet, target_layers=[resnet.layer3]) as cam:
        lib = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(i)) for i in t])
    o = ours.numpy()
    o = o - o.min(axis=(1, 2), keepdims=True)
    o = o / (1e-7 + o.max(axis=(1, 2), keepdims=True))
    o = np.stack([cv2.resize(np.float32(a), (32, 32)) for a in o])
    o = o - o.min(axis=(1, 2), keepdims=True)                # pytorch-grad-cam scales again after resizing
    o = o / (1e-7 + o.max(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(o, lib, atol=1e-5)

    full = explain(resnet, x, t, "gradcam", layer="layer3").maps         # explain upsamples bilinearly
    assert full.shape == (3, 32, 32)
    up = torch.nn.functional.interpolate(ours[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(full, up[:, 0].numpy(), atol=1e-6)


def test_gradcam_layer_option(resnet, xr):
    x, t = xr
    a = explain(resnet, x, t, "gradcam", layer="layer3").maps
    b = explain(resnet, x, t, "gradcam", layer=resnet.layer3).maps
    np.testing.assert_allclose(a, b)
    with pytest.raises(ValueError, match="no module named"):
        explain(resnet, x, t, "gradcam", layer="layer9")


@pytest.mark.parametrize("rule", ["riemann_middle", "riemann_left", "riemann_right"])
def test_integrated_gradients_matches_captum(resnet, xr, rule):
    from captum.attr import IntegratedGradients

    # in float64: float32 sums over 20 steps differ between CPUs (AVX2 vs AVX512 kernels) by more than a
    # fixed 1e-5, so the comparison is of the algorithms, not of one machine's rounding
    import copy

    x, t = xr
    model64, x = copy.deepcopy(resnet).double(), x.double()
    ours = integrated_gradients_attr(model64, x, t, steps=20, batch_size=16, rule=rule)   # several chunks
    lib = IntegratedGradients(model64).attribute(x, target=t, n_steps=20, method=rule)
    torch.testing.assert_close(ours, lib, atol=1e-9 * float(lib.abs().max()), rtol=1e-7)
    if rule == "riemann_middle":                                   # the default
        torch.testing.assert_close(integrated_gradients_attr(model64, x, t, steps=20, batch_size=16), ours)


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad", "shap"])
def test_gradient_methods_keep_a_pixel_budget_per_backward(resnet, method, monkeypatch):
    """By default the gradient methods pass at most PIXEL_BUDGET pixels per forward/backward (memory bound
    by the image's area, not a fixed count of images), and the maps equal one unchunked pass's."""
    import copy

    model = copy.deepcopy(resnet).double()
    x, t = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64), [0, 1, 1]
    seen = []
    hook = model.conv1.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    try:
        big = explain(model, x, t, method, batch_size=10_000).maps          # one pass over every path image
        assert max(seen) > 8
        seen.clear()
        monkeypatch.setenv("XAI_PIXEL_BUDGET", str(8 * 32 * 32))            # 8 images of 32 px per pass
        small = explain(model, x, t, method).maps
    finally:
        hook.remove()
    assert max(seen) <= 8 and len(seen) > 2, seen
    np.testing.assert_allclose(small, big, rtol=1e-9, atol=1e-12 * np.abs(big).max())
    from xai_helpers import config
    assert config.images_per_pass(torch.zeros(1, 3, 4096, 4096)) == 1          # never less than one image
    for bad in (0, 2.5, True, "8"):
        with pytest.raises(ValueError, match="batch_size must be an integer"):
            config.images_per_pass(x, bad)
    with pytest.raises(TypeError, match=r"shaped \(\.\.\., H, W\)"):
        config.images_per_pass(None)                                             # sized by the images, not a guess
    monkeypatch.setenv("XAI_PIXEL_BUDGET", "lots")
    with pytest.raises(ValueError, match="XAI_PIXEL_BUDGET must be a positive number"):
        config.images_per_pass(x)
    monkeypatch.delenv("XAI_PIXEL_BUDGET")
    assert config.images_per_pass(torch.zeros(1, 3, 192, 192)) == config.PIXEL_BUDGET // 192 ** 2 == 14
    assert config.images_per_pass(np.zeros((192, 192))) == 14                   # one image, or an array


def test_integrated_gradients_rules_converge_and_differ():
    """On f(x) = sum(x^2) the path integral is exact: IG_i = x_i^2 - b_i^2. The trapezoid rule (both ends,
    half weight) and the midpoint rule are exact for a linear gradient; left and right sums are off by
    -+ (x - b)^2 / m, so the rules are really different quadratures of one integral."""
    class Square(torch.nn.Module):
        def forward(self, z):
            s = (z ** 2).flatten(1).sum(1, keepdim=True)
            return torch.cat([s, -s], 1)

    model = describe_model(Square(), class_names=["a", "b"], task="binary", **UNIT_NORM)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 0])
    exact = x ** 2
    for rule in ("riemann_middle", "riemann_trapezoid"):
        torch.testing.assert_close(integrated_gradients_attr(model, x, t, steps=5, rule=rule), exact)
    left = integrated_gradients_attr(model, x, t, steps=5, rule="riemann_left")
    right = integrated_gradients_attr(model, x, t, steps=5, rule="riemann_right")
    torch.testing.assert_close(left, exact - x ** 2 / 5)
    torch.testing.assert_close(right, exact + x ** 2 / 5)
    with pytest.raises(ValueError, match="valid: .*riemann_trapezoid"):
        integrated_gradients_attr(model, x, t, rule="gausslegendre")


@pytest.mark.parametrize("method, lib_name", [("gradcam++", "GradCAMPlusPlus"), ("layercam", "LayerCAM")])
def test_cam_variants_by_hand_match_pytorch_grad_cam(resnet, xr, method, lib_name):
    """Grad-CAM++ and LayerCAM by hand (one backward to the layer) == pytorch-grad-cam (min-max scaled)."""
    x, t = xr
    ours = explain(resnet, x, t, method, layer="layer3").maps
    lib = explain(resnet, x, t, method, layer="layer3", backend="library").maps
    assert ours.shape == lib.shape == (3, 32, 32) and ours.max() > 0

    def scaled(m):
        m = m - m.min(axis=(1, 2), keepdims=True)
        return m / (1e-7 + m.max(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(scaled(ours), scaled(lib), atol=1e-4)
    # and they are different methods: not Grad-CAM under another name
    assert np.abs(scaled(ours) - scaled(explain(resnet, x, t, "gradcam", layer="layer3").maps)).max() > 1e-2
    with pytest.raises(ValueError, match="unknown backend 'nope'; valid: 'ours', 'library'"):
        explain(resnet, x, t, method, backend="nope")


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_plus"])
@pytest.mark.parametrize("zero_bias", [False, True])
def test_lrp_gradient_trick_matches_zennit(resnet, planted_model, composite, zero_bias):
    """The one-backward LRP (gradient trick, BatchNorm folded aside) == zennit's hooks + canonizer,
    on a ResNet with non-trivial BatchNorm and on the trained planted model; the model is untouched."""
    from xai_helpers.explain.lrp import lrp_relevance

    model, x, y, _ = planted_model
    torch.manual_seed(3)
    for m, xs, ts in ((resnet, torch.randn(4, 3, 48, 48), torch.tensor([0, 1, 1, 0])), (model, x[:4], y[:4])):
        before = {k: v.clone() for k, v in m.state_dict().items()}
        fast, lf = lrp_relevance(m, xs, ts, backend="ours", composite=composite, zero_bias=zero_bias)
        ref, lr = lrp_relevance(m, xs, ts, backend="library", composite=composite, zero_bias=zero_bias)
        torch.testing.assert_close(lf, lr, rtol=1e-3, atol=1e-4)   # (zennit folds BatchNorm: rounding)
        err = ((fast - ref).abs().amax(dim=(1, 2, 3)) / ref.abs().amax(dim=(1, 2, 3))).max()
        assert err < 1e-3, f"{type(m).__name__}: relative difference {err:.2e}"
        assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()), "LRP changed the model"
    with pytest.raises(ValueError, match="backend='library'"):
        lrp_relevance(resnet, xs[:1], ts[:1], backend="ours", rule="gamma")


def test_lrp_weight_cache_follows_the_parameters(resnet, xr):
    """lrp_gradient_trick reuses the folded, clamped weights between calls; any change of the parameters
    (in-place step, load_state_dict) must be seen, never a stale map."""
    import copy

    from xai_helpers.explain.lrp import _RULE_WEIGHTS
    from xai_helpers.explain.lrp import lrp_gradient_trick as lrp_fast

    model = copy.deepcopy(resnet)
    x, t = xr

    def fresh():
        _RULE_WEIGHTS.clear()
        return lrp_fast(model, x, t)[0]

    first = fresh()
    assert torch.equal(lrp_fast(model, x, t)[0], first)          # served from the cache
    with torch.no_grad():
        model.layer1[0].bn1.weight.mul_(2)                         # an in-place change (optimiser-like)
    changed = lrp_fast(model, x, t)[0]
    assert not torch.equal(changed, first) and torch.equal(changed, fresh())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["layer2.0.conv1.weight"].mul_(-1)
    model.load_state_dict(state)
    assert torch.equal(lrp_fast(model, x, t)[0], fresh())


def test_ig_completeness_on_trained_model(planted_model):
    model, x, y, _ = planted_model
    xs, ys = x[:8], y[:8]
    attr = integrated_gradients_attr(model, xs, ys, steps=64)
    ratio = completeness(model, xs, ys, attr)
    assert torch.all((ratio - 1).abs() < 0.01), ratio


def test_lrp_conservation_needs_canonizer_and_no_bias(resnet, xr):
    x, t = xr
    for comp in ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"):
        r = conservation(resnet, x, t, composite=comp, zero_bias=True)
        assert torch.all((r - 1).abs() < 0.01), (comp, r)
    for rule in ("gamma", "alpha_beta", "zplus"):
        r = conservation(resnet, x, t, rule=rule, zero_bias=True)
        assert torch.all((r - 1).abs() < 0.01), (rule, r)
    with_bias = conservation(resnet, x, t, composite="epsilon_plus_flat")
    assert torch.any((with_bias - 1).abs() > 0.02), "biases (folded BatchNorm) should absorb relevance"
    no_canon = conservation(resnet, x, t, zero_bias=True, canonize=False)
    assert torch.all((no_canon - 1).abs() > 0.1), "without the canonizer BatchNorm breaks conservation"


def test_lrp_conservation_on_trained_model(planted_model):
    model, x, y, _ = planted_model
    r = conservation(model, x[:8], y[:8], zero_bias=True)
    assert torch.all((r - 1).abs() < 0.01), r


def test_captum_lrp_fails_conservation_on_resnet(resnet, xr):
    """Captum's LRP has no canonizer: it does not see the residual additions nor fold BatchNorm."""
    import warnings

    from captum.attr import LRP

    x, t = xr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rel = LRP(resnet).attribute(x, target=t)
    with torch.no_grad():
        logit = resnet(x).gather(1, t[:, None])[:, 0]
    ratio = rel.sum(dim=(1, 2, 3)) / logit
    assert torch.all((ratio - 1).abs() > 0.01), ratio


@pytest.mark.parametrize("arch, reason", [("densenet121", "cat"), ("mobilenet_v2", "addition")])
def test_lrp_refuses_unsupported_architectures(arch, reason):
    m = getattr(torchvision.models, arch)(num_classes=2).eval()
    describe_model(m, class_names=["a", "b"], task="binary", **UNIT_NORM)
    with pytest.raises(LRPUnsupportedError, match=reason):
        check_lrp_support(m)
    with pytest.raises(LRPUnsupportedError):
        explain(m, torch.randn(1, 3, 32, 32), 0, "lrp")


def test_lrp_options_are_checked(resnet, xr):
    x, t = xr
    with pytest.raises(ValueError, match="valid composites"):
        explain(resnet, x, t, "lrp", composite="nope")
    with pytest.raises(ValueError, match="valid rules"):
        explain(resnet, x, t, "lrp", rule="nope")


# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ATTRIBUTION_METHODS)
def test_pointing_game_on_planted_evidence(planted_model, method):
    model, x, y, masks = planted_model
    assert len(x) >= 50
    exp = explain(model, x, y, method, **FAST_OPTIONS.get(method, {}))
    assert exp.maps.shape == masks.shape
    pg = pointing_game(exp.maps, masks, tolerance=TOLERANCE)
    assert pg >= 0.9, f"{method}: pointing game {pg:.2f} < 0.9"


def test_baselines_score_near_chance(planted_model):
    model, x, y, masks = planted_model
    chance = float(area_fraction(masks).mean())
    scores = [pointing_game(explain(model, x, y, "random", seed=s).maps, masks) for s in range(5)]
    assert abs(np.mean(scores) - chance) < 0.06, (np.mean(scores), chance)
    edges = pointing_game(explain(model, x, y, "edges").maps, masks, tolerance=TOLERANCE)
    assert edges < 0.6                                   # image structure, not evidence


def test_target_changes_map(planted_model):
    model, x, _, _ = planted_model
    for method in ("gradcam", "lrp", "integrated_gradients", "saliency"):
        a = explain(model, x[:4], 0, method).maps
        b = explain(model, x[:4], 1, method).maps
        assert not np.allclose(a, b, atol=1e-6), method


def test_batch_equals_single(planted_model):
    model, x, y, _ = planted_model
    for method, opts in (("gradcam", {}), ("integrated_gradients", dict(steps=8)), ("lrp", {}),
                         ("occlusion", dict(patch=16, stride=16))):
        batch = explain(model, x[:2], y[:2], method, **opts).maps
        one = np.stack([explain(model, x[i], int(y[i]), method, **opts).maps[0] for i in range(2)])
        np.testing.assert_allclose(batch, one, atol=1e-4, rtol=1e-3, err_msg=method)


def test_seeded_methods_are_deterministic(planted_model):
    model, x, y, _ = planted_model
    for method in ("smoothgrad", "random"):
        a = explain(model, x[:2], y[:2], method, seed=3).maps
        b = explain(model, x[:2], y[:2], method, seed=3).maps
        np.testing.assert_array_equal(a, b)


def test_bad_targets_list_valid_ones(resnet, xr):
    x, _ = xr
    with pytest.raises(ValueError, match=r"out of range.*valid targets: indices 0\.\.1.*benign"):
        explain(resnet, x, 5, "gradcam")
    with pytest.raises(ValueError, match=r"unknown target 'melanoma'.*'benign', 'malignant'"):
        explain(resnet, x, "melanoma", "saliency")
    with pytest.raises(ValueError, match="unknown method"):
        explain(resnet, x, 0, "grad-cam-typo")


def test_bad_images_are_refused(resnet):
    with pytest.raises(ValueError, match="expects 3-channel images but got 1"):
        explain(resnet, torch.randn(2, 1, 32, 32), 0, "gradcam")
    with pytest.raises(ValueError, match="shape"):
        explain(resnet, torch.randn(32, 32), 0, "gradcam")
    with pytest.raises(ValueError, match="float"):
        explain(resnet, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), 0, "gradcam")


def test_multilabel_several_findings():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=3).eval()
    describe_model(m, class_names=["Effusion", "Atelectasis", "Mass"], task="multilabel", **UNIT_NORM)
    x = torch.randn(3, 3, 32, 32)
    exp = explain(m, x, [["Effusion", "Mass"]] * 3, "gradcam", layer="layer3")     # both findings, every image
    assert len(exp) == 6 and exp.target_names == ["Effusion", "Mass"] * 3
    assert list(exp.image_index) == [0, 0, 1, 1, 2, 2]
    per_image = explain(m, x[:2], [["Effusion", "Mass"], ["Atelectasis"]], "gradcam", layer="layer3")
    assert per_image.target_names == ["Effusion", "Mass", "Atelectasis"]
    assert not np.allclose(exp.maps[0], exp.maps[1])
    with pytest.raises(ValueError, match="one list per image"):        # a flat list of 2 for 3 images
        explain(m, x, ["Effusion", "Mass"], "gradcam", layer="layer3")


def test_importing_explain_imports_no_attribution_library():
    """The method modules import captum, zennit, shap, lime and pytorch-grad-cam only when a method runs."""
    import subprocess
    import sys

    code = ("import sys; from xai_helpers.explain import available_methods; available_methods(); "
            "print([m for m in ('captum', 'zennit', 'shap', 'lime', 'pytorch_grad_cam') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_plain_model_gets_a_clear_error_until_described():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=2).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ModelInfoError, match="describe_model"):
        explain(m, x, 0, "gradcam")
    describe_model(m, class_names=["benign", "malignant"], task="binary", mean=(0.485, 0.456, 0.406),
                   std=(0.229, 0.224, 0.225), cam_layer="layer4")
    exp = explain(m, x, "malignant", "gradcam")
    assert exp.maps.shape == (1, 32, 32) and exp.target_names == ["malignant"] and exp.maps.max() > 0


@pytest.mark.parametrize("old, new", [("hand", "ours"), ("pytorch-grad-cam", "library")])
def test_old_backend_spellings_name_the_new_one(resnet, xr, old, new):
    x, t = xr
    with pytest.raises(ValueError, match=f"backend='{new}'"):
        explain(resnet, x, t, "gradcam++", backend=old)
    lrp_new = {"hand": "ours", "pytorch-grad-cam": "library"}[old]
    lrp_old = {"ours": "fast", "library": "zennit"}[lrp_new]
    with pytest.raises(ValueError, match=f"backend='{lrp_new}'"):
        explain(resnet, x, t, "lrp", backend=lrp_old)


def _global_states():
    import random

    return random.getstate(), np.random.get_state(), torch.random.get_rng_state()


CHEAP = {"integrated_gradients": dict(steps=4), "smoothgrad": dict(n_samples=2), "occlusion": dict(patch=16),
         "scorecam": dict(batch_size=64), "lime": dict(num_samples=16, precision="float32"),
         "shap": dict(nsamples=4), "expected_gradients": dict(nsamples=4, local_smoothing=0.1),
         "shap_partition": dict(max_evals=16), "exact_shapley": dict(n_segments=4), "xrai": dict(steps=2)}


def test_explain_leaves_the_global_random_state_alone():
    """Every method, seeded or not: the caller's random state is the same before and after, and a seeded
    call gives the same map whatever the global state was."""
    import random

    from xai_helpers.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", 2, class_names=["benign", "melanoma"], input_size=32, width=8).eval()
    x = torch.randn(1, 3, 32, 32)
    for method in sorted(available_methods()):
        opts = CHEAP.get(method, {})
        random.seed(11), np.random.seed(11), torch.manual_seed(11)
        before = _global_states()
        first = explain(model, x, 1, method, seed=0, **opts).maps
        after = _global_states()
        assert before[0] == after[0], f"{method} moved Python's random state"
        assert all(np.array_equal(a, b) for a, b in zip(before[1][1:3], after[1][1:3])), \
            f"{method} moved NumPy's global random state"
        assert torch.equal(before[2], after[2]), f"{method} moved torch's global random state"
        np.random.seed(99), torch.manual_seed(99)                    # another global state: same map
        np.testing.assert_array_equal(explain(model, x, 1, method, seed=0, **opts).maps, first, err_msg=method)


# ---------------------------------------------------------------------------------------------------
def test_pointing_game_and_mass_on_known_maps():
    masks = np.zeros((3, 8, 8), bool)
    masks[:, 2:4, 2:4] = True
    maps = np.zeros((3, 8, 8))
    maps[0, 3, 3] = 1          # inside
    maps[1, 5, 5] = 1          # 2 px diagonally outside (distance sqrt(8))
    maps[2, 4, 3] = 1          # 1 px below
    assert list(pointing_hits(maps, masks)) == [1, 0, 0]
    assert list(pointing_hits(maps, masks, tolerance=1)) == [1, 0, 1]
    assert pointing_game(maps, masks, tolerance=3) == 1.0
    # a constant map finds nothing: it scores the mask's area fraction, never a free hit
    flat = np.zeros((1, 10, 10))
    box = np.zeros((1, 10, 10), bool)
    box[0, 2:4, 2:7] = True
    assert pointing_hits(flat, box)[0] == pytest.approx(0.1)
    mass = relevance_mass(maps, masks)
    assert list(mass) == [1.0, 0.0, 0.0]
    assert area_fraction(masks)[0] == 4 / 64
    with pytest.raises(ValueError, match="same"):
        pointing_game(maps, masks[:, :4])
    empty = np.zeros_like(masks)
    assert np.isnan(pointing_hits(maps, empty)).all()
