"""Clean committed notebook outputs: no execution timestamps, no machine paths, at most 1 MB each.

Run from the repository root after re-executing notebooks, with the same environment:
    python tests/tools/clean_notebooks.py notebooks/*.ipynb
``tests/test_notebook_style.py`` fails on a notebook that still needs it.
Each notebook is loaded, cleaned and written back at once (json, indent=1, ensure_ascii=False).
"""
import base64
import io
import json
import re
import os
import sys
from pathlib import Path

MAX_BYTES = 1_000_000
BIG_PNG = 80_000                      # base64 characters; re-encode such images when a notebook is too big
TIMING_KEYS = ("execution", "ExecuteTime")
PATHS = [(re.compile(re.escape(os.environ[v].rstrip("/")) + r"\b"), f"${v}")
         for v in ("XAI_CACHE_DIR", "XAI_DATA_ROOT", "XAI_SHARED_CACHE") if os.environ.get(v, "").strip()]
PATHS += [(re.compile(r"(?<![\w.+/-])(/home/[^/\s'\"<>]+|/root)/\.cache/torch/hub\b"), "<torch hub cache>"),
         (re.compile(r"(?<![\w.+/-])/tmp/[^/\s'\"<>]+"), "<cache>"),
         (re.compile(r"(?<![\w.+/-])(/home/[^/\s'\"<>]+|/root)(?=/)"), "~")]
TEXT_TYPES = ("text/plain", "text/html", "text/markdown", "text/latex")


def neutral(s: str) -> str:
    for pat, repl in PATHS:
        s = pat.sub(repl, s)
    return s


def clean_text(v):
    return [neutral(x) for x in v] if isinstance(v, list) else neutral(v)


def smaller_png(b64: str) -> str:
    from PIL import Image

    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    rgb = im.convert("RGB")
    if im.mode == "RGBA" and im.getchannel("A").getextrema()[0] < 255:
        return b64                                          # transparency: leave it
    q = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    q.save(out, "PNG", optimize=True)
    new = base64.b64encode(out.getvalue()).decode()
    return new if len(new) < len(b64) else b64


def clean(path: Path) -> None:
    nb = json.loads(path.read_text())
    # saved ipywidgets state (progress bars, the comparison widget): hundreds of KB that a reader without a
    # kernel cannot use; the widget's own output carries a PNG of its first view instead
    nb.get("metadata", {}).pop("widgets", None)
    too_big = len(path.read_bytes()) > MAX_BYTES
    for cell in nb["cells"]:
        for k in TIMING_KEYS:
            cell.get("metadata", {}).pop(k, None)
        for o in cell.get("outputs", []):
            if "text" in o:
                o["text"] = clean_text(o["text"])
            if "traceback" in o:
                o["traceback"] = clean_text(o["traceback"])
            data = o.get("data", {})
            for mime in TEXT_TYPES:
                if mime in data:
                    data[mime] = clean_text(data[mime])
            png = data.get("image/png")
            if too_big and isinstance(png, str) and len(png) > BIG_PNG:
                data["image/png"] = smaller_png(png)
    text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    path.write_text(text)
    print(f"{path}: {len(text.encode()) / 1e6:.2f} MB")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        clean(Path(p))
