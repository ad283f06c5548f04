"""Shortcuts and concepts on planted data: a model that cheats on an ink mark and one that does not.

Both are small CNNs trained (seconds) on planted-evidence skin images with the ink drawn by
xai_helpers.artifacts: the "cheating" model saw ink on every class-1 and no class-0 training image
(phi = 1), the "clean" model saw ink on half of each class (phi = 0).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xai_helpers.artifacts import add_artifact, make_shortcut_dataset
from xai_helpers.concepts import (artifact_counterfactual, class_scores, counterfactual_effect, discover_concepts,
                                  nmf_concepts, random_sets, relevance_scorecard, shortcut_auc, tcav)
from xai_helpers.concepts._layers import to_model_input
from xai_helpers.synthetic import make_planted

SIZE, LAYER = 64, "features.2"      # features.3 feeds global pooling + a linear layer: its logit gradient is
                                    # the same for every image, so every TCAV score there is 0 or 1


def _train(rates: dict, seed: int = 0):
    from xai_helpers.model_info import describe_model, has_info
    from xai_helpers.models import build_model
    from xai_helpers.training import TensorLoader, fit, images_to_tensor

    ds = make_planted(n=512, size=SIZE, kind="skin", artifact=None, seed=seed)
    sds = make_shortcut_dataset(ds, "ink", rates, seed=seed, avoid="masks")
    px = sds.images.reshape(-1, 3).astype(np.float32) / 255
    mean, std = tuple(float(v) for v in px.mean(0)), tuple(float(v) for v in px.std(0))
    torch.manual_seed(seed)
    model = build_model("small_cnn", 2, class_names=list(ds.class_names), task="binary", input_size=SIZE,
                        mean=mean, std=std, width=16)
    if not has_info(model):
        describe_model(model, class_names=list(ds.class_names), task="binary", mean=mean, std=std,
                       cam_layer="features.3", input_size=SIZE)
    x = images_to_tensor(sds.images, mean, std)
    n_val = len(x) // 8
    train = TensorLoader(x[n_val:], sds.labels[n_val:], batch_size=64, shuffle=True, augment="dermoscopy",
                         seed=seed, drop_last=True)
    val = TensorLoader(x[:n_val], sds.labels[:n_val], batch_size=256)
    fit(model, train, val, task="binary", epochs=6, lr=3e-3, progress=False, verbose=False, device="cpu")
    return model.eval()


@pytest.fixture(scope="session")
def models():
    torch.set_num_threads(1)
    return {"cheating": _train({1: 1.0, 0: 0.0}), "clean": _train({1: 0.5, 0: 0.5})}


@pytest.fixture(scope="session")
def test_set():
    return make_planted(n=128, size=SIZE, kind="skin", artifact=None, seed=100)


@pytest.fixture(scope="session")
def concept_data():
    pool = make_planted(n=400, size=SIZE, kind="skin", artifact=None, seed=200)
    ink, _ = add_artifact(pool.images[200:250], "ink", seed=9, avoid=pool.masks[200:250])
    return dict(pool=pool.images, class_images=pool.images[pool.labels == 1][:60], ink=ink,
                randoms=random_sets(pool.images, n_sets=10, set_size=30, seed=1))


# ---------------------------------------------------------------------------------------------------
# shortcut measurements
def test_relevance_on_the_mark_cheating_vs_clean(models, test_set):
    imgs, masks = add_artifact(test_set.images[:48], "ink", seed=5, avoid=test_set.masks[:48])
    cards = {name: relevance_scorecard(m, imgs, masks, methods=("gradcam", "lrp", "integrated_gradients"),
                                       target=1, options={"integrated_gradients": {"steps": 16}})
             for name, m in models.items()}
    print({n: {m: round(v["mass_over_chance"], 2) for m, v in c.items()} for n, c in cards.items()})
    for method in ("gradcam", "lrp", "integrated_gradients"):
        cheat, clean = cards["cheating"][method], cards["clean"][method]
        assert cheat["mean_chance"] < 0.06                       # the mark is small: chance is low
        assert cheat["mass_over_chance"] > 3.0, (method, cheat)  # measured 3.5 / 12.5 / 8.6
        assert clean["mass_over_chance"] < 2.5, (method, clean)  # measured 0.7 / 0.4 / 1.8
        assert cheat["mass_over_chance"] > 3 * clean["mass_over_chance"]
    assert cards["cheating"]["lrp"]["mean_pointing"] > 10 * cards["cheating"]["lrp"]["mean_chance"]


def test_auc_gap_and_counterfactual_cheating_vs_clean(models, test_set):
    imgs, y, avoid = test_set.images, test_set.labels, test_set.masks
    cheat = shortcut_auc(models["cheating"], imgs, y, "ink", avoid=avoid)
    clean = shortcut_auc(models["clean"], imgs, y, "ink", avoid=avoid)
    assert cheat["auc_shortcut"] > 0.95 and cheat["reliance"] > 0.1, cheat   # measured 0.21
    assert abs(clean["reliance"]) < 0.03, clean
    cf_cheat = artifact_counterfactual(models["cheating"], imgs, "ink", seed=1, avoid=avoid)
    cf_clean = artifact_counterfactual(models["clean"], imgs, "ink", seed=1, avoid=avoid)
    assert cf_cheat["mean_delta"] > 0.15 and cf_cheat["share_up"] > 0.9     # measured 0.32, 1.0
    assert cf_clean["mean_abs_delta"] < 0.05                                # measured 0.009


def test_shortcut_auc_two_passes_equal_scoring_each_condition(models, test_set):
    # shortcut_auc scores every image clean and with the artifact once, and picks per condition:
    # the same AUCs as scoring the three mixed test sets, and the same per-image counterfactual
    from sklearn.metrics import roc_auc_score

    from xai_helpers.concepts.shortcuts import _pick

    imgs, y, avoid, m = test_set.images[:80], test_set.labels[:80], test_set.masks[:80], models["cheating"]
    res, cf = shortcut_auc(m, imgs, y, "ink", rate_positive=0.8, rate_negative=0.2, seed=4, avoid=avoid,
                           batch_size=16, return_counterfactual=True)
    drawn, masks = add_artifact(imgs, "ink", seed=4, avoid=avoid)
    assert np.array_equal(cf["images"], drawn) and np.array_equal(cf["masks"], masks)
    rng = np.random.default_rng(np.random.SeedSequence([4, 3]))
    pos = y == 1
    for key, (rp, rn) in (("auc_shortcut", (0.8, 0.2)), ("auc_flipped", (0.2, 0.8))):
        has = _pick(pos, rp, rn, rng)
        mixed = np.where(has[:, None, None, None], drawn, imgs)
        assert res[key] == pytest.approx(roc_auc_score(pos, class_scores(m, mixed, 1, batch_size=64)), abs=1e-6)
    assert res["auc_clean"] == pytest.approx(roc_auc_score(pos, class_scores(m, imgs, 1)), abs=1e-6)
    ref = counterfactual_effect(m, imgs, drawn, target=1)
    np.testing.assert_allclose(cf["delta"], ref["delta"], atol=1e-6)
    assert res == shortcut_auc(m, imgs, y, "ink", rate_positive=0.8, rate_negative=0.2, seed=4, avoid=avoid)


# ---------------------------------------------------------------------------------------------------
# TCAV
def test_tcav_finds_the_concept_that_causes_the_class(models, concept_data):
    d = concept_data
    res = tcav(models["cheating"], d["class_images"], {"ink": d["ink"]}, d["randoms"], LAYER, target=1)["ink"]
    print(res)
    assert res.score > 0.9 and res.significant and res.cav_accuracy.mean() > 0.8


def test_tcav_random_concepts_are_rarely_significant(models, concept_data):
    d = concept_data
    fake = {f"random{j}": random_sets(d["pool"], 1, 30, seed=100 + j)[0] for j in range(10)}
    res = tcav(models["cheating"], d["class_images"], fake, d["randoms"], LAYER, target=1, n_tests=1)
    p = np.array([r.p_value for r in res.values()])
    print("random-concept p-values", np.round(p, 3))
    # uncorrected alpha = 0.05 on 10 null concepts: P(>= 3 rejections) = 0.012 if the test is calibrated
    assert (p < 0.05).sum() <= 2
    assert np.mean([r.cav_accuracy.mean() for r in res.values()]) < 0.65   # random vs random: no concept


def test_welch_test_equals_scipy_and_handles_constant_scores():
    from scipy.stats import ttest_ind

    from xai_helpers.concepts.tcav import ttest_pvalue

    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.random(10), 1.3 * rng.random(12)
        assert ttest_pvalue(a, b) == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    assert ttest_pvalue(np.ones(10), rng.random(10)) < 0.01
    assert ttest_pvalue(np.ones(4), np.ones(4)) == 1.0 and ttest_pvalue(np.ones(4), np.zeros(4)) == 0.0


class _FixedCAVs:
    """A captum ``Classifier`` that returns our CAVs, so captum's scoring runs on the same vectors."""

    def __init__(self, vectors):
        self.vectors, self.rid = vectors, None

    def train_and_eval(self, dataloader, **kw):
        self.rid = int(max(int(y.max()) for _, y in dataloader))
        return {"accs": torch.tensor(1.0)}

    def weights(self):
        v = torch.as_tensor(self.vectors[self.rid - 1], dtype=torch.float32)
        return torch.stack([v, -v])               # row of class 0 (the concept) points towards it

    def classes(self):
        return [0, self.rid]


@pytest.mark.parametrize("name", ["cheating", "clean"])
def test_tcav_agrees_with_captum(models, concept_data, tmp_path, name):
    from captum.concept import TCAV, Concept
    from captum.concept._utils.classifier import Classifier
    from torch.utils.data import DataLoader

    model, d = models[name], concept_data
    ours = tcav(model, d["class_images"], {"ink": d["ink"]}, d["randoms"], LAYER, target=1)["ink"]

    def concept(i, label, imgs):
        return Concept(i, label, DataLoader(to_model_input(model, imgs), batch_size=64))
    ink = concept(0, "ink", d["ink"])
    rand = [concept(i + 1, f"random{i}", r) for i, r in enumerate(d["randoms"])]
    x = to_model_input(model, d["class_images"])

    def captum_scores(classifier, folder):
        t = TCAV(model, layers=[LAYER], classifier=classifier, save_path=str(tmp_path / folder))
        out = t.interpret(x, [[ink, r] for r in rand], target=1)
        return np.array([out[f"0-{r.id}"][LAYER]["sign_count"][0].item() for r in rand])

    # 1. captum's own classifier (SGD on a random 2/3): different CAVs, the same score within sampling noise.
    #    Tolerance 0.1 = about 2 standard errors of a mean of 10 scores whose spread is 0.1-0.2 here.
    default = captum_scores(None, "default")
    print(name, "captum", default.mean(), "ours", ours.score, "diff", abs(default.mean() - ours.score))
    assert abs(default.mean() - ours.score) <= 0.1          # measured 0.000 (cheating), 0.010 (clean)

    # 2. captum scoring our CAVs: the directional derivatives and the sign count are the same computation;
    #    captum works in float32, so at most one image (1/60) may fall on the other side of zero.
    FixedCAVs = type("FixedCAVs", (_FixedCAVs, Classifier), {})
    fixed = captum_scores(FixedCAVs([c.vector for c in ours.cavs]), "fixed")
    print(name, "captum on our CAVs: max |diff|", np.abs(fixed - ours.scores).max())
    assert np.abs(fixed - ours.scores).max() <= 1 / len(d["class_images"]) + 1e-6, (fixed, ours.scores)


def test_layer_activations_stop_at_the_layer_and_equal_a_full_pass(models, concept_data):
    from xai_helpers.concepts._layers import layer_activations

    model = models["clean"]
    x = to_model_input(model, concept_data["pool"][:70])
    calls, full = [], []
    later = model.features[3].register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    hook = model.features[2].register_forward_hook(lambda m, i, o: full.append(o.detach()))
    try:
        acts = layer_activations(model, x, LAYER, batch_size=32)            # 3 batches
        assert calls == []                         # nothing after features.2 ran
        with torch.no_grad():
            logits = model(x)
    finally:
        later.remove(), hook.remove()
    assert calls == [70] and torch.equal(acts, full[-1])
    assert torch.isfinite(logits).all()            # the hooks are gone: a normal forward still works
    unused = torch.nn.Linear(2, 2)
    model.add_module("unused_head", unused)
    try:
        with pytest.raises(RuntimeError, match="was not called in the forward pass"):
            layer_activations(model, x[:4], "unused_head")
    finally:
        del model.unused_head


def test_tcav_bad_input_says_what_to_do(models, concept_data):
    model, d = models["cheating"], concept_data
    with pytest.raises(ValueError, match="at least 10 per set"):
        tcav(model, d["class_images"], {"ink": d["ink"][:4]}, d["randoms"], LAYER, target=1)
    with pytest.raises(ValueError, match=r"built for 64x64"):
        tcav(model, d["class_images"][:, :48, :48], {"ink": d["ink"][:, :48, :48]},
             [r[:, :48, :48] for r in d["randoms"]], LAYER, target=1)
    with pytest.raises(ValueError, match="must be at the model's input size"):
        tcav(model, d["class_images"], {"ink": d["ink"][:, :48, :48]}, d["randoms"], LAYER, target=1)
    with pytest.raises(ValueError, match=r"valid layer names: .*'features.2'"):
        tcav(model, d["class_images"], {"ink": d["ink"]}, d["randoms"], "layer4", target=1)
    with pytest.raises(ValueError, match="at least 10 random sets"):
        tcav(model, d["class_images"], {"ink": d["ink"]}, d["randoms"][:3], LAYER, target=1)
    with pytest.raises(ValueError, match="unknown target"):
        tcav(model, d["class_images"], {"ink": d["ink"]}, d["randoms"], LAYER, target="melanoma")


# ---------------------------------------------------------------------------------------------------
# concept discovery
def test_nmf_recovers_planted_components():
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(0)
    k, channels, positions = 4, 48, 3000
    h_true = rng.exponential(1.0, (k, channels)) * (rng.random((k, channels)) < 0.3)   # sparse concepts
    w_true = rng.exponential(1.0, (positions, k)) * (rng.random((positions, k)) < 0.5)
    acts = w_true @ h_true + 0.01 * rng.random((positions, channels))
    _, h, _ = nmf_concepts(acts, k, seed=0)
    corr = np.corrcoef(h_true, h)[:k, k:]
    rows, cols = linear_sum_assignment(-corr)
    print("matched correlations", np.round(corr[rows, cols], 3))
    assert corr[rows, cols].min() > 0.9
    with pytest.raises(ValueError, match="non-negative"):
        nmf_concepts(acts - 1, k)


def test_discovered_concepts_maps_patches_and_importance(models, test_set):
    model = models["cheating"]
    imgs, _ = add_artifact(test_set.images[:40], "ink", seed=4, avoid=test_set.masks[:40])
    imgs = np.concatenate([imgs, test_set.images[40:80]])
    dc = discover_concepts(model, imgs, "features.3", k=5)
    assert dc.components.shape == (5, 64) and (dc.components >= 0).all()
    assert dc.heatmaps(upsample=False).shape == (80, 5, 8, 8) and dc.heatmaps().shape == (80, 5, SIZE, SIZE)
    patches = dc.top_patches(0, n=6)
    assert len(patches) == 6 and all(p[3].shape == (16, 16, 3) for p in patches)
    imp = dc.importance(model, target=1)
    big = np.abs(imp["drop"]) > 0.05
    assert big.any()
    # first order: removing a concept changes the logit the way its gradient says
    assert (np.sign(imp["gradient"][big]) == np.sign(imp["drop"][big])).all(), imp
    with pytest.raises(ValueError, match="after a ReLU"):
        discover_concepts(model, imgs, "features.3.0", k=3)
