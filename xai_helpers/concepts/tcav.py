"""TCAV: testing with concept activation vectors (Kim et al., ICML 2018), written out step by step.

Does a model's class-``k`` output *use* a human concept (say, "purple ink") at layer ``l``?

1. Activations ``f_l(x)`` of concept images and of random images, flattened.
2. A linear classifier concept-vs-random; its normal vector, pointing towards the concept, is the
   **CAV** ``v_C``. (As in the paper's code: logistic regression on 2/3, accuracy on the other 1/3.)
3. For each image ``x`` of class ``k`` the **directional derivative** of the class logit ``h_k``
   along the CAV: ``S_C,k(x) = grad h_k(f_l(x)) . v_C``.
4. **TCAV score** = the share of class-``k`` images with ``S > 0``.
5. A CAV of two *random* sets also gives a score, and any single score can be luck. So the CAV is
   trained against each of R >= 10 random sets, giving R concept scores, and R random-vs-random
   scores (random set ``i+1`` vs ``i``) give the null distribution; a two-sided t-test compares them
   and, over several concepts, a Bonferroni correction keeps the family-wise error at ``alpha``. A
   concept is reported only when it is significant.

    >>> res = tcav(model, class_images, {"ink": ink_images}, random_sets(pool, 10, 30), layer="features.1",
    ...            target="malignant")

Choose a layer inside the network, not the one that feeds global pooling and a linear head: there
(``features.3`` of ``small_cnn``) the logit's gradient is the same for every image, so every score is
0 or 1. Notebook 12 uses ``features.1`` of ``small_cnn``, where the random-vs-random null is narrowest.
    >>> res["ink"].score, res["ink"].p_value, res["ink"].significant

``captum.concept.TCAV`` implements the same score; ``tests/test_concepts.py`` checks the two agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._layers import layer_activations, layer_gradients, resolve_target, to_model_input
from ..model_info import model_info


@dataclass
class CAV:
    """A concept activation vector: unit normal of the concept-vs-random boundary, towards the concept."""

    vector: np.ndarray          # (F,) float64, unit length
    accuracy: float             # held-out accuracy of the linear classifier (1/3 of the images)


@dataclass
class TCAVResult:
    """TCAV of one concept for one class at one layer, with its test against random concepts."""

    concept: str
    layer: str
    target: int
    target_name: str
    scores: np.ndarray          # (R,) TCAV score of the concept's CAV against each random set
    random_scores: np.ndarray   # (R,) TCAV score of random-vs-random CAVs: the null distribution
    cav_accuracy: np.ndarray    # (R,) held-out accuracy of each concept CAV
    p_value: float              # two-sided Welch t-test, scores vs random_scores
    p_adjusted: float           # Bonferroni: p_value x number of concepts tested (capped at 1)
    alpha: float
    cavs: list = field(default_factory=list, repr=False)

    @property
    def score(self) -> float:
        return float(np.mean(self.scores))

    @property
    def significant(self) -> bool:
        return bool(self.p_adjusted < self.alpha)

    def __str__(self) -> str:
        verdict = "significant" if self.significant else "not significant (do not report)"
        return (f"TCAV[{self.concept} -> {self.target_name} @ {self.layer}] = {self.score:.3f} "
                f"+- {np.std(self.scores):.3f} (random {np.mean(self.random_scores):.3f} +- "
                f"{np.std(self.random_scores):.3f}); p = {self.p_value:.2g}, corrected {self.p_adjusted:.2g}: {verdict}")


def train_cav(concept_acts: np.ndarray, random_acts: np.ndarray, seed: int = 0, C: float = 1.0) -> CAV:
    """Logistic regression concept (1) vs random (0) on flattened activations; returns the unit CAV."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x = np.concatenate([concept_acts, random_acts]).astype(np.float64)
    y = np.r_[np.ones(len(concept_acts)), np.zeros(len(random_acts))]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.33, stratify=y, random_state=seed)
    clf = LogisticRegression(C=C, solver="liblinear", max_iter=2000).fit(x_tr, y_tr)
    w = clf.coef_[0]
    norm = np.linalg.norm(w)
    return CAV(vector=w / norm if norm > 0 else w, accuracy=float(clf.score(x_te, y_te)))


def directional_derivatives(gradients: np.ndarray, cav: CAV) -> np.ndarray:
    """``S_C,k(x) = grad h_k(f_l(x)) . v_C`` for each image: (N, F) gradients -> (N,)."""
    return np.asarray(gradients, np.float64) @ cav.vector


def tcav_score(gradients: np.ndarray, cav: CAV) -> float:
    """Share of the images whose class logit rises along the CAV."""
    return float(np.mean(directional_derivatives(gradients, cav) > 0))


def random_sets(pool, n_sets: int = 10, set_size: int = 30, seed: int = 0) -> list:
    """``n_sets`` random subsets of ``pool`` (images, any class), ``set_size`` each, drawn independently."""
    pool = np.asarray(pool)
    if set_size > len(pool):
        raise ValueError(f"set_size={set_size} but the pool has only {len(pool)} images")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 11]))
    return [pool[np.sort(rng.choice(len(pool), set_size, replace=False))] for _ in range(n_sets)]


def ttest_pvalue(a, b) -> float:
    """Two-sided Welch t-test (unequal variances); for two constant samples: 1 if equal, else 0.

    Written out (it equals ``scipy.stats.ttest_ind(a, b, equal_var=False)``) because a concept's scores
    are often all 1.0, where scipy warns about precision loss in a variance that is exactly zero.
    """
    from scipy.stats import t as student_t

    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(2 * student_t.sf(abs(t), df))


def _flat_acts(model, images, layer, what, batch_size) -> np.ndarray:
    x = to_model_input(model, images, what)
    return layer_activations(model, x, layer, batch_size).reshape(len(x), -1).numpy()


def _check_sets(class_images, concepts: dict, randoms: list, min_images: int, min_random: int) -> None:
    if not isinstance(concepts, dict) or not concepts:
        raise ValueError("concepts must be a dict {name: images} with at least one concept")
    if len(randoms) < max(2, min_random):
        raise ValueError(f"TCAV's test needs at least {max(2, min_random)} random sets (got {len(randoms)}); "
                         "make them with random_sets(pool, n_sets=10, set_size=30)")
    named = [("class images", class_images)] + [(f"concept {k!r}", v) for k, v in concepts.items()] + \
            [(f"random set {i}", r) for i, r in enumerate(randoms)]
    shapes = {}
    for name, imgs in named:
        n = len(imgs)
        if n < min_images:
            raise ValueError(f"{name} has {n} images; a CAV needs at least {min_images} per set "
                             "(30-50 is usual): add images or lower min_images")
        shapes[name] = tuple(np.shape(imgs)[1:])
    ref = shapes["class images"]
    for name, shp in shapes.items():
        if shp != ref:
            raise ValueError(f"{name} have shape {shp} per image but the class images have {ref}: every set "
                             "must be at the model's input size; resize them to match")


def tcav(model, class_images, concepts: dict, randoms: list, layer: str, target, alpha: float = 0.05,
         n_tests: int | None = None, min_images: int = 10, min_random: int = 10, batch_size: int | None = None,
         seed: int = 0) -> dict:
    """TCAV of each concept for class ``target`` at ``layer``, tested against random concepts.

    class_images  images of the class whose logit is explained (uint8 (N, H, W, C) or normalised tensors).
    concepts      {name: images showing the concept}. randoms: list of R >= ``min_random`` random sets.
    n_tests       number of tests for the Bonferroni correction (default: ``len(concepts)``).

    Returns {concept name: :class:`TCAVResult`}.
    """
    info = model_info(model)
    _check_sets(class_images, concepts, randoms, min_images, min_random)
    k = resolve_target(model, target)
    x_cls = to_model_input(model, class_images, "class images")
    _, grads = layer_gradients(model, x_cls, layer, k, batch_size)
    grads = grads.reshape(len(x_cls), -1).numpy()
    rand_acts = [_flat_acts(model, r, layer, f"random set {i}", batch_size) for i, r in enumerate(randoms)]
    n_r = len(rand_acts)
    null = np.array([tcav_score(grads, train_cav(rand_acts[(i + 1) % n_r], rand_acts[i], seed + i))
                     for i in range(n_r)])
    n_tests = len(concepts) if n_tests is None else int(n_tests)
    results = {}
    for name, imgs in concepts.items():
        acts = _flat_acts(model, imgs, layer, f"concept {name!r}", batch_size)
        cavs = [train_cav(acts, rand_acts[i], seed + i) for i in range(n_r)]
        scores = np.array([tcav_score(grads, c) for c in cavs])
        p = ttest_pvalue(scores, null)
        results[name] = TCAVResult(concept=name, layer=layer, target=k, target_name=info.class_names[k],
                                   scores=scores, random_scores=null, cav_accuracy=np.array([c.accuracy for c in cavs]),
                                   p_value=p, p_adjusted=min(1.0, p * n_tests), alpha=alpha, cavs=cavs)
    return results


__all__ = ["CAV", "TCAVResult", "train_cav", "directional_derivatives", "tcav_score", "random_sets",
           "ttest_pvalue", "tcav"]
