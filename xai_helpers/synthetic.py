"""Planted-evidence images: we KNOW where the class signal is, so an explanation can be checked.

    >>> from xai_helpers.synthetic import make_planted
    >>> ds = make_planted(n=512, size=64, kind="skin", spurious_corr=0.8, seed=0)
    >>> ds.masks                      # (N, H, W) bool: exactly where the class signal was drawn
    >>> ds.extra["artifact_masks"]    # (N, H, W) bool: the spurious artifact (ruler / ink / marker)

Every image carries ONE evidence region (a disc, 5-15 % of the image, at a random place). What is
drawn inside it depends on the class; its *mean* colour/brightness does not, so the class can only be
read from the texture inside the region, and nowhere else:

========  ===========================================  =============================================
kind      background                                   class patterns in the evidence region
========  ===========================================  =============================================
"skin"    skin-toned, textured, hairs; a brown lesion  0 homogeneous patch, 1 dotted network (dark
          blob, the evidence region sits inside it     dots), 2 streaks, 3 ring
"chest"   grey chest X-ray: body, two dark lungs,      0 ring (look-alike), 1 solid opacity, 2 nodules,
          ribs, spine; region inside a lung            3 streaks
========  ===========================================  =============================================

Class 0 carries a *look-alike* (same size, same mean intensity), so "is there a blob?" does not
separate the classes: a model that gets them right has to look at the region. With ``decoy=False``
class 0 has nothing drawn there and its evidence mask is empty.

The optional spurious artifact (skin: purple ink mark or ruler; chest: a bright corner marker) is
placed away from the evidence (the farthest corner / edge). It is present with a probability that
depends on the label so that the Pearson (phi) correlation between "artifact present" and "label is
class 1" equals ``spurious_corr`` (counts are drawn exactly, so the measured value is close).
Deterministic from ``seed``; vectorised numpy (512 images of 64 px well under a second).
"""
from __future__ import annotations

import numpy as np

from .imageset import ImageSet

PATTERNS = {
    "skin": ["homogeneous", "dotted network", "streaks", "ring"],
    "chest": ["ring (look-alike)", "opacity", "nodules", "streaks"],
}
CLASS_NAMES = {
    "skin": ["benign (homogeneous)", "malignant (dotted network)", "streaks", "ring"],
    "chest": ["normal (ring look-alike)", "opacity", "nodules", "streaks"],
}
ARTIFACTS = {"skin": ("ink", "ruler"), "chest": ("marker",)}
_CHUNK = 256           # images generated per block (fixed, so results do not depend on memory)
_MEAN_FILL = 0.45      # mean "ink" of every pattern inside the evidence disc


# --------------------------------------------------------------------------------------------------
# small vectorised building blocks
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights, so smooth = A @ grid @ A.T."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2) if n_in > 1 else np.zeros(n_out, int)
    frac = pos - lo
    a = np.zeros((n_out, n_in), dtype=np.float32)
    a[np.arange(n_out), lo] = 1 - frac
    if n_in > 1:
        a[np.arange(n_out), lo + 1] += frac
    return a


def _smooth_noise(rng, n: int, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]-ish: a random (cells x cells) grid, bilinearly upsampled."""
    g = rng.standard_normal((n, cells, cells)).astype(np.float32)
    a = _interp_matrix(size, cells)
    return np.einsum("hi,nij,wj->nhw", a, g, a, optimize=True)


def _lift_to_mean(p: np.ndarray, region: np.ndarray, m: float) -> np.ndarray:
    """Rescale patterns p in [0, 1] so that their mean inside each region is m (values stay in [0, 1])."""
    area = region.sum(axis=(1, 2)).clip(1)
    mean = (p * region).sum(axis=(1, 2)) / area
    mean = mean[:, None, None]
    t = np.clip((m - mean) / np.clip(1 - mean, 1e-6, None), 0, 1)          # lift towards 1
    lifted = p + (1 - p) * t
    shrunk = p * (m / np.clip(mean, 1e-6, None))                           # or shrink towards 0
    return np.where(mean < m, lifted, shrunk)


def _pattern(k: int, u, v, d, r, phase, theta, period):
    """Pattern k in [0, 1] over local coordinates (u, v) (pixels from the region centre)."""
    rot_u = u * np.cos(theta) + v * np.sin(theta)
    rot_v = -u * np.sin(theta) + v * np.cos(theta)
    if k == 0:                                           # homogeneous (skin) / ring (chest): see caller
        return np.full_like(d, _MEAN_FILL)
    if k == 1:                                           # dots on a rotated grid
        pu = (rot_u / period + phase[..., 0]) % 1.0 - 0.5
        pv = (rot_v / period + phase[..., 1]) % 1.0 - 0.5
        return (pu ** 2 + pv ** 2 < 0.30 ** 2).astype(np.float32)
    if k == 2:                                           # parallel streaks
        return (np.cos(2 * np.pi * (rot_u / (1.5 * period) + phase[..., 0])) > 0.4).astype(np.float32)
    if k == 3:                                           # ring near the edge of the region
        return np.exp(-(((d / r) - 0.72) / 0.13) ** 2).astype(np.float32)
    raise ValueError(k)


def _solid(d, r):
    """A smooth dome, 1 in the centre, 0 at the rim (the chest 'opacity')."""
    return np.clip(1 - (d / r) ** 2, 0, 1) ** 1.2


# --------------------------------------------------------------------------------------------------
# make_planted, in the order it draws its random numbers: arguments, labels and artifact presence,
# per-image geometry and appearance, then the pixels block by block.
def _check_args(n, size, kind, n_classes, spurious_corr, artifact):
    if kind not in PATTERNS:
        raise ValueError(f"kind must be 'skin' or 'chest', got {kind!r}")
    if not 2 <= int(n_classes) <= 4:
        raise ValueError(f"n_classes must be 2, 3 or 4 (one pattern per class), got {n_classes}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if n < n_classes:
        raise ValueError(f"need at least one image per class: n={n} < n_classes={n_classes}")
    if not -1.0 <= spurious_corr <= 1.0:
        raise ValueError(f"spurious_corr is a correlation in [-1, 1], got {spurious_corr}")
    if artifact == "auto":
        artifact = None if spurious_corr == 0 else ("ink" if kind == "skin" else "marker")
    if artifact is not None and artifact not in ARTIFACTS[kind]:
        raise ValueError(f"artifact for kind={kind!r} must be one of {ARTIFACTS[kind]} or None, got {artifact!r}")
    if artifact is None and spurious_corr != 0:
        raise ValueError("spurious_corr != 0 needs an artifact; pass artifact='auto' or a name")
    return artifact


def _labels_and_artifacts(rng, n, k_cls, artifact, spurious_corr):
    """Balanced shuffled labels, and which images carry the artifact (exact counts, phi = spurious_corr)."""
    labels = rng.permutation(np.arange(n) % k_cls).astype(np.int64)
    has_art = np.zeros(n, dtype=bool)
    if artifact is None:
        return labels, has_art
    pos = labels == 1
    py = pos.mean()
    c = float(spurious_corr)
    if c >= 0:   # p1 - p0 = c and P(artifact) = P(y=1): phi = c exactly
        p1, p0 = py + (1 - py) * c, py * (1 - c)
    else:        # mirror: the artifact goes with the other classes
        p1, p0 = py * (1 + c), py + (1 - py) * (-c)
    p1, p0 = float(np.clip(p1, 0, 1)), float(np.clip(p0, 0, 1))
    for group, p in ((np.flatnonzero(pos), p1), (np.flatnonzero(~pos), p0)):
        k = int(round(p * len(group)))
        has_art[rng.choice(group, size=k, replace=False)] = True
    return labels, has_art


def _geometry(rng, n, size, kind) -> dict:
    """Per image: evidence centre and radius (inside the lesion blob / a lung), pattern phase and angle,
    and the appearance parameters (tone, lesion colour, hairs, blob shape, ink-stroke shape)."""
    s = float(size)
    area_frac = rng.uniform(0.06, 0.12, n) if kind == "skin" else rng.uniform(0.05, 0.09, n)
    radius = np.sqrt(area_frac * s * s / np.pi).astype(np.float32)
    g = {"radius": radius, "blob_c": None, "blob_r": None}
    if kind == "skin":
        g["blob_c"] = (s / 2 + rng.uniform(-0.1, 0.1, (n, 2)) * s).astype(np.float32)
        g["blob_r"] = (rng.uniform(0.28, 0.36, n) * s).astype(np.float32)
        ang = rng.uniform(0, 2 * np.pi, n)
        off = rng.uniform(0, 1, n) ** 0.5 * np.clip(g["blob_r"] - radius * 1.05, 0, None)
        center = g["blob_c"] + np.stack([np.sin(ang), np.cos(ang)], 1) * off[:, None]
    else:
        side = rng.integers(0, 2, n)                     # which lung
        lung_cx = np.where(side == 0, 0.31, 0.69) * s
        lung_cy = np.full(n, 0.52 * s)
        ang = rng.uniform(0, 2 * np.pi, n)
        rr = rng.uniform(0, 1, n) ** 0.5
        center = np.stack([lung_cy + np.sin(ang) * rr * 0.20 * s, lung_cx + np.cos(ang) * rr * 0.07 * s], 1)
    g["center"] = center.astype(np.float32)
    g["phase"] = rng.uniform(0, 1, (n, 2)).astype(np.float32)
    g["theta"] = rng.uniform(0, np.pi, n).astype(np.float32)
    g["tone"] = rng.uniform(0.78, 1.05, n).astype(np.float32)          # skin lightness / exposure
    if kind == "skin":
        g["lesion_col"] = np.array([150, 96, 72], np.float32) * rng.uniform(0.85, 1.1, (n, 1)).astype(np.float32)
        g["n_hair"] = rng.integers(0, 4, n)
        g["hair"] = rng.uniform(0, 1, (n, 3, 4)).astype(np.float32)      # endpoints of up to 3 hairs
        g["blob_wobble"] = rng.uniform(0.05, 0.14, (n, 3)).astype(np.float32)
        g["blob_phase"] = rng.uniform(0, 2 * np.pi, (n, 3)).astype(np.float32)
        g["blob_aspect"] = rng.uniform(0.8, 1.2, n).astype(np.float32)
    g["ink_shape"] = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    return g


def _chest_pattern(k, u, v, d, r, ph, th, period):
    if k == 0:
        return _pattern(3, u, v, d, r, ph, th, period)
    if k == 1:
        return _solid(d, r)
    if k == 2:
        return _pattern(1, u, v, d, r, ph, th, period * 1.3)
    return _pattern(2, u, v, d, r, ph, th, period)


def _evidence(g, sl, lab, k_cls, kind, size, yy, xx, decoy):
    """The class pattern (m, H, W) in [0, 1] inside each evidence disc, and the evidence masks."""
    cy, cx = g["center"][sl, 0, None, None], g["center"][sl, 1, None, None]
    r = g["radius"][sl, None, None]
    u, v = xx - cx, yy - cy
    d = np.sqrt(u ** 2 + v ** 2)
    region = d < r
    ph, th = g["phase"][sl, None, None, :], g["theta"][sl, None, None]
    period = max(3.0, size / 16)
    pat = np.zeros((len(lab), size, size), np.float32)
    for k in range(k_cls):        # evaluate each class's pattern on its images only
        sel = lab == k
        if not sel.any():
            continue
        args = (u[sel], v[sel], d[sel], r[sel], ph[sel], th[sel], period)
        pk = _chest_pattern(k, *args) if kind == "chest" else _pattern(k, *args)
        pk = np.broadcast_to(pk, (int(sel.sum()), size, size)).astype(np.float32)
        if not (kind == "skin" and k == 0):
            pk = _lift_to_mean(pk, region[sel], _MEAN_FILL)
        pat[sel] = pk
    pat = pat * np.clip((r - d) / 1.2, 0, 1)   # soft rim: no hard edge that would give the class away
    evid = region.copy()
    if not decoy:
        pat[lab == 0] = 0
        evid[lab == 0] = False
    return pat, evid


def _corner_artifact(artifact, center, ink_shape, s, yy, xx):
    """Ink (an arc-shaped stroke) or a marker (a bright 'L') at the corner farthest from the evidence."""
    far_y = np.where(center[:, 0] < s / 2, s, 0.0)[:, None, None]
    far_x = np.where(center[:, 1] < s / 2, s, 0.0)[:, None, None]
    dy, dx = yy - far_y, xx - far_x
    if artifact == "ink":
        dc = np.sqrt(dy ** 2 + dx ** 2)
        rad = (0.13 + 0.05 * ink_shape[:, 0])[:, None, None] * s
        art = (np.abs(dc - rad) < max(1.5, s / 30)) & (dc < 0.24 * s)
        ang_c = np.arctan2(np.abs(dy), np.abs(dx))          # cut the arc: a stroke, not a quarter ring
        lo = (0.15 + 0.3 * ink_shape[:, 1])[:, None, None]
        return art & (ang_c > lo) & (ang_c < lo + 0.9)
    mk, off_c = max(3.0, 0.11 * s), 0.06 * s
    my = np.where(far_y > 0, s - off_c - mk, off_c)
    mx = np.where(far_x > 0, s - off_c - mk, off_c)
    box = (yy >= my) & (yy < my + mk) & (xx >= mx) & (xx < mx + mk)
    hole = (yy >= my + mk * 0.3) & (xx >= mx + mk * 0.35)   # a letter-like hole: a marker "L"
    return box & ~hole


def _ruler_artifact(center, s, yy, xx):
    """Tick marks and a line along the image edge farthest from the evidence."""
    dist_edges = np.stack([center[:, 0], s - center[:, 0], center[:, 1], s - center[:, 1]], 1)
    edge = dist_edges.argmax(1)[:, None, None]     # 0 top, 1 bottom, 2 left, 3 right
    along = np.where(edge < 2, xx, yy)
    across = np.where(edge == 0, yy, np.where(edge == 1, s - yy, np.where(edge == 2, xx, s - xx)))
    band, tick_p = max(3.0, 0.10 * s), max(3.0, s / 12)
    tick_len = np.where((np.floor(along / tick_p) % 4) == 0, band, band * 0.55)
    ticks = ((along % tick_p) < max(1.0, s / 64)) & (across < tick_len)
    line = (across >= band - max(1.0, s / 64)) & (across < band)
    return (ticks | line) & (across >= 0.5)


def _artifact_masks(artifact, g, sl, has_art, evid, size, yy, xx):
    m = sl.stop - sl.start
    if artifact in ("ink", "marker"):
        art = _corner_artifact(artifact, g["center"][sl], g["ink_shape"][sl], float(size), yy, xx)
    elif artifact == "ruler":
        art = _ruler_artifact(g["center"][sl], float(size), yy, xx)
    else:
        art = np.zeros((m, size, size), bool)
    return art & has_art[sl][:, None, None] & ~evid


def _hairs(img, g, sl, evid, art, s, yy, xx):
    """Class-neutral clutter: up to three dark straight hairs per image, never over evidence or artifact."""
    for j in range(3):
        idx = np.flatnonzero(g["n_hair"][sl] > j)
        if not len(idx):
            continue
        p0 = g["hair"][sl, j, :2][idx, :, None, None] * s
        p1 = g["hair"][sl, j, 2:][idx, :, None, None] * s
        ddx, ddy = p1[:, 0] - p0[:, 0], p1[:, 1] - p0[:, 1]
        ln2 = ddx ** 2 + ddy ** 2 + 1e-6
        t = np.clip(((xx - p0[:, 0]) * ddx + (yy - p0[:, 1]) * ddy) / ln2, 0, 1)
        dist2 = (xx - p0[:, 0] - t * ddx) ** 2 + (yy - p0[:, 1] - t * ddy) ** 2
        hmask = (dist2 < max(0.5, s / 110) ** 2) & ~evid[idx] & ~art[idx]
        img[idx] = np.where(hmask[..., None], np.array([70, 50, 40], np.float32), img[idx])
    return img


def _skin_pixels(nrng, g, sl, pat, evid, art, artifact, size, yy, xx):
    """Textured skin, a brown lesion blob with an irregular border, the evidence pattern, hairs, artifact."""
    m, s = sl.stop - sl.start, float(size)
    tex = _smooth_noise(nrng, m, size, 6) * 6 + _smooth_noise(nrng, m, size, max(8, size // 4)) * 4
    img = np.array([228, 182, 152], np.float32)[None, None, None, :] * g["tone"][sl, None, None, None] + tex[..., None]
    by, bx = g["blob_c"][sl, 0, None, None], g["blob_c"][sl, 1, None, None]
    bu, bv = (xx - bx) * g["blob_aspect"][sl, None, None], yy - by
    bang = np.arctan2(bv, bu)
    wob = 1 + sum(g["blob_wobble"][sl, j, None, None] * np.sin((j + 2) * bang + g["blob_phase"][sl, j, None, None])
                  for j in range(3))
    bd = np.sqrt(bu ** 2 + bv ** 2) / (g["blob_r"][sl, None, None] * wob)
    blob_alpha = np.clip((1 - bd) / 0.12, 0, 1) * 0.9
    lesion_tex = 1 + _smooth_noise(nrng, m, size, 5) * 0.08
    lcol = g["lesion_col"][sl, None, None, :] * lesion_tex[..., None]
    img = img * (1 - blob_alpha[..., None]) + lcol * blob_alpha[..., None]
    img = img * (1 - 0.9 * pat[..., None]) + np.array([62, 38, 34], np.float32) * (0.9 * pat[..., None])
    img = _hairs(img, g, sl, evid, art, s, yy, xx)
    if artifact == "ink":
        img = np.where(art[..., None], np.array([120, 60, 150], np.float32), img)
    elif artifact == "ruler":
        img = np.where(art[..., None], np.array([35, 35, 35], np.float32), img)
    return img + 3.0 * nrng.standard_normal(img.shape, dtype=np.float32)


def _chest_pixels(nrng, g, sl, pat, art, artifact, size, yy, xx):
    """Body (a bright ellipse), two dark lungs, ribs, spine, the evidence pattern and the marker."""
    m, s = sl.stop - sl.start, float(size)
    be = ((xx - s / 2) / (0.47 * s)) ** 2 + ((yy - 0.55 * s) / (0.52 * s)) ** 2
    body = np.clip((1 - be) / 0.08, 0, 1)
    img = (25.0 + 125.0 * body).astype(np.float32) * g["tone"][sl, None, None]
    lung = np.zeros((m, size, size), np.float32)
    for lx in (0.31, 0.69):
        ld = ((xx - lx * s) / (0.15 * s)) ** 2 + ((yy - 0.52 * s) / (0.30 * s)) ** 2
        lung = np.maximum(lung, np.clip((1 - ld) / 0.25, 0, 1))
    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (yy / (0.11 * s) + 0.15 * ((xx - s / 2) / s) ** 2 * 8))
    img = img - lung * (80 - 14 * ribs)
    img = img + np.exp(-((xx - s / 2) / (0.05 * s)) ** 2) * (yy > 0.1 * s) * 35      # spine
    img = img + _smooth_noise(nrng, m, size, 6) * 7
    img = img + pat * 85.0
    if artifact == "marker":
        img = np.where(art, 245.0, img)
    img += 3.0 * nrng.standard_normal(img.shape, dtype=np.float32)
    return img[..., None]


def _describe(kind, seed, n, size, k_cls, decoy, artifact, spurious_corr, measured):
    return (f"SYNTHETIC planted-evidence '{kind}' images (xai_helpers.synthetic.make_planted, seed={seed}): "
            f"{n} images {size}x{size}, {k_cls} classes; the class is drawn only inside the evidence "
            f"region (masks), class 0 {'carries a look-alike of the same mean intensity' if decoy else 'has nothing there'}; "
            + (f"spurious artifact '{artifact}' with phi correlation {measured:+.2f} to class 1 "
               f"(asked {spurious_corr:+.2f})." if artifact else "no spurious artifact.")
            + " Not medical data: a ground truth for testing explanations.")


def make_planted(n: int = 512, size: int = 64, kind: str = "skin", n_classes: int = 2,
                 spurious_corr: float = 0.0, seed: int = 0, artifact: str | None = "auto",
                 decoy: bool = True, name: str | None = None) -> ImageSet:
    """Planted-evidence images (see the module docstring).

    n, size          number of images and their side in pixels (>= 16).
    kind             "skin" (RGB, dermoscopy-like) or "chest" (grey, X-ray-like).
    n_classes        2 to 4; labels are balanced (each class n // n_classes, the rest spread).
    spurious_corr    phi correlation in [-1, 1] between "artifact present" and "label == 1".
                     0 with artifacts on: present in about half of the images, unrelated to the label.
    artifact         "auto" (skin: "ink", chest: "marker"), "ink", "ruler", "marker", or None for none.
                     "auto" draws no artifacts when spurious_corr == 0.
    decoy            class 0 carries a look-alike of the same mean intensity (default); False: nothing.
    seed             everything is a deterministic function of the arguments.

    Returns an ImageSet (source "synthetic") with ``masks`` = evidence masks, and in ``extra``:
    ``artifact`` (N,) bool, ``artifact_masks`` (N, H, W) bool, ``evidence_center`` (N, 2) (y, x),
    ``evidence_radius`` (N,), ``pattern_names``, ``spurious_corr`` (asked) and
    ``spurious_corr_measured``.
    """
    artifact = _check_args(n, size, kind, n_classes, spurious_corr, artifact)
    k_cls = int(n_classes)
    ss = np.random.SeedSequence([int(seed), 7919, size, k_cls, 0 if kind == "skin" else 1])
    rng = np.random.default_rng(ss.spawn(1)[0])
    labels, has_art = _labels_and_artifacts(rng, n, k_cls, artifact, spurious_corr)
    g = _geometry(rng, n, size, kind)

    images = np.empty((n, size, size, 3 if kind == "skin" else 1), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=bool)
    art_masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy, xx = yy[None] + 0.5, xx[None] + 0.5
    noise_seqs = ss.spawn(1 + (n + _CHUNK - 1) // _CHUNK)[1:]
    for ci, start in enumerate(range(0, n, _CHUNK)):
        sl = slice(start, min(start + _CHUNK, n))
        nrng = np.random.default_rng(noise_seqs[ci])
        pat, evid = _evidence(g, sl, labels[sl], k_cls, kind, size, yy, xx, decoy)
        art = _artifact_masks(artifact, g, sl, has_art, evid, size, yy, xx)
        masks[sl], art_masks[sl] = evid, art
        img = (_skin_pixels(nrng, g, sl, pat, evid, art, artifact, size, yy, xx) if kind == "skin"
               else _chest_pixels(nrng, g, sl, pat, art, artifact, size, yy, xx))
        images[sl] = np.clip(img, 0, 255).round().astype(np.uint8)

    measured = (float(np.corrcoef(has_art.astype(float), (labels == 1).astype(float))[0, 1])
                if artifact is not None and has_art.any() and not has_art.all() else 0.0)
    names = CLASS_NAMES[kind][:k_cls] if k_cls == 2 else PATTERNS[kind][:k_cls]
    ds_name = name or f"planted_{kind}"
    ids = np.array([f"{ds_name}_{seed}_{i:05d}" for i in range(n)])
    return ImageSet(
        name=ds_name, source="synthetic",
        description=_describe(kind, seed, n, size, k_cls, decoy, artifact, spurious_corr, measured),
        images=images, labels=labels, task="binary" if k_cls == 2 else "multiclass", class_names=list(names),
        groups=ids.copy(), ids=ids, masks=masks, boxes=None, official_split=None,
        extra={"artifact": has_art, "artifact_masks": art_masks, "evidence_center": g["center"],
               "evidence_radius": g["radius"], "pattern_names": PATTERNS[kind][:k_cls], "artifact_kind": artifact,
               "spurious_corr": float(spurious_corr), "spurious_corr_measured": measured, "kind": kind},
    )
