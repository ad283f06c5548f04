"""Transfer learning on a CPU with EfficientNet-Lite0's ImageNet weights.

* :func:`fit_frozen_prefix` -- run the frozen early layers once, fine-tune the rest on their output.
* :func:`fit_linear_probe` -- train only the linear heads of an ``efficientnet_lite0_ms`` model on
  pooled features of its frozen networks (a regularised logistic regression per member).

Both keep the model one ordinary network that later chapters explain end to end. They reach into
the layers of ``efficientnet_lite_pytorch``'s ``EfficientNet`` (``_conv_stem``, ``_blocks``, ...),
whose names that library fixes.
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings
import zipfile

import numpy as np
import torch
from torch import nn

from .. import config
from ..model_info import model_info, probabilities
from ..models import use_fast_layout
from .loop import TensorLoader, fit, predict, validation_score


# ============================================================================================
# fine-tuning the late layers on cached feature maps of the frozen early ones
# ============================================================================================
class _Lite0Prefix(nn.Module):
    """EfficientNet-Lite0 stem + blocks[:k] (frozen, run once)."""

    def __init__(self, net, k):
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x):
        n = self.net
        x = n._swish(n._bn0(n._conv_stem(x)))
        for idx in range(self.k):
            x = n._blocks[idx](x)
        return x


class _Lite0Suffix(nn.Module):
    """blocks[k:] + head + classifier. Registers ONLY these layers (they are shared with the full
    model), so that training and BatchNorm re-estimation never touch the frozen prefix."""

    def __init__(self, net, k):
        super().__init__()
        self.k, self.nb = k, len(net._blocks)
        self.rate = net._global_params.drop_connect_rate
        self.blocks = nn.ModuleList(list(net._blocks)[k:])
        self.conv_head, self.bn1, self.act = net._conv_head, net._bn1, net._swish
        self.pool, self.dropout, self.fc = net._avg_pooling, net._dropout, net._fc

    def forward(self, x):
        for j, block in enumerate(self.blocks):
            idx = self.k + j
            x = block(x, drop_connect_rate=self.rate * idx / self.nb if self.rate else None)
        x = self.act(self.bn1(self.conv_head(x)))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


@torch.no_grad()
def _run(module, x, batch_size=None, device=None, desc="features", progress=True):
    from tqdm.auto import tqdm

    batch_size = config.images_per_pass(x, batch_size)   # default: the pixel budget
    out = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc, leave=False, disable=not progress):
        out.append(module(x[i:i + batch_size].to(device)).cpu())
    return torch.cat(out)


def _check_arch(model, arch: str, fn: str) -> None:
    if model_info(model).arch != arch:
        raise ValueError(f"{fn} is written for arch={arch!r}, not {model_info(model).arch!r}")


def fit_frozen_prefix(model, x_train, y_train, x_val, y_val, frozen_blocks: int = 11, batch_size: int = 64,
                      seed: int = 0, device=None, **fit_kw) -> dict:
    """Transfer learning that fits a CPU: EfficientNet-Lite0's stem and first ``frozen_blocks`` blocks
    keep their ImageNet weights and run ONCE over the images; the remaining blocks, the head and the
    classifier are fine-tuned on those cached feature maps (augmented by flips / 90-degree turns of
    the maps). ``fit_kw`` go to :func:`~xai_helpers.training.fit` (epochs, lr, loss_weights, ...).
    """
    _check_arch(model, "efficientnet_lite0", "fit_frozen_prefix")
    device = torch.device(device or config.get_device())
    progress = fit_kw.get("progress", True)
    model.to(device).eval()
    prefix, suffix = _Lite0Prefix(model, frozen_blocks), _Lite0Suffix(model, frozen_blocks)
    t0 = time.perf_counter()
    f_train = _run(prefix, x_train, device=device, desc="frozen layers (train)", progress=progress)
    f_val = _run(prefix, x_val, device=device, desc="frozen layers (val)", progress=progress)
    t_feat = time.perf_counter() - t0
    for name, p in model.named_parameters():
        p.requires_grad = not (name.startswith("_conv_stem") or name.startswith("_bn0") or
                               (name.startswith("_blocks.") and int(name.split(".")[1]) < frozen_blocks))
    train_loader = TensorLoader(f_train, y_train, batch_size=batch_size, shuffle=True, augment="dihedral",
                                seed=seed, drop_last=len(f_train) > batch_size)
    val_loader = TensorLoader(f_val, y_val, batch_size=256)
    hist = fit(suffix, train_loader, val_loader, task=model_info(model).task, device=device, **fit_kw)
    for p in model.parameters():
        p.requires_grad = True
    model.eval()
    hist["feature_seconds"] = t_feat
    hist["train_seconds"] += t_feat
    hist["frozen_blocks"] = frozen_blocks
    return hist


# ============================================================================================
# the linear probe: logistic heads on pooled features of frozen networks
# ============================================================================================
def _logistic_head(f_train, y_train, f_val, y_val, task, Cs):
    """A regularised logistic regression on standardised features, C picked on the validation set.
    Returns (weight (K, d), bias (K,), C, validation AUC)."""
    from sklearn.linear_model import LogisticRegression

    best = None
    for C in Cs:
        if task == "multilabel":                 # one regression per finding
            W, B = np.zeros((y_train.shape[1], f_train.shape[1])), np.zeros(y_train.shape[1])
            for k in range(y_train.shape[1]):
                yk = y_train[:, k]
                if yk.min() == yk.max():         # a finding absent from training: its prevalence only
                    p = np.clip(yk.mean(), 1e-3, 1 - 1e-3)
                    B[k] = np.log(p / (1 - p))
                    continue
                clf = LogisticRegression(C=C, max_iter=2000, class_weight="balanced").fit(f_train, yk)
                W[k], B[k] = clf.coef_[0], clf.intercept_[0]
        else:
            clf = LogisticRegression(C=C, max_iter=3000, class_weight="balanced").fit(f_train, y_train)
            if task == "binary":                 # two logits whose softmax is the regression's sigmoid
                W = np.stack([-clf.coef_[0] / 2, clf.coef_[0] / 2])
                B = np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2])
            else:
                W, B = clf.coef_, clf.intercept_
        logits = torch.as_tensor(f_val @ W.T + B, dtype=torch.float32)
        auc = validation_score(y_val, probabilities(logits, task).numpy(), task)
        if best is None or auc > best[3]:
            best = (W, B, C, auc)
    return best


# --------------------------------------------------------------------------------------------
# The frozen networks' features, kept per image: chapter 01's two probes (binary, 7 classes) and the
# shortcut probes of chapters 11 and 12 read mostly the same HAM10000 images through the same ImageNet
# networks, so each image's features are computed once and kept, in memory and under the cache folder
# (``features/<network fingerprint>.npz``; 2 x 3,968 floats, 31 KB per image). The key of an image is a
# hash of its input tensor, the key of a file a hash of the member network's weights, its scale and the
# depths read, so a changed image, network or read-out never meets an old entry.
# --------------------------------------------------------------------------------------------
FEATURES_VERSION = 1
_FEATURES: dict[str, dict[bytes, np.ndarray]] = {}      # network fingerprint -> image hash -> features


def _member_key(model, i: int) -> str:
    h = hashlib.sha1(f"lite0-ms features v{FEATURES_VERSION} | scale {model.scales[i]} | levels {model.LEVELS}"
                     .encode())
    for name, t in model.nets[i].state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _image_keys(x: torch.Tensor) -> list[bytes]:
    a = x.detach().cpu().float().contiguous().numpy()
    return [hashlib.sha1(a[j].tobytes()).digest() for j in range(len(a))]


def _features_path(key: str):
    return config.cache_dir() / "features" / f"{key}.npz"


def _feature_store(key: str) -> dict[bytes, np.ndarray]:
    """This network's features, from memory, else from our cache folder or the class's shared one."""
    if key in _FEATURES:
        return _FEATURES[key]
    store: dict[bytes, np.ndarray] = {}
    path = config.lookup(_features_path(key))
    if path.exists():
        try:
            with np.load(path) as z:
                keys, feats = z["keys"], z["features"]
            if keys.ndim != 2 or keys.shape[1] != 20 or len(keys) != len(feats):
                raise ValueError(f"keys {keys.shape} and features {feats.shape} do not match")
            store = {k.tobytes(): f for k, f in zip(keys, feats)}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            warnings.warn(f"the feature cache {config.display_path(path)} cannot be read ({err}); computing the "
                          "features again (the file is replaced when the cache folder is writable)", stacklevel=3)
            store = {}
    _FEATURES[key] = store
    return store


def _save_store(key: str, store: dict[bytes, np.ndarray]) -> None:
    """Write the store to our own cache folder, atomically; a read-only or full disk only loses the speed-up."""
    path = _features_path(key)
    if not config.writable(path.parent):
        return
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.frombuffer(b"".join(store), np.uint8).reshape(-1, 20)
        np.savez(tmp, keys=keys, features=np.stack(list(store.values())))
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"the feature cache could not be saved to {config.display_path(path)} "
                      f"({err.strerror or err}); the next probe computes the features again", stacklevel=3)


@torch.no_grad()
def _member_features(model, i: int, x, batch_size, device, progress: bool, cache: bool = True,
                     verbose: bool = False) -> np.ndarray:
    """Member ``i``'s pooled multi-depth features of ``x`` (resized to its scale), channels-last; with
    ``cache``, only the images whose features are not kept yet go through the network."""
    def compute(xx):
        return _run(lambda b: model.pooled(i, model.member_input(i, b).contiguous(memory_format=torch.channels_last)),
                    xx, batch_size=batch_size, device=device, desc=f"features, scale {model.scales[i]} px",
                    progress=progress).numpy()

    if not cache:
        return compute(x)
    key = _member_key(model, i)
    store, keys = _feature_store(key), _image_keys(x)
    todo: dict[bytes, int] = {}
    for j, k in enumerate(keys):
        if k not in store and k not in todo:
            todo[k] = j
    if verbose and len(todo) < len(keys):
        print(f"scale {model.scales[i]} px: features of {len(keys) - len(todo)} of {len(keys)} images from the cache")
    if todo:
        rows = list(todo.values())
        for k, f in zip(todo, compute(x[rows])):
            store[k] = f
        _save_store(key, store)
    return np.stack([store[k] for k in keys])


@torch.no_grad()
def _fit_member_head(model, i, x_train, y_train, x_val, y_val, task, Cs, batch_size, device, progress,
                     cache=True, verbose=False):
    """Standardise member ``i``'s features, fit its logistic head, write both into the model.
    Returns (C, validation AUC)."""
    net = model.nets[i]
    net.to(memory_format=torch.channels_last)
    f_tr = _member_features(model, i, x_train, batch_size, device, progress, cache, verbose)
    f_va = _member_features(model, i, x_val, batch_size, device, progress, cache, verbose)
    net.to(memory_format=torch.contiguous_format)
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-6
    W, B, C, auc = _logistic_head((f_tr - mu) / sd, y_train, (f_va - mu) / sd, y_val, task, Cs)
    model.feat_mean[i] = torch.as_tensor(mu, dtype=torch.float32)
    model.feat_std[i] = torch.as_tensor(sd, dtype=torch.float32)
    model.heads[i].weight.copy_(torch.as_tensor(W, dtype=torch.float32))
    model.heads[i].bias.copy_(torch.as_tensor(B, dtype=torch.float32))
    return C, auc


def fit_linear_probe(model, x_train, y_train, x_val, y_val, Cs=(0.0003, 0.001, 0.003), device=None,
                     progress: bool = True, verbose: bool = True, batch_size: int | None = None,
                     feature_cache: bool = True) -> dict:
    """Train the linear heads of an ``efficientnet_lite0_ms`` model; the networks stay as ImageNet made them.

    1. run every member network once over the images (at its scale) and keep the pooled features;
    2. standardise them with the training set's mean and standard deviation (stored in the model);
    3. fit an L2-regularised logistic regression per member (class-balanced; one per finding for a
       multi-label task), choosing its strength C on the validation set by ROC-AUC.
    No gradient step touches the networks, so a few thousand images train in minutes on a CPU; the
    strong regularisation matters with ~2,000 features and a few hundred positives. ``feature_cache``:
    keep each image's features (memory and ``<cache>/features``) so that a later probe on the same images,
    e.g. another task or a copy of the set with a few images changed, runs only the new ones through the
    networks (the heads are the same up to float rounding: tests/test_training.py).
    Returns a history with the same keys as :func:`~xai_helpers.training.fit` (one "epoch").
    """
    _check_arch(model, "efficientnet_lite0_ms", "fit_linear_probe")
    device = torch.device(device) if device is not None else config.get_device()
    task = model_info(model).task
    y_tr, y_va = np.asarray(y_train), np.asarray(y_val)
    t0 = time.perf_counter()
    model.to(device).eval()
    chosen, val_aucs = [], []
    for i in range(len(model.nets)):
        C, auc = _fit_member_head(model, i, x_train, y_tr, x_val, y_va, task, Cs, batch_size, device, progress,
                                  feature_cache, verbose)
        chosen.append(C)
        val_aucs.append(auc)
        if verbose:
            print(f"scale {model.scales[i]} px: logistic head C={C:g}, validation AUC {auc:.4f}")
    use_fast_layout(model)                 # channels-last on a CPU, as get_trained_model hands models out
    probs = predict(model, x_val, device=device)
    best = validation_score(y_va, probs, task)
    seconds = time.perf_counter() - t0
    if verbose:
        print(f"both scales averaged: validation AUC {best:.4f} ({seconds:.0f} s)")
    n = len(x_train) * len(model.nets)
    return dict(train_loss=[float("nan")], val_loss=[float("nan")], val_auc=[best], lr=[float("nan")],
                seconds=[seconds], best_epoch=0, best_val_auc=best, stopped_early=False, epochs_run=1,
                train_seconds=seconds, images_seen=n, images_per_s=n / max(seconds, 1e-9),
                probe_C=chosen, member_val_auc=val_aucs, scales=list(model.scales))
