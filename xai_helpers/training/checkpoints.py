"""Checkpoints: weights + metadata in one file, read back with ``torch.load(weights_only=True)``.

The metadata holds the model's :class:`~xai_helpers.model_info.ModelInfo` (``meta["model_info"]``,
restored on load) and, flat beside it for readers of the file, its arch, classes, task, input size,
channels and mean/std, plus library versions and whatever the caller adds (dataset, split seed,
metrics, ...). A file that does not match the model or the data says what differs.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.cache import atomic_write
from ..model_info import ModelInfo, ModelInfoError, describe_model, has_info, model_info
from ..models import CAM_LAYERS, build_model, current_cam_layer, default_normalisation, model_summary, use_fast_layout

CHECKPOINT_FORMAT = "xai-medimg-checkpoint/1"
_MODEL_KEYS = ("arch", "num_outputs", "in_channels", "class_names", "task")


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read (corrupt, truncated, or not a checkpoint of ours)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint was read but does not fit the model or the data it is being used with."""


def _versions() -> dict:
    import torchvision

    from .. import __version__
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "xai_helpers": __version__,
            "numpy": np.__version__}


def _plain(obj):
    """Metadata as plain Python types (what ``torch.load(weights_only=True)`` accepts)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, str):
        return str(obj)  # also plain-ifies str subclasses such as torch's TorchVersion
    if obj is None or isinstance(obj, (int, float, bool)):
        return obj
    return str(obj)


def checkpoint_meta(model: nn.Module, meta: dict | None = None) -> dict:
    """The metadata a checkpoint of ``model`` holds (plain types): its summary and :class:`ModelInfo`,
    library versions, the time, and ``meta`` (dataset, split seed, metrics, ...)."""
    m = model_summary(model)
    m.update(meta or {})
    m["model_info"] = model_info(model).as_dict()
    m["versions"] = _versions()
    m["saved_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return _plain(m)


def save_checkpoint(path, model: nn.Module, meta: dict | None = None) -> Path:
    """Save weights + metadata atomically (``<path>.xai-tmp<pid>-<random>``, then rename): never a half
    file; old orphans of interrupted saves in the folder are removed (:func:`data.cache.atomic_write`).
    A folder without write bits (a read-only shared copy) raises PermissionError, even for root.

    The metadata always holds the model's :class:`ModelInfo` and library versions; ``meta`` adds
    the rest (dataset, split seed, metrics, ...).
    """
    payload = {"format": CHECKPOINT_FORMAT,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "meta": checkpoint_meta(model, meta)}
    return atomic_write(path, lambda f: torch.save(payload, f))


def read_checkpoint(path) -> dict:
    """The raw ``{"format", "state_dict", "meta"}`` dict, with a clear error if it cannot be read
    (empty, corrupt, truncated, foreign) or holds weights that are not finite (NaN / inf)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    again = "delete it and train again (get_trained_model(..., retrain=True))."
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes; an interrupted save or copy); {again}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        why = (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"could not read checkpoint {path} ({type(err).__name__}: {why}). The file is "
                              f"corrupt, truncated or not a checkpoint saved by xai_helpers; {again}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "state_dict" not in payload:
        raise CheckpointError(f"{path} is not an xai_helpers checkpoint (format "
                              f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}, "
                              f"expected {CHECKPOINT_FORMAT!r}); delete it and train again.")
    bad = [k for k, v in payload["state_dict"].items()
           if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path} holds weights that are not finite (NaN or inf) in {len(bad)} "
                              f"tensor(s): {bad[:5]}{' ...' if len(bad) > 5 else ''}. Training diverged or the "
                              f"file is damaged; {again}")
    return payload


def checkpoint_model_info(meta: dict, path="checkpoint") -> ModelInfo:
    """The :class:`ModelInfo` a checkpoint's metadata declares: ``meta["model_info"]``, or, in files
    written before it existed, the loose keys arch / class_names / task / mean / std / ..."""
    try:
        if isinstance(meta.get("model_info"), dict):
            mi = meta["model_info"]
            return ModelInfo(**dict(mi, cam_layer=current_cam_layer(mi.get("arch"), mi.get("cam_layer"))))
        missing = [k for k in _MODEL_KEYS if k not in meta]
        if missing:
            raise CheckpointError(f"{path} lacks metadata {missing}; cannot rebuild the model")
        mean, std = meta.get("mean"), meta.get("std")
        if not mean or not std:
            mean, std = default_normalisation(meta["in_channels"], bool(meta.get("pretrained")))
        return ModelInfo(class_names=meta["class_names"], task=meta["task"], mean=mean, std=std,
                         cam_layer=current_cam_layer(meta["arch"], meta.get("cam_layer") or CAM_LAYERS.get(meta["arch"])),
                         arch=meta["arch"],
                         input_size=meta.get("input_size"), pretrained=bool(meta.get("pretrained", False)),
                         width=meta.get("width"))
    except (TypeError, ModelInfoError) as err:
        raise CheckpointError(f"{path} holds a model description that cannot be read ({err}); "
                              "delete it and train again (retrain=True).") from err


def _differences(path, meta: dict, info: ModelInfo, model: nn.Module | None, expect: dict | None) -> list[str]:
    """What differs between the checkpoint and what the caller expects / the model it gave."""
    diffs = []
    for k, v in (expect or {}).items():
        got = meta.get(k, "<missing>")
        if _plain(got) != _plain(v):
            diffs.append(f"{k}: checkpoint has {got!r}, expected {v!r}")
    if model is not None and has_info(model):
        ours = model_info(model)
        for k in _MODEL_KEYS:
            theirs, mine = _plain(getattr(info, k)), _plain(getattr(ours, k))
            if theirs != mine:
                diffs.append(f"{k}: checkpoint has {theirs!r}, model has {mine!r}")
    return diffs


def _check_weights(path, model: nn.Module, state: dict, info: ModelInfo) -> None:
    """Raise :class:`CheckpointMismatchError` naming missing, unexpected or differently shaped weights."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or shapes):
        return
    here = model_info(model).arch if has_info(model) else type(model).__name__
    msg = [f"checkpoint {path} does not fit this model ({info.arch} in the file, {here} here):"]
    if missing:
        msg.append(f"  weights missing from the file: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        msg.append(f"  weights the model lacks: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if shapes:
        msg.append("  shape differences: " + "; ".join(sorted(shapes)[:5]))
    raise CheckpointMismatchError("\n".join(msg))


def load_checkpoint(path, model: nn.Module | None = None, expect: dict | None = None, device=None):
    """Load a checkpoint; returns ``(model, meta)``. The model carries the checkpoint's :class:`ModelInfo`.

    model   None: build the model the metadata describes. Given: its arch / outputs / channels /
            classes / task must match the checkpoint, and so must every weight's shape.
    expect  metadata the caller relies on, e.g. ``{"dataset": "pneumoniamnist", "input_size": 28}``;
            any difference raises :class:`CheckpointMismatchError` naming it.
    """
    payload = read_checkpoint(path)
    meta, state = payload["meta"], payload["state_dict"]
    info = checkpoint_model_info(meta, path)
    diffs = _differences(path, meta, info, model, expect)
    if diffs:
        raise CheckpointMismatchError(f"checkpoint {path} does not match:\n  " + "\n  ".join(diffs) +
                                      "\nUse a model/data that match, or train again (retrain=True).")
    if model is None:
        model = build_model(info.arch, info.num_outputs, in_channels=info.in_channels,
                            class_names=list(info.class_names), task=info.task, input_size=info.input_size,
                            mean=info.mean, std=info.std, width=info.width or 16)
    _check_weights(path, model, state, info)
    model.load_state_dict(state)
    describe_model(model, info)
    model.eval()
    if device is not None:
        model.to(device)
    use_fast_layout(model)                 # EfficientNet on a CPU: channels-last (same outputs, faster)
    return model, meta
