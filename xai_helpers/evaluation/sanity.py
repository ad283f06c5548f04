"""Sanity checks for saliency maps (Adebayo et al., 2018): does the map depend on what the model learned?

A map that explains the *model* must change when the model is destroyed. Two tests:

* **Model parameter randomisation.** Re-initialise the layers one by one, *cascading* from the
  output layer down to the input (each step keeps the earlier randomisations), or *independently*
  (one layer at a time, the others trained), and compare each map with the original map. A method
  whose maps stay the same is independent of the parameters, so it cannot explain the model: the
  Sobel edge detector (``method="edges"``) stays identical at every step, although it can score well
  on localisation (planted evidence has strong edges).
* **Data randomisation.** Train the same architecture on permuted labels (:func:`train_on_permuted_labels`)
  — it can only memorise — and compare its maps with the trained model's.

Similarity of two maps a, b (each image separately):

* ``spearman``: rank correlation of |a| and |b| (Spearman's rho; Adebayo et al. report it with and
  without the absolute value; Quantus's MPRT uses |.|). Undefined (NaN) when a map is constant.
* ``ssim``: structural similarity (Wang et al., 2004; ``skimage.metrics.structural_similarity``)
  of the maps scaled to [0, 1] by their largest |value|.
* ``hog``: Pearson correlation of the maps' histograms of oriented gradients (``skimage.feature.hog``).

Randomisation always works on a deep copy: the user's model keeps its parameters and mode. Each layer
is re-initialised by its own ``reset_parameters()`` (PyTorch's default initialisation) after
``torch.manual_seed(seed)``, inside :func:`preserved_global_rng`, so the global random state is
untouched (Quantus's MPRT seeds ``seed + 1`` globally before each layer: ``seed=43`` here = its 42).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from ._inputs import check_model, explain_fn, one_target_each, preserved_global_rng
from ..explain import check_images

SIMILARITIES = ("spearman", "ssim", "hog")
MODES = ("cascading", "independent")


# ---------------------------------------------------------------------------------------------------
# similarity of two stacks of maps (N, H, W) -> (N,)
def _unit(a: np.ndarray) -> np.ndarray:
    """|map| scaled per map to [0, 1] by its maximum (a zero map stays zero)."""
    a = np.abs(np.asarray(a, dtype=np.float64))
    hi = a.reshape(len(a), -1).max(1).reshape(-1, 1, 1)
    return a / np.where(hi > 0, hi, 1.0)


def _centred_ranks(a) -> np.ndarray:
    from scipy.stats import rankdata

    r = rankdata(np.abs(np.asarray(a, np.float64)).reshape(len(a), -1), axis=1)
    return r - r.mean(1, keepdims=True)


def _row_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of two centred (N, F) arrays (NaN where either row is flat)."""
    den = np.sqrt((a ** 2).sum(1) * (b ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def spearman_abs(a, b) -> np.ndarray:
    """Per map: Spearman's rank correlation of |a| and |b| (NaN where either map is constant)."""
    return _row_correlation(_centred_ranks(a), _centred_ranks(b))


def _ssim_window(shape) -> int:
    return min(7, min(shape[1:]) // 2 * 2 - 1)


def _ssim_units(ua: np.ndarray, ub: np.ndarray) -> np.ndarray:
    """Per map SSIM of two stacks in [0, 1]: skimage's ``structural_similarity`` (uniform window, sample
    covariance, data range 1) computed for the whole stack at once (equal to it to float rounding; tested)."""
    from scipy.ndimage import uniform_filter

    win = _ssim_window(ua.shape)
    x, y = np.asarray(ua, np.float64), np.asarray(ub, np.float64)
    size = (1, win, win)                                   # one map at a time, never across maps
    ux, uy = uniform_filter(x, size), uniform_filter(y, size)
    cov_norm = win * win / (win * win - 1.0)
    vx = cov_norm * (uniform_filter(x * x, size) - ux * ux)
    vy = cov_norm * (uniform_filter(y * y, size) - uy * uy)
    vxy = cov_norm * (uniform_filter(x * y, size) - ux * uy)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return s_map[:, pad:s_map.shape[1] - pad, pad:s_map.shape[2] - pad].mean(axis=(1, 2), dtype=np.float64)


def ssim(a, b) -> np.ndarray:
    """Per map: SSIM of the [0, 1]-scaled |maps| (window 7, or the largest odd size that fits)."""
    return _ssim_units(_unit(a), _unit(b))


def _hog_features(a) -> np.ndarray:
    """(N, F) centred HOG features of the [0, 1]-scaled |maps| (see :func:`_hog_units`)."""
    return _hog_units(_unit(a))


def _hog_units(ua: np.ndarray) -> np.ndarray:
    """(N, F) centred HOG features of maps already scaled to [0, 1]: skimage's ``hog`` (9 orientations, 2 x 2
    cells a block, L2-Hys), its cell histograms from skimage's own routine and the block normalisation done
    for all blocks at once (skimage loops over blocks in Python); equal to ``skimage.feature.hog`` (tested)."""
    cell = max(4, min(ua.shape[1:]) // 8)
    try:
        from skimage.feature import _hoghistogram
        from skimage.feature._hog import _hog_channel_gradient
    except ImportError:                                   # another skimage layout: its public hog, map by map
        from skimage.feature import hog

        h = np.array([hog(m, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2)) for m in ua])
        return h - h.mean(1, keepdims=True)
    n_r, n_c = ua.shape[1] // cell, ua.shape[2] // cell
    hist = np.zeros((len(ua), n_r, n_c, 9))
    for k, m in enumerate(ua):
        g_row, g_col = _hog_channel_gradient(m)
        _hoghistogram.hog_histograms(g_col.astype(float), g_row.astype(float), cell, cell, m.shape[1], m.shape[0],
                                     n_c, n_r, 9, hist[k])
    blocks = np.lib.stride_tricks.sliding_window_view(hist, (2, 2), axis=(1, 2))   # (N, br, bc, 9, 2, 2)
    blocks = blocks.transpose(0, 1, 2, 4, 5, 3)                                    # (N, br, bc, 2, 2, 9)
    eps = 1e-5
    out = blocks / np.sqrt((blocks ** 2).sum(axis=(3, 4, 5), keepdims=True) + eps ** 2)
    out = np.minimum(out, 0.2)
    out = out / np.sqrt((out ** 2).sum(axis=(3, 4, 5), keepdims=True) + eps ** 2)
    h = out.reshape(len(ua), -1)
    return h - h.mean(1, keepdims=True)


def hog_similarity(a, b) -> np.ndarray:
    """Per map: Pearson correlation of the HOG features of the [0, 1]-scaled |maps| (NaN if flat)."""
    return _row_correlation(_hog_features(a), _hog_features(b))


class _Reference:
    """The original maps' side of every similarity, computed once: a randomisation test compares the
    same original maps with one new stack per layer, so their ranks, scaling and HOG features are
    not recomputed at each step (the results equal :func:`similarities`)."""

    def __init__(self, a, which=SIMILARITIES):
        bad = set(which) - set(SIMILARITIES)
        if bad:
            raise ValueError(f"unknown similarity {sorted(bad)}; choose from {SIMILARITIES}")
        self.a, self.which = np.asarray(a), tuple(which)
        if self.a.ndim != 3:
            raise ValueError(f"compare two map stacks of the same shape (N, H, W); got {self.a.shape}")
        self.ranks = _centred_ranks(self.a) if "spearman" in which else None
        self.unit = _unit(self.a) if {"ssim", "hog"} & set(which) else None
        self.hog = _hog_units(self.unit) if "hog" in which else None

    def compare(self, b) -> dict[str, np.ndarray]:
        b = np.asarray(b)
        if b.shape != self.a.shape:
            raise ValueError(f"compare two map stacks of the same shape (N, H, W); got {self.a.shape} and {b.shape}")
        ub = _unit(b) if self.unit is not None else None          # scaled once for SSIM and HOG
        out = {}
        for k in self.which:
            if k == "spearman":
                out[k] = _row_correlation(self.ranks, _centred_ranks(b))
            elif k == "ssim":
                out[k] = _ssim_units(self.unit, ub)
            else:
                out[k] = _row_correlation(self.hog, _hog_units(ub))
        return out


def similarities(a, b, which=SIMILARITIES) -> dict[str, np.ndarray]:
    """``{name: (N,) similarity}`` of two map stacks for each name in ``which``."""
    return _Reference(a, which).compare(b)


# ---------------------------------------------------------------------------------------------------
# model parameter randomisation
def randomisable_layers(model: torch.nn.Module) -> list[str]:
    """Names of the modules that hold parameters and can re-initialise them (``reset_parameters``),
    input to output (``named_modules`` order: the same list as Quantus's MPRT)."""
    return [n for n, m in model.named_modules()
            if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))]


def _steps(model: torch.nn.Module, layers) -> list[tuple[str, list[str]]]:
    """``[(label, [layer names])]`` input to output: one step per layer name, or per block of a dict
    ``{label: [names]}`` (the layers of one block are randomised together, as Adebayo et al. did with
    Inception's blocks)."""
    valid = randomisable_layers(model)
    if layers is None:
        steps = [(n, [n]) for n in valid]
    elif isinstance(layers, dict):
        steps = [(str(k), [v] if isinstance(v, str) else list(v)) for k, v in layers.items()]
    else:
        steps = [(n, [n]) for n in layers]
    names = [n for _, group in steps for n in group]
    missing = set(names) - set(valid)
    if missing:
        raise ValueError(f"cannot randomise {sorted(missing)}: not modules with parameters and "
                         f"reset_parameters(); valid: {valid}")
    if any(not group for _, group in steps):
        raise ValueError(f"every block needs at least one layer; got {dict(steps)}")
    return steps


def _reset(layer: torch.nn.Module, seed: int) -> None:
    """``layer.reset_parameters()`` with its new values drawn from the CPU generator seeded with
    ``seed``, wherever the layer lives: a GPU or MPS layer is re-initialised on a CPU copy and loaded
    back, so the randomised weights (and the test's numbers) are the same on every device. (Seeding only
    the CPU generator also skips ``torch.manual_seed``'s ms-long visit of every accelerator backend.)"""
    on_cpu = all(p.device.type == "cpu" for p in layer.parameters())
    work = layer if on_cpu else copy.deepcopy(layer).cpu()
    torch.default_generator.manual_seed(seed)
    work.reset_parameters()
    if not on_cpu:
        layer.load_state_dict(work.state_dict())


def randomised_models(model: torch.nn.Module, mode: str = "cascading", seed: int = 0,
                      layers: list[str] | dict | None = None) -> Iterator[tuple[str, torch.nn.Module]]:
    """Yield ``(layer name, randomised deep copy)``, output layer first (Adebayo et al.'s order).

    ``cascading``: one copy, each step re-initialises one more layer. ``independent``: each step
    re-initialises one layer of a fresh copy. The caller's model is never modified.
    ``layers``: names, input to output (default: :func:`randomisable_layers`), or a dict
    ``{block label: [names]}`` whose blocks are randomised one per step (the label is yielded).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    steps = _steps(model, layers)
    work = copy.deepcopy(model)
    original = copy.deepcopy(model.state_dict()) if mode == "independent" else None   # cascading never goes back
    for label, group in steps[::-1]:
        if mode == "independent":
            work.load_state_dict(original)
        for name in group:
            with preserved_global_rng(), torch.no_grad():
                _reset(work.get_submodule(name), seed)
        yield label, work


@dataclass
class RandomisationResult:
    """Similarity of each randomised model's maps to the original maps."""

    mode: str
    layers: list                                   # S layer (or block) names, in the order randomised
    similarity: dict                               # name -> (S, N)
    original_maps: np.ndarray                      # (N, H, W)
    maps: np.ndarray | None = None                 # (S, N, H, W) when kept
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    def final(self, name: str = "spearman") -> np.ndarray:
        """(N,) similarity after the last step (all layers randomised, when cascading)."""
        return self.similarity[name][-1]

    def mean_curve(self, name: str = "spearman") -> np.ndarray:
        """(S,) mean over images at each step, ignoring NaN (flat maps), for the usual cascading plot."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # a step where every map is flat: NaN
            return np.nanmean(self.similarity[name], axis=1)


def model_randomisation(model, images, target=None, method="gradcam", *, mode: str = "cascading", seed: int = 0,
                        layers: list[str] | dict | None = None, which=SIMILARITIES, keep_maps: bool = True,
                        options: dict | None = None) -> RandomisationResult:
    """The model parameter randomisation test (Adebayo et al., 2018).

    method   a name for :func:`xai_helpers.explain.explain` (``options`` passed on) or a callable
             ``f(model, x, targets) -> (N, H, W)``.
    target   resolved ONCE on the trained model (None: its predicted class), so every randomised
             model explains the same output.
    layers   layer names, input to output (default: every randomisable layer), or ``{block: [names]}``
             to randomise whole blocks, one per step (see :func:`randomised_models`).
    Returns a :class:`RandomisationResult`; ``.final("spearman")`` near 1 means the method failed.
    """
    check_model(model)
    x = check_images(model, images)
    t = one_target_each(model, x, target)
    run = explain_fn(method, options)
    base = run(model, x, t).numpy()
    reference = _Reference(base, which)
    sims = {k: [] for k in which}
    names, kept = [], []
    for name, rnd in randomised_models(model, mode, seed, layers):
        m = run(rnd, x, t).numpy()
        for k, v in reference.compare(m).items():
            sims[k].append(v)
        names.append(name)
        if keep_maps:
            kept.append(m.astype(np.float32))
    return RandomisationResult(mode=mode, layers=names, similarity={k: np.array(v) for k, v in sims.items()},
                               original_maps=base, maps=np.array(kept) if keep_maps else None,
                               targets=t.cpu().numpy())


# ---------------------------------------------------------------------------------------------------
# data randomisation
def train_on_permuted_labels(model, images, labels, *, epochs: int = 10, lr: float = 3e-3, batch_size: int = 64,
                             seed: int = 0, verbose: bool = False, progress: bool = False,
                             **fit_options) -> torch.nn.Module:
    """A fresh copy of ``model`` (same architecture and ``model.info``, every layer re-initialised)
    trained with :func:`xai_helpers.training.fit` on a random permutation of ``labels``.

    The labels keep their class balance but lose every link to the images, so the network can only
    memorise: its maps should have nothing to do with the evidence. Runs without validation split
    (early stopping would stop at chance); the global random state is restored afterwards.
    ``progress=True`` shows fit's progress bar.
    """
    from ..training import TensorLoader, fit

    check_model(model)
    x = check_images(model, images).cpu()
    y = np.asarray(labels)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    rng = np.random.default_rng(seed)
    permuted = y[rng.permutation(len(y))]
    fresh = copy.deepcopy(model)
    with preserved_global_rng():
        torch.manual_seed(seed)
        for name in randomisable_layers(fresh):
            fresh.get_submodule(name).reset_parameters()
        loader = TensorLoader(x, permuted, batch_size=batch_size, shuffle=True, seed=seed)
        fit_options.setdefault("device", next(model.parameters()).device)
        fit(fresh, loader, None, epochs=epochs, lr=lr, patience=None, progress=progress, verbose=verbose,
            **fit_options)
    fresh.permuted_labels = permuted
    return fresh.eval()


def data_randomisation(model, random_model, images, target=None, method="gradcam", *, which=SIMILARITIES,
                       options: dict | None = None) -> dict[str, np.ndarray]:
    """``{similarity: (N,)}`` between the maps of the trained model and of ``random_model`` (trained on
    permuted labels), explaining the same target (resolved on the trained model)."""
    check_model(model)
    check_model(random_model)
    x = check_images(model, images)
    t = one_target_each(model, x, target)
    run = explain_fn(method, options)
    return similarities(run(model, x, t).numpy(), run(random_model, x, t).numpy(), which)


__all__ = ["SIMILARITIES", "MODES", "spearman_abs", "ssim", "hog_similarity", "similarities", "randomisable_layers",
           "randomised_models", "RandomisationResult", "model_randomisation", "train_on_permuted_labels",
           "data_randomisation"]
