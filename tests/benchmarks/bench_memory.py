"""Benchmark: peak memory and time of the gradient methods on the full-mode network, with the pixel budget
per backward pass (the default) and with the old fixed 128 images per pass.

    python tests/benchmarks/bench_memory.py [--images 8] [--size 192]

Each (method, batch setting) runs in a fresh Python process, so its peak resident memory (ru_maxrss) is its
own: build the two-scale EfficientNet-Lite0 (ImageNet weights, random heads), then explain ``--images``
images with Integrated Gradients (32 steps), SmoothGrad (16 samples) and SHAP expected gradients
(32 samples). Prints one JSON object: per method the peak MB and seconds of both settings, the memory
saved (MB above the process's baseline, i.e. after building the model) and the time ratio
(fixed / budget: above 1 means the budget is also faster). The maps are the same either way
(tests/test_explain.py::test_gradient_methods_keep_a_pixel_budget_per_backward).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

import torch

CHILD = r"""
import json, resource, sys, time, warnings
import torch
from xai_helpers.explain import explain
from xai_helpers.models import build_model
warnings.simplefilter("ignore")
method, batch, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = build_model("efficientnet_lite0_ms", 2, pretrained=True, input_size=size)
with torch.no_grad():
    for head in model.heads:
        head.weight.normal_(0, 0.05)
x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
opts = {"integrated_gradients": {"steps": 32}, "smoothgrad": {"n_samples": 16}, "shap": {"nsamples": 32}}[method]
if batch != "budget":
    opts["batch_size"] = int(batch)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
explain(model, x, [i % 2 for i in range(n)], method, **opts)
print(json.dumps({"seconds": time.perf_counter() - t0, "baseline_mb": base,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def one(method: str, batch: str, n: int, size: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, method, batch, str(n), str(size)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=192)
    args = ap.parse_args(argv)
    from xai_helpers.config import pixel_budget

    rows = {}
    for method in ("integrated_gradients", "smoothgrad", "shap"):
        fixed, budget = one(method, "128", args.images, args.size), one(method, "budget", args.images, args.size)
        rows[method] = {"fixed_128_peak_mb": round(fixed["peak_mb"]), "budget_peak_mb": round(budget["peak_mb"]),
                        "model_baseline_mb": round(budget["baseline_mb"]),
                        "saved_mb": round(fixed["peak_mb"] - budget["peak_mb"]),
                        "fixed_128_seconds": round(fixed["seconds"], 2), "budget_seconds": round(budget["seconds"], 2),
                        "time_ratio_fixed_over_budget": round(fixed["seconds"] / budget["seconds"], 2)}
        print(f"[bench_memory] {method}: {rows[method]}", file=sys.stderr, flush=True)
    print(json.dumps({"images": args.images, "size": args.size, "pixel_budget": pixel_budget(),
                      "images_per_pass": max(1, pixel_budget() // (args.size * args.size)),
                      "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                      "methods": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
