"""Training benchmark: per task, the test metric, the training wall time, images/s and the model.

    python tests/benchmarks/bench_training.py                      # all real tasks, full recipes
    python tests/benchmarks/bench_training.py --tasks pneumonia    # a subset
    python tests/benchmarks/bench_training.py --fast               # the fast-mode recipes

Prints ONE JSON object. Checkpoints go to a temporary XAI_CACHE_DIR (never the data root); the data
comes from XAI_DATA_ROOT. Targets (issue 4), for a 2-core CPU: pneumonia test ROC-AUC >= 0.96 in
<= 5 min; skin_binary (melanoma vs rest, lesion-grouped test split) >= 0.90 in <= 20 min;
skin_7class macro AUC >= 0.92; cxr_multilabel: per-finding AUC, no target.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

TARGETS = {"pneumonia": (0.96, 300), "skin_binary": (0.90, 1200), "skin_7class": (0.92, None),
           "cxr_multilabel": (None, None), "planted_skin": (0.95, 30), "planted_chest": (0.95, 30)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="pneumonia,skin_binary,skin_7class,cxr_multilabel",
                    help="comma-separated names for get_trained_model")
    ap.add_argument("--fast", action="store_true", help="fast-mode recipes")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="cap each fit at this many minutes (recipe default otherwise)")
    args = ap.parse_args(argv)
    os.environ.setdefault("XAI_CACHE_DIR", tempfile.mkdtemp(prefix="xai-bench-"))
    import torch

    from xai_helpers import config
    from xai_helpers.training import get_trained_model

    threads = config.set_cpu_threads(args.threads)
    out = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": threads, "device": str(config.get_device()),
                       "load_avg_at_start": list(os.getloadavg()), "torch": torch.__version__,
                       "note": "other processes share these cores; timings are pessimistic when load > cores"},
           "fast": args.fast, "max_minutes": args.max_minutes, "tasks": {}}
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        t0 = time.perf_counter()
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            model, info = get_trained_model(name, fast=args.fast, retrain=True, progress=False, verbose=True,
                                            max_minutes=args.max_minutes)
        wall = time.perf_counter() - t0
        h, m = info["history"], info["metrics"]
        target_auc, target_s = TARGETS.get(name, (None, None))
        rec = {"model": info["arch"], "pretrained": bool(info.get("pretrained")), "input_size": info["input_size"],
               "data": f"{info['dataset']} ({info['source']})", "n_train": info.get("n_train"),
               "n_test": info.get("n_test"), "test_auc": round(m["auc_macro"], 4),
               "train_seconds": round(h["train_seconds"], 1), "total_seconds_incl_loading": round(wall, 1),
               "images_per_s": round(h["images_per_s"], 1), "epochs_run": h["epochs_run"],
               "best_val_auc": round(h["best_val_auc"], 4),
               "load_avg_after": round(os.getloadavg()[0], 2)}
        if "feature_seconds" in h:
            rec["frozen_feature_seconds"] = round(h["feature_seconds"], 1)
        for k in ("balanced_accuracy", "accuracy", "sensitivity_at_90_specificity", "ece"):
            if k in m:
                rec[k] = round(m[k], 4)
        if info["task"] == "multilabel" or name == "skin_7class":
            rec["auc_per_class"] = {k: (None if v is None else round(v, 4)) for k, v in m["auc_per_class"].items()}
        if target_auc is not None:
            rec["target_auc"] = target_auc
            rec["meets_auc_target"] = m["auc_macro"] >= target_auc
        if target_s is not None:
            rec["target_seconds"] = target_s
            rec["meets_time_target"] = h["train_seconds"] <= target_s
        out["tasks"][name] = rec
        print(f"[bench] {name}: {json.dumps(rec)}", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
