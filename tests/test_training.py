"""The training loop learns the planted evidence; checkpoints round-trip and refuse what does not fit."""
from pathlib import Path

import numpy as np
import pytest
import torch

from xai_helpers import metrics, training
from xai_helpers.models import build_model
from xai_helpers.synthetic import make_planted
from xai_helpers.training import (CheckpointError, CheckpointMismatchError, TensorLoader, fit,
                                  load_checkpoint, predict, save_checkpoint)


@pytest.fixture(scope="module")
def planted_tensors():
    ds = make_planted(n=384, size=32, kind="chest", seed=1)
    x = training.images_to_tensor(ds.images, (0.5,), (0.25,))
    y = torch.as_tensor(ds.labels)
    return x, y, ds.class_names


@pytest.fixture(scope="module")
def trained(planted_tensors):
    torch.manual_seed(0)
    x, y, names = planted_tensors
    model = build_model("small_cnn", 2, in_channels=1, class_names=names, task="binary", input_size=32,
                        mean=(0.5,), std=(0.25,))
    train = TensorLoader(x[:256], y[:256], batch_size=32, shuffle=True, augment="xray", seed=0)
    val = TensorLoader(x[256:320], y[256:320], batch_size=64)
    with torch.no_grad():
        start_loss = torch.nn.functional.cross_entropy(model(x[:256]), y[:256]).item()
    hist = fit(model, train, val, epochs=8, lr=3e-3, patience=None, device="cpu", progress=False, verbose=False)
    return model, hist, start_loss


def test_fit_lowers_loss_and_scores_near_perfectly_on_held_out(trained, planted_tensors):
    model, hist, start_loss = trained
    x, y, _ = planted_tensors
    assert hist["train_loss"][-1] < 0.5 * start_loss
    assert hist["epochs_run"] == 8 and len(hist["val_auc"]) == 8
    probs = predict(model, x[320:])  # never seen in training or model selection
    assert probs.shape == (64, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert metrics.auc_score(y[320:].numpy(), probs, "binary") > 0.95
    assert metrics.balanced_accuracy(y[320:].numpy(), probs) > 0.85


def test_checkpoint_round_trip_identical_predictions(trained, planted_tensors, tmp_path):
    model, _, _ = trained
    x = planted_tensors[0][:40]
    path = save_checkpoint(tmp_path / "m.pt", model, {"dataset": "planted_chest", "split_seed": 1})
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]  # written atomically, no leftovers
    loaded, meta = load_checkpoint(path)  # rebuilt from the metadata alone
    assert meta["arch"] == "small_cnn" and meta["class_names"] == list(model.info.class_names)
    assert meta["dataset"] == "planted_chest" and "torch" in meta["versions"]
    assert loaded.info == model.info and loaded.info.input_size == 32
    assert meta["model_info"] == model.info.as_dict()
    np.testing.assert_array_equal(predict(loaded, x), predict(model, x))
    # and into an existing model of the right kind
    other = build_model("small_cnn", 2, in_channels=1, class_names=model.info.class_names, task="binary")
    load_checkpoint(path, model=other)
    np.testing.assert_array_equal(predict(other, x), predict(model, x))


def test_corrupt_checkpoint_raises_clear_error(trained, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", trained[0])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="retrain=True|train again"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an xai_helpers checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_mismatched_checkpoint_says_what_differs(trained, tmp_path):
    model = trained[0]
    path = save_checkpoint(tmp_path / "m.pt", model, {"dataset": "planted_chest", "input_size": 32})
    rgb = build_model("small_cnn", 2, in_channels=3, class_names=model.info.class_names, task="binary")
    with pytest.raises(CheckpointMismatchError, match="in_channels"):
        load_checkpoint(path, model=rgb)
    three = build_model("small_cnn", 3, in_channels=1, task="multiclass")
    with pytest.raises(CheckpointMismatchError, match="num_outputs"):
        load_checkpoint(path, model=three)
    with pytest.raises(CheckpointMismatchError, match="dataset: checkpoint has 'planted_chest'"):
        load_checkpoint(path, expect={"dataset": "pneumoniamnist"})
    # same metadata, different weight shapes (a wider network)
    wide = build_model("small_cnn", 2, in_channels=1, class_names=model.info.class_names, task="binary", width=8)
    with pytest.raises(CheckpointMismatchError, match="shape"):
        load_checkpoint(path, model=wide)


def test_multilabel_loss_and_probabilities():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 16, 16)
    y = (torch.rand(64, 3) < 0.3).float()
    y[:, 0] = (x[:, 0, :8].mean((1, 2)) > 0).float()  # finding 0 is learnable
    m = build_model("small_cnn", 3, in_channels=1, task="multilabel", class_names=["a", "b", "c"])
    hist = fit(m, TensorLoader(x, y, batch_size=16, shuffle=True), TensorLoader(x, y), epochs=2,
               loss_weights=training.pos_weights(y.numpy()), device="cpu", progress=False, verbose=False)
    p = predict(m, x)
    assert p.shape == (64, 3) and (p >= 0).all() and (p <= 1).all()
    assert not np.allclose(p.sum(1), 1)  # sigmoids, not a softmax
    assert len(hist["val_auc"]) == hist["epochs_run"]


def test_class_weights_balance_the_classes():
    w = training.class_weights(np.array([0] * 90 + [1] * 10))
    assert w[1] / w[0] == pytest.approx(9.0)
    with pytest.raises(ValueError, match="no training example"):
        training.class_weights(np.array([0, 0, 2]))


def test_metrics_on_known_values():
    y = np.array([0, 0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.7, 0.9])
    probs = np.stack([1 - s, s], 1)
    assert metrics.auc_score(y, probs, "binary") == pytest.approx(7 / 8)
    sens, thr = metrics.sensitivity_at_specificity(y == 1, s, 0.75)
    assert sens == pytest.approx(1.0) and 0.3 < thr <= 0.7
    # the always-negative model: high accuracy under imbalance, balanced accuracy 0.5
    y2 = np.array([0] * 9 + [1])
    always0 = np.tile([0.9, 0.1], (10, 1))
    rep = metrics.classification_report(y2, always0, "binary")
    assert rep["accuracy"] == pytest.approx(0.9) and rep["balanced_accuracy"] == pytest.approx(0.5)
    cm = metrics.confusion_matrix(y, probs)
    assert cm.tolist() == [[3, 1], [0, 2]]
    assert metrics.expected_calibration_error(y, probs) >= 0


def test_get_trained_model_caches_and_separates_fast_from_full(monkeypatch):
    """Second call loads the checkpoint; a fast checkpoint never passes for a full one."""
    monkeypatch.setitem(training.RECIPES, "planted_chest",
                        dict(training.RECIPES["planted_chest"], n=160, size=32, epochs=1,
                             fast=dict(n=160, epochs=1, width=8)))
    m1, info1 = training.get_trained_model("planted_chest", fast=True, progress=False, verbose=False)
    assert info1["trained_now"] and info1["source"] == "synthetic" and info1["fast"] is True
    m2, info2 = training.get_trained_model("planted_chest", fast=True, progress=False, verbose=False)
    assert not info2["trained_now"] and info2["checkpoint"] == info1["checkpoint"]
    x = training.images_to_tensor(info2["data"].images[:8], m1.info.mean, m1.info.std)
    np.testing.assert_array_equal(predict(m1, x), predict(m2, x))
    assert "fast" in info1["checkpoint"]
    for k in ("metrics", "class_names", "arch", "input_size", "mean", "std", "split", "data", "split_seed"):
        assert k in info2


def test_shortcut_override_trains_a_cheating_model_of_its_own():
    """``shortcut=("ink", 0.9)``: the recipe on the same images with ink drawn on 90 % of class 1 (and
    none of class 0), in the same split, saved under its own name and loaded back; the cheating model's
    class-1 score rises when ink is drawn on class-0 images, the clean model's much less."""
    from xai_helpers.artifacts import add_artifact

    kw = dict(fast=True, progress=False, verbose=False)        # the fast recipe (the clean one is shared)
    clean, info_c = training.get_trained_model("planted_skin", **kw)
    cheat, info_s = training.get_trained_model("planted_skin", shortcut=("ink", 0.9), **kw)
    assert info_s["trained_now"] and Path(info_s["checkpoint"]).name.endswith("_ink90.pt")
    assert info_s["checkpoint"] != info_c["checkpoint"]
    ds, labels = info_s["data"], info_s["data"].labels
    ink = ds.extra["artifact"]
    assert ink[labels == 1].mean() == pytest.approx(0.9, abs=0.01) and not ink[labels == 0].any()
    np.testing.assert_array_equal(ds.images[~ink], info_c["data"].images[~ink])         # the rest untouched
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(info_s["split"][part], info_c["split"][part])
    _, again = training.get_trained_model("planted_skin", shortcut=("ink", 0.9), **kw)
    assert not again["trained_now"] and again["checkpoint"] == info_s["checkpoint"]
    benign = info_c["data"].images[info_c["split"]["test"]][labels[info_c["split"]["test"]] == 0]
    inked, _ = add_artifact(benign, "ink", seed=9)
    rise = {}
    for name, m in (("clean", clean), ("cheat", cheat)):
        p0 = predict(m, training.images_to_tensor(benign, m.info.mean, m.info.std))[:, 1]
        p1 = predict(m, training.images_to_tensor(inked, m.info.mean, m.info.std))[:, 1]
        rise[name] = float(np.mean(p1 - p0))
    # measured: +0.54 against +0.32 (ink looks a little like evidence to the clean model too)
    assert rise["cheat"] > rise["clean"] + 0.1, rise
    for bad in (("glitter", 0.9), ("ink", 1.5), "ink", ("ink",)):
        with pytest.raises(ValueError, match="shortcut must be"):
            training.get_trained_model("planted_skin", shortcut=bad, **kw)
    with pytest.raises(ValueError, match="binary set"):
        training.get_trained_model("planted_skin", n_classes=3, shortcut=("ink", 0.9), **kw)


def test_stale_cached_checkpoint_is_kept_aside_and_retrained(monkeypatch):
    """A cached checkpoint that no longer fits its recipe (written by an older version of the code)
    is renamed, not deleted, and the model is trained again instead of failing."""
    monkeypatch.setitem(training.RECIPES, "planted_chest",
                        dict(training.RECIPES["planted_chest"], n=160, size=32, epochs=1,
                             fast=dict(n=160, epochs=1, width=8)))
    _, info1 = training.get_trained_model("planted_chest", fast=True, progress=False, verbose=False)
    path = Path(info1["checkpoint"])
    blob = torch.load(path, weights_only=True)
    key = next(k for k, v in blob["state_dict"].items() if v.ndim == 2)   # the classifier's weight
    blob["state_dict"][key] = torch.zeros(blob["state_dict"][key].shape[0], 3)
    torch.save(blob, path)
    tampered = path.read_bytes()
    _, info2 = training.get_trained_model("planted_chest", fast=True, progress=False, verbose=False)
    assert info2["trained_now"] and info2["checkpoint"] == str(path)
    stale = path.with_name(path.stem + ".stale.pt")
    assert stale.read_bytes() == tampered
    training.load_checkpoint(path)     # the fresh one loads


def test_multiscale_features_have_finite_gradients_on_1x1_maps():
    """Standard-deviation pooling of a 1x1 map (a 32 px input reaches the head at 1x1) has zero
    variance, where sqrt's gradient is infinite: the epsilon must keep every input gradient finite."""
    from xai_helpers.models import build_model

    model = build_model("efficientnet_lite0_ms", 2, input_size=32).eval()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    model(x)[:, 1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_linear_probe_learns_planted_evidence_and_round_trips(tmp_path):
    """efficientnet_lite0_ms + fit_linear_probe: the frozen ImageNet networks read at several depths
    separate planted evidence on held-out images; the networks' weights are untouched; the
    checkpoint (heads + standardisation buffers) restores identical predictions."""
    from xai_helpers.models import build_model
    from xai_helpers.synthetic import make_planted
    from xai_helpers.training import fit_linear_probe, load_checkpoint, predict, save_checkpoint
    from xai_helpers.metrics import auc_score

    ds = make_planted(n=240, size=64, kind="skin", seed=5)
    model = build_model("efficientnet_lite0_ms", 2, pretrained=True, input_size=64, class_names=ds.class_names)
    assert model.scales == (32, 64)
    x = training.images_to_tensor(ds.images, model.info.mean, model.info.std)
    y = ds.labels
    before = {k: v.clone() for k, v in model.nets.state_dict().items()}
    hist = fit_linear_probe(model, x[:160], y[:160], x[160:200], y[160:200], progress=False, verbose=False)
    assert hist["best_val_auc"] > 0.8 and len(hist["probe_C"]) == 2
    assert all(torch.equal(before[k], v) for k, v in model.nets.state_dict().items()), "networks must stay frozen"
    assert auc_score(y[200:], predict(model, x[200:]), "binary") > 0.8        # never seen
    path = save_checkpoint(tmp_path / "probe.pt", model, {"note": "test"})
    again, _ = load_checkpoint(path)
    np.testing.assert_allclose(predict(again, x[200:]), predict(model, x[200:]), atol=1e-6)


def test_linear_probe_feature_cache_runs_only_new_images_and_changes_nothing(tmp_path, monkeypatch):
    """A second probe on the same images (another task, or a copy with a few images changed) runs only the
    new images through the frozen networks, and its heads equal those of a probe without the cache; the
    cache survives a new process (disk), a damaged file is recomputed with a warning, and a read-only cache
    folder is never written."""
    from xai_helpers.models import build_model
    from xai_helpers.synthetic import make_planted
    from xai_helpers.training import fit_linear_probe, transfer

    monkeypatch.setenv("XAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(transfer, "_FEATURES", {})
    ds = make_planted(n=96, size=64, kind="skin", seed=3)
    model = build_model("efficientnet_lite0_ms", 2, pretrained=True, input_size=64, class_names=ds.class_names)
    assert model.scales == (32, 64)
    x, y = training.images_to_tensor(ds.images, model.info.mean, model.info.std), ds.labels
    seen = []
    hooks = [net._conv_stem.register_forward_hook(lambda m, i, o: seen.append(len(i[0]))) for net in model.nets]

    def probe(xx, cache=True):
        seen.clear()
        fit_linear_probe(model, xx[:64], y[:64], xx[64:], y[64:], progress=False, verbose=False, feature_cache=cache)
        return [h.weight.detach().clone() for h in model.heads], sum(seen) - 2 * 32   # less its validation predict

    plain, n_plain = probe(x, cache=False)
    first, n_first = probe(x)
    assert n_plain == n_first == 2 * 96                        # both members, every image once
    again, n_again = probe(x)
    assert n_again == 0                                        # all from the cache
    for a, b, c in zip(plain, first, again):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6 * float(a.abs().max()))
        torch.testing.assert_close(c, b)
    changed = x.clone()
    changed[:5] += 0.5                                         # five images differ (e.g. ink drawn on them)
    _, n_changed = probe(changed)
    assert n_changed == 2 * 5
    files = sorted((tmp_path / "cache" / "_cache" / "features").glob("*.npz"))
    assert len(files) == 2 and not list(files[0].parent.glob("*.tmp*"))
    monkeypatch.setattr(transfer, "_FEATURES", {})             # a new process: the disk copy serves
    assert probe(x)[1] == 0
    monkeypatch.setattr(transfer, "_FEATURES", {})             # a student: own cache empty, the class's full
    monkeypatch.setenv("XAI_SHARED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XAI_CACHE_DIR", str(tmp_path / "student"))
    assert probe(x)[1] == 0 and not (tmp_path / "student" / "_cache" / "features").exists()
    monkeypatch.delenv("XAI_SHARED_CACHE")
    monkeypatch.setenv("XAI_CACHE_DIR", str(tmp_path / "cache"))
    files[0].write_bytes(b"not a zip")                          # damaged: recomputed, with a warning
    monkeypatch.setattr(transfer, "_FEATURES", {})
    with pytest.warns(UserWarning, match="cannot be read"):
        assert probe(x)[1] == 96
    monkeypatch.setattr(transfer, "_FEATURES", {})
    before = {f: f.stat().st_mtime_ns for f in files}
    for f in files + [files[0].parent]:
        f.chmod(0o555 if f.is_dir() else 0o444)
    try:
        assert probe(x.flip(0))[1] == 0 and probe(changed + 1)[1] == 2 * 96     # same images, other order: 0
        assert {f: f.stat().st_mtime_ns for f in files} == before and len(list(files[0].parent.iterdir())) == 2
    finally:
        files[0].parent.chmod(0o755)
    for h in hooks:
        h.remove()


def test_frozen_prefix_keeps_imagenet_batchnorm_statistics():
    """Regression: fine-tuning the suffix (and re-estimating its BatchNorm statistics) must not
    touch the frozen prefix's BatchNorm running statistics."""
    from xai_helpers.models import build_model
    from xai_helpers.training import fit_frozen_prefix

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 2, pretrained=True, input_size=32)
    prefix = {k: v.clone() for k, v in model.state_dict().items()
              if k.startswith(("_bn0", "_conv_stem")) or (k.startswith("_blocks.") and int(k.split(".")[1]) < 14)}
    x, y = torch.randn(64, 3, 32, 32), torch.tensor([0, 1] * 32)
    fit_frozen_prefix(model, x, y, x[:16], y[:16], frozen_blocks=14, epochs=1, lr=1e-3, batch_size=16,
                      progress=False, verbose=False)
    state = model.state_dict()
    changed = [k for k, v in prefix.items() if not torch.equal(state[k], v)]
    assert not changed, f"frozen prefix changed: {changed[:5]}"
    assert any(not torch.equal(state[k], v) for k, v in build_model(
        "efficientnet_lite0", 2, pretrained=True, input_size=32).state_dict().items()
        if k.startswith("_blocks.15")), "the suffix should have trained"


def _old_checkpoints():
    import os
    root = Path(os.environ.get("XAI_DATA_ROOT", "/nonexistent")) / "checkpoints"
    return sorted(root.glob("*.pt")) if root.is_dir() else []


@pytest.mark.parametrize("path", _old_checkpoints() or [None], ids=lambda p: p.name if p else "none")
def test_checkpoints_from_before_model_info_still_load(path, tmp_path):
    """Files written when the model description was loose metadata keys (arch, class_names, task,
    mean, std, ...) load with a ModelInfo rebuilt from those keys."""
    if path is None:
        pytest.skip("no old checkpoints under $XAI_DATA_ROOT/checkpoints")
    meta = torch.load(path, weights_only=True)["meta"]
    if "model_info" in meta:
        pytest.skip(f"{path.name} already holds a model_info")
    model, loaded_meta = load_checkpoint(path)
    info = model.info
    assert info.arch == meta["arch"] and list(info.class_names) == meta["class_names"]
    assert info.task == meta["task"] and list(info.mean) == meta["mean"] and list(info.std) == meta["std"]
    assert info.input_size == meta["input_size"] and info.cam_layer == meta["cam_layer"]
    x = torch.zeros(2, info.in_channels, info.input_size, info.input_size)
    assert predict(model, x).shape == (2, info.num_outputs)
    again, meta2 = load_checkpoint(save_checkpoint(tmp_path / "again.pt", model))
    assert again.info == info and meta2["model_info"] == info.as_dict()


def test_old_style_metadata_without_model_info_rebuilds_it(trained, tmp_path):
    """The same, without the shared data: strip model_info from a fresh file's metadata."""
    model = trained[0]
    path = save_checkpoint(tmp_path / "m.pt", model)
    blob = torch.load(path, weights_only=True)
    del blob["meta"]["model_info"]
    torch.save(blob, path)
    loaded, _ = load_checkpoint(path)
    assert loaded.info == model.info
    del blob["meta"]["task"]
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="lacks metadata"):
        load_checkpoint(path)


def test_options_are_not_swallowed():
    """A misspelt option raises instead of vanishing; probe recipes carry no epochs / lr they ignore."""
    model = build_model("efficientnet_lite0_ms", 2, input_size=32)
    x, y = torch.zeros(4, 3, 32, 32), np.array([0, 1, 0, 1])
    with pytest.raises(TypeError, match="epoch"):
        training.fit_linear_probe(model, x, y, x, y, epoch=3)
    for name in ("skin_binary", "skin_7class", "cxr_multilabel"):
        assert "epochs" not in training.RECIPES[name] and "lr" not in training.RECIPES[name]
    with pytest.raises(ValueError, match="efficientnet_lite0_ms"):
        training.fit_linear_probe(build_model("small_cnn", 2), x, y, x, y)


def test_predict_and_fit_refuse_a_model_without_a_task():
    """A plain module: predict / fit need the task, given or declared."""
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.randn(5, 1, 2, 2)
    with pytest.raises(ValueError, match="describe_model"):
        predict(plain, x)
    p = predict(plain, x, task="multilabel")
    assert p.shape == (5, 3) and not np.allclose(p.sum(1), 1)


@pytest.mark.parametrize("steps", [1, 2, 5, 6])
def test_onecycle_schedule_accepts_few_steps(steps):
    """A tiny run (one epoch of a few batches) must train, not divide by a zero-length warm-up phase."""
    from xai_helpers.training.loop import _scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = _scheduler(opt, "onecycle", 0.1, steps)
    for _ in range(steps):
        opt.step()
        sched.step()
