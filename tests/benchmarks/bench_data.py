"""Benchmark: HAM10000 at 64x64, first load (decode + resize + cache write) vs second load (cache).

    XAI_DATA_ROOT=../shared/data python tests/benchmarks/bench_data.py [--size 64] [--dataset ham10000]

Uses a fresh temporary XAI_CACHE_DIR (removed afterwards), so the first load really reads the JPEGs.
Prints one JSON object. Target (issue 2): second load < 2 s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="ham10000")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="xai-bench-cache-")
    os.environ["XAI_CACHE_DIR"] = tmp
    try:
        from xai_helpers import config, data

        t0 = time.perf_counter()
        first = data.load(args.dataset, size=args.size)
        t1 = time.perf_counter()
        second = data.load(args.dataset, size=args.size)
        t2 = time.perf_counter()
        third = data.load(args.dataset, size=args.size)
        t3 = time.perf_counter()
        same = bool((first.images == second.images).all() and (first.labels == second.labels).all())
        cache_mb = sum(p.stat().st_size for p in config.cache_dir().glob("*.npz")) / 2 ** 20
        out = {
            "dataset": args.dataset, "size": args.size, "images": len(first),
            "first_load_s": round(t1 - t0, 3), "second_load_s": round(t2 - t1, 3),
            "third_load_s": round(t3 - t2, 3),
            "speedup_first_over_second": round((t1 - t0) / max(t2 - t1, 1e-9), 1),
            "second_under_2s": (t2 - t1) < 2.0, "identical": same and bool((third.images == first.images).all()),
            "cache_mb": round(cache_mb, 1), "data_root": str(config.data_root()),
            "cpus": os.cpu_count(), "python": platform.python_version(),
        }
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
