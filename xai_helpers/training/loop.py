"""The training loop: batches from tensors in memory, augmentation, losses for imbalance, fit, predict.

* :class:`TensorLoader` -- batches from tensors already in memory, with random flips / 90-degree
  turns / shifts as augmentation (:func:`augment_batch`; much faster on a CPU than decoding images
  every epoch).
* :func:`fit` -- epochs of AdamW with a one-cycle learning-rate schedule, a class-weighted loss for
  imbalance, validation ROC-AUC after every epoch, early stopping on it, and the best weights restored
  at the end.
* :func:`predict` -- probabilities (softmax for binary / multiclass, sigmoid for multilabel).
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from torch import nn

from .. import config
from ..model_info import TASKS, has_info, model_info, probabilities


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
    "dihedral":   flips and 90-degree turns only (for cached feature maps, see
                  :func:`~xai_helpers.training.fit_frozen_prefix`).
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


def _task(model: nn.Module, task: str | None) -> str:
    """``task`` if given, else the model's declared one."""
    if task is None:
        if not has_info(model):
            raise ValueError("say which task this is: task='binary', 'multiclass' or 'multilabel' "
                             "(or describe the model with xai_helpers.model_info.describe_model)")
        task = model_info(model).task
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task


# ============================================================================================
# prediction
# ============================================================================================
def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, data, batch_size: int | None = None, device=None, tta: bool = False,
            return_labels: bool = False, progress: bool = False, task: str | None = None):
    """Class probabilities as a numpy array (N, K): softmax for binary/multiclass, sigmoid for multilabel.

    ``data``: a normalised float tensor (N, C, H, W), or any loader yielding ``x`` or ``(x, y)``.
    ``tta=True`` averages over a horizontal flip. ``return_labels=True`` also returns the labels the
    loader yields: ``probs, labels``. ``task``: default, the model's declared task.
    """
    task = _task(model, task)
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval().to(device)
    if isinstance(data, torch.Tensor):
        data = TensorLoader(data, None, batch_size=config.images_per_pass(data, batch_size))
    probs, labels = [], []
    it = data
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(data, desc="predict", leave=False)
    for batch in it:
        xb, yb = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) else (batch, None)
        xb = xb.to(device)
        p = probabilities(model(xb), task)
        if tta:
            p = 0.5 * (p + probabilities(model(xb.flip(-1)), task))
        probs.append(p.float().cpu())
        if yb is not None:
            labels.append(torch.as_tensor(yb).cpu())
    model.train(was_training)
    if not probs:
        probs = np.zeros((0, model_info(model).num_outputs if has_info(model) else 0))
    else:
        probs = torch.cat(probs).numpy()
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
    device = torch.device(device) if device is not None else model_device(model)
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


def validation_score(y, probs, task) -> float:
    """The early-stopping score: ROC-AUC (macro over classes / findings); NaN for a one-class set."""
    from ..metrics import auc_score
    try:
        return auc_score(y, probs, task)
    except ValueError:  # a validation set with one class only
        return float("nan")


# ============================================================================================
# the loop, step by step
# ============================================================================================
def _scheduler(optimizer, schedule: str, lr: float, steps: int):
    if schedule == "onecycle":
        # warm-up over the first 20 % of steps; with exactly 5 steps that phase would end at step 0
        # and torch divides by its zero length, so it gets 30 % there
        pct = 0.3 if round(0.2 * steps, 9) == 1 else 0.2
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=pct)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if schedule == "constant":
        return None
    raise ValueError(f"schedule must be 'onecycle', 'cosine' or 'constant', got {schedule!r}")


def _train_epoch(model, loader, criterion, optimizer, scheduler, task, device, desc, progress) -> tuple[float, int]:
    """One pass over the training data; returns (mean loss, images seen)."""
    from tqdm.auto import tqdm

    model.train()
    running, seen = 0.0, 0
    for xb, yb in tqdm(loader, desc=desc, leave=False, disable=not progress):
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
    return running / max(seen, 1), seen


def _validate(model, val_loader, task, device) -> tuple[float, float]:
    """Validation (loss, ROC-AUC) of the probabilities; NaNs without a validation set."""
    if val_loader is None:
        return float("nan"), float("nan")
    probs, y = predict(model, val_loader, device=device, return_labels=True, task=task)
    p = torch.as_tensor(probs).clamp(1e-7, 1 - 1e-7)
    yt = torch.as_tensor(y)
    if task == "multilabel":
        vloss = nn.functional.binary_cross_entropy(p, yt.float()).item()
    else:
        vloss = nn.functional.nll_loss(p.log(), yt.long()).item()
    return vloss, validation_score(y, probs, task)


class _BestWeights:
    """Early stopping on validation AUC, keeping a copy of the best weights. Ties in AUC (e.g. 1.0
    on easy data) go to the lower validation loss (better calibrated); without a validation AUC,
    the lowest training loss wins."""

    def __init__(self, patience: int | None):
        self.patience, self.score, self.state, self.epoch, self.bad_epochs = patience, (-math.inf, 0.0), None, -1, 0

    def update(self, model, epoch, auc, vloss, train_loss) -> bool:
        """Record an epoch; True when training should stop."""
        score = (auc, -vloss) if not math.isnan(auc) else (-train_loss, 0.0)
        if self.state is None or score > self.score:
            self.score, self.epoch, self.bad_epochs = score, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
            return False
        self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience


def fit(model: nn.Module, train_loader, val_loader=None, task: str | None = None, epochs: int = 10,
        lr: float = 1e-3, weight_decay: float = 1e-4, loss_weights: torch.Tensor | None = None,
        schedule: str = "onecycle", patience: int | None = 5, max_minutes: float | None = None,
        device=None, progress: bool = True, verbose: bool = True, params=None,
        recalibrate_bn: bool = True) -> dict:
    """Train ``model`` in place and return its history; the best weights (by validation AUC) are restored.

    train_loader / val_loader  yield ``(x, y)``: x normalised (N, C, H, W); y int64 (N,) class
                               indices, or float (N, K) 0/1 for multilabel.
    task                       binary / multiclass / multilabel (default: the model's declared task).
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

    task = _task(model, task)
    device = torch.device(device) if device is not None else config.get_device()
    model.to(device)
    criterion = make_loss(task, None if loss_weights is None else loss_weights.to(device))
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters (all frozen?)")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = _scheduler(optimizer, schedule, lr, max(1, epochs * len(train_loader)))

    hist = dict(train_loss=[], val_loss=[], val_auc=[], lr=[], seconds=[])
    best = _BestWeights(patience)
    start, images_seen, stopped_early = time.perf_counter(), 0, False
    epoch_bar = tqdm(range(epochs), desc="epochs", disable=not progress)
    for epoch in epoch_bar:
        t0 = time.perf_counter()
        loss, seen = _train_epoch(model, train_loader, criterion, optimizer, scheduler, task, device,
                                  f"epoch {epoch + 1}", progress)
        images_seen += seen
        vloss, auc = _validate(model, val_loader, task, device)
        for k, v in (("train_loss", loss), ("lr", optimizer.param_groups[0]["lr"]), ("val_loss", vloss),
                     ("val_auc", auc), ("seconds", time.perf_counter() - t0)):
            hist[k].append(v)
        epoch_bar.set_postfix(loss=f"{loss:.3f}", val_auc=f"{auc:.3f}")
        if verbose and not progress:
            print(f"epoch {epoch + 1:>3}/{epochs}  train loss {loss:.4f}  "
                  f"val loss {vloss:.4f}  val AUC {auc:.4f}  ({hist['seconds'][-1]:.1f} s)")
        if best.update(model, epoch, auc, vloss, loss) or (
                max_minutes is not None and time.perf_counter() - start > 60 * max_minutes):
            stopped_early = True
            break
    epoch_bar.close()
    if best.state is not None:
        model.load_state_dict(best.state)
    if recalibrate_bn and recalibrate_batchnorm(model, train_loader, device=device) and val_loader is not None:
        hist["val_auc_after_bn_recalibration"] = _validate(model, val_loader, task, device)[1]
    model.eval()
    total = time.perf_counter() - start
    hist.update(best_epoch=best.epoch, best_val_auc=(best.score[0] if val_loader is not None else float("nan")),
                stopped_early=stopped_early, train_seconds=total, images_seen=images_seen,
                images_per_s=images_seen / max(total, 1e-9), epochs_run=len(hist["train_loss"]))
    if verbose:
        print(f"trained {hist['epochs_run']} epoch(s) in {total:.1f} s ({hist['images_per_s']:.0f} img/s); "
              f"best validation AUC {hist['best_val_auc']:.4f} at epoch {best.epoch + 1}")
    return hist
