"""Benchmark: the full-mode network (multi-scale EfficientNet-Lite0, 192 px) in the default memory layout and
channels-last (what ``models.use_fast_layout`` applies to EfficientNet on a CPU), on this machine.

    python tests/benchmarks/bench_layout.py [--images 4] [--rounds 3]

Times a batched forward pass (no grad), a forward + backward to the input, and explain() with Grad-CAM,
SmoothGrad, Integrated Gradients, LRP and occlusion, each ``--rounds`` times in alternation (default
layout, then channels-last) on the same ImageNet-pretrained weights, and prints one JSON object: the
median seconds of each and their ratio (default / channels-last: above 1 means channels-last is faster),
and the largest difference of the maps relative to their range.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
import warnings

import numpy as np
import torch

from xai_helpers.explain import explain
from xai_helpers.models import build_model, use_fast_layout

SIZE = 192
METHODS = ("gradcam", "smoothgrad", "integrated_gradients", "lrp", "occlusion")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(n_images: int = 4, rounds: int = 3) -> dict:
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    plain = build_model("efficientnet_lite0_ms", 2, pretrained=True, input_size=SIZE)
    with torch.no_grad():
        for head in plain.heads:
            head.weight.normal_(0, 0.05)
    fast = use_fast_layout(copy.deepcopy(plain))
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.randn(n_images, 3, 12, 12, generator=g), size=(SIZE, SIZE),
                                        mode="bilinear", align_corners=False)
    xb = x.repeat(8, 1, 1, 1)                          # 8 x n_images images for the plain passes
    targets = [i % 2 for i in range(n_images)]

    def forward(m):
        with torch.no_grad():
            return m(xb)

    def backward(m):
        xx = xb.clone().requires_grad_(True)
        m(xx)[:, 1].sum().backward()
        return xx.grad

    cases = {"forward (no grad)": forward, "forward + backward": backward}
    cases.update({f"explain {name}": (lambda name: lambda m: explain(m, x, targets, name).maps)(name)
                  for name in METHODS})
    out = {"platform": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "size": SIZE, "images": n_images, "rounds": rounds, "results": {}}
    for name, fn in cases.items():
        fn(plain), fn(fast)                            # warm-up: first calls allocate, build caches
        t_plain, t_fast = [], []
        for _ in range(rounds):
            s, a = _timed(lambda: fn(plain))
            t_plain.append(s)
            s, b = _timed(lambda: fn(fast))
            t_fast.append(s)
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        rng = float(np.abs(a).max()) or 1.0
        out["results"][name] = {"default_s": round(statistics.median(t_plain), 3),
                                "channels_last_s": round(statistics.median(t_fast), 3),
                                "speedup": round(statistics.median(t_plain) / statistics.median(t_fast), 2),
                                "max_rel_difference": float(f"{np.abs(a - b).max() / rng:.2g}")}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(run(args.images, args.rounds), indent=1))
