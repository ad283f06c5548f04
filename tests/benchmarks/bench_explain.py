"""Benchmark: seconds per image of every explain() method on a ResNet-18, and its ratio to its compute floor.

    python tests/benchmarks/bench_explain.py [--sizes 64 128 224] [--no-perturbation]

The *compute floor* of a method is the forward/backward passes it cannot avoid, timed in the same
run as plain batched passes of the same shapes:

=====================  ======================================================================
method                 floor
=====================  ======================================================================
gradcam, gradcam++,    one forward + one backward of the batch
layercam, saliency,
input_x_gradient
lrp                    one forward + one forward-and-backward: the ordinary forward gives the
                       activations, and the z+ rule needs its own modified forward (positive weights)
                       whose backward carries the relevance; ``ratio_to_gradient`` is printed too
smoothgrad             forward + backward of n_samples noisy copies (same chunking)
integrated_gradients   forward + backward of steps path points (same chunking)
occlusion              forward of (positions + 1) occluded copies (same chunking)
scorecam               forward of the batch + K masked copies per image (K = layer channels)
random, edges          none (no model call); seconds only
=====================  ======================================================================

Target: every method <= 1.5x its floor. LRP runs by the gradient trick (``backend="ours"``, one
backward pass); zennit's hooks (``backend="library"``) are timed beside it for comparison.
When ``bench_perturbation.py`` (LIME / SHAP / XRAI) is beside this file its ``run(sizes)`` results
are included, and the total for the four core methods (LIME, SHAP, Grad-CAM, LRP) on one 128 px
image is printed. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
import torchvision

from xai_helpers.explain import explain
from xai_helpers.explain.gradients import occlusion_grid
from xai_helpers.model_info import describe_model

# per size: batch of images; options that keep the run short but representative
BATCH = {64: 8, 128: 4, 224: 2}
OPTIONS = {"smoothgrad": dict(n_samples=8), "integrated_gradients": dict(steps=16), "scorecam": dict(batch_size=64)}


def _model():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=2).eval()
    return describe_model(m, class_names=["benign", "malignant"], task="binary", mean=(0.0,) * 3, std=(1.0,) * 3,
                          cam_layer="layer4")


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts) if len(ts) < 3 else statistics.median(ts)


def _fwd(model, x, chunk):
    with torch.no_grad():
        for s in range(0, len(x), chunk):
            model(x[s:s + chunk])


def _fwd_bwd(model, x, t, chunk):
    for s in range(0, len(x), chunk):
        xb = x[s:s + chunk].detach().requires_grad_(True)
        out = model(xb)
        torch.autograd.grad(out.gather(1, t[s:s + chunk, None]).sum(), xb)


def floors(model, x, t, size):
    """Floor function per method (each runs the passes the method needs, nothing else)."""
    n = len(x)
    k = 512                                                   # ResNet-18 layer4 channels (Score-CAM masks)
    sg, ig = OPTIONS["smoothgrad"]["n_samples"], OPTIONS["integrated_gradients"]["steps"]
    patch = max(4, size // 8)
    n_pos = len(occlusion_grid(size, size, patch, max(1, patch // 2)))
    one = lambda: _fwd_bwd(model, x, t, n)                                          # noqa: E731
    xs_sg, xs_ig = x.repeat(sg, 1, 1, 1), x.repeat(ig, 1, 1, 1)
    xs_oc = x.repeat(n_pos, 1, 1, 1)
    ig_chunk = max(1, 128 // n) * n
    f = {m: one for m in ("gradcam", "gradcam++", "layercam", "saliency", "input_x_gradient")}
    f["lrp"] = lambda: (_fwd(model, x, n), _fwd_bwd(model, x, t, n))
    f["smoothgrad"] = lambda: _fwd_bwd(model, xs_sg, t.repeat(sg), 128)
    f["integrated_gradients"] = lambda: _fwd_bwd(model, xs_ig, t.repeat(ig), ig_chunk)
    f["occlusion"] = lambda: (_fwd(model, x, n), _fwd(model, xs_oc, max(1, 128 // n) * n))
    xk = x[:1].repeat(k, 1, 1, 1)
    f["scorecam"] = lambda: (_fwd_bwd(model, x, t, n), [_fwd(model, xk, OPTIONS["scorecam"]["batch_size"])
                                                         for _ in range(n)])
    return f


def run(sizes=(64, 128, 224), repeats: int = 2, methods=None) -> dict:
    warnings.filterwarnings("ignore")
    model = _model()
    methods = methods or ["gradcam", "gradcam++", "layercam", "scorecam", "lrp", "saliency", "input_x_gradient",
                          "smoothgrad", "integrated_gradients", "occlusion", "random", "edges"]
    out = {}
    for size in sizes:
        n = BATCH.get(size, 2)
        torch.manual_seed(1)
        x = torch.randn(n, 3, size, size)
        t = torch.tensor([i % 2 for i in range(n)])
        fl = floors(model, x, t, size)
        for m in methods:
            opts = OPTIONS.get(m, {})
            reps = 1 if m == "scorecam" else repeats
            ours = _time(lambda: explain(model, x, t, m, **opts), reps)
            r = {"s_per_image": round(ours / n, 5), "batch": n}
            if m in fl:
                floor = _time(fl[m], reps)
                r["floor_s_per_image"] = round(floor / n, 5)
                r["ratio_to_floor"] = round(ours / floor, 3)
            if m == "lrp":
                r["ratio_to_gradient"] = round(ours / _time(lambda: _fwd_bwd(model, x, t, n), reps), 3)
                r["zennit_s_per_image"] = round(_time(lambda: explain(model, x, t, m, backend="library"), reps) / n, 5)
            out.setdefault(m, {})[str(size)] = r
    return out


def single_image_128(repeats: int = 3) -> dict:
    """Grad-CAM and LRP on ONE 128 px image (for the four-core-methods total)."""
    model = _model()
    torch.manual_seed(2)
    x = torch.randn(1, 3, 128, 128)
    return {m: round(_time(lambda: explain(model, x, 1, m), repeats), 5) for m in ("gradcam", "lrp")}


def _perturbation(sizes):
    path = Path(__file__).with_name("bench_perturbation.py")
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("bench_perturbation", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        return mod.run(sizes, library=False)
    except TypeError:
        return mod.run(sizes)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-perturbation", action="store_true")
    ap.add_argument("--methods", nargs="+", default=None)
    a = ap.parse_args()
    res = {"machine": f"{platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}",
           "model": "torchvision resnet18 (ImageNet stem), 2 outputs, random init", "options": OPTIONS,
           "methods": run(tuple(a.sizes), a.repeats, a.methods)}
    one = single_image_128()
    res["one_128px_image_s"] = dict(one)
    if not a.no_perturbation:
        pert = _perturbation(tuple(a.sizes))
        if pert is not None:
            res["perturbation"] = pert
            try:
                lime_s = float(pert["lime"]["128"]["ours_s"])
                shap_s = float(pert["shap"]["128"]["ours_s"])
                res["one_128px_image_s"].update(lime=lime_s, shap=shap_s)
                res["four_core_methods_one_128px_image_s"] = round(lime_s + shap_s + one["gradcam"] + one["lrp"], 4)
            except (KeyError, TypeError, ValueError):
                res["four_core_methods_one_128px_image_s"] = None
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
