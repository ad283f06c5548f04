"""Benchmark: seconds per image of every explanation-quality score, and its ratio to its compute floor.

    python tests/benchmarks/bench_evaluation.py [--sizes 64 128] [--images 4]

The *compute floor* of a score is the model passes it cannot avoid, timed in the same run as plain
batched passes of the same shapes (batch ``BATCH``):

==========================  ===================================================================
score                       floor
==========================  ===================================================================
deletion, insertion,        forward of N x (steps + 1) images
pixel_flipping (AOPC)
pic (AIC + SIC)             forward of N x (thresholds + 2) images, plus the lossless WebP
                            compression of each (the information estimate, PAIR's settings); the
                            linear interpolation (Delaunay) of each image is overhead
max_sensitivity,            Grad-CAM's forward + backward (logit -> layer4 activations) of
                            N x (samples + 1) images
local_lipschitz
infidelity                  forward of N x (samples + 1) images
model_randomisation         (layers + 1) Grad-CAM explanations of N images, timed as explain()
                            calls (bench_explain times Grad-CAM against its own floor); the deep
                            copy, re-initialisation and similarity measures (Spearman, SSIM,
                            HOG) are the overhead measured here
==========================  ===================================================================

Target: <= 1.5x the floor. Model: a random ResNet-18 (2 outputs). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torchvision

from xai_helpers.evaluation import faithfulness as F
from xai_helpers.evaluation import robustness as R
from xai_helpers.evaluation import sanity as S
from xai_helpers.explain import explain
from xai_helpers.model_info import describe_model

BATCH = 64
STEPS, SAMPLES = 32, 8


def _model():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=2).eval()
    return describe_model(m, class_names=["benign", "malignant"], task="binary", mean=(0.5,) * 3, std=(0.25,) * 3,
                          cam_layer="layer4")


def _best(fn, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _forward_floor(model, x, rows: int) -> float:
    """Seconds for ``rows`` images through the model in batches of BATCH (no grad)."""
    xr = x.repeat(-(-rows // len(x)), 1, 1, 1)[:rows].contiguous()

    def run():
        with torch.no_grad():
            for b in range(0, rows, BATCH):
                model(xr[b:b + BATCH])
    return _best(run)


def _backward_floor(model, x, rows: int) -> float:
    """Seconds for ``rows`` images forward + backward from the logit to the CAM layer's activations
    (what Grad-CAM needs: no weight gradients, no backward below the layer), batches of BATCH."""
    xr = x.repeat(-(-rows // len(x)), 1, 1, 1)[:rows].contiguous()
    acts = []
    hook = model.layer4.register_forward_hook(lambda m, i, o: acts.append(o))

    def run():
        for b in range(0, rows, BATCH):
            acts.clear()
            with torch.enable_grad():
                out = model(xr[b:b + BATCH])[:, 1].sum()
                torch.autograd.grad(out, acts[0])
    try:
        return _best(run)
    finally:
        hook.remove()


def _compression_floor(imgs, n_per_image: int) -> float:
    """Seconds to WebP-compress each image ``n_per_image`` times: PIC's information estimate."""
    return _best(lambda: [F.compressed_size(a) for a in imgs for _ in range(n_per_image)])


def run(sizes=(64,), n_images: int = 4) -> dict:
    model = _model()
    out = {"platform": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "model": "resnet18", "images": n_images, "steps": STEPS, "samples": SAMPLES, "results": {}}
    for size in sizes:
        with torch.no_grad():
            model(torch.zeros(BATCH, 3, size, size))          # warm-up: first calls allocate
        g = torch.Generator().manual_seed(size)
        imgs = (torch.rand((n_images, size, size, 3), generator=g) * 255).to(torch.uint8).numpy()
        x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
        maps = torch.rand((n_images, size, size), generator=g).numpy()
        n_layers = len(S.randomisable_layers(model))
        per = -(-size * size // STEPS)
        cases = {
            "deletion": (lambda: F.deletion(model, x, maps, 1, per_step=per, batch_size=BATCH),
                         _forward_floor(model, x, n_images * (STEPS + 1))),
            "insertion": (lambda: F.insertion(model, x, maps, 1, per_step=per, batch_size=BATCH),
                          _forward_floor(model, x, n_images * (STEPS + 1))),
            "pixel_flipping": (lambda: F.pixel_flipping(model, x, maps, 1, patch=4, steps=STEPS, batch_size=BATCH),
                               _forward_floor(model, x, n_images * (STEPS + 1))),
            "pic": (lambda: F.pic_curves(model, imgs, maps, 1, min_pred=0.0, batch_size=BATCH),
                    _forward_floor(model, x, n_images * (len(F.PIC_THRESHOLDS) + 2))
                    + _compression_floor(imgs, len(F.PIC_THRESHOLDS) + 2)),
            "max_sensitivity": (lambda: R.max_sensitivity(model, x, 1, "gradcam", n_samples=SAMPLES, batch_size=BATCH),
                                _backward_floor(model, x, n_images * (SAMPLES + 1))),
            "local_lipschitz": (lambda: R.local_lipschitz(model, x, 1, "gradcam", n_samples=SAMPLES, batch_size=BATCH),
                                _backward_floor(model, x, n_images * (SAMPLES + 1))),
            "infidelity": (lambda: R.infidelity(model, x, maps, 1, n_samples=SAMPLES, batch_size=BATCH),
                           _forward_floor(model, x, n_images * (SAMPLES + 1))),
            "model_randomisation": (lambda: S.model_randomisation(model, x, 1, "gradcam", keep_maps=False),
                                    (n_layers + 1) * _best(lambda: explain(model, x, 1, "gradcam"), 3)),
        }
        res = {}
        for name, (fn, floor) in cases.items():
            sec = _best(fn, 3)
            res[name] = {"s_per_image": round(sec / n_images, 4), "floor_s_per_image": round(floor / n_images, 4),
                         "ratio_to_floor": round(sec / floor, 2)}
        out["results"][f"{size}px"] = res
    out["target"] = "ratio_to_floor <= 1.5"
    out["over_target"] = sorted(f"{s}:{k}" for s, r in out["results"].items() for k, v in r.items()
                                if v["ratio_to_floor"] > 1.5)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64])
    ap.add_argument("--images", type=int, default=4)
    args = ap.parse_args()
    print(json.dumps(run(tuple(args.sizes), args.images), indent=1))
