"""Record (or recompute) the maps of every explain() method on one fixed small model, image and seed.

    python tests/reference/record_maps.py          # writes tests/reference/explain_maps.npz

``tests/test_reference_maps.py`` recomputes them and compares: a refactor that moves code must not move
a map. The model and images are float64, so the comparison holds to 1e-6 on any CPU (float32 kernels
differ between CPUs in the last bits); LIME and SHAP run in float32 precision (no bfloat16).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "explain_maps.npz"

# cheap but representative options per method (every method's own code path runs)
OPTIONS = {
    "integrated_gradients": dict(steps=8),
    "smoothgrad": dict(n_samples=4),
    "occlusion": dict(patch=8, stride=4),
    "scorecam": dict(batch_size=32),
    "lime": dict(num_samples=64, precision="float32"),
    "shap": dict(nsamples=8, precision="float32"),
    "expected_gradients": dict(nsamples=8, precision="float32"),
    "shap_partition": dict(max_evals=64),
    "exact_shapley": dict(n_segments=6),
    "xrai": dict(steps=4),
}


def reference_model():
    from xai_helpers.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", 2, class_names=["benign", "melanoma"], input_size=32, width=8)
    with torch.no_grad():           # non-trivial BatchNorm statistics and biases
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.1)
    return model.eval()


def reference_images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 32, 32, generator=g)


def compute_maps(methods=None, dtype=torch.float64) -> dict:
    from xai_helpers.explain import available_methods, explain

    model = reference_model().to(dtype)
    x = reference_images().to(dtype)
    out = {}
    for name in methods or available_methods():
        opts = dict(OPTIONS.get(name, {}))
        if name in ("shap", "expected_gradients"):
            opts["background"] = x.flip(0)
        out[name] = explain(model, x, [0, 1], name, seed=0, **opts).maps.astype(np.float64)
    return out


if __name__ == "__main__":
    maps = compute_maps(sys.argv[1:] or None)
    np.savez_compressed(REFERENCE, **maps)
    print(f"wrote {len(maps)} methods to {REFERENCE.name}:", ", ".join(maps))
