"""Full mode on the workbook's own networks (issue 17): the real full-mode architectures at their
recipe's size, explained on a few real PH2 / NIH images.

* every CAM method gives maps that are not blank, on every architecture (the default layer of the
  EfficientNet-Lite0s used to sit before the activation, and Grad-CAM++ summed it to zero);
* giving the head activation a module of its own changes no logit and no state-dict key;
* which methods a model supports is asked of the methods (notebook 08 used to filter LRP by
  architecture name and crashed on ``efficientnet_lite0_ms``);
* the centre baseline documents PH2's centre bias.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xai_helpers import data
from xai_helpers.evaluation.localization import pointing_game, relevance_mass, score_maps
from xai_helpers.explain import explain
from xai_helpers.explain.support import CAM_METHODS, supported_methods, supports, unsupported_reason
from xai_helpers.models import ARCHS, CAM_LAYERS, build_model
from xai_helpers.training.recipes import RECIPES

pytestmark = pytest.mark.realdata
SIZE = RECIPES["skin_binary"]["size"]          # 192: the full-mode input side
N_IMAGES = 4


def skin_full(size: int = SIZE):
    """The full-mode skin network (recipe skin_binary): two frozen ImageNet Lite0s, linear heads."""
    torch.manual_seed(0)
    return build_model("efficientnet_lite0_ms", 2, pretrained=True, input_size=size)


def cxr_full(arch: str = "efficientnet_lite0", size: int = SIZE):
    """A grey 14-finding chest X-ray network on ImageNet Lite0 weights."""
    from xai_helpers.data.nih import CXR14

    torch.manual_seed(0)
    return build_model(arch, 14, in_channels=1, pretrained=True, task="multilabel", input_size=size,
                       class_names=list(CXR14))


@pytest.fixture(scope="module")
def ph2(real_dataset):
    return data.load("ph2", size=SIZE, task="binary", root=real_dataset("ph2"))


@pytest.fixture(scope="module")
def nih(real_dataset):
    return data.load("nih_cxr_bbox", size=SIZE, root=real_dataset("nih_cxr_bbox"))


def test_recipes_still_name_the_architectures_tested_here():
    assert {RECIPES[n]["arch"] for n in ("skin_binary", "skin_7class", "cxr_multilabel")} == {"efficientnet_lite0_ms"}
    assert {RECIPES[n]["size"] for n in ("skin_binary", "skin_7class", "cxr_multilabel")} == {SIZE}


# --- the CAM layer sits after the activation, and that changes no prediction ---------------------
def _with_shared_activation(model):
    """The package's original wiring: the head reuses the stem's activation module ``_swish``."""
    for net in (model.nets if hasattr(model, "nets") else [model]):
        net._head_act = net._swish
    return model


@pytest.mark.parametrize("make", [skin_full, cxr_full, lambda: cxr_full("efficientnet_lite0_ms")],
                         ids=["skin_ms", "cxr_lite0", "cxr_ms"])
def test_own_head_activation_changes_no_logit_and_no_weight_name(make):
    from efficientnet_lite_pytorch import EfficientNet

    model = make()
    c = model.info.in_channels
    x = torch.randn(3, c, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    layer = model.get_submodule(model.info.cam_layer)
    assert model.info.cam_layer == CAM_LAYERS[model.info.arch] and isinstance(layer, torch.nn.ReLU6)
    assert all(layer is not net._swish for net in getattr(model, "nets", [model]))
    with torch.no_grad():
        now = model(x).double()
        before = _with_shared_activation(model)(x).double()
    torch.testing.assert_close(now, before, rtol=0, atol=0)
    package = EfficientNet.from_name("efficientnet-lite0", num_classes=1, image_size=SIZE)
    members = getattr(model, "nets", [model])
    fc = {"_fc.weight", "_fc.bias"}
    for net in members:     # the same keys: checkpoints written before load unchanged
        assert set(net.state_dict()) - fc == set(package.state_dict()) - fc


def test_plain_lite0_computes_what_the_package_computes():
    from efficientnet_lite_pytorch import EfficientNet

    model = cxr_full()
    package = EfficientNet.from_name("efficientnet-lite0", num_classes=14, image_size=SIZE)
    package._conv_stem = model._conv_stem
    package.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), package.eval()(x), rtol=0, atol=0)


def test_old_checkpoints_naming_the_pre_activation_layer_get_todays_layer():
    from xai_helpers.training.checkpoints import checkpoint_model_info

    info = skin_full().info.as_dict()
    old = checkpoint_model_info({"model_info": dict(info, cam_layer="nets.1._bn1")})
    assert old.cam_layer == "nets.1._head_act"
    custom = checkpoint_model_info({"model_info": dict(info, cam_layer="nets.1._blocks.15")})
    assert custom.cam_layer == "nets.1._blocks.15"         # a layer the user chose is kept


# --- every CAM method, every architecture: maps that are not blank ----------------------------
def _model_and_images(arch, ph2, nih, n, size=None):
    """The architecture as the workbook uses it (the full-mode ones at ``size``, default 192; the
    small networks randomly initialised at 64 px), with ``n`` real images and per-image targets."""
    if arch == "efficientnet_lite0":                       # fast-mode CXR arch, here at the full size
        model, ds = cxr_full(size=size or SIZE), nih
        idx = np.arange(n) * 37 % len(nih)
        targets = [nih.boxes[i][0]["label"] for i in idx]
    else:
        torch.manual_seed(0)
        model = (skin_full(size or SIZE) if arch == "efficientnet_lite0_ms"
                 else build_model(arch, 2, input_size=size or 64))
        ds, idx, targets = ph2, np.arange(n) * 29 % len(ph2), [1] * n
    x = data.to_tensor(ds, idx, model.info.mean, model.info.std)
    if x.shape[-1] != model.info.input_size:
        x = torch.nn.functional.interpolate(x, size=model.info.input_size, mode="bilinear", antialias=True)
    return model, x, targets


@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_cam_maps_are_not_blank(arch, method, ph2, nih):
    # Score-CAM runs one masked forward pass per channel of the layer (1280 in a Lite0): about
    # 9 minutes an image for the full skin model at 192 px on one thread. The layer is the same at
    # any size, so it is checked on one image at 64 px (32 for resnet18_small, which keeps its resolution).
    n, size = (1, 32 if arch == "resnet18_small" else 64) if method == "scorecam" else (N_IMAGES, None)
    model, x, targets = _model_and_images(arch, ph2, nih, n, size)
    maps = explain(model, x, targets, method).maps
    peaks = maps.reshape(len(maps), -1).max(1)
    assert np.isfinite(maps).all()
    assert (peaks > 0).mean() >= 0.5, f"{method} on {arch}: {int((peaks == 0).sum())} of {len(peaks)} maps blank"


@pytest.mark.parametrize("backend", ["ours", "library"])
def test_gradcam_pp_is_not_blank_on_the_full_skin_model(backend, ph2):
    """The case of issue 17 (43 of 50 PH2 maps were all zero), with both backends."""
    model, x, targets = _model_and_images("efficientnet_lite0_ms", ph2, None, 6)
    maps = explain(model, x, 1, "gradcam++", backend=backend).maps
    assert (maps.reshape(len(maps), -1).max(1) > 0).all()
    assert score_maps(maps, ph2.masks[np.arange(6) * 29 % len(ph2)], warn=False).n_used["relevance_mass"] == 6


# --- which methods a model supports: the methods say ---------------------------------------------
def test_supported_methods_follow_check_lrp_support(monkeypatch):
    from xai_helpers.explain import lrp

    skin = skin_full()
    try:
        lrp.check_lrp_support(skin)
        lrp_ok = True
    except lrp.LRPUnsupportedError:
        lrp_ok = False
    methods = ["gradcam", "lrp", "integrated_gradients", "random", "centre"]
    assert ("lrp" in supported_methods(skin, methods)) == lrp_ok == supports(skin, "lrp")
    assert (unsupported_reason(skin, "lrp") is None) == lrp_ok
    assert supported_methods(skin, methods)[0] == "gradcam"
    small = build_model("small_cnn", 2, input_size=32)
    assert supported_methods(small, methods) == methods
    # no architecture name is consulted: whatever the check says goes
    monkeypatch.setattr(lrp, "check_lrp_support", lambda m: [])
    assert supports(skin, "lrp")

    def refuse(m):
        raise lrp.LRPUnsupportedError("no rule for this layer")

    monkeypatch.setattr(lrp, "check_lrp_support", refuse)
    assert supported_methods(small, methods) == [m for m in methods if m != "lrp"]
    assert unsupported_reason(small, "lrp") == "no rule for this layer"
    with pytest.raises(ValueError, match="unknown method"):
        supports(small, "gradcamm")


def test_cams_need_a_layer_to_read():
    from xai_helpers.model_info import ModelInfo, describe_model

    mlp = describe_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)),
                         ModelInfo(class_names=["a", "b"], task="binary", mean=(0.5,) * 3, std=(0.25,) * 3))
    assert not supports(mlp, "gradcam") and "Conv2d" in unsupported_reason(mlp, "gradcam")
    assert supports(mlp, "gradcam", layer="1") and supports(mlp, "saliency")


def test_notebook_08_score_table_runs_on_the_full_skin_model(ph2):
    """Notebook 08's PH2 section with the full-mode network: no LRPUnsupportedError, the baselines scored."""
    from xai_helpers.widgets import MethodComparison

    model = skin_full()
    idx = np.arange(3) * 29 % len(ph2)
    x = data.to_tensor(ph2, idx, model.info.mean, model.info.std)
    methods = supported_methods(model, ["gradcam", "gradcam++", "lrp", "random", "edges", "centre"])
    table = MethodComparison(model, x, display=ph2.images[idx], masks=ph2.masks[idx],
                             methods=methods).score_table(target=1)
    assert {"random", "edges", "centre", "gradcam++"} <= set(table.index)


def test_notebook_08_decides_support_by_method_not_by_architecture_name():
    nb = json.loads((Path(__file__).parents[1] / "notebooks" / "08_compare_methods.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "supported_methods(skin_model" in code and ".arch !=" not in code and ".arch ==" not in code
    assert all(f'"{b}"' in code for b in ("random", "edges", "centre"))


# --- the centre bias of PH2 ----------------------------------------------------------------------
def test_centre_baseline_points_into_ph2_lesions(ph2):
    """A Gaussian blob in the middle, which looks at no model, finds the lesion on most PH2 images:
    dermoscopy centres the lesion. Methods must beat THIS, not only random."""
    model = build_model("small_cnn", 2, input_size=SIZE)
    x = torch.zeros(len(ph2), 3, SIZE, SIZE)
    maps = explain(model, x, 1, "centre").maps
    assert pointing_game(maps, ph2.masks) >= 0.8
    area = ph2.masks.reshape(len(ph2), -1).mean(1)
    assert np.nanmean(relevance_mass(maps, ph2.masks)) > area.mean() + 0.1


def test_centre_baseline_is_a_centred_isotropic_gaussian():
    from xai_helpers.explain.baselines import CENTRE_SIGMA, centre_blob

    model = build_model("small_cnn", 2, input_size=32)
    m = explain(model, torch.randn(2, 3, 33, 41), [0, 1], "centre").maps
    assert m.shape == (2, 33, 41) and np.array_equal(m[0], m[1])
    assert np.unravel_index(m[0].argmax(), m[0].shape) == (16, 20) and m[0].max() == pytest.approx(1.0)
    s = CENTRE_SIGMA * 33
    assert m[0, 16, 20 + 10] == pytest.approx(np.exp(-100 / (2 * s * s)), rel=1e-5)
    assert m[0, 16 + 10, 20] == pytest.approx(m[0, 16, 20 + 10], rel=1e-5)        # isotropic
    wide = explain(model, torch.randn(1, 3, 32, 32), 0, "centre", sigma=0.5).maps[0]
    assert wide[0, 0] > centre_blob(32, 32)[0, 0].item()
    with pytest.raises(ValueError, match="sigma"):
        centre_blob(8, 8, sigma=0)
