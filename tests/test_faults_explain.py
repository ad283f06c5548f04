"""explain() on bad input and under faults: a clear error or a warning, never a silent wrong answer.

* a model changed by a forward hook or an attribute is explained as it is now (LIME's cached
  BatchNorm-folded copy is not used where hooks are present, and is re-validated on every call);
* raw 0-255 images warn; NaN / inf pixels, and sampling counts that cannot give a map, are refused;
* a flat target list that is neither one per image nor meant for one image is refused;
* an empty batch gives an empty Explanation; too small images, other float dtypes, meta-device models,
  empty per-image target lists and misspelt options are handled with errors that say what to do;
* big batches are explained in chunks (``chunk_size=``) with the same maps as in one piece;
* blank (constant) maps are flagged (``Explanation.blank``) with a warning naming the method.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from xai_helpers.explain import BlankMapWarning, available_methods, explain
from xai_helpers.models import build_model

CHEAP = {"integrated_gradients": dict(steps=4), "smoothgrad": dict(n_samples=2), "occlusion": dict(patch=8),
         "scorecam": dict(batch_size=32), "lime": dict(num_samples=32, precision="float32"),
         "shap": dict(nsamples=4, precision="float32"), "expected_gradients": dict(nsamples=4, precision="float32"),
         "shap_partition": dict(max_evals=16), "exact_shapley": dict(n_segments=4), "xrai": dict(steps=2)}


def small_model(width: int = 8):
    torch.manual_seed(0)
    model = build_model("small_cnn", 2, class_names=["benign", "melanoma"], input_size=32, width=width)
    with torch.no_grad():           # non-trivial BatchNorm statistics, so that folding them matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.1)
    return model.eval()


@pytest.fixture
def model():
    return small_model()


@pytest.fixture(scope="module")
def x8():
    """Smooth random images (SLIC finds ~17 superpixels in each; in white noise it finds one)."""
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False) * 1.5


def _scale(a):
    return float(np.abs(a).max())


# --- case 1: a stale fused copy -----------------------------------------------------------------------
def test_lime_sees_a_forward_hook_that_ablates_the_last_block(model, x8):
    x = x8[:2]
    before = explain(model, x, 1, "lime", num_samples=64, precision="float32").maps
    assert _scale(before) > 0
    handle = model.features[3].register_forward_hook(lambda mod, inp, out: out * 0)
    try:
        with pytest.warns(BlankMapWarning):
            cam = explain(model, x, 1, "gradcam")
            ablated = explain(model, x, 1, "lime", num_samples=64, precision="float32")
        assert _scale(cam.maps) == 0
        assert _scale(ablated.maps) < 1e-9 * _scale(before), "LIME explained the model without its hook"
        assert ablated.blank.all()
    finally:
        handle.remove()
    again = explain(model, x, 1, "lime", num_samples=64, precision="float32").maps
    np.testing.assert_allclose(again, before, rtol=0, atol=1e-6 * _scale(before))


class Scaled(torch.nn.Module):
    """A conv-BN net whose forward reads a plain attribute (``gain``), as a user's model may."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
        self.head, self.gain = torch.nn.Linear(4, 2), 1.0

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(h.mean((2, 3))) * self.gain


def test_lime_sees_a_changed_attribute(x8):
    from xai_helpers.model_info import describe_model

    model = describe_model(Scaled().eval(), class_names=["a", "b"], task="binary", mean=(0.5,) * 3, std=(0.25,) * 3)
    opts = dict(num_samples=64, precision="float32", output="logit")
    before = explain(model, x8[:2], 1, "lime", **opts).maps
    model.gain = 3.0                 # every logit x3: LIME's weights (on logits) must triple
    after = explain(model, x8[:2], 1, "lime", **opts).maps
    np.testing.assert_allclose(after, 3 * before, rtol=1e-4, atol=1e-6 * _scale(before))


# --- case 3: raw pixels, NaN / inf, sample counts ------------------------------------------------------
def test_raw_0_255_images_warn(model):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255
    with pytest.warns(UserWarning, match=r"0-255.*normalis"):
        explain(model, x, 1, "gradcam")


@pytest.mark.parametrize("method", ["gradcam", "lrp", "occlusion", "integrated_gradients",
                                    "expected_gradients", "lime"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixel_is_refused(model, x8, method, bad):
    x = x8[:3].clone()
    x[2, 1, 5, 7] = bad
    with pytest.raises(ValueError, match=r"NaN or infinite.*image.*\[2\]"):
        explain(model, x, 1, method, **CHEAP.get(method, {}))


def test_all_nan_image_with_predicted_target_is_refused(model, x8):
    x = x8[:2].clone()
    x[0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite.*\[0\]"):
        explain(model, x, None, "gradcam")


@pytest.mark.parametrize("method, option, value", [
    ("integrated_gradients", "steps", 0), ("integrated_gradients", "steps", -3),
    ("expected_gradients", "nsamples", 0), ("shap", "nsamples", -1), ("smoothgrad", "n_samples", 0),
    ("lime", "num_samples", 0), ("lime", "num_samples", -5), ("xrai", "steps", 0)])
def test_sample_counts_that_give_no_map_are_refused(model, x8, method, option, value):
    with pytest.raises(ValueError, match=rf"{option}.*>= 1.*got {value}"):
        explain(model, x8[:2], 1, method, **{option: value})


# --- case 4: flat target lists -------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3, 9])
def test_flat_target_list_of_another_length_is_refused(model, x8, k):
    targets = [0, 1] * 5
    with pytest.raises(ValueError, match=r"8 images.*one target per image.*\[\[") as e:
        explain(model, x8, targets[:k], "gradcam")
    assert f"{k} targets" in str(e.value)


def test_target_forms_that_stay_valid(model, x8):
    assert len(explain(model, x8, [0, 1] * 4, "gradcam")) == 8                      # one per image
    several = explain(model, x8[:3], [["benign", "melanoma"]] * 3, "gradcam")      # per-image lists
    assert len(several) == 6 and list(several.image_index) == [0, 0, 1, 1, 2, 2]
    one = explain(model, x8[0], ["benign", "melanoma"], "gradcam")                 # one image, two findings
    assert len(one) == 2 and one.target_names == ["benign", "melanoma"]


def test_an_empty_target_list_for_an_image_is_refused(model, x8):
    with pytest.raises(ValueError, match="at least one target"):
        explain(model, x8, [[]] * 8, "gradcam")
    with pytest.raises(ValueError, match=r"image 1.*at least one target"):
        explain(model, x8[:2], [[0], []], "gradcam")


# --- case 13: empty batch, small images, dtypes, meta device, options -----------------------------------
@pytest.mark.parametrize("method", sorted(available_methods()))
def test_an_empty_batch_gives_an_empty_explanation(model, method):
    exp = explain(model, torch.zeros(0, 3, 32, 32), 1, method, **CHEAP.get(method, {}))
    assert exp.maps.shape == (0, 32, 32) and len(exp) == 0 and exp.blank.shape == (0,)


def test_too_small_images_name_the_smallest_size(model):
    with pytest.raises(ValueError, match=r"4x4.*at least 8x8 px"):
        explain(model, torch.randn(2, 3, 4, 4), 1, "gradcam")
    assert explain(model, torch.randn(2, 3, 8, 8), 1, "saliency").maps.shape == (2, 8, 8)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast_to_the_model_dtype(model, x8, dtype):
    ref = explain(model, x8[:2], 1, "gradcam").maps
    got = explain(model, x8[:2].to(dtype), 1, "gradcam").maps
    x_rounded = x8[:2].to(dtype).float()              # what the model sees: the images' own rounding
    want = explain(model, x_rounded, 1, "gradcam").maps
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * _scale(ref))


def test_a_model_on_the_meta_device_is_refused(x8):
    model = small_model().to("meta")
    with pytest.raises(ValueError, match=r"meta.*to_empty|meta.*load"):
        explain(model, x8[:2], 1, "gradcam")


@pytest.mark.parametrize("method, options, valid", [
    ("lime", dict(n_samples=10), "num_samples"),
    ("gradcam", dict(steps=4), "layer"),
    ("integrated_gradients", dict(n_steps=4), "steps"),
    ("exact_shapley", dict(num_samples=4), "n_segments")])
def test_unknown_options_list_the_valid_ones(model, x8, method, options, valid):
    with pytest.raises(TypeError, match=rf"unknown option.*{list(options)[0]}.*{method}.*{valid}"):
        explain(model, x8[:2], 1, method, **options)


def test_segmentation_options_still_pass(model, x8):
    a = explain(model, x8[:1], 1, "lime", num_samples=32, precision="float32", compactness=1.0).maps
    b = explain(model, x8[:1], 1, "lime", num_samples=32, precision="float32", compactness=100.0).maps
    assert not np.allclose(a, b)
    with pytest.raises(TypeError, match=r"unknown option.*kernel_sise.*slic"):
        explain(model, x8[:1], 1, "lime", kernel_sise=4)


# --- chunking ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, options", [("gradcam", {}), ("integrated_gradients", dict(steps=4)),
                                             ("lime", dict(num_samples=32, precision="float32")),
                                             ("expected_gradients", dict(nsamples=4, precision="float32")),
                                             ("occlusion", dict(patch=8))])
def test_chunked_equals_one_chunk(model, x8, method, options):
    whole = explain(model, x8, [0, 1] * 4, method, seed=5, chunk_size=8, **options)
    chunked = explain(model, x8, [0, 1] * 4, method, seed=5, chunk_size=3, **options)
    np.testing.assert_allclose(chunked.maps, whole.maps, rtol=0, atol=1e-5 * _scale(whole.maps))
    assert list(chunked.image_index) == list(whole.image_index)


def test_methods_see_at_most_chunk_size_images(model, x8, monkeypatch):
    import xai_helpers.explain as ex

    seen = []
    real = ex._METHODS["saliency"]
    monkeypatch.setitem(ex._METHODS, "saliency", lambda m, x, t, **kw: seen.append(len(x)) or real(m, x, t, **kw))
    assert len(explain(model, x8, 1, "saliency", chunk_size=3)) == 8
    assert seen == [3, 3, 2]


def test_chunk_size_is_checked(model, x8):
    with pytest.raises(ValueError, match="chunk_size"):
        explain(model, x8, 1, "gradcam", chunk_size=0)


# --- blank maps (issue 17, item 3) ---------------------------------------------------------------------
def test_blank_maps_warn_and_are_flagged(model, x8):
    x = x8[:4].clone()
    x[1] = 0.0                                   # "edges" of a flat image: a blank map
    with pytest.warns(BlankMapWarning, match=r"edges.*1 of 4 maps.*\[1\]"):
        exp = explain(model, x, 1, "edges")
    assert exp.blank.tolist() == [False, True, False, False]
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlankMapWarning)
        assert not explain(model, x8[:2], 1, "gradcam").blank.any()
