"""Execute every notebook top to bottom on a fresh cache and print seconds and peak memory per notebook.

    python tests/benchmarks/bench_workbook.py                 # full mode: what a class runs (target: < 60 min)
    XAI_FAST=1 python tests/benchmarks/bench_workbook.py      # fast mode: what the tests run (target: < 15 min)
    python tests/benchmarks/bench_workbook.py --only 08 09 --keep-cache DIR --inplace
    python tests/benchmarks/bench_workbook.py --save-dir DIR  # keep the executed notebooks (full-mode results)

Each notebook runs in its own kernel (nbclient), in order, sharing one cache folder (a fresh temporary one
unless ``--keep-cache``), as a class working through the book would: chapter 01 trains the skin models
that later chapters load. Peak memory is the kernel process's peak resident set (ru_maxrss of the
process, asked by one extra cell that is removed again). Prints one JSON object; ``--inplace`` also writes the executed
notebooks back (then run tests/tools/clean_notebooks.py). A fixed CNN workload timed before and after the
notebooks (``calibration_seconds``) tells how fast the machine was during the run, so that runs on
different days compare through ``total_in_calibration_units``.
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


# A fixed CPU workload (a small CNN's training steps on fixed random images), timed in its own process at
# the start and at the end of the run: the same code takes 1.2-2x as long on a busy day on this shared
# machine kind, so two runs of the workbook compare through ``total_seconds / calibration_seconds``.
CALIBRATION = """
import time, torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                          torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                          torch.nn.Flatten(), torch.nn.Linear(64, 2))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 2, (32,))
for _ in range(3):                                   # warm-up
    torch.nn.functional.cross_entropy(net(x), y).backward()
rounds = []
for _ in range(7):                                   # the median of 7 rounds: one busy second does not count
    t0 = time.perf_counter()
    for _ in range(10):
        opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()
    rounds.append(time.perf_counter() - t0)
print(round(sorted(rounds)[3], 3))
"""


def calibrate() -> float | None:
    import subprocess
    try:
        out = subprocess.run([sys.executable, "-c", CALIBRATION], capture_output=True, text=True, timeout=600)
        return float(out.stdout.strip().splitlines()[-1])
    except Exception:                              # a figure to compare runs by, never a reason to fail the run
        return None


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
    cal_start = calibrate()
    print(f"[bench_workbook] calibration workload: {cal_start} s", file=sys.stderr, flush=True)
    rows, t0 = [], time.perf_counter()
    for p in paths:
        rows.append(run_one(p, args.timeout, args.inplace, Path(args.save_dir) if args.save_dir else None))
        print(f"[bench_workbook] {rows[-1]}", file=sys.stderr, flush=True)
    total = time.perf_counter() - t0
    cal_end = calibrate()
    cal = [c for c in (cal_start, cal_end) if c]
    target = 15 * 60 if fast else 60 * 60
    print(json.dumps({"mode": "fast" if fast else "full", "fresh_cache": fresh,
                      "notebooks": rows, "total_seconds": round(total, 1), "target_seconds": target,
                      "meets_target": total <= target and not any(r["error"] for r in rows),
                      # the machine's speed during the run: the fixed workload's seconds at the start and the end
                      "calibration_seconds": {"start": cal_start, "end": cal_end},
                      "total_in_calibration_units": round(total / (sum(cal) / len(cal))) if cal else None},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
