"""Benchmark: TCAV for one concept against 10 random sets, and the shortcut relevance scorecard.

    python tests/benchmarks/bench_concepts.py [--size 128] [--images 50] [--lime-samples 300]

Trains (seconds) a small CNN on planted skin images with the ink mark on every class-1 training image
(a model that cheats), then times: TCAV of "ink" for class 1 at ``features.2`` with 10 random sets of
30 images, and relevance on the ink mark of ``--images`` ink-marked test images for Grad-CAM, LRP,
LIME and SHAP (expected gradients). Prints one JSON object. Uses a throw-away XAI_CACHE_DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time


def _cheating_model(size: int, seed: int = 0):
    import numpy as np
    import torch

    from xai_helpers.artifacts import make_shortcut_dataset
    from xai_helpers.model_info import describe_model, has_info
    from xai_helpers.models import build_model
    from xai_helpers.synthetic import make_planted
    from xai_helpers.training import TensorLoader, fit, images_to_tensor

    ds = make_planted(n=384, size=size, kind="skin", artifact=None, seed=seed)
    sds = make_shortcut_dataset(ds, "ink", {1: 1.0, 0: 0.0}, seed=seed, avoid="masks")
    px = sds.images.reshape(-1, 3).astype(np.float32) / 255
    mean, std = tuple(float(v) for v in px.mean(0)), tuple(float(v) for v in px.std(0))
    torch.manual_seed(seed)
    model = build_model("small_cnn", 2, class_names=list(ds.class_names), task="binary", input_size=size,
                        mean=mean, std=std, width=16)
    if not has_info(model):
        describe_model(model, class_names=list(ds.class_names), task="binary", mean=mean, std=std,
                       cam_layer="features.3", input_size=size)
    x = images_to_tensor(sds.images, mean, std)
    n_val = len(x) // 8
    fit(model, TensorLoader(x[n_val:], sds.labels[n_val:], batch_size=64, shuffle=True, augment="dermoscopy",
                            drop_last=True),
        TensorLoader(x[:n_val], sds.labels[:n_val], batch_size=256),
        task="binary", epochs=4, lr=3e-3, progress=False, verbose=False, device="cpu")
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--lime-samples", type=int, default=300)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="xai-bench-cache-")
    os.environ["XAI_CACHE_DIR"] = tmp
    try:
        from xai_helpers.artifacts import add_artifact
        from xai_helpers.concepts import random_sets, relevance_scorecard, shortcut_auc, tcav
        from xai_helpers.synthetic import make_planted

        t0 = time.perf_counter()
        model = _cheating_model(args.size)
        train_s = time.perf_counter() - t0
        pool = make_planted(n=300, size=args.size, kind="skin", artifact=None, seed=200)
        ink, _ = add_artifact(pool.images[:40], "ink", seed=9, avoid=pool.masks[:40])
        randoms = random_sets(pool.images, n_sets=10, set_size=30, seed=1)
        cls = pool.images[pool.labels == 1][:50]
        t0 = time.perf_counter()
        res = tcav(model, cls, {"ink": ink}, randoms, "features.2", target=1)["ink"]
        tcav_s = time.perf_counter() - t0

        test = make_planted(n=max(2 * args.images, 64), size=args.size, kind="skin", artifact=None, seed=100)
        imgs, masks = add_artifact(test.images[:args.images], "ink", seed=5, avoid=test.masks[:args.images])
        t0 = time.perf_counter()
        card = relevance_scorecard(model, imgs, masks, methods=("gradcam", "lrp", "lime", "shap"), target=1,
                                   options={"lime": {"num_samples": args.lime_samples}})
        card_s = time.perf_counter() - t0
        auc = shortcut_auc(model, test.images, test.labels, "ink", avoid=test.masks)
        out = {
            "size": args.size, "train_s": round(train_s, 2),
            "tcav": {"concept": "ink", "layer": "features.2", "random_sets": 10, "score": round(res.score, 3),
                     "random_mean": round(float(res.random_scores.mean()), 3), "p_value": res.p_value,
                     "significant": res.significant, "seconds": round(tcav_s, 2)},
            "scorecard": {m: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                          for m, r in card.items()},
            "scorecard_images": int(args.images), "scorecard_s": round(card_s, 2),
            "lime_samples": args.lime_samples, "shortcut_auc": {k: round(v, 4) for k, v in auc.items()},
            "cpus": os.cpu_count(), "threads": int(__import__("torch").get_num_threads()),
            "python": platform.python_version(),
        }
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
