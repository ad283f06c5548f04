"""build_model: every arch gives the right outputs and carries the metadata later chapters read."""
import pytest
import torch

from xai_helpers import models
from xai_helpers.model_info import ModelInfoError, model_info
from xai_helpers.models import ARCHS, build_model, get_layer


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18_small"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_small_models_shapes_and_metadata(arch, in_channels):
    m = build_model(arch, 2, in_channels=in_channels, class_names=["benign", "malignant"], task="binary",
                    input_size=32)
    out = m(torch.randn(3, in_channels, 32, 32))
    assert out.shape == (3, 2)
    info = model_info(m)
    assert info.class_names == ("benign", "malignant") and info.in_channels == in_channels
    assert info.num_outputs == 2 and info.task == "binary" and info.input_size == 32 and info.arch == arch
    assert len(info.mean) == in_channels and len(info.std) == in_channels
    assert not hasattr(m, "class_names") and not hasattr(m, "task")   # one declared interface, no loose attributes
    assert isinstance(get_layer(m), torch.nn.Module)


def test_resnet18_small_keeps_resolution():
    """The small-input stem (3x3 stride 1, no max-pool) keeps 4x more resolution than ImageNet's."""
    m = build_model("resnet18_small", 3, task="multiclass")
    feats = {}
    get_layer(m).register_forward_hook(lambda mod, i, o: feats.setdefault("x", o))
    m(torch.randn(1, 3, 32, 32))
    assert feats["x"].shape[-1] == 4  # 32 / 8 (three stride-2 stages)


def test_grey_input_sums_pretrained_rgb_filters():
    rgb = build_model("efficientnet_lite0", 2, in_channels=3, pretrained=True, input_size=64)
    grey = build_model("efficientnet_lite0", 2, in_channels=1, pretrained=True, input_size=64)
    assert rgb.info.pretrained and grey.info.pretrained
    w3, w1 = rgb._conv_stem.weight, grey._conv_stem.weight
    assert w1.shape[1] == 1
    torch.testing.assert_close(w1[:, 0], w3.sum(1))
    # a grey image through the grey stem == the same image repeated in RGB through the RGB stem
    x = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(grey._conv_stem(x), rgb._conv_stem(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)
    assert grey(x).shape == (2, 2)
    assert grey.info.mean == pytest.approx((sum(models.IMAGENET_MEAN) / 3,))


def test_missing_imagenet_weights_message(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(models.PretrainedWeightsMissing) as err:
        build_model("resnet18", 2, pretrained=True)
    msg = str(err.value)
    assert "torch hub cache" in msg and "if_available" in msg and "efficientnet_lite0" in msg
    m = build_model("resnet18", 2, pretrained="if_available")  # continues, random init
    assert m.info.pretrained is False and m(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("vgg", 2)
    with pytest.raises(ValueError, match="2 logits"):
        build_model("small_cnn", 1, task="binary")
    with pytest.raises(ValueError, match="class_names"):
        build_model("small_cnn", 3, task="multiclass", class_names=["a", "b"])
    with pytest.raises(ValueError, match="no pretrained"):
        build_model("resnet18_small", 2, pretrained=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_builds_with_a_cam_layer(arch):
    """Every arch the notebooks may name builds without internet (random init), answers a batch at a
    size it was not built for, and has a Grad-CAM layer whose activation keeps a spatial map."""
    m = build_model(arch, 3, task="multiclass", input_size=64).eval()
    assert m.info.pretrained is False and m.info.num_outputs == 3
    feats = {}
    get_layer(m).register_forward_hook(lambda mod, i, o: feats.setdefault("x", o))
    with torch.no_grad():
        out = m(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert feats["x"].ndim == 4 and feats["x"].shape[0] == 2 and feats["x"].shape[-1] >= 2


def _docstring_example() -> list[str]:
    """The statements of model_info's module docstring example, except those that need images."""
    import xai_helpers.model_info as mi

    chunks = []
    for line in (ln.strip() for ln in mi.__doc__.splitlines()):
        if line.startswith(">>> "):
            chunks.append(line[4:])
        elif line.startswith("... "):
            chunks[-1] += "\n" + line[4:]
    return [c for c in chunks if "explain" not in c]


def test_describe_model_wraps_a_plain_torchvision_model():
    """The docstring's example: a plain torchvision ResNet-18 gets the interface with one call."""
    import torchvision

    from xai_helpers.model_info import describe_model

    ns = {}
    example = _docstring_example()
    assert any("describe_model(" in c for c in example)
    for chunk in example:
        exec(chunk, ns)
    info = model_info(ns["net"])
    assert info.class_names == ("benign", "melanoma") and info.task == "binary" and info.in_channels == 3
    assert get_layer(ns["net"]) is ns["net"].layer4
    assert models.model_summary(ns["net"])["parameters"] > 1e6

    plain = torchvision.models.resnet18(num_classes=2)
    with pytest.raises(ModelInfoError, match="describe_model"):
        model_info(plain)
    with pytest.raises(ModelInfoError, match="describe_model"):
        get_layer(plain)
    with pytest.raises(ModelInfoError, match="cam_layer 'layer9'"):
        describe_model(plain, class_names=["a", "b"], task="binary", mean=(0.5,) * 3, std=(0.2,) * 3,
                       cam_layer="layer9")
    with pytest.raises(ModelInfoError, match="2 softmax logits"):
        describe_model(plain, class_names=["a", "b", "c"], task="binary", mean=(0.5,) * 3, std=(0.2,) * 3)


def test_probabilities_softmax_or_sigmoid():
    from xai_helpers.model_info import probabilities

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    p = probabilities(logits, "multiclass")
    torch.testing.assert_close(p.sum(1), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(p[1], torch.full((3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(probabilities(logits, "multilabel"), 1 / (1 + torch.exp(-logits)))
    torch.testing.assert_close(probabilities(logits[:, :1], "binary"), torch.sigmoid(logits[:, :1]))
    with pytest.raises(ValueError, match="task must be one of"):
        probabilities(logits, "regression")
