"""How good is the model? Metrics that stay honest when the classes are imbalanced.

Accuracy misleads here: with 8 % melanoma, a model that always says "benign" is 92 % accurate and
useless. The numbers below do not reward that model: ROC-AUC (ranking, threshold-free), balanced
accuracy (mean recall over classes), sensitivity at a fixed specificity (the screening question),
the confusion matrix, and calibration (reliability diagram + expected calibration error).

Conventions: ``probs`` is (N, K): softmax probabilities for binary (K = 2, column 1 is the positive
class) and multiclass; sigmoid probabilities per finding for multilabel, where ``y`` is (N, K) 0/1.
"""
from __future__ import annotations

import numpy as np


def _as_arrays(y, probs):
    y, probs = np.asarray(y), np.asarray(probs, dtype=float)
    if probs.ndim == 1:  # a single positive-class score
        probs = np.stack([1 - probs, probs], 1)
    if len(y) != len(probs):
        raise ValueError(f"{len(y)} labels but {len(probs)} predictions")
    return y, probs


def roc_auc_per_class(y, probs, task: str = "multiclass") -> np.ndarray:
    """One-vs-rest ROC-AUC per class (multilabel: per finding). NaN where a class has only one label value."""
    from sklearn.metrics import roc_auc_score

    y, probs = _as_arrays(y, probs)
    k = probs.shape[1]
    yk = y if task == "multilabel" else (y[:, None] == np.arange(k)[None]).astype(int)
    out = np.full(k, np.nan)
    for j in range(k):
        if 0 < yk[:, j].sum() < len(yk):
            out[j] = roc_auc_score(yk[:, j], probs[:, j])
    return out


def auc_score(y, probs, task: str = "multiclass") -> float:
    """The single headline AUC: positive-class AUC (binary), macro one-vs-rest AUC (multiclass),
    macro AUC over findings that occur (multilabel)."""
    y, probs = _as_arrays(y, probs)
    if task == "binary":
        from sklearn.metrics import roc_auc_score
        if len(np.unique(y)) < 2:
            raise ValueError("ROC-AUC needs both classes in y")
        return float(roc_auc_score(y, probs[:, 1]))
    per = roc_auc_per_class(y, probs, task)
    if np.all(np.isnan(per)):
        raise ValueError("ROC-AUC needs both label values for at least one class")
    return float(np.nanmean(per))


def balanced_accuracy(y, probs) -> float:
    """Mean recall over classes (argmax prediction): 0.5 for an always-"benign" binary model."""
    from sklearn.metrics import balanced_accuracy_score

    y, probs = _as_arrays(y, probs)
    return float(balanced_accuracy_score(y, probs.argmax(1)))


def sensitivity_at_specificity(y_true_binary, scores, specificity: float = 0.9) -> tuple[float, float]:
    """Sensitivity (recall of positives) at the threshold giving at least ``specificity`` on the negatives.

    Returns ``(sensitivity, threshold)``.
    """
    y = np.asarray(y_true_binary).astype(bool)
    s = np.asarray(scores, dtype=float)
    neg, pos = s[~y], s[y]
    if len(neg) == 0 or len(pos) == 0:
        raise ValueError("need both positives and negatives")
    # the lowest threshold that keeps at least `specificity` of the negatives below it:
    # just above the k-th smallest negative score, k = ceil(specificity * n_neg)
    k = int(np.ceil(specificity * len(neg) - 1e-9))
    thr = -np.inf if k == 0 else np.nextafter(np.sort(neg)[k - 1], np.inf)
    return float(np.mean(pos >= thr)), float(thr)


def confusion_matrix(y, probs, num_classes: int | None = None) -> np.ndarray:
    """Counts, rows = true class, columns = predicted (argmax) class."""
    y, probs = _as_arrays(y, probs)
    k = num_classes or probs.shape[1]
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y.astype(int), probs.argmax(1)), 1)
    return cm


def calibration_bins(y_true_binary, scores, n_bins: int = 10):
    """Equal-width bins of the predicted probability: (mean confidence, observed frequency, count) per bin."""
    y = np.asarray(y_true_binary, dtype=float)
    s = np.asarray(scores, dtype=float)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(s, edges[1:-1]), 0, n_bins - 1)
    conf, freq, count = np.full(n_bins, np.nan), np.full(n_bins, np.nan), np.zeros(n_bins, int)
    for b in range(n_bins):
        sel = which == b
        count[b] = sel.sum()
        if count[b]:
            conf[b], freq[b] = s[sel].mean(), y[sel].mean()
    return conf, freq, count, edges


def expected_calibration_error(y, probs, n_bins: int = 10) -> float:
    """ECE of the top-class confidence: sum over bins of (bin share) * |accuracy - confidence|."""
    y, probs = _as_arrays(y, probs)
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(float)
    c, f, n, _ = calibration_bins(correct, conf, n_bins)
    ok = n > 0
    return float(np.sum(n[ok] / n.sum() * np.abs(f[ok] - c[ok])))


def classification_report(y, probs, task: str, class_names=None, specificity: float = 0.9) -> dict:
    """All headline numbers in one plain dict (what checkpoints store and notebooks print)."""
    y, probs = _as_arrays(y, probs)
    k = probs.shape[1]
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(k)]
    per = roc_auc_per_class(y, probs, task)
    out = dict(task=task, n=int(len(y)), auc_per_class={n: (None if np.isnan(a) else float(a)) for n, a in zip(names, per)})
    try:
        out["auc_macro"] = auc_score(y, probs, task)
    except ValueError:
        out["auc_macro"] = float("nan")
    if task == "multilabel":
        out["prevalence"] = {n: float(v) for n, v in zip(names, np.asarray(y, float).mean(0))}
        return out
    out["accuracy"] = float(np.mean(probs.argmax(1) == y))
    out["balanced_accuracy"] = balanced_accuracy(y, probs)
    out["confusion_matrix"] = confusion_matrix(y, probs, k).tolist()
    out["ece"] = expected_calibration_error(y, probs)
    if task == "binary" and len(np.unique(y)) == 2:
        sens, thr = sensitivity_at_specificity(y == 1, probs[:, 1], specificity)
        out[f"sensitivity_at_{int(round(specificity * 100))}_specificity"] = sens
        out["majority_class_accuracy"] = float(max(np.mean(y == 1), np.mean(y == 0)))
    return out


# --------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------
def plot_confusion_matrix(y, probs, class_names=None, normalize: bool = True, ax=None, title=None):
    """Confusion matrix heat map (rows: truth, normalised to recall per class by default)."""
    import matplotlib.pyplot as plt

    cm = confusion_matrix(y, probs)
    k = cm.shape[0]
    names = class_names or [str(i) for i in range(k)]
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    if ax is None:
        _, ax = plt.subplots(figsize=(1.1 * k + 2, 1.1 * k + 1.5))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{shown[i, j]:.2f}\n({cm[i, j]})" if normalize else str(cm[i, j]), ha="center",
                    va="center", fontsize=8, color="white" if shown[i, j] > 0.6 * shown.max() else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("confusion matrix (row = recall)" if normalize else "confusion matrix"))
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return ax


def plot_reliability(y, probs, n_bins: int = 10, ax=None, title=None):
    """Reliability diagram of the top-class confidence, with the ECE in the title."""
    import matplotlib.pyplot as plt

    y, probs = _as_arrays(y, probs)
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(float)
    c, f, n, edges = calibration_bins(correct, conf, n_bins)
    ece = expected_calibration_error(y, probs, n_bins)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    centers = (edges[:-1] + edges[1:]) / 2
    ok = n > 0
    ax.bar(centers[ok], f[ok], width=1 / n_bins, edgecolor="k", alpha=0.7, label="observed accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot(c[ok], f[ok], "o", color="C3", ms=4, label="bin mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"reliability diagram, ECE = {ece:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def roc_figure(y, probs, task: str, class_names=None, title: str = "ROC curves", max_points: int = 200):
    """Interactive plotly ROC curves (hover shows the threshold): one per class / finding
    (binary: the positive class only). Curves are thinned to ``max_points`` to keep notebooks small."""
    import plotly.graph_objects as go
    from sklearn.metrics import roc_curve

    y, probs = _as_arrays(y, probs)
    k = probs.shape[1]
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(k)]
    cols = [1] if task == "binary" else range(k)
    per = roc_auc_per_class(y, probs, task)
    fig = go.Figure()
    for j in cols:
        yj = (y[:, j] if task == "multilabel" else (y == j)).astype(int)
        if not 0 < yj.sum() < len(yj):
            continue
        fpr, tpr, thr = roc_curve(yj, probs[:, j])
        if len(fpr) > max_points:
            keep = np.unique(np.r_[0, np.linspace(0, len(fpr) - 1, max_points).astype(int), len(fpr) - 1])
            fpr, tpr, thr = fpr[keep], tpr[keep], thr[keep]
        fig.add_trace(go.Scatter(x=np.round(fpr, 4), y=np.round(tpr, 4), mode="lines",
                                 name=f"{names[j]} (AUC {per[j]:.3f})",
                                 customdata=np.round(np.minimum(thr, 1.0), 4),
                                 hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<br>threshold %{customdata:.3f}"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="grey"),
                             name="chance", hoverinfo="skip"))
    fig.update_layout(title=title, xaxis_title="false positive rate (1 - specificity)",
                      yaxis_title="true positive rate (sensitivity)", width=620, height=480,
                      template="plotly_white", legend=dict(font=dict(size=10)))
    return fig


def per_finding_table(y, probs, class_names):
    """Multilabel: a pandas table of AUC, prevalence and positives per finding, sorted by AUC."""
    import pandas as pd

    y = np.asarray(y, dtype=float)
    per = roc_auc_per_class(y, probs, "multilabel")
    return (pd.DataFrame({"finding": list(class_names), "AUC": per, "positives": y.sum(0).astype(int),
                          "prevalence": y.mean(0)})
            .sort_values("AUC", ascending=False, na_position="last").reset_index(drop=True))
