"""LRP on the workbook's full-mode networks: EfficientNet-Lite0 and the multi-scale Lite0 probe.

* ReLU6, zero padding, depthwise convs and BatchNorm folding: the gradient trick == zennit's hooks
  (Pass rule for ReLU6) on a small sequential network that has all of them
* the std pooling rule (xai_helpers/explain/lrp_rules.py) conserves: sum_j x_j dstd/dx_j = std
* both full-mode models are supported (backend "auto" / "ours"); zennit refuses them with a reason
* maps on the pretrained models are finite, not blank, and leave the model untouched
* conservation as measured: with the BatchNorm shifts set to zero every rule conserves (within a few
  per cent, zero_bias=True); with the ImageNet BatchNorm shifts most relevance stops at the biases
  (zennit issue #193 sees the same leak on ResNet-18): the map sums to a few per cent of the logit
* an unsupported layer is named by its module path and qualified class, with what to do instead
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xai_helpers.explain import explain
from xai_helpers.explain.lrp import LRPUnsupportedError, check_lrp_support, conservation, lrp_relevance
from xai_helpers.model_info import describe_model
from xai_helpers.models import Lite0MultiScale, build_model

SIZE = 128


def smooth_images(n, size=SIZE, seed=0):
    """Normalised images with natural-image-like smoothness (noise upsampled from 8 x 8)."""
    g = torch.Generator().manual_seed(seed)
    return nn.functional.interpolate(torch.randn(n, 3, 8, 8, generator=g), size=(size, size), mode="bilinear",
                                     align_corners=False)


@pytest.fixture(scope="module", params=["efficientnet_lite0", "efficientnet_lite0_ms"])
def full_mode_model(request):
    """A pretrained full-mode network with a non-trivial head (the multi-scale probe standardised on the images)."""
    torch.manual_seed(0)
    model = build_model(request.param, 2, pretrained=True, input_size=SIZE)
    x = smooth_images(4)
    with torch.no_grad():
        if isinstance(model, Lite0MultiScale):
            f = torch.stack([model.pooled(i, model.member_input(i, x)) for i in range(len(model.nets))])
            model.feat_mean.copy_(f.mean(1))
            model.feat_std.copy_(f.std(1) + 1e-3)
            for head in model.heads:
                head.weight.normal_(0, 0.05)
        else:
            model._fc.weight.normal_(0, 0.05)
    return model.eval(), x, torch.tensor([0, 1, 0, 1])


def _tiny_lite_net():
    """ZeroPad2d, convs with BatchNorm, a depthwise conv, ReLU6 with activations above 6: what Lite0 is made of."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU6(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                        nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(1.0, 4.0)            # large enough that some ReLU6 clip at 6
                m.bias.normal_(0, 0.1)
    describe_model(net, class_names=["a", "b"], task="binary", mean=(0.0,) * 3, std=(1.0,) * 3)
    return net.eval()


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_plus"])
@pytest.mark.parametrize("zero_bias", [False, True])
def test_relu6_padding_depthwise_match_zennit(composite, zero_bias):
    net = _tiny_lite_net()
    x, t = 2 * torch.randn(4, 3, 17, 17), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        clipped = sum(int((m(x) > 6).sum()) for m in [net[:3], net[:6], net[:9]])   # before each ReLU6
    assert clipped > 0, "the test needs ReLU6 activations above 6 (where its gradient would drop relevance)"
    ours, lo = lrp_relevance(net, x, t, backend="ours", composite=composite, zero_bias=zero_bias)
    ref, lr = lrp_relevance(net, x, t, backend="library", composite=composite, zero_bias=zero_bias)
    torch.testing.assert_close(lo, lr, rtol=1e-3, atol=1e-4)
    err = ((ours - ref).abs().amax(dim=(1, 2, 3)) / ref.abs().amax(dim=(1, 2, 3))).max()
    assert err < 1e-3, f"relative difference {err:.2e}"
    if zero_bias:
        ratio = ours.sum(dim=(1, 2, 3)) / lo
        assert torch.all((ratio - 1).abs() < 0.01), ratio


def test_std_pooling_rule_conserves():
    """Relevance of the std feature R_j = x_j (x_j - mu) / sum x (x - mu) R_s sums to R_s: std is
    positively homogeneous, so value x gradient (what autograd gives) conserves, up to the model's 1e-6."""
    torch.manual_seed(0)
    x = (torch.randn(2, 5, 6, 6, dtype=torch.float64) + 1).requires_grad_(True)
    mean, std = Lite0MultiScale._pool(x)
    for feature in (mean, std):
        (g,) = torch.autograd.grad(feature.sum(), x)
        got = (x * g).sum(dim=(2, 3))
        var = (feature.detach() ** 2 - 1e-6) if feature is std else None
        expect = feature.detach() if feature is mean else var / feature.detach()
        torch.testing.assert_close(got, expect)
        if feature is std:
            torch.testing.assert_close(got, feature.detach(), rtol=1e-5, atol=0)


def test_full_mode_models_are_supported(full_mode_model):
    model, x, t = full_mode_model
    assert check_lrp_support(model) == []            # no zennit canonizer: explained by the gradient trick
    with pytest.raises(LRPUnsupportedError, match="backend='ours'"):
        lrp_relevance(model, x[:1], t[:1], backend="library")
    with pytest.raises(LRPUnsupportedError, match="backend='ours'"):
        lrp_relevance(model, x[:1], t[:1], rule="epsilon")


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_plus"])
def test_lrp_maps_on_full_mode_models(full_mode_model, composite):
    model, x, t = full_mode_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exp = explain(model, x, t, "lrp", composite=composite)       # backend "auto": the gradient trick
    maps = torch.as_tensor(exp.maps)
    assert maps.shape == (len(x), SIZE, SIZE) and torch.isfinite(maps).all()
    assert torch.all(maps.flatten(1).std(1) > 1e-6 * maps.abs().flatten(1).amax(1)) and maps.abs().amax() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "LRP changed the model"
    ours, _ = lrp_relevance(model, x, t, backend="ours", composite=composite)
    torch.testing.assert_close(ours.sum(1), maps, rtol=1e-4, atol=1e-6 * float(maps.abs().max()))


def test_bias_relevance_leak_as_measured(full_mode_model):
    """With the ImageNet BatchNorm shifts (folded into the convs as biases) relevance does not reach the
    input even with zero_bias: deep depthwise convs switch on whole channels whose inputs are zero, so
    their relevance belongs to the bias alone. Measured on these images with zero_bias: Lite0 0.013-0.021
    of the logit; the multi-scale probe, whose middle-depth taps skip the last blocks, 0.16-0.88."""
    model, x, t = full_mode_model
    ratio = conservation(model, x, t, zero_bias=True)
    low, high = (0.05, 0.95) if isinstance(model, Lite0MultiScale) else (0.0, 0.1)
    assert torch.all((ratio > low) & (ratio < high)), ratio


def test_conservation_without_shifts(full_mode_model):
    """Every rule of the two networks conserves: with the BatchNorm shifts zeroed (no bias can take relevance)
    and zero_bias=True (the heads' bias and the standardisation's shift left out), the map sums to the
    logit within 5 % (measured 0.97-1.003; what is missing stops where a z+ rule finds no positive input)."""
    import copy

    model, x, t = full_mode_model
    model = copy.deepcopy(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
    for composite in ("epsilon_plus_flat", "epsilon_plus"):
        ratio = conservation(model, x, t, composite=composite, zero_bias=True)
        assert torch.all((ratio - 1).abs() < 0.05), (composite, ratio)


def test_unsupported_layer_is_named_with_its_module_and_class():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softplus(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(LRPUnsupportedError) as err:
        check_lrp_support(net)
    msg = str(err.value)
    assert "torch.nn.modules.activation.Softplus (e.g. at '1')" in msg
    assert "gradcam" in msg and "PASS_ACTIVATIONS" in msg


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients", "smoothgrad", "lrp", "occlusion", "lime"])
def test_channels_last_layout_gives_the_same_maps(full_mode_model, method):
    """models.use_fast_layout (what get_trained_model applies to EfficientNet on a CPU) changes the speed,
    not the maps; and a method that switches layouts for itself leaves the model channels-last."""
    import copy

    from xai_helpers.models import use_fast_layout

    model, x, t = full_mode_model
    fast = use_fast_layout(copy.deepcopy(model))
    stem = fast.nets[0]._conv_stem if isinstance(fast, Lite0MultiScale) else fast._conv_stem
    assert stem.weight.is_contiguous(memory_format=torch.channels_last) and not stem.weight.is_contiguous()
    opts = {"smoothgrad": {"n_samples": 4}, "lime": {"num_samples": 64, "precision": "float32"},
            "gradcam": {"relu": False}}.get(method, {})
    plain = np.asarray(explain(model, x[:2], t[:2].tolist(), method, **opts).maps, np.float64)
    other = np.asarray(explain(fast, x[:2], t[:2].tolist(), method, **opts).maps, np.float64)
    scale = float(abs(plain).max())
    assert scale > 0
    # float rounding differs between layouts; through ReLU6's clip at 6 and noisy inputs (SmoothGrad) it
    # can move a few pixels by a few 1e-3 of the map's range, never the map as a whole
    assert float(abs(plain - other).max()) <= 5e-3 * scale, method
    assert np.corrcoef(plain.ravel(), other.ravel())[0, 1] >= 0.9999, method
    assert stem.weight.is_contiguous(memory_format=torch.channels_last) and not stem.weight.is_contiguous()


def test_fast_layout_leaves_other_models_alone():
    from xai_helpers.models import use_fast_layout

    model = build_model("small_cnn", 2, input_size=32)
    use_fast_layout(model)
    assert all(p.is_contiguous() for p in model.parameters())
