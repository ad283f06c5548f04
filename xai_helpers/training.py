"""Training, prediction and checkpoints: a plain loop that a learner can read top to bottom.

    >>> from xai_helpers.training import get_trained_model
    >>> model, info = get_trained_model("planted_skin")   # cached checkpoint, or trains one (seconds)

The pieces, in the order a notebook uses them:

* :class:`TensorLoader` -- batches from tensors already in memory, with random flips / 90-degree
  turns / shifts as augmentation (much faster on a CPU than decoding images every epoch).
* :func:`fit` -- epochs of SGD (AdamW) with a one-cycle learning-rate schedule, a class-weighted
  loss for imbalance, validation ROC-AUC after every epoch, early stopping on it, and the best
  weights restored at the end.
* :func:`predict` -- probabilities (softmax for binary / multiclass, sigmoid for multilabel).
* :func:`save_checkpoint` / :func:`load_checkpoint` -- weights + metadata, read back with
  ``torch.load(weights_only=True)``; a file that does not match the model or the data says what differs.
* :func:`get_trained_model` -- the one call later chapters use.
"""
from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import config
from .models import build_model, model_summary
from .data import images_to_tensor  # noqa: F401  (re-exported: notebooks import it from here)

CHECKPOINT_FORMAT = "xai-medimg-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read (corrupt, truncated, or not a checkpoint of ours)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint was read but does not fit the model or the data it is being used with."""


# ============================================================================================
# data in memory -> batches
# ============================================================================================
def resize_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                     antialias=True)


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random augmentation of a normalised batch, one draw per image.

    "dermoscopy": flips and 90-degree turns (a lesion has no "up") + shifts of up to 1/16 of the side.
    "xray":       shifts only (hearts are on the left: no flips).
    "dihedral":   flips and 90-degree turns only (for cached feature maps, see :func:`fit_frozen_prefix`).
    "none" / None: unchanged.
    """
    if mode in (None, "none"):
        return x
    n, _, h, w = x.shape
    g = generator
    out = x.clone()
    if mode in ("dermoscopy", "dihedral"):
        k = torch.randint(0, 4, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        for i in range(n):
            xi = out[i]
            if flip[i]:
                xi = xi.flip(-1)
            if k[i]:
                xi = torch.rot90(xi, int(k[i]), dims=(-2, -1))
            out[i] = xi
    elif mode != "xray":
        raise ValueError(f"augment must be 'dermoscopy', 'xray', 'dihedral' or 'none', got {mode!r}")
    if mode == "dihedral":
        return out
    # random shift with reflection padding
    pad = max(1, h // 16)
    padded = nn.functional.pad(out, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


class TensorLoader:
    """Iterate over ``(x, y)`` batches of in-memory tensors, optionally shuffled and augmented.

    Works like a ``DataLoader`` for :func:`fit` and :func:`predict` (``len()`` = batches per epoch).
    """

    def __init__(self, x: torch.Tensor, y, batch_size: int = 64, shuffle: bool = False,
                 augment: str | None = None, seed: int = 0, drop_last: bool = False):
        self.x = x
        self.y = torch.as_tensor(np.asarray(y)) if y is not None else None
        if self.y is not None and len(self.y) != len(self.x):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} labels")
        self.batch_size, self.shuffle, self.augment = int(batch_size), shuffle, augment
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.x) / self.batch_size
        return int(n) if self.drop_last else math.ceil(n)

    def __iter__(self):
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            xb = augment_batch(self.x[idx], self.augment, self.generator) if self.augment else self.x[idx]
            yield (xb, self.y[idx]) if self.y is not None else xb


# ============================================================================================
# losses for imbalanced data
# ============================================================================================
def class_weights(labels, num_classes: int | None = None) -> torch.Tensor:
    """Inverse-frequency weights ``N / (K * n_k)`` for cross entropy: each class counts equally."""
    labels = np.asarray(labels).astype(int)
    k = num_classes or labels.max() + 1
    counts = np.bincount(labels, minlength=k).astype(float)
    if (counts == 0).any():
        raise ValueError(f"class(es) {np.where(counts == 0)[0].tolist()} have no training example")
    return torch.tensor(len(labels) / (k * counts), dtype=torch.float32)


def pos_weights(labels) -> torch.Tensor:
    """``n_negative / n_positive`` per finding, for ``BCEWithLogitsLoss(pos_weight=...)``."""
    y = np.asarray(labels, dtype=float)
    pos = y.sum(0)
    neg = len(y) - pos
    return torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), dtype=torch.float32)


def make_loss(task: str, weights: torch.Tensor | None = None) -> nn.Module:
    """Binary / multiclass: cross entropy over the logits (2 logits for binary), optionally class
    weighted. Multilabel: one sigmoid per finding, BCE with ``pos_weight``."""
    if task == "multilabel":
        return nn.BCEWithLogitsLoss(pos_weight=weights)
    return nn.CrossEntropyLoss(weight=weights)


def logits_to_probs(logits: torch.Tensor, task: str) -> torch.Tensor:
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


# ============================================================================================
# the loop
# ============================================================================================
def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, data, batch_size: int = 128, device=None, tta: bool = False,
            return_labels: bool = False, progress: bool = False):
    """Class probabilities as a numpy array (N, K): softmax for binary/multiclass, sigmoid for multilabel.

    ``data``: a normalised float tensor (N, C, H, W), or any loader yielding ``x`` or ``(x, y)``.
    ``tta=True`` averages over a horizontal flip. ``return_labels=True`` also returns the labels the
    loader yields: ``probs, labels``.
    """
    task = getattr(model, "task", "multiclass")
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval().to(device)
    if isinstance(data, torch.Tensor):
        data = TensorLoader(data, None, batch_size=batch_size)
    probs, labels = [], []
    it = data
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(data, desc="predict", leave=False)
    for batch in it:
        xb, yb = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) else (batch, None)
        xb = xb.to(device)
        p = logits_to_probs(model(xb), task)
        if tta:
            p = 0.5 * (p + logits_to_probs(model(xb.flip(-1)), task))
        probs.append(p.float().cpu())
        if yb is not None:
            labels.append(torch.as_tensor(yb).cpu())
    model.train(was_training)
    probs = torch.cat(probs).numpy() if probs else np.zeros((0, getattr(model, "num_outputs", 0)))
    if return_labels:
        return probs, (torch.cat(labels).numpy() if labels else None)
    return probs


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader, device=None, max_batches: int | None = 50) -> bool:
    """Recompute every BatchNorm layer's running mean/variance for the *final* weights.

    During training the running statistics are an exponential average over batches seen with
    older weights; after a short, fast-changing run they lag behind, and the model in eval mode
    can predict one class for everything even though its ranking (AUC) is perfect. One forward
    pass over training batches with a cumulative average fixes that. Returns False if no BN.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return False
    device = torch.device(device) if device is not None else _model_device(model)
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    model.train()
    for b, batch in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        xb = batch[0] if isinstance(batch, (list, tuple)) else batch
        model(xb.to(device))
    for m, mom in saved:
        m.momentum = mom
    model.eval()
    return True


def _score(y, probs, task) -> float:
    """The early-stopping score: ROC-AUC (macro over classes / findings)."""
    from .metrics import auc_score
    try:
        return auc_score(y, probs, task)
    except ValueError:  # a validation set with one class only
        return float("nan")


def fit(model: nn.Module, train_loader, val_loader=None, task: str | None = None, epochs: int = 10,
        lr: float = 1e-3, weight_decay: float = 1e-4, loss_weights: torch.Tensor | None = None,
        schedule: str = "onecycle", patience: int | None = 5, max_minutes: float | None = None,
        device=None, progress: bool = True, verbose: bool = True, params=None,
        recalibrate_bn: bool = True) -> dict:
    """Train ``model`` in place and return its history; the best weights (by validation AUC) are restored.

    train_loader / val_loader  yield ``(x, y)``: x normalised (N, C, H, W); y int64 (N,) class
                               indices, or float (N, K) 0/1 for multilabel.
    task                       binary / multiclass / multilabel (default: ``model.task``).
    loss_weights               class weights (cross entropy) or pos_weight (multilabel): see
                               :func:`class_weights`, :func:`pos_weights`. None: unweighted.
    schedule                   "onecycle" (warm-up then cosine decay, per batch), "cosine" or "constant".
    patience                   stop after this many epochs without a better validation AUC (None: never).
    max_minutes                stop after the epoch that crosses this wall-time budget.
    params                     the parameters to optimise (default: those with requires_grad).
    recalibrate_bn             after training, recompute BatchNorm statistics for the final weights
                               (see :func:`recalibrate_batchnorm`) before the last validation.

    Returns a dict of lists per epoch (``train_loss``, ``val_loss``, ``val_auc``, ``lr``, ``seconds``)
    and ``best_epoch``, ``best_val_auc``, ``stopped_early``, ``train_seconds``, ``images_seen``,
    ``images_per_s``.
    """
    from tqdm.auto import tqdm

    task = task or getattr(model, "task", None)
    if task not in ("binary", "multiclass", "multilabel"):
        raise ValueError("say which task this is: task='binary', 'multiclass' or 'multilabel'")
    device = torch.device(device) if device is not None else config.get_device()
    model.to(device)
    criterion = make_loss(task, None if loss_weights is None else loss_weights.to(device))
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters (all frozen?)")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = max(1, epochs * len(train_loader))
    if schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.2)
    elif schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    elif schedule == "constant":
        scheduler = None
    else:
        raise ValueError(f"schedule must be 'onecycle', 'cosine' or 'constant', got {schedule!r}")

    hist = dict(train_loss=[], val_loss=[], val_auc=[], lr=[], seconds=[])
    best_auc, best_state, best_epoch, bad_epochs = (-math.inf, 0.0), None, -1, 0
    start, images_seen, stopped_early = time.perf_counter(), 0, False
    epoch_bar = tqdm(range(epochs), desc="epochs", disable=not progress)
    for epoch in epoch_bar:
        t0 = time.perf_counter()
        # ---- one pass over the training data ----
        model.train()
        running, seen = 0.0, 0
        for xb, yb in tqdm(train_loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress):
            xb, yb = xb.to(device), yb.to(device)
            if task == "multilabel":
                yb = yb.float()
            loss = criterion(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            running += loss.item() * len(xb)
            seen += len(xb)
        images_seen += seen
        hist["train_loss"].append(running / max(seen, 1))
        hist["lr"].append(optimizer.param_groups[0]["lr"])
        # ---- validation: loss and ROC-AUC ----
        if val_loader is not None:
            probs, y = predict(model, val_loader, device=device, return_labels=True)
            with torch.no_grad():
                p = torch.as_tensor(probs).clamp(1e-7, 1 - 1e-7)
                yt = torch.as_tensor(y)
                if task == "multilabel":
                    vloss = nn.functional.binary_cross_entropy(p, yt.float()).item()
                else:
                    vloss = nn.functional.nll_loss(p.log(), yt.long()).item()
            auc = _score(y, probs, task)
        else:
            vloss, auc = float("nan"), float("nan")
        hist["val_loss"].append(vloss)
        hist["val_auc"].append(auc)
        hist["seconds"].append(time.perf_counter() - t0)
        epoch_bar.set_postfix(loss=f"{hist['train_loss'][-1]:.3f}", val_auc=f"{auc:.3f}")
        if verbose and not progress:
            print(f"epoch {epoch + 1:>3}/{epochs}  train loss {hist['train_loss'][-1]:.4f}  "
                  f"val loss {vloss:.4f}  val AUC {auc:.4f}  ({hist['seconds'][-1]:.1f} s)")
        # ---- early stopping on validation AUC (keep the best weights) ----
        # ties in AUC (e.g. 1.0 on easy data) go to the lower validation loss: better calibrated
        score = (auc, -vloss) if not math.isnan(auc) else (-hist["train_loss"][-1], 0.0)
        if best_state is None or score > best_auc:
            best_auc, best_epoch, bad_epochs = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            if patience is not None and bad_epochs >= patience:
                stopped_early = True
                break
        if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
            stopped_early = True
            break
    epoch_bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    if recalibrate_bn and recalibrate_batchnorm(model, train_loader, device=device) and val_loader is not None:
        probs, y = predict(model, val_loader, device=device, return_labels=True)
        hist["val_auc_after_bn_recalibration"] = _score(y, probs, task)
    model.eval()
    total = time.perf_counter() - start
    hist.update(best_epoch=best_epoch, best_val_auc=(best_auc[0] if val_loader is not None else float("nan")),
                stopped_early=stopped_early, train_seconds=total, images_seen=images_seen,
                images_per_s=images_seen / max(total, 1e-9), epochs_run=len(hist["train_loss"]))
    if verbose:
        print(f"trained {hist['epochs_run']} epoch(s) in {total:.1f} s ({hist['images_per_s']:.0f} img/s); "
              f"best validation AUC {hist['best_val_auc']:.4f} at epoch {best_epoch + 1}")
    return hist


# ============================================================================================
# transfer learning on a CPU: run the frozen early layers once, train the rest on their output
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
        self.task = getattr(net, "task", None)
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
def _run(module, x, batch_size=128, device=None, desc="features", progress=True):
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc, leave=False, disable=not progress):
        out.append(module(x[i:i + batch_size].to(device)).cpu())
    return torch.cat(out)


def fit_frozen_prefix(model, x_train, y_train, x_val, y_val, frozen_blocks: int = 11, **fit_kw) -> dict:
    """Transfer learning that fits a CPU: EfficientNet-Lite0's stem and first ``frozen_blocks`` blocks
    keep their ImageNet weights and run ONCE over the images; the remaining blocks, the head and the
    classifier are fine-tuned on those cached feature maps (augmented by flips / 90-degree turns of
    the maps). The model stays one ordinary network: later chapters explain it end to end.
    """
    if getattr(model, "arch", None) != "efficientnet_lite0":
        raise ValueError("fit_frozen_prefix is written for efficientnet_lite0")
    device = torch.device(fit_kw.pop("device", None) or config.get_device())
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
    batch_size = fit_kw.pop("batch_size", 64)
    seed = fit_kw.pop("seed", 0)
    train_loader = TensorLoader(f_train, y_train, batch_size=batch_size, shuffle=True, augment="dihedral",
                                seed=seed, drop_last=len(f_train) > batch_size)
    val_loader = TensorLoader(f_val, y_val, batch_size=256)
    hist = fit(suffix, train_loader, val_loader, task=model.task, device=device, **fit_kw)
    for p in model.parameters():
        p.requires_grad = True
    model.eval()
    hist["feature_seconds"] = t_feat
    hist["train_seconds"] += t_feat
    hist["frozen_blocks"] = frozen_blocks
    return hist


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
        probs = torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, 1)
        auc = _score(y_val, probs.numpy(), task)
        if best is None or auc > best[3]:
            best = (W, B, C, auc)
    return best


def fit_linear_probe(model, x_train, y_train, x_val, y_val, Cs=(0.0003, 0.001, 0.003), device=None,
                     progress: bool = True, verbose: bool = True, batch_size: int = 64, **_ignored) -> dict:
    """Train the linear heads of an ``efficientnet_lite0_ms`` model; the networks stay as ImageNet made them.

    1. run every member network once over the images (at its scale) and keep the pooled features;
    2. standardise them with the training set's mean and standard deviation (stored in the model);
    3. fit an L2-regularised logistic regression per member (class-balanced; one per finding for a
       multi-label task), choosing its strength C on the validation set by ROC-AUC.
    No gradient step touches the networks, so a few thousand images train in minutes on a CPU; the
    strong regularisation matters with ~2,000 features and a few hundred positives.
    Returns a history with the same keys as :func:`fit` (one "epoch").
    """
    if getattr(model, "arch", None) != "efficientnet_lite0_ms":
        raise ValueError("fit_linear_probe is written for arch='efficientnet_lite0_ms'")
    device = torch.device(device) if device is not None else config.get_device()
    task = model.task
    y_tr, y_va = np.asarray(y_train), np.asarray(y_val)
    t0 = time.perf_counter()
    model.to(device).eval()
    chosen, val_aucs = [], []
    with torch.no_grad():
        for i, net in enumerate(model.nets):
            net.to(memory_format=torch.channels_last)

            def feats(x, i=i):
                return _run(lambda b: model.pooled(i, model.member_input(i, b).contiguous(
                    memory_format=torch.channels_last)), x, batch_size=batch_size, device=device,
                    desc=f"features, scale {model.scales[i]} px", progress=progress).numpy()
            f_tr, f_va = feats(x_train), feats(x_val)
            net.to(memory_format=torch.contiguous_format)
            mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-6
            W, B, C, auc = _logistic_head((f_tr - mu) / sd, y_tr, (f_va - mu) / sd, y_va, task, Cs)
            model.feat_mean[i] = torch.as_tensor(mu, dtype=torch.float32)
            model.feat_std[i] = torch.as_tensor(sd, dtype=torch.float32)
            model.heads[i].weight.copy_(torch.as_tensor(W, dtype=torch.float32))
            model.heads[i].bias.copy_(torch.as_tensor(B, dtype=torch.float32))
            chosen.append(C)
            val_aucs.append(auc)
            if verbose:
                print(f"scale {model.scales[i]} px: logistic head C={C:g}, validation AUC {auc:.4f}")
    probs = predict(model, x_val, device=device)
    best = _score(y_va, probs, task)
    seconds = time.perf_counter() - t0
    if verbose:
        print(f"both scales averaged: validation AUC {best:.4f} ({seconds:.0f} s)")
    n = len(x_train) * len(model.nets)
    return dict(train_loss=[float("nan")], val_loss=[float("nan")], val_auc=[best], lr=[float("nan")],
                seconds=[seconds], best_epoch=0, best_val_auc=best, stopped_early=False, epochs_run=1,
                train_seconds=seconds, images_seen=n, images_per_s=n / max(seconds, 1e-9),
                probe_C=chosen, member_val_auc=val_aucs, scales=list(model.scales))


# ============================================================================================
# checkpoints
# ============================================================================================
def _versions() -> dict:
    import torchvision

    from . import __version__
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


def save_checkpoint(path, model: nn.Module, meta: dict | None = None) -> Path:
    """Save weights + metadata atomically (write ``path.tmp``, then rename): never a half file.

    The metadata always holds the model's description (arch, classes, task, input size, channels,
    mean/std) and library versions; ``meta`` adds the rest (dataset, split seed, metrics, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = model_summary(model)
    m.update(meta or {})
    m["versions"] = _versions()
    m["saved_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    payload = {"format": CHECKPOINT_FORMAT,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "meta": _plain(m)}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


_MODEL_KEYS = ("arch", "num_outputs", "in_channels", "class_names", "task")


def read_checkpoint(path) -> dict:
    """The raw ``{"format", "state_dict", "meta"}`` dict, with a clear error if it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"could not read checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). The file is "
                              "corrupt, truncated or not a checkpoint saved by xai_helpers; delete it and "
                              "train again (get_trained_model(..., retrain=True)).") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "state_dict" not in payload:
        raise CheckpointError(f"{path} is not an xai_helpers checkpoint (format "
                              f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}, "
                              f"expected {CHECKPOINT_FORMAT!r}); delete it and train again.")
    return payload


def load_checkpoint(path, model: nn.Module | None = None, expect: dict | None = None, device=None):
    """Load a checkpoint; returns ``(model, meta)``.

    model   None: build the model the metadata describes. Given: its arch / outputs / channels /
            classes / task must match the checkpoint, and so must every weight's shape.
    expect  metadata the caller relies on, e.g. ``{"dataset": "pneumoniamnist", "input_size": 28}``;
            any difference raises :class:`CheckpointMismatchError` naming it.
    """
    payload = read_checkpoint(path)
    meta, state = payload["meta"], payload["state_dict"]
    diffs = []
    for k, v in (expect or {}).items():
        got = meta.get(k, "<missing>")
        if _plain(got) != _plain(v):
            diffs.append(f"{k}: checkpoint has {got!r}, expected {v!r}")
    if model is None:
        missing = [k for k in _MODEL_KEYS if k not in meta]
        if missing:
            raise CheckpointError(f"{path} lacks metadata {missing}; cannot rebuild the model")
        model = build_model(meta["arch"], meta["num_outputs"], in_channels=meta["in_channels"],
                            class_names=meta["class_names"], task=meta["task"],
                            input_size=meta.get("input_size"), mean=meta.get("mean"), std=meta.get("std"),
                            width=meta.get("width") or 16)
    else:
        for k in _MODEL_KEYS:
            if hasattr(model, k) and k in meta and _plain(getattr(model, k)) != _plain(meta[k]):
                diffs.append(f"{k}: checkpoint has {meta[k]!r}, model has {getattr(model, k)!r}")
    if diffs:
        raise CheckpointMismatchError(f"checkpoint {path} does not match:\n  " + "\n  ".join(diffs) +
                                      "\nUse a model/data that match, or train again (retrain=True).")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        msg = [f"checkpoint {path} does not fit this model ({meta.get('arch')} in the file, "
               f"{getattr(model, 'arch', type(model).__name__)} here):"]
        if missing:
            msg.append(f"  weights missing from the file: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            msg.append(f"  weights the model lacks: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            msg.append("  shape differences: " + "; ".join(sorted(shapes)[:5]))
        raise CheckpointMismatchError("\n".join(msg))
    model.load_state_dict(state)
    for k in ("mean", "std"):
        if k in meta:
            setattr(model, k, tuple(meta[k]))
    if meta.get("input_size") is not None:
        model.input_size = meta["input_size"]
    model.eval()
    if device is not None:
        model.to(device)
    return model, meta


# ============================================================================================
# one call for the later chapters
# ============================================================================================
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
    # several depths, with logistic heads (fit_linear_probe): fine-tuning the last blocks on ~4,000
    # images lost validation AUC (0.89 -> 0.87) while this takes minutes on a CPU
    "skin_binary": dict(dataset="ham10000", load_kw={"task": "binary"}, arch="efficientnet_lite0_ms", size=192,
                        load_size=192, augment="dermoscopy", epochs=1, lr=0.0, batch_size=64, pretrained=True,
                        fast=dict(arch="small_cnn", size=48, load_size=48, pretrained=False, epochs=3,
                                  max_train=600, lr=3e-3, frozen_blocks=None)),
    "skin_7class": dict(dataset="ham10000", load_kw={"task": "7class"}, arch="efficientnet_lite0_ms", size=192,
                        load_size=192, augment="dermoscopy", epochs=1, lr=0.0, batch_size=64, pretrained=True,
                        fast=dict(arch="small_cnn", size=48, load_size=48, pretrained=False, epochs=3,
                                  max_train=600, lr=3e-3, frozen_blocks=None)),
    "cxr_multilabel": dict(dataset="nih_cxr_bbox", load_kw={}, arch="efficientnet_lite0_ms", size=192,
                           load_size=192, augment="xray", epochs=1, lr=0.0, batch_size=32, pretrained=True,
                           fast=dict(arch="efficientnet_lite0", size=64, load_size=64, epochs=3, lr=2e-3,
                                     frozen_blocks=14, patience=5)),
}


def _recipe(name: str, fast: bool, overrides: dict) -> dict:
    if name not in RECIPES:
        raise ValueError(f"unknown model name {name!r}; choose one of {sorted(RECIPES)}")
    r = {k: v for k, v in RECIPES[name].items() if k != "fast"}
    if fast:
        r.update(RECIPES[name].get("fast", {}))
    r.update({k: v for k, v in overrides.items() if v is not None})
    return r


def _load_data(name: str, r: dict, root, seed: int):
    from . import data as D

    if r["dataset"] == "planted":
        from .synthetic import make_planted
        ds = make_planted(n=r["n"], size=r["size"], kind=r["kind"], spurious_corr=r.get("spurious_corr", 0.0),
                          seed=seed, name=name)
    else:
        ds = D.load_or_synthetic(r["dataset"], size=r.get("load_size", r["size"]), root=root,
                                 **r.get("load_kw", {}))
    return ds


def _set_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.stale[-k].pt`` (never overwriting an earlier one) and return it."""
    k, stale = 0, path.with_name(path.stem + ".stale.pt")
    while stale.exists():
        k += 1
        stale = path.with_name(f"{path.stem}.stale-{k}.pt")
    path.rename(stale)
    return stale


def _cache_name(name, r, fast, source, seed) -> str:
    parts = [name, r["arch"], f"{r['size']}px", "fast" if fast else "full", source, f"seed{seed}"]
    if r.get("spurious_corr"):
        parts.append(f"spur{r['spurious_corr']:+.2f}")
    return "_".join(parts) + ".pt"


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
               (planted sets only).

    Returns ``(model, info)``; info: name, dataset, source ("real"/"synthetic"), fast, arch, task,
    class_names, input_size, in_channels, mean, std, split_seed, metrics (test set), history (None
    when loaded), checkpoint (path), trained_now, seconds, data (the ImageSet at the model's input
    size) and split (dict of index arrays: train/val/test).
    """
    from . import data as D
    from .metrics import classification_report

    fast = config.fast_mode() if fast is None else bool(fast)
    r = _recipe(name, fast, overrides)
    t_start = time.perf_counter()
    ds = _load_data(name, r, root, seed)
    if ds.source == "synthetic" and r["dataset"] != "planted":
        # the stand-in is planted-evidence data: train the planted recipe on it
        r.update(arch="small_cnn", size=ds.images.shape[1], pretrained=False, lr=3e-3, augment=r["augment"])
    task = {"binary": "binary", "multiclass": "multiclass", "multilabel": "multilabel"}.get(ds.task, "multiclass")
    in_ch = ds.images.shape[-1]
    split = D.split(ds, seed=seed)
    split = {k: np.asarray(v) for k, v in split.items()}
    ckpt = config.checkpoint_dir(root) / _cache_name(name, r, fast, ds.source, seed)
    expect = dict(name=name, dataset=ds.name, source=ds.source, fast=fast, split_seed=seed,
                  arch=r["arch"], input_size=r["size"], class_names=list(ds.class_names), in_channels=in_ch)
    device = torch.device(device) if device is not None else config.get_device()

    if ckpt.exists() and not retrain:
        try:
            model, meta = load_checkpoint(ckpt, expect=expect, device=device)
        except CheckpointMismatchError as err:
            # The file name encodes task, arch, size, mode, data and seed, so a cached file that does
            # not fit was written by an older version of this recipe: keep it aside, train afresh.
            stale = _set_aside(ckpt)
            lines = str(err).splitlines()
            print(f"the cached checkpoint does not fit the current {name} recipe "
                  f"({(lines[1] if len(lines) > 1 else lines[0]).strip()}); kept it as {stale.name}, training again")
            model = None
        if model is not None:
            if verbose:
                print(f"loaded {name} ({meta['arch']}, {meta['source']} data, {'fast' if fast else 'full'} mode) "
                      f"from {ckpt}")
            info = dict(meta, history=None, checkpoint=str(ckpt), trained_now=False,
                        seconds=time.perf_counter() - t_start, data=ds, split=split)
            return model, info

    # ---- train ----
    if verbose:
        print(f"training {name}: {r['arch']} on {ds.name} ({ds.source}, {len(ds)} images, "
              f"{'fast' if fast else 'full'} mode) -> {ckpt}")
    config.seed_everything(seed)
    train_idx = split["train"]
    if r.get("max_train") and len(train_idx) > r["max_train"]:
        rng = np.random.default_rng(seed)
        train_idx = np.sort(rng.choice(train_idx, r["max_train"], replace=False))
    model = build_model(r["arch"], len(ds.class_names) if task != "binary" else 2, in_channels=in_ch,
                        pretrained=r["pretrained"], class_names=list(ds.class_names), task=task,
                        input_size=r["size"], width=r.get("width", 16))
    if not r["pretrained"]:  # normalise with the training set's own statistics
        x_tr = ds.images[train_idx].reshape(-1, in_ch).astype(np.float32) / 255.0
        model.mean = tuple(float(v) for v in x_tr.mean(0))
        model.std = tuple(float(max(v, 1e-3)) for v in x_tr.std(0))
        del x_tr

    def tensors(idx):
        return resize_tensor(images_to_tensor(ds.images[idx], model.mean, model.std), r["size"])

    x_train, x_val, x_test = tensors(train_idx), tensors(split["val"]), tensors(split["test"])
    y = ds.labels
    train_loader = TensorLoader(x_train, y[train_idx], batch_size=r["batch_size"], shuffle=True,
                                augment=r["augment"], seed=seed, drop_last=len(train_idx) > r["batch_size"])
    val_loader = TensorLoader(x_val, y[split["val"]], batch_size=256)
    weights = pos_weights(y[train_idx]) if task == "multilabel" else class_weights(y[train_idx], len(ds.class_names))
    fit_kw = dict(epochs=r["epochs"], lr=r["lr"], loss_weights=weights, patience=r.get("patience", 4),
                  device=device, progress=progress, verbose=verbose, max_minutes=r.get("max_minutes"))
    if model.arch == "efficientnet_lite0_ms":
        hist = fit_linear_probe(model, x_train, y[train_idx], x_val, y[split["val"]], device=device,
                                progress=progress, verbose=verbose)
    elif r.get("frozen_blocks") and model.arch == "efficientnet_lite0":
        hist = fit_frozen_prefix(model, x_train, y[train_idx], x_val, y[split["val"]],
                                 frozen_blocks=r["frozen_blocks"], batch_size=r["batch_size"], seed=seed, **fit_kw)
    else:
        hist = fit(model, train_loader, val_loader, task=task, **fit_kw)
    probs = predict(model, x_test, device=device)
    metrics = classification_report(y[split["test"]], probs, task, class_names=list(ds.class_names))
    meta = dict(name=name, dataset=ds.name, source=ds.source, fast=fast, split_seed=seed, input_size=r["size"],
                recipe={k: v for k, v in r.items() if k not in ("load_kw",)},
                n_train=len(train_idx), n_val=len(split["val"]), n_test=len(split["test"]),
                metrics=metrics, history={k: v for k, v in hist.items()})
    save_checkpoint(ckpt, model, meta)
    if verbose:
        key = "auc_macro"
        print(f"test ROC-AUC ({key}) {metrics.get(key, float('nan')):.4f}; saved {ckpt}")
    _, meta = load_checkpoint(ckpt, model=model)  # the saved file round-trips
    info = dict(meta, history=hist, checkpoint=str(ckpt), trained_now=True,
                seconds=time.perf_counter() - t_start, data=ds, split=split)
    return model, info
