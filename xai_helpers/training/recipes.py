"""One call for the later chapters: :func:`get_trained_model` loads a cached checkpoint or trains one.

    >>> from xai_helpers.training import get_trained_model
    >>> model, info = get_trained_model("planted_skin")   # cached checkpoint, or trains one (seconds)

:data:`RECIPES` says, per name, which data and which network; the steps of a training run are the
functions below it, in the order :func:`get_trained_model` calls them.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import config
from ..data import images_to_tensor
from ..model_info import model_info
from ..models import build_model, use_fast_layout
from .checkpoints import (CheckpointError, CheckpointMismatchError, _plain, checkpoint_meta, load_checkpoint,
                          save_checkpoint)
from .loop import TensorLoader, class_weights, fit, pos_weights, predict, resize_tensor
from .transfer import fit_frozen_prefix, fit_linear_probe

# name -> how to get the data and which network to train. ``size`` is the side fed to the model;
# ``fast`` overrides apply in fast mode (XAI_FAST=1).
RECIPES = {
    "planted_skin": dict(dataset="planted", kind="skin", arch="small_cnn", size=64, augment="dermoscopy",
                         n=1024, epochs=12, lr=3e-3, batch_size=64, pretrained=False, width=32,
                         fast=dict(n=512, epochs=8, width=16, lr=2e-3)),
    "planted_chest": dict(dataset="planted", kind="chest", arch="small_cnn", size=64, augment="xray",
                          n=1024, epochs=12, lr=3e-3, batch_size=64, pretrained=False, width=32,
                          fast=dict(n=512, epochs=8, width=16, lr=2e-3)),
    "pneumonia": dict(dataset="pneumoniamnist", load_kw={}, arch="small_cnn", width=32, size=28, augment="xray",
                      epochs=10, lr=3e-3, batch_size=128, pretrained=False, max_minutes=4.5,
                      fast=dict(width=16, epochs=3, max_train=1200)),
    # HAM10000 / NIH (full mode): two frozen ImageNet EfficientNet-Lite0s (192 and 128 px) read at
    # several depths, with logistic heads (fit_linear_probe, no epochs or learning rate): fine-tuning
    # the last blocks on ~4,000 images lost validation AUC (0.89 -> 0.87) while this takes minutes on
    # a CPU. batch_size and augment serve the fast recipes and the planted stand-in.
    "skin_binary": dict(dataset="ham10000", load_kw={"task": "binary"}, arch="efficientnet_lite0_ms", size=192,
                        load_size=192, augment="dermoscopy", batch_size=64, pretrained=True,
                        fast=dict(arch="small_cnn", size=48, load_size=48, pretrained=False, epochs=3,
                                  max_train=600, lr=3e-3, frozen_blocks=None)),
    "skin_7class": dict(dataset="ham10000", load_kw={"task": "7class"}, arch="efficientnet_lite0_ms", size=192,
                        load_size=192, augment="dermoscopy", batch_size=64, pretrained=True,
                        fast=dict(arch="small_cnn", size=48, load_size=48, pretrained=False, epochs=3,
                                  max_train=600, lr=3e-3, frozen_blocks=None)),
    "cxr_multilabel": dict(dataset="nih_cxr_bbox", load_kw={}, arch="efficientnet_lite0_ms", size=192,
                           load_size=192, augment="xray", batch_size=32, pretrained=True,
                           fast=dict(arch="efficientnet_lite0", size=64, load_size=64, epochs=3, lr=2e-3,
                                     frozen_blocks=14, patience=5)),
}


def _recipe(name: str, fast: bool, overrides: dict) -> tuple[dict, dict]:
    """(the recipe to run, the overrides that change it): the second names its own checkpoint."""
    if name not in RECIPES:
        raise ValueError(f"unknown model name {name!r}; choose one of {sorted(RECIPES)}")
    r = {k: v for k, v in RECIPES[name].items() if k != "fast"}
    if fast:
        r.update(RECIPES[name].get("fast", {}))
    changed = {k: v for k, v in overrides.items() if v is not None and (k not in r or _plain(r[k]) != _plain(v))}
    if "shortcut" in changed:
        changed["shortcut"] = _check_shortcut(changed["shortcut"])
    r.update(changed)
    return r, changed


def _check_shortcut(value) -> tuple[str, float]:
    """``shortcut=(artifact, rate)``: draw ``artifact`` on that share of the class-1 images (a cheating model)."""
    from ..artifacts import ARTIFACTS

    ok = isinstance(value, (tuple, list)) and len(value) == 2 and value[0] in ARTIFACTS
    try:
        ok = ok and 0.0 <= float(value[1]) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"shortcut must be (artifact, rate): one of {sorted(ARTIFACTS)} and the share of the "
                         f"class-1 images (0-1) that carry it, e.g. shortcut=('ink', 0.9); got {value!r}")
    return str(value[0]), float(value[1])


def _load_data(name: str, r: dict, root, seed: int):
    """The recipe's data set; a real set missing from the data root comes back as its planted stand-in,
    and the recipe becomes the planted one (a small CNN trained from scratch)."""
    from .. import data as D

    if r["dataset"] == "planted":
        from ..synthetic import make_planted
        ds = make_planted(n=r["n"], size=r["size"], kind=r["kind"], n_classes=r.get("n_classes", 2),
                          spurious_corr=r.get("spurious_corr", 0.0), seed=seed, name=name)
    else:
        ds = D.load_or_synthetic(r["dataset"], size=r.get("load_size", r["size"]), root=root, **r.get("load_kw", {}))
        if ds.source == "synthetic":
            r.update(arch="small_cnn", size=ds.images.shape[1], pretrained=False, lr=3e-3)
            r.setdefault("epochs", 1)    # the linear-probe recipes name no epochs: one on the easy stand-in
    if r.get("shortcut"):            # a cheating model: the same recipe on images with an artifact planted
        from ..artifacts import make_shortcut_dataset

        if ds.task != "binary":
            raise ValueError(f"shortcut= draws the artifact on class 1 of a binary set; {name} is {ds.task}")
        artifact, rate = r["shortcut"]
        ds = make_shortcut_dataset(ds, artifact, rate_by_class={1: rate}, seed=seed)
    return ds


def _set_aside(path: Path, seen: os.stat_result | None = None) -> Path | None:
    """Rename ``path`` to ``<name>.stale[-k].pt`` (never overwriting an earlier one) and return it.

    None when there is nothing to set aside any more: another process moved it first, or replaced it
    with another file since we read it (``seen``: the file's stat when it was read), or the folder is
    read-only (a shared copy is never changed).
    """
    if not config.writable(path.parent):
        return None
    try:
        now = path.stat()
        if seen is not None and (now.st_ino, now.st_size, now.st_mtime_ns) != (seen.st_ino, seen.st_size,
                                                                                 seen.st_mtime_ns):
            return None
        k, stale = 0, path.with_name(path.stem + ".stale.pt")
        while stale.exists():
            k += 1
            stale = path.with_name(f"{path.stem}.stale-{k}.pt")
        path.rename(stale)
    except FileNotFoundError:
        return None
    return stale


def _cache_name(name, r, fast, source, seed, changed: dict | None = None) -> str:
    """The checkpoint's file name: recipe, arch, size, mode, data and seed; any other override of the
    recipe adds a hash of the overrides, so a variant never takes the default's place."""
    parts = [name, r["arch"], f"{r['size']}px", "fast" if fast else "full", source, f"seed{seed}"]
    if r.get("spurious_corr"):
        parts.append(f"spur{r['spurious_corr']:+.2f}")
    if r.get("shortcut"):
        parts.append(f"{r['shortcut'][0]}{round(100 * r['shortcut'][1])}")            # e.g. ..._ink90.pt
    named = ("arch", "size", "spurious_corr", "shortcut")
    other = {k: v for k, v in (changed or {}).items() if k not in named}
    if other:
        blob = json.dumps(_plain(other), sort_keys=True, default=str).encode()
        parts.append("ovr-" + hashlib.sha1(blob).hexdigest()[:10])
    return "_".join(parts) + ".pt"


def _recipe_differences(saved, r: dict) -> list[str]:
    """The recipe entries in which a cached checkpoint's training differs from the current recipe."""
    if not isinstance(saved, dict):
        return ["the file records no recipe (written by an older version)"]
    want = _plain({k: v for k, v in r.items() if k != "load_kw"})
    return [f"{k}: {saved.get(k, '<missing>')!r} in the file, {want.get(k, '<missing>')!r} in the recipe"
            for k in sorted(set(want) | set(saved)) if saved.get(k) != want.get(k)]


def _load_cached(name: str, ckpt: Path, expect: dict, r: dict, device, verbose: bool):
    """``(model, meta)`` from the cached checkpoint, or None when it cannot be read or no longer fits
    the recipe (then it is set aside as ``*.stale.pt``, never deleted, and the caller trains again)."""
    try:
        seen = ckpt.stat()
        model, meta = load_checkpoint(ckpt, expect=expect, device=device)
        diffs = _recipe_differences(meta.get("recipe"), r)
        if diffs:
            raise CheckpointMismatchError(f"checkpoint {ckpt} was trained with other settings:\n  " + "\n  ".join(diffs))
    except FileNotFoundError:           # another process set it aside meanwhile
        return None
    except CheckpointError as err:
        # The file name encodes the recipe, so a file that does not fit was written by an older
        # version of it (or is damaged): keep it aside, train afresh.
        stale = _set_aside(ckpt, seen)
        lines = str(err).splitlines()
        why = (lines[1] if len(lines) > 1 else lines[0]).strip()
        kept = f"kept it as {stale.name}" if stale else "left it in place"
        print(f"the cached checkpoint cannot be used for the current {name} recipe ({why}); {kept}, training again")
        return None
    if verbose:
        print(f"loaded {name} ({meta['arch']}, {meta['source']} data, {'fast' if meta['fast'] else 'full'} mode) "
              f"from {config.display_path(ckpt)}")
    return model, meta


def _training_indices(train_idx: np.ndarray, max_train: int | None, seed: int) -> np.ndarray:
    if max_train and len(train_idx) > max_train:
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(train_idx, max_train, replace=False))
    return train_idx


def _build(r: dict, ds, train_idx: np.ndarray):
    """The recipe's network; trained from scratch, it normalises with the training set's own statistics."""
    in_ch = ds.images.shape[-1]
    mean = std = None
    if not r["pretrained"]:
        x_tr = ds.images[train_idx].reshape(-1, in_ch).astype(np.float32) / 255.0
        mean = tuple(float(v) for v in x_tr.mean(0))
        std = tuple(float(max(v, 1e-3)) for v in x_tr.std(0))
        del x_tr
    task = ds.task if ds.task in ("binary", "multiclass", "multilabel") else "multiclass"
    return build_model(r["arch"], len(ds.class_names) if task != "binary" else 2, in_channels=in_ch,
                       pretrained=r["pretrained"], class_names=list(ds.class_names), task=task,
                       input_size=r["size"], width=r.get("width", 16), mean=mean, std=std)


def _train(model, r: dict, x_train, y_train, x_val, y_val, seed: int, device, progress: bool, verbose: bool) -> dict:
    """Train ``model`` the way its recipe says: linear probe, frozen prefix, or the plain loop."""
    info = model_info(model)
    if info.arch == "efficientnet_lite0_ms":
        return fit_linear_probe(model, x_train, y_train, x_val, y_val, device=device, progress=progress,
                                verbose=verbose)
    weights = pos_weights(y_train) if info.task == "multilabel" else class_weights(y_train, info.num_outputs)
    fit_kw = dict(epochs=r["epochs"], lr=r["lr"], loss_weights=weights, patience=r.get("patience", 4),
                  device=device, progress=progress, verbose=verbose, max_minutes=r.get("max_minutes"))
    if r.get("frozen_blocks") and info.arch == "efficientnet_lite0":
        return fit_frozen_prefix(model, x_train, y_train, x_val, y_val, frozen_blocks=r["frozen_blocks"],
                                 batch_size=r["batch_size"], seed=seed, **fit_kw)
    train_loader = TensorLoader(x_train, y_train, batch_size=r["batch_size"], shuffle=True,
                                augment=r["augment"], seed=seed, drop_last=len(x_train) > r["batch_size"])
    val_loader = TensorLoader(x_val, y_val, batch_size=256)
    return fit(model, train_loader, val_loader, task=info.task, **fit_kw)


def get_trained_model(name: str, fast: bool | None = None, root=None, retrain: bool = False, seed: int = 0,
                      device=None, progress: bool = True, verbose: bool = True, **overrides):
    """A trained model for a later chapter: loads the cached checkpoint or trains one and saves it.

    name       "planted_skin", "planted_chest" (synthetic, seconds), "pneumonia" (PneumoniaMNIST),
               "skin_binary" (HAM10000 melanoma vs rest), "skin_7class", "cxr_multilabel" (NIH boxed set).
               A real set missing from the data root falls back to its planted stand-in with a banner.
    fast       small, quick model (default: ``config.fast_mode()``); a fast checkpoint never stands
               in for a full one (the file name says which).
    retrain    ignore a cached checkpoint. seed: data split and initialisation.
    overrides  recipe entries, e.g. ``epochs=20``, ``arch="resnet18_small"``, ``spurious_corr=0.9``
               (planted sets only), ``shortcut=("ink", 0.9)`` (binary sets: the artifact drawn on 90 % of
               the class-1 images, in every split; chapter 12's cheating model). An override gets its own
               checkpoint (a hash of the overrides in the file name); a cached file trained with other
               settings than the recipe's is set aside as ``*.stale.pt`` and the model trained again.

    Returns ``(model, info)``; info: name, dataset, source ("real"/"synthetic"), fast, arch, task,
    class_names, input_size, in_channels, mean, std, model_info, split_seed, metrics (test set),
    history (None when loaded), checkpoint (path; None when it could not be saved), trained_now,
    seconds, data (the ImageSet at the model's input size) and split (dict of index arrays).

    Where it looks and saves: ``config.checkpoint_dir()``, then the class's shared cache (``XAI_SHARED_CACHE``,
    read only: see ``python -m xai_helpers.classroom``). When the own folder is read-only (a shared copy without
    write bits, or a read-only disk), it says so with a warning BEFORE training, trains, and returns
    the model in memory; a save that fails after training warns and returns the model too.
    """
    from .. import data as D

    fast = config.fast_mode() if fast is None else bool(fast)
    r, changed = _recipe(name, fast, overrides)
    t_start = time.perf_counter()
    ds = _load_data(name, r, root, seed)
    split = {k: np.asarray(v) for k, v in D.split(ds, seed=seed).items()}
    ckpt = config.checkpoint_dir(root) / _cache_name(name, r, fast, ds.source, seed, changed)
    device = torch.device(device) if device is not None else config.get_device()

    def result(model, meta, history, trained_now, path):
        use_fast_layout(model)                 # channels-last EfficientNet on a CPU: same maps, faster
        return model, dict(meta, history=history, checkpoint=None if path is None else str(path),
                           trained_now=trained_now, seconds=time.perf_counter() - t_start, data=ds, split=split)

    found = config.lookup(ckpt)          # ours, else the class's shared cache (never written)
    if found.exists() and not retrain:
        expect = dict(name=name, dataset=ds.name, source=ds.source, fast=fast, split_seed=seed, arch=r["arch"],
                      input_size=r["size"], class_names=list(ds.class_names), in_channels=ds.images.shape[-1])
        loaded = _load_cached(name, found, expect, r, device, verbose)
        if loaded is not None:
            return result(*loaded, history=None, trained_now=False, path=found)

    can_save = config.writable(ckpt.parent)
    if not can_save:
        warnings.warn(f"{name}: the trained model will not be saved: {ckpt.parent} is read-only. Set "
                      f"XAI_CACHE_DIR to a writable folder to keep it (training now, kept in memory only)",
                      stacklevel=2)
    if verbose:
        print(f"training {name}: {r['arch']} on {ds.name} ({ds.source}, {len(ds)} images, "
              f"{'fast' if fast else 'full'} mode) -> {config.display_path(ckpt) if can_save else 'memory only'}")
    model, meta, hist = _train_and_score(name, r, ds, split, fast, seed, device, progress, verbose)
    meta, path = _save(ckpt, model, meta, verbose) if can_save else (checkpoint_meta(model, meta), None)
    return result(model, meta, history=hist, trained_now=True, path=path)


def _train_and_score(name: str, r: dict, ds, split: dict, fast: bool, seed: int, device, progress, verbose):
    """Build and train the recipe's model; score it on the test split. -> (model, meta, history)."""
    from ..metrics import classification_report

    config.seed_everything(seed)
    train_idx = _training_indices(split["train"], r.get("max_train"), seed)
    model = _build(r, ds, train_idx)
    info = model_info(model)

    def tensors(idx):
        return resize_tensor(images_to_tensor(ds.images[idx], info.mean, info.std), r["size"])

    x_train, x_val, x_test = tensors(train_idx), tensors(split["val"]), tensors(split["test"])
    y = ds.labels
    hist = _train(model, r, x_train, y[train_idx], x_val, y[split["val"]], seed, device, progress, verbose)
    metrics = classification_report(y[split["test"]], predict(model, x_test, device=device), info.task,
                                    class_names=list(ds.class_names))
    meta = dict(name=name, dataset=ds.name, source=ds.source, fast=fast, split_seed=seed, input_size=r["size"],
                recipe={k: v for k, v in r.items() if k not in ("load_kw",)},
                n_train=len(train_idx), n_val=len(split["val"]), n_test=len(split["test"]),
                metrics=metrics, history=dict(hist))
    if verbose:
        print(f"test ROC-AUC (auc_macro) {metrics.get('auc_macro', float('nan')):.4f}")
    return model, meta, hist


def _save(ckpt: Path, model, meta: dict, verbose: bool) -> tuple[dict, Path | None]:
    """Save the checkpoint and read it back; a failed save warns and keeps the model in memory."""
    try:
        save_checkpoint(ckpt, model, meta)
    except OSError as err:
        warnings.warn(f"could not save the trained model to {ckpt} ({err.strerror or err}); it is kept in memory "
                      "only. Set XAI_CACHE_DIR to a writable folder to keep it", stacklevel=3)
        return checkpoint_meta(model, meta), None
    if verbose:
        print(f"saved {config.display_path(ckpt)}")
    try:
        _, saved = load_checkpoint(ckpt, model=model)  # the saved file round-trips
    except FileNotFoundError:                          # another process set it aside meanwhile
        saved = checkpoint_meta(model, meta)
    return saved, ckpt
