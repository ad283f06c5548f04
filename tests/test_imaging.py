"""imaging: normalisation round trips, display conversion, baselines and the one blur."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xai_helpers.imaging import (baseline, denormalise, from_display, gaussian_blur, grey, normalise,
                                 to_display)
from xai_helpers.model_info import describe_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("shape, mean, std", [((2, 3, 5, 5), MEAN, STD), ((3, 5, 5), MEAN, STD),
                                              ((2, 1, 5, 5), (0.5,), (0.25,)), ((2, 3, 5, 5), (0.5,), (0.25,))])
def test_normalise_round_trip(shape, mean, std):
    x = torch.rand(shape, dtype=torch.float64)
    y = normalise(x, mean, std)
    c = shape[-3]
    m = torch.tensor(mean, dtype=torch.float64).expand(c).view(c, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).expand(c).view(c, 1, 1)
    torch.testing.assert_close(y, (x - m) / s)
    torch.testing.assert_close(denormalise(y, mean, std), x)


def test_normalise_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="1 or 3 values"):
        normalise(torch.rand(1, 3, 4, 4), (0.5, 0.5), (0.2, 0.2))
    with pytest.raises(TypeError, match="255"):
        normalise(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), MEAN, STD)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        normalise(torch.rand(4, 4), MEAN, STD)


def test_to_display_single_images_and_batches():
    u8 = (np.arange(48).reshape(4, 4, 3) * 5).astype(np.uint8)
    np.testing.assert_allclose(to_display(u8), u8 / 255.0, rtol=1e-6)
    chw = torch.rand(3, 4, 4)
    np.testing.assert_allclose(to_display(chw), chw.permute(1, 2, 0).numpy())       # already in [0, 1]
    assert to_display(torch.rand(1, 4, 4)).shape == (4, 4)                          # grey: (H, W)
    spread = to_display(torch.randn(3, 4, 4) * 5)
    assert spread.min() == pytest.approx(0) and spread.max() == pytest.approx(1, abs=1e-6)
    x01 = torch.rand(2, 3, 4, 4)
    x = normalise(x01, MEAN, STD)
    disp = to_display(x, (MEAN, STD))
    assert disp.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(disp, x01.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    torch.testing.assert_close(from_display(disp, (MEAN, STD), like=x[0]), x, atol=1e-5, rtol=1e-5)
    model = describe_model(torch.nn.Conv2d(3, 2, 1), class_names=["a", "b"], task="binary", mean=MEAN, std=STD)
    np.testing.assert_array_equal(to_display(x, model), disp)                      # a model with model.info
    assert to_display(torch.ones(1, 1, 2, 2) * 9, ((0.5,), (0.25,))).max() == 1.0   # clipped
    assert to_display(torch.ones(1, 1, 2, 2) * 9, ((0.5,), (0.25,)), clip=False).max() == 2.75


def test_baselines():
    x = normalise(torch.rand(2, 3, 32, 32, dtype=torch.float64), MEAN, STD)
    assert torch.equal(baseline((MEAN, STD), x, "zero"), torch.zeros_like(x))
    assert torch.equal(baseline((MEAN, STD), x, "mean"), torch.zeros_like(x))
    for kind, level in (("black", 0.0), ("white", 1.0)):
        b = baseline((MEAN, STD), x, kind)
        torch.testing.assert_close(denormalise(b, MEAN, STD), torch.full_like(x, level))
    torch.testing.assert_close(grey((MEAN, STD), x[0], 0.5), normalise(torch.full_like(x[0], 0.5), MEAN, STD))
    t = torch.ones(1, 3, 1, 1)
    assert baseline((MEAN, STD), x, t).shape == x.shape
    blurred = baseline((MEAN, STD), x, "blur")
    torch.testing.assert_close(blurred, gaussian_blur(x))
    assert blurred.std() < 0.5 * x.std()
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline((MEAN, STD), x, "purple")


def test_gaussian_blur_is_torchvisions():
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    x = torch.rand(2, 3, 64, 64)
    sigma = 64 / 16
    k = int(2 * round(3 * sigma) + 1)
    torch.testing.assert_close(gaussian_blur(x), tv_blur(x, [k, k], [sigma, sigma]))
    torch.testing.assert_close(gaussian_blur(x[0]), gaussian_blur(x)[0])
    const = torch.full((1, 16, 16), 0.3)
    torch.testing.assert_close(gaussian_blur(const, 1.5), const)                    # a blur keeps constants


def test_imaging_imports_only_numpy_and_torch():
    import subprocess
    import sys

    code = ("import sys; import xai_helpers.imaging; "
            "bad = [m for m in ('torchvision', 'matplotlib', 'skimage', 'xai_helpers.data', 'xai_helpers.explain') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
