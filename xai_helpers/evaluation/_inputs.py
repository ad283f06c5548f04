"""Checks and plumbing shared by the faithfulness, sanity and robustness scores.

Every score here takes a model, images in the model's units (as :func:`xai_helpers.explain.explain`
does), maps (N, H, W) and a target, and promises three things:

* bad input gets a clear error (shapes that do not match, NaN maps, a target out of range);
* the model is never changed: a model in training mode is REFUSED rather than switched to eval
  (dropout and BatchNorm would make every score random and update running statistics; switching it
  silently would change the user's model), and forward passes run under ``torch.no_grad``;
* the global random state is never touched: sampling uses local ``torch.Generator`` /
  ``np.random.Generator`` objects, and calls into code that seeds globally (``explain``) run inside
  :func:`preserved_global_rng`.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from ..explain import check_images, resolve_targets
from ..model_info import has_info, model_info

SCORES = ("auto", "softmax", "sigmoid", "logit")


def check_model(model) -> torch.nn.Module:
    """The model itself, after checking it is a module in eval mode (see the module docstring)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if model.training:
        raise ValueError("the model is in training mode: dropout and BatchNorm would make these scores random "
                         "and update its running statistics. Call model.eval() first (the scores never "
                         "change the mode of your model themselves).")
    return model


def as_maps(maps, x: torch.Tensor, name: str = "maps") -> torch.Tensor:
    """``maps`` (an Explanation, array or tensor, (N, H, W)) as a float64 CPU tensor that fits ``x``."""
    if hasattr(maps, "maps"):
        maps = maps.maps
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim == 2:
        m = m[None]
    want = (x.shape[0], x.shape[2], x.shape[3])
    if m.shape != want:
        raise ValueError(f"{name} must have shape (N, H, W) = {want} to match images of shape "
                         f"{tuple(x.shape)}; got {m.shape}. Use one map per image at the image's resolution.")
    if not np.isfinite(m).all():
        bad = np.unique(np.nonzero(~np.isfinite(m).reshape(len(m), -1))[0])
        raise ValueError(f"{name} contain NaN or infinite values (images {bad[:10].tolist()}); "
                         "fix the explanation (e.g. np.nan_to_num) before scoring it")
    return torch.from_numpy(m)


def one_target_each(model, x: torch.Tensor, target) -> torch.Tensor:
    """One output index per image (LongTensor (N,) on x's device); None / "pred" = the predicted class."""
    with torch.no_grad():
        per_image = resolve_targets(model, x, target)
    if any(len(t) != 1 for t in per_image):
        raise ValueError("give ONE target per image (an int, a class name, or a list as long as the batch); "
                         "score several findings with one call each")
    return torch.tensor([t[0] for t in per_image], dtype=torch.long, device=x.device)


def prepare(model, images, maps=None, target=None):
    """(x, maps or None, targets) after every check; x on the model's device."""
    check_model(model)
    x = check_images(model, images)
    m = None if maps is None else as_maps(maps, x)
    return x, m, one_target_each(model, x, target)


def score_function(model, score: str = "auto"):
    """logits (B, K) -> scores (B, K): softmax, sigmoid (multi-label) or the logits themselves.

    ``"auto"``: sigmoid for a multi-label model (``model.info.task``), else softmax.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if score == "auto":
        score = "sigmoid" if has_info(model) and model_info(model).task == "multilabel" else "softmax"
    return {"softmax": lambda z: torch.softmax(z, 1), "sigmoid": torch.sigmoid, "logit": lambda z: z}[score]


def pixel_units(model, mean=None, std=None):
    """The model's normalisation (mean, std), explicit arguments first, else ``model.info``."""
    if mean is not None and std is not None:
        return tuple(np.atleast_1d(mean).tolist()), tuple(np.atleast_1d(std).tolist())
    if has_info(model):
        info = model_info(model)
        return info.mean, info.std
    raise ValueError("this score needs the model's normalisation: pass mean=..., std=... or declare it with "
                     "xai_helpers.model_info.describe_model(model, ..., mean=(...), std=(...))")


@contextlib.contextmanager
def preserved_global_rng():
    """Run a block that may seed torch / NumPy / random globally, then put every global state back."""
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def explain_fn(method, options: dict | None = None):
    """``method`` (a name for :func:`explain`, or a callable ``f(model, x, targets) -> (N, H, W)``) as a
    function that returns a float64 CPU tensor and leaves the global random state alone."""
    options = dict(options or {})

    def run(model, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with preserved_global_rng():
            if callable(method):
                out = method(model, x, targets, **options)
            else:
                from ..explain import explain
                out = explain(model, x, targets.tolist(), method, **options).maps
        if hasattr(out, "maps"):
            out = out.maps
        out = torch.as_tensor(np.asarray(out.detach().cpu() if isinstance(out, torch.Tensor) else out),
                              dtype=torch.float64)
        return out

    return run


def batched_scores(model, make_batch, n_rows: int, rows_target: torch.Tensor, batch_size: int,
                   score_fn) -> torch.Tensor:
    """Scores of ``n_rows`` inputs built on demand: ``make_batch(rows) -> (B, C, H, W)``; the score of
    row r is ``score_fn(logits)[r, rows_target[r]]``. Returns a float64 CPU tensor (n_rows,)."""
    out = torch.empty(n_rows, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, n_rows, batch_size):
            rows = torch.arange(start, min(start + batch_size, n_rows))
            s = score_fn(model(make_batch(rows)))
            out[rows] = s.gather(1, rows_target[rows].to(s.device)[:, None])[:, 0].double().cpu()
    return out


__all__ = ["check_model", "as_maps", "one_target_each", "prepare", "score_function", "pixel_units",
           "preserved_global_rng", "explain_fn", "batched_scores"]
