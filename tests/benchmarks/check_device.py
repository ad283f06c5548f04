"""Does the workbook run on an accelerator, and does it give the CPU's answers there?

    python tests/benchmarks/check_device.py                  # the device config.get_device() picks
    XAI_DEVICE=mps python tests/benchmarks/check_device.py   # a chosen one (cuda, cuda:1, mps, cpu)

For a student with a GPU (CUDA or Apple MPS) and for whoever changes the package: runs, on the chosen
device and on the CPU, every ``explain()`` method on a small CNN trained here on planted images (and
Grad-CAM, LRP and Integrated Gradients on a random ResNet-18 and, where its packages are installed, on
EfficientNet-Lite0), the faithfulness, robustness and sanity scores, and one training run; then
compares the two. Prints one JSON object:

* ``methods``: per method, seconds on each device and the agreement of the device's maps with the
  CPU's: ``rel_max_diff`` (largest |difference| / largest |CPU value|) and the Spearman correlation of
  the flattened maps. Deterministic methods should agree to float32 rounding (GPUs use TF32 for
  convolutions by default: expect about 1e-3); seeded sampling methods (LIME, SHAP, SmoothGrad, ...) draw
  their samples on the CPU generator, so they agree as well.
* ``scores``: deletion / insertion AUCs, SIC, max-sensitivity and model randomisation on both devices.
* ``training``: validation AUC of the same recipe trained on each device (same seed: close, not equal).
* ``problems``: every method or score that raised, or whose maps disagree (Spearman < 0.99). Empty is
  the pass mark; the exit status is 1 otherwise.
"""
from __future__ import annotations

import copy
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))      # runs from a checkout, installed or not

from xai_helpers import config  # noqa: E402

SIZE, N = 64, 6
OPTIONS = {"lime": {"num_samples": 200}, "shap": {"nsamples": 16}, "smoothgrad": {"n_samples": 8},
           "integrated_gradients": {"steps": 16}, "expected_gradients": {"nsamples": 16},
           "exact_shapley": {"n_segments": 8}, "xrai": {"steps": 8}}


def _agreement(a: np.ndarray, b: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    top = np.abs(b).max()
    rho = spearmanr(a.ravel(), b.ravel()).statistic if a.std() > 0 and b.std() > 0 else float(np.array_equal(a, b))
    return {"rel_max_diff": float(np.abs(a - b).max() / top) if top > 0 else float(np.abs(a).max()),
            "spearman": round(float(rho), 5)}


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, round(time.perf_counter() - t, 3)


def _planted(device):
    from xai_helpers.models import build_model
    from xai_helpers.synthetic import make_planted
    from xai_helpers.training import TensorLoader, fit, images_to_tensor

    ds = make_planted(n=256, size=SIZE, kind="skin", artifact=None, seed=0)
    px = ds.images.reshape(-1, 3).astype(np.float32) / 255
    mean, std = tuple(float(v) for v in px.mean(0)), tuple(float(v) for v in px.std(0))
    x = images_to_tensor(ds.images, mean, std)
    torch.manual_seed(0)
    model = build_model("small_cnn", 2, class_names=list(ds.class_names), task="binary", input_size=SIZE,
                        mean=mean, std=std, width=16)
    hist, secs = _timed(lambda: fit(model, TensorLoader(x[32:], ds.labels[32:], batch_size=32, shuffle=True,
                                                        drop_last=True),
                                    TensorLoader(x[:32], ds.labels[:32], batch_size=64), task="binary", epochs=3,
                                    lr=3e-3, progress=False, verbose=False, device=device))
    return model.eval(), ds, x, {"best_val_auc": round(float(hist["best_val_auc"]), 4), "seconds": secs}


def _compare_methods(models, x, methods, problems, label):
    from xai_helpers.explain import explain

    rows = {}
    for method in methods:
        try:
            maps, secs = {}, {}
            for dev, m in models.items():
                xd = x.to(next(m.parameters()).device)
                exp, secs[dev] = _timed(lambda: explain(m, xd, 1, method, seed=0, **OPTIONS.get(method, {})))
                maps[dev] = np.asarray(exp.maps)
            agree = _agreement(maps["device"], maps["cpu"])
            rows[method] = {"seconds_device": secs["device"], "seconds_cpu": secs["cpu"], **agree}
            if not agree["spearman"] >= 0.99:
                problems.append(f"{label}/{method}: device maps differ from the CPU's (Spearman {agree['spearman']})")
        except Exception as err:                        # report every failure, go on with the next method
            rows[method] = {"error": f"{type(err).__name__}: {err}"[:300]}
            problems.append(f"{label}/{method}: {type(err).__name__}: {str(err)[:200]}")
            traceback.print_exc()
    return rows


def _scores(models, ds, x, idx, problems):
    from xai_helpers.evaluation import faithfulness as F
    from xai_helpers.evaluation import robustness as R
    from xai_helpers.evaluation import sanity as S
    from xai_helpers.explain import explain

    out = {}
    cases = {
        "deletion": lambda m, xd, mp: F.deletion(m, xd, mp, 1, steps=16).auc(),
        "insertion": lambda m, xd, mp: F.insertion(m, xd, mp, 1, steps=16).auc(),
        "sic": lambda m, xd, mp: F.pic_curves(m, ds.images[idx], mp, 1, min_pred=0.0)["sic"].auc,
        "max_sensitivity": lambda m, xd, mp: R.max_sensitivity(m, xd, 1, "gradcam", n_samples=4),
        "model_randomisation": lambda m, xd, mp: S.model_randomisation(m, xd, 1, "gradcam", keep_maps=False,
                                                                      which=("spearman",)).final(),
    }
    for name, fn in cases.items():
        try:
            vals = {}
            for dev, m in models.items():
                xd = x.to(next(m.parameters()).device)
                mp = np.asarray(explain(m, xd, 1, "gradcam").maps)
                before = [p.detach().clone() for p in m.parameters()]
                vals[dev] = np.asarray(fn(m, xd, mp), np.float64)
                if any(not torch.equal(a, b) for a, b in zip(before, m.parameters())) or m.training:
                    problems.append(f"score {name} changed the model on {dev}")
            diff = float(np.nanmax(np.abs(vals["device"] - vals["cpu"])))
            out[name] = {"device": np.round(vals["device"], 4).tolist(), "cpu": np.round(vals["cpu"], 4).tolist(),
                         "max_abs_diff": diff}
            if not diff <= 0.05:
                problems.append(f"score {name}: device and CPU differ by {diff:.3g}")
        except Exception as err:
            out[name] = {"error": f"{type(err).__name__}: {err}"[:300]}
            problems.append(f"score {name}: {type(err).__name__}: {str(err)[:200]}")
            traceback.print_exc()
    return out


def main() -> int:
    import torchvision

    from xai_helpers.explain import available_methods
    from xai_helpers.model_info import describe_model

    device = config.get_device()
    problems: list[str] = []
    report = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
              "name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "tf32_conv": bool(torch.backends.cudnn.allow_tf32) if device.type == "cuda" else None}
    if device.type == "cpu":
        report["note"] = "no accelerator found (or XAI_DEVICE=cpu): the comparison is CPU against CPU"

    dev_model, ds, x_all, report["training_device"] = _planted(device)
    cpu_model, _, _, report["training_cpu"] = _planted("cpu")
    idx = np.flatnonzero(ds.labels == 1)[:N]
    x = x_all[idx]
    # the same weights on both devices: the maps differ only by where they were computed
    ref = copy.deepcopy(dev_model).to("cpu").eval()
    models = {"device": dev_model.to(device), "cpu": ref}
    report["methods"] = _compare_methods(models, x, list(available_methods()), problems, "small_cnn")
    report["scores"] = _scores(models, ds, x, idx, problems)

    torch.manual_seed(0)
    rn = describe_model(torchvision.models.resnet18(num_classes=2).eval(), class_names=["a", "b"], task="binary",
                        mean=(0.5,) * 3, std=(0.25,) * 3, cam_layer="layer4")
    report["resnet18"] = _compare_methods({"device": copy.deepcopy(rn).to(device), "cpu": rn}, torch.randn(4, 3, 96, 96),
                                          ["gradcam", "lrp", "integrated_gradients"], problems, "resnet18")
    try:
        from xai_helpers.models import build_model

        lite = build_model("efficientnet_lite0", 2, pretrained=True, class_names=["a", "b"], task="binary",
                           input_size=128).eval()
        report["efficientnet_lite0"] = _compare_methods({"device": copy.deepcopy(lite).to(device), "cpu": lite},
                                                        torch.randn(4, 3, 128, 128), ["gradcam", "lrp",
                                                                                      "integrated_gradients"],
                                                        problems, "efficientnet_lite0")
    except ImportError as err:
        report["efficientnet_lite0"] = f"skipped: {err}"
    report["problems"] = problems
    print(json.dumps(report, indent=1, default=str))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
