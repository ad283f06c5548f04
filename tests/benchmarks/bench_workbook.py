"""Execute every notebook top to bottom on a fresh cache and print seconds and peak memory per notebook.

    python tests/benchmarks/bench_workbook.py                 # full mode: what a class runs (target: < 60 min)
    XAI_FAST=1 python tests/benchmarks/bench_workbook.py      # fast mode: what the tests run (target: < 15 min)
    python tests/benchmarks/bench_workbook.py --only 08 09 --keep-cache DIR --inplace
    python tests/benchmarks/bench_workbook.py --save-dir DIR  # keep the executed notebooks (full-mode results)

Each notebook runs in its own kernel (nbclient), in order, sharing one cache folder (a fresh temporary one
unless ``--keep-cache``), as a class working through the book would: chapter 01 trains the skin models
that later chapters load. Peak memory is the kernel process's peak resident set (ru_maxrss of the
process, asked by one extra cell that is removed again). Prints one JSON object; ``--inplace`` also writes the executed
notebooks back (then run tests/tools/clean_notebooks.py).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
PEAK_CELL = "import resource; print('peak_rss_kb=%d' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"


def run_one(path: Path, timeout: int, inplace: bool, save_dir: Path | None = None) -> dict:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # one extra cell, removed again, asks the kernel for its own peak resident memory
    nb.cells.append(nbformat.v4.new_code_cell(PEAK_CELL))
    t0 = time.perf_counter()
    error, peak_mb = None, None
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    except Exception as err:                      # report and go on: the next chapters may still run
        error = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    seconds = time.perf_counter() - t0
    probe = nb.cells.pop()
    for out in probe.get("outputs", []):
        if out.get("output_type") == "stream" and "peak_rss_kb=" in out.get("text", ""):
            peak_mb = round(int(out["text"].split("peak_rss_kb=")[1].split()[0]) / 1024, 1)
    if inplace and error is None:
        nbformat.write(nb, path)
    if save_dir is not None:                      # also after an error: the cells that ran show what happened
        save_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save_dir / path.name)
    return {"notebook": path.name, "seconds": round(seconds, 1), "peak_rss_mb": peak_mb, "error": error}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="notebook number prefixes, e.g. 08 09")
    ap.add_argument("--keep-cache", help="use this cache folder instead of a fresh temporary one")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    ap.add_argument("--inplace", action="store_true", help="write the executed notebooks back")
    ap.add_argument("--save-dir", help="also write each executed notebook into this folder (never the data root)")
    args = ap.parse_args(argv)
    # a notebook whose kernel dies is recorded and the next one runs, so SIGTERM must stop the whole run
    # (as Ctrl-C does), not just the kernel: otherwise a "killed" bench goes on timing the next chapters
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        paths = [p for p in paths if p.name[:2] in args.only]
    cache = args.keep_cache or tempfile.mkdtemp(prefix="xai-bench-workbook-")
    # "fresh": nothing prepared in it at the start (a kept folder that starts empty is as fresh as a new one)
    fresh = not Path(cache).exists() or not any(Path(cache).iterdir())
    os.environ["XAI_CACHE_DIR"] = cache          # the kernels inherit it
    fast = os.environ.get("XAI_FAST", "").lower() in ("1", "true", "yes", "on")
    rows, t0 = [], time.perf_counter()
    for p in paths:
        rows.append(run_one(p, args.timeout, args.inplace, Path(args.save_dir) if args.save_dir else None))
        print(f"[bench_workbook] {rows[-1]}", file=sys.stderr, flush=True)
    total = time.perf_counter() - t0
    target = 15 * 60 if fast else 60 * 60
    print(json.dumps({"mode": "fast" if fast else "full", "fresh_cache": fresh,
                      "notebooks": rows, "total_seconds": round(total, 1), "target_seconds": target,
                      "meets_target": total <= target and not any(r["error"] for r in rows)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
