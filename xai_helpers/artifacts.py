"""Acquisition artifacts for dermoscopy images, drawn at random with their masks, and "shortcut" datasets.

Real dermoscopy sets carry things that are not the lesion: rulers, purple ink or surgical-marker
lines, air bubbles in the immersion gel, and the dark circular field of view of the dermatoscope in
the corners. When one of them is more frequent in one class (surgeons mark suspicious lesions, a
clinic with one dermatoscope sees the harder cases), a network can learn the artifact instead of the
lesion: a *shortcut* (Winkler et al., JAMA Dermatol 2019: surgical ink marks raised a CNN's
melanoma score).

    >>> from xai_helpers.artifacts import add_artifact, make_shortcut_dataset
    >>> out, masks = add_artifact(images, "ink", seed=0)          # new arrays; ``images`` untouched
    >>> sds = make_shortcut_dataset(ds, artifact="ink", rate_by_class={1: 0.9, 0: 0.1}, seed=0)
    >>> sds.extra["artifact"], sds.extra["artifact_masks"]      # which images, and where

Every generator is seeded from a local generator (never the global one) and returns the mask of
EXACTLY the pixels it changed: a pixel inside the drawn shape whose rounded value happens to equal
the original is nudged by one grey level, and nothing outside the shape is touched.
:func:`detect_dark_corners` finds the dark field-of-view corners in real images by a stated rule.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from .imageset import ImageSet

ARTIFACTS = ("ruler", "ink", "marker", "bubbles", "dark_corners")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


# --------------------------------------------------------------------------------------------------
# drawing helpers (float32 images (H, W, C) in 0..255)
def _grid(h: int, w: int):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy + 0.5, xx + 0.5


def _colour(rgb, channels: int) -> np.ndarray:
    rgb = np.asarray(rgb, np.float32)
    return rgb if channels == 3 else np.array([float(rgb @ _LUMA)], np.float32)


def _blend(img: np.ndarray, mask: np.ndarray, colour, alpha) -> np.ndarray:
    """Alpha-blend ``colour`` over ``img`` where ``mask``; alpha a scalar or an (H, W) array."""
    a = np.broadcast_to(np.asarray(alpha, np.float32), mask.shape)[..., None] * mask[..., None]
    return img * (1 - a) + _colour(colour, img.shape[-1]) * a


def _segment_distance(yy, xx, pts: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the polyline through ``pts`` (P, 2) of (y, x)."""
    best = np.full(yy.shape, np.inf, np.float32)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx + 1e-6), 0, 1)
        best = np.minimum(best, np.hypot(yy - y0 - t * dy, xx - x0 - t * dx))
    return best


# --------------------------------------------------------------------------------------------------
# the generators: (float image, rng) -> (float image, shape mask)
def _ruler(img, rng):
    """A light strip along one edge with dark tick marks (every ``p`` px, every 5th one long)."""
    h, w = img.shape[:2]
    s = min(h, w)
    edge = int(rng.integers(4))                         # 0 top, 1 bottom, 2 left, 3 right
    width = max(3, int(round(s * rng.uniform(0.07, 0.11))))
    offset = int(round(s * rng.uniform(0.0, 0.05)))
    length = h if edge >= 2 else w
    start = int(rng.integers(0, max(1, int(0.4 * length))))
    stop = start + int(length * rng.uniform(0.6, 1.0))
    yy, xx = _grid(h, w)
    across, along = (yy, xx) if edge < 2 else (xx, yy)
    extent = h if edge < 2 else w
    lo = offset if edge in (0, 2) else extent - offset - width
    band = (across >= lo) & (across < lo + width) & (along >= start) & (along < stop)
    period = max(3, s // 20)
    phase = int(rng.integers(period))
    k = np.floor((along - phase) / period)
    on_tick = ((along - phase) % period) < max(1.0, s / 128)
    depth = np.where(k % 5 == 0, 0.9, 0.5) * width
    inner = (across - lo) if edge in (0, 2) else (lo + width - across)
    ticks = band & on_tick & (inner < depth)
    out = _blend(img, band, (236, 232, 205), rng.uniform(0.65, 0.85))
    out = _blend(out, ticks, (25, 25, 25), 0.9)
    return out, band


def _ink(img, rng):
    """A gentian-violet stroke: a curved (quadratic Bezier) line, 2.5-4.5 % of the side thick."""
    h, w = img.shape[:2]
    s = min(h, w)
    p = rng.uniform(0.05, 0.95, (3, 2)) * np.array([h, w], np.float32)
    t = np.linspace(0, 1, 25, dtype=np.float32)[:, None]
    curve = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t ** 2 * p[2]
    yy, xx = _grid(h, w)
    thick = max(1.5, s * rng.uniform(0.025, 0.045))
    mask = _segment_distance(yy, xx, curve) < thick / 2 + 0.5
    shade = rng.uniform(0.85, 1.1)
    return _blend(img, mask, np.array([95, 45, 130]) * shade, rng.uniform(0.65, 0.85)), mask


def _marker(img, rng):
    """A surgical-marker arc drawn around the middle of the image (120-300 degrees of a circle)."""
    h, w = img.shape[:2]
    s = min(h, w)
    cy, cx = (np.array([h, w]) / 2 + rng.uniform(-0.08, 0.08, 2) * s)
    r = s * rng.uniform(0.3, 0.44)
    a0 = rng.uniform(0, 2 * np.pi)
    span = np.deg2rad(rng.uniform(120, 300))
    ang = a0 + np.linspace(0, span, 30, dtype=np.float32)
    pts = np.stack([cy + r * np.sin(ang), cx + r * np.cos(ang)], 1).astype(np.float32)
    yy, xx = _grid(h, w)
    thick = max(1.5, s * rng.uniform(0.02, 0.035))
    mask = _segment_distance(yy, xx, pts) < thick / 2 + 0.5
    return _blend(img, mask, (30, 40, 95), rng.uniform(0.75, 0.9)), mask


def _bubbles(img, rng):
    """1-4 air bubbles in the gel: a lighter disc with a bright rim and a small highlight."""
    h, w = img.shape[:2]
    s = min(h, w)
    yy, xx = _grid(h, w)
    mask = np.zeros((h, w), bool)
    out = img
    for _ in range(int(rng.integers(1, 5))):
        r = s * rng.uniform(0.04, 0.11)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        d = np.hypot(yy - cy, xx - cx)
        disc = d < r
        rim = disc & (d > r - max(1.0, 0.18 * r))
        spot = np.hypot(yy - (cy - 0.4 * r), xx - (cx - 0.4 * r)) < max(0.8, 0.22 * r)
        out = _blend(out, disc, (255, 255, 255), 0.18)
        out = _blend(out, rim, (250, 250, 250), 0.55)
        out = _blend(out, spot & disc, (255, 255, 255), 0.8)
        mask |= disc
    return out, mask


def _dark_corners(img, rng):
    """The dermatoscope's round field of view: outside a circle (radius 0.5-0.64 of the side,
    centre jittered) the image falls to 3-15 % of its brightness."""
    h, w = img.shape[:2]
    s = min(h, w)
    cy, cx = np.array([h, w]) / 2 + rng.uniform(-0.05, 0.05, 2) * s
    radius = s * rng.uniform(0.5, 0.64)
    yy, xx = _grid(h, w)
    d = np.hypot(yy - cy, xx - cx)
    mask = d > radius
    level = rng.uniform(0.03, 0.15)
    ramp = np.clip((d - radius) / max(1.0, 0.02 * s), 0, 1)          # soft edge, still darker
    factor = 1 - (1 - level) * (0.5 + 0.5 * ramp)
    return np.where(mask[..., None], img * factor[..., None], img), mask


_GENERATORS = {"ruler": _ruler, "ink": _ink, "marker": _marker, "bubbles": _bubbles,
               "dark_corners": _dark_corners}


def _finish(orig: np.ndarray, drawn: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 result that differs from ``orig`` on exactly the pixels of ``mask``."""
    out = np.where(mask[..., None], np.clip(np.round(drawn), 0, 255), orig).astype(np.uint8)
    same = mask & (out == orig).all(-1)
    if same.any():                                       # nudge by one grey level (away from 255)
        c0 = out[..., 0]
        c0[same] = np.where(orig[..., 0][same] < 255, orig[..., 0][same] + 1, 254)
    return out


def _check_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 pixels (0..255), got {images.dtype}; "
                        "artifacts are drawn on the raw images, before normalisation")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, C) or (H, W, C) with C 1 or 3, got {images.shape}")
    if min(images.shape[1:3]) < 16:
        raise ValueError(f"images must be at least 16 px on a side to draw artifacts, got {images.shape[1:3]}")
    return images


def add_artifact(images, artifact: str, seed: int = 0, avoid=None, tries: int = 8):
    """Draw ``artifact`` on every image; returns ``(new_images, masks)`` and never changes ``images``.

    images    uint8 (N, H, W, C) or (H, W, C), C 1 or 3.
    artifact  one of :data:`ARTIFACTS`: "ruler", "ink", "marker", "bubbles", "dark_corners".
    seed      image ``i`` draws from ``SeedSequence(seed).spawn(...)[i]``: the same seed gives the same
              pixels, and image ``i``'s artifact does not depend on how many images come with it.
    avoid     optional bool (N, H, W) (e.g. lesion or evidence masks): up to ``tries`` placements are
              drawn and the one overlapping ``avoid`` least is kept.
    masks     bool (N, H, W): exactly the pixels that differ from the input.
    """
    if artifact not in _GENERATORS:
        raise ValueError(f"unknown artifact {artifact!r}; choose one of {ARTIFACTS}")
    single = np.asarray(images).ndim == 3
    images = _check_images(images)
    if avoid is not None:
        avoid = np.asarray(avoid, bool).reshape(len(images), *images.shape[1:3])
    out = np.empty_like(images)
    masks = np.zeros(images.shape[:3], bool)
    for i, seq in enumerate(np.random.SeedSequence(int(seed)).spawn(len(images))):
        rng = np.random.default_rng(seq)
        img = images[i].astype(np.float32)
        best = None
        for _ in range(tries if avoid is not None else 1):
            drawn, mask = _GENERATORS[artifact](img, rng)
            overlap = int((mask & avoid[i]).sum()) if avoid is not None else 0
            if best is None or overlap < best[0]:
                best = (overlap, drawn, mask)
            if overlap == 0:
                break
        _, drawn, mask = best
        out[i] = _finish(images[i], drawn, mask)
        masks[i] = mask
    return (out[0], masks[0]) if single else (out, masks)


# --------------------------------------------------------------------------------------------------
# shortcut datasets
def _class_index(ds: ImageSet, key) -> int:
    if isinstance(key, str):
        if key not in ds.class_names:
            raise ValueError(f"unknown class {key!r} in rate_by_class; classes are {list(ds.class_names)}")
        return list(ds.class_names).index(key)
    k = int(key)
    if not 0 <= k < ds.num_classes:
        raise ValueError(f"class {k} in rate_by_class is out of range 0..{ds.num_classes - 1}")
    return k


def make_shortcut_dataset(ds: ImageSet, artifact: str = "ink", rate_by_class: dict | None = None,
                          seed: int = 0, avoid=None) -> ImageSet:
    """A copy of ``ds`` in which ``artifact`` is drawn on a chosen share of each class.

    rate_by_class  class index or name -> share of that class's images that get the artifact, e.g.
                   ``{1: 0.9, 0: 0.1}`` (ink on 90 % of melanomas, 10 % of the rest); a class not
                   named gets none. Counts are exact: ``round(rate * n_class)`` images, drawn at random.
    avoid          None, ``"masks"`` (keep away from ``ds.masks``: the lesion / planted evidence), or a
                   bool (N, H, W) array; see :func:`add_artifact`.

    Returns a new ImageSet (``ds`` is not modified) whose ``extra`` holds ``artifact`` (N,) bool,
    ``artifact_masks`` (N, H, W) bool (exactly the changed pixels), ``artifact_kind``,
    ``artifact_rate_by_class``, ``spurious_corr_measured`` (phi with class 1, binary sets) and
    ``clean_images``: the input images themselves (a reference, not a copy), for "remove the artifact"
    counterfactuals. Only for single-label sets (binary or multiclass).
    """
    if ds.task == "multilabel":
        raise ValueError("shortcut datasets need one label per image (binary or multiclass), not multilabel")
    if rate_by_class is None:
        raise ValueError("say how often each class gets the artifact, e.g. rate_by_class={1: 0.9, 0: 0.1}")
    old = ds.extra.get("artifact_masks")
    if old is not None and np.asarray(old).any():
        raise ValueError(f"{ds.name!r} already carries artifacts (extra['artifact_masks']); start from a clean "
                         "set, e.g. make_planted(..., artifact=None)")
    rates = {}
    for key, rate in rate_by_class.items():
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"rate for class {key!r} must be in [0, 1], got {rate}")
        rates[_class_index(ds, key)] = float(rate)
    if isinstance(avoid, str):
        if avoid != "masks" or ds.masks is None:
            raise ValueError("avoid='masks' needs a dataset with masks; pass None or a bool (N, H, W) array")
        avoid = ds.masks
    pick = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    has = np.zeros(len(ds), bool)
    for k in sorted(rates):
        members = np.flatnonzero(ds.labels == k)
        n_art = int(round(rates[k] * len(members)))
        has[pick.choice(members, size=n_art, replace=False)] = True
    images, masks = ds.images.copy(), np.zeros(ds.images.shape[:3], bool)
    idx = np.flatnonzero(has)
    if len(idx):
        # image i draws from seed sequence i of the whole set, so a subset reproduces the same artifact
        seqs = np.random.SeedSequence([int(seed), 2]).spawn(len(ds))
        for i in idx:
            av = None if avoid is None else np.asarray(avoid)[i:i + 1]
            images[i], masks[i] = add_artifact(ds.images[i:i + 1], artifact,
                                               seed=int(seqs[i].generate_state(1)[0]), avoid=av)
    pos = ds.labels == 1
    phi = float(np.corrcoef(has, pos)[0, 1]) if 0 < has.sum() < len(ds) and 0 < pos.sum() < len(ds) else 0.0
    rate_txt = ", ".join(f"{ds.class_names[k]} {r:.0%}" for k, r in sorted(rates.items()))
    extra = dict(ds.extra, artifact=has, artifact_masks=masks, artifact_kind=artifact,
                 artifact_rate_by_class=dict(rates), spurious_corr_measured=phi, clean_images=ds.images,
                 shortcut_seed=int(seed))
    return replace(ds, name=f"{ds.name}+{artifact}", images=images, extra=extra,
                   description=f"{ds.description} SHORTCUT VERSION: '{artifact}' artifacts drawn on {rate_txt} "
                               f"(xai_helpers.artifacts, seed={seed}).")


def save_shortcut_dataset(sds: ImageSet, name: str | None = None, root=None) -> Path:
    """Write a shortcut set to ``<cache dir>/shortcuts/<name>.npz`` and return the path.

    The cache dir is :func:`xai_helpers.config.cache_dir` (``XAI_CACHE_DIR`` when set): the workbook's
    own folder for prepared arrays, never a dataset's folder, which stays as it was downloaded.
    """
    from . import config

    if "artifact_masks" not in sds.extra:
        raise ValueError("not a shortcut set: make it with make_shortcut_dataset first")
    if name is not None and (Path(name).name != name or not name):
        raise ValueError(f"name must be a plain file name without folders, got {name!r}")
    folder = config.cache_dir(root) / "shortcuts"     # XAI_CACHE_DIR or the work dir: never a dataset folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or sds.name.replace('/', '_')}.npz"
    meta = dict(name=sds.name, source=sds.source, description=sds.description, task=sds.task,
                class_names=list(sds.class_names), artifact_kind=sds.extra["artifact_kind"],
                artifact_rate_by_class={str(k): v for k, v in sds.extra["artifact_rate_by_class"].items()},
                shortcut_seed=sds.extra.get("shortcut_seed"))
    arrays = dict(images=sds.images, labels=sds.labels, groups=sds.groups.astype(str), ids=sds.ids.astype(str),
                  artifact=sds.extra["artifact"], artifact_masks=sds.extra["artifact_masks"],
                  meta=np.array(json.dumps(meta)))
    if sds.masks is not None:
        arrays["masks"] = sds.masks
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def load_shortcut_dataset(path) -> ImageSet:
    """Read a file written by :func:`save_shortcut_dataset` (without ``clean_images``)."""
    with np.load(Path(path), allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        a = {k: f[k] for k in f.files if k != "meta"}
    return ImageSet(name=meta["name"], source=meta["source"], description=meta["description"],
                    images=a["images"], labels=a["labels"], task=meta["task"], class_names=meta["class_names"],
                    groups=a["groups"], ids=a["ids"], masks=a.get("masks"),
                    extra=dict(artifact=a["artifact"], artifact_masks=a["artifact_masks"],
                               artifact_kind=meta["artifact_kind"], shortcut_seed=meta["shortcut_seed"],
                               artifact_rate_by_class={int(k): v for k, v in meta["artifact_rate_by_class"].items()}))


# --------------------------------------------------------------------------------------------------
# finding dark corners in real images
def detect_dark_corners(images, threshold: float = 0.2, corner: float = 0.03, min_area: float = 0.002) -> np.ndarray:
    """Masks of the dark field-of-view corners of dermoscopy images, by one stated rule.

    A pixel is dark when its luminance ``0.299 R + 0.587 G + 0.114 B`` (grey: its value), in [0, 1],
    is below ``threshold``. A dark corner is an 8-connected dark region that reaches into one of the
    four corner squares (side ``corner`` of the image side, at least 1 px) and covers at least
    ``min_area`` of the image. A dark lesion only counts if it runs into a corner.

    Returns bool (N, H, W) (or (H, W) for one image).
    """
    from scipy import ndimage

    single = np.asarray(images).ndim == 3
    images = _check_images(images)
    if not 0 < threshold < 1:
        raise ValueError(f"threshold is a luminance in (0, 1), got {threshold}")
    luma = images[..., 0] if images.shape[-1] == 1 else images.astype(np.float32) @ _LUMA
    dark = luma / 255.0 < threshold
    n, h, w = dark.shape
    c = max(1, int(round(corner * min(h, w))))
    out = np.zeros_like(dark)
    for i in range(n):
        lab, _ = ndimage.label(dark[i], structure=np.ones((3, 3)))
        at_corner = np.unique(np.concatenate([lab[:c, :c].ravel(), lab[:c, -c:].ravel(),
                                              lab[-c:, :c].ravel(), lab[-c:, -c:].ravel()]))
        for k in at_corner[at_corner > 0]:
            region = lab == k
            if region.mean() >= min_area:
                out[i] |= region
    return out[0] if single else out


def detect_burned_in_markers(grey, bright: int = 175, contrast: int = 70, radius: int = 6, border: float = 0.25,
                             edge: int = 3, min_px: int = 3, max_side: float = 0.12, progress: bool = False):
    """Masks of the text and laterality markers burned into chest films, by one stated rule.

    ``grey``: uint8 (N, H, W) or (N, H, W, 1) films (the rule's numbers are for 256 px). A pixel is a
    marker pixel when it is bright (>= ``bright``) and stands out from its surroundings (>= ``contrast``
    grey levels above a morphological opening with a square of side ``2 * radius + 1``: part of a thin
    bright structure). A connected group (8-connected) of such pixels counts when it has at least
    ``min_px`` pixels, fits in a box of ``max_side`` of the image side, lies wholly within the outer
    ``border`` of the image and keeps off its outermost ``edge`` pixels (the scanner's frame lines).
    It also finds ECG clips, wires and a bright rib at the border: look at what it marks (chapter 11).
    Returns bool (N, H, W).
    """
    from scipy import ndimage
    from tqdm.auto import tqdm

    grey = np.asarray(grey)
    if grey.ndim == 4 and grey.shape[-1] == 1:
        grey = grey[..., 0]
    if grey.dtype != np.uint8 or grey.ndim != 3:
        raise ValueError(f"detect_burned_in_markers needs uint8 grey films (N, H, W) or (N, H, W, 1); got "
                         f"{grey.dtype} {grey.shape}")
    n, h, w = grey.shape
    b = int(round(border * min(h, w)))
    near = np.zeros((h, w), bool)
    near[:b] = near[-b:] = True
    near[:, :b] = near[:, -b:] = True
    out = np.zeros(grey.shape, bool)
    for i in tqdm(range(n), desc="markers", leave=False, disable=not progress):
        x = grey[i].astype(np.float32)
        background = ndimage.grey_opening(x, size=(2 * radius + 1, 2 * radius + 1))
        lab, _ = ndimage.label((x >= bright) & (x - background >= contrast), structure=np.ones((3, 3)))
        for j, (sy, sx) in enumerate(ndimage.find_objects(lab), 1):
            comp = lab[sy, sx] == j
            if (comp.sum() < min_px or max(comp.shape) > max_side * min(h, w)
                    or sy.start < edge or sx.start < edge or sy.stop > h - edge or sx.stop > w - edge
                    or not near[sy, sx][comp].all()):
                continue
            out[i][sy, sx] |= comp
    return out


def fill_with_surrounding_median(images, masks, ring: int | None = None) -> np.ndarray:
    """Remove what ``masks`` cover: each masked pixel of an image takes the per-channel median of the
    unmasked pixels within ``ring`` px of its mask (default: 1/16 of the side, at least 2), or of the
    whole unmasked image when that ring is empty. uint8 (N, H, W, C) in, a new array out (the input is
    not changed); images with an empty mask come back unchanged."""
    from scipy import ndimage

    images, masks = np.asarray(images), np.asarray(masks, bool)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"fill_with_surrounding_median needs uint8 images (N, H, W, C); got {images.dtype} "
                         f"{images.shape}")
    if masks.shape != images.shape[:3]:
        raise ValueError(f"masks must be (N, H, W) = {images.shape[:3]}, one per image; got {masks.shape}")
    out = images.copy()
    ring = ring or max(2, images.shape[1] // 16)
    for i in range(len(images)):
        if not masks[i].any():
            continue
        if masks[i].all():
            raise ValueError(f"image {i}: the mask covers the whole image, so nothing is left to fill it from")
        band = ndimage.binary_dilation(masks[i], iterations=ring) & ~masks[i]
        src = band if band.any() else ~masks[i]
        out[i][masks[i]] = np.median(images[i][src], axis=0).astype(np.uint8)
    return out


__all__ = ["ARTIFACTS", "add_artifact", "make_shortcut_dataset", "save_shortcut_dataset", "load_shortcut_dataset",
           "detect_dark_corners", "detect_burned_in_markers", "fill_with_surrounding_median"]
