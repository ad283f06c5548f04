"""Planted-evidence data: deterministic, evidence exactly where the masks say, artifact correlation as asked."""
import numpy as np
import pytest

from xai_helpers.synthetic import make_planted


def _auc(score, y):
    """Area under the ROC curve of ``score`` for binary ``y`` (rank formula, ties averaged)."""
    from scipy.stats import rankdata

    r = rankdata(score)
    n1 = int(y.sum())
    n0 = len(y) - n1
    return (r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n0 * n1)


@pytest.mark.parametrize("kind", ["skin", "chest"])
def test_deterministic_from_seed(kind):
    a = make_planted(n=40, size=32, kind=kind, spurious_corr=0.5, seed=3)
    b = make_planted(n=40, size=32, kind=kind, spurious_corr=0.5, seed=3)
    c = make_planted(n=40, size=32, kind=kind, spurious_corr=0.5, seed=4)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.extra["artifact_masks"], b.extra["artifact_masks"])
    assert not np.array_equal(a.images, c.images)


@pytest.mark.parametrize("kind,channels", [("skin", 3), ("chest", 1)])
def test_shapes_types_and_balance(kind, channels):
    ds = make_planted(n=90, size=48, kind=kind, n_classes=3, seed=0)
    assert ds.source == "synthetic" and ds.task == "multiclass" and len(ds.class_names) == 3
    assert ds.images.shape == (90, 48, 48, channels) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and np.bincount(ds.labels).tolist() == [30, 30, 30]
    assert ds.masks.shape == (90, 48, 48) and ds.masks.dtype == bool
    assert len(np.unique(ds.groups)) == 90 and len(np.unique(ds.ids)) == 90
    binary = make_planted(n=10, size=32, kind=kind)
    assert binary.task == "binary" and len(binary.class_names) == 2


@pytest.mark.parametrize("kind", ["skin", "chest"])
def test_evidence_masks_cover_5_to_15_percent_and_move(kind):
    ds = make_planted(n=200, size=64, kind=kind, seed=1)
    frac = ds.masks.mean(axis=(1, 2))
    assert frac.min() >= 0.045 and frac.max() <= 0.15
    centres = ds.extra["evidence_center"]
    assert centres.std(axis=0).min() > 2.0          # the region is not always in the same place


@pytest.mark.parametrize("kind", ["skin", "chest"])
def test_class_is_readable_inside_the_mask_only(kind):
    """Texture inside the evidence region separates the classes; its mean and the rest of the image do not."""
    ds = make_planted(n=300, size=64, kind=kind, seed=2)
    g = ds.images.astype(np.float32).mean(axis=-1)
    y = ds.labels
    inside_mean = np.array([g[i][ds.masks[i]].mean() for i in range(len(ds))])
    inside_texture = np.array([np.abs(np.diff(np.where(ds.masks[i], g[i], np.nan), axis=1))[
        ~np.isnan(np.diff(np.where(ds.masks[i], g[i], np.nan), axis=1))].mean() for i in range(len(ds))])
    outside_mean = np.array([g[i][~ds.masks[i]].mean() for i in range(len(ds))])
    auc_tex = _auc(inside_texture, y)
    assert max(auc_tex, 1 - auc_tex) > 0.9, auc_tex
    assert abs(_auc(inside_mean, y) - 0.5) < 0.2
    assert abs(_auc(outside_mean, y) - 0.5) < 0.15


@pytest.mark.parametrize("corr", [0.0, 0.5, 0.9, -0.6])
def test_spurious_correlation_close_to_parameter(corr):
    ds = make_planted(n=400, size=32, kind="skin", spurious_corr=corr, seed=5, artifact="ink")
    art = ds.extra["artifact"]
    measured = np.corrcoef(art.astype(float), (ds.labels == 1).astype(float))[0, 1]
    assert abs(measured - corr) < 0.05
    assert abs(ds.extra["spurious_corr_measured"] - measured) < 1e-9
    # the artifact is drawn exactly where its mask says, and only in images flagged to have it
    am = ds.extra["artifact_masks"]
    assert np.array_equal(am.any(axis=(1, 2)), art)
    assert not (am & ds.masks).any()


@pytest.mark.parametrize("kind,artifact", [("skin", "ink"), ("skin", "ruler"), ("chest", "marker")])
def test_artifact_away_from_evidence_and_visible(kind, artifact):
    ds = make_planted(n=120, size=64, kind=kind, spurious_corr=1.0, artifact=artifact, seed=0)
    am = ds.extra["artifact_masks"]
    on = ds.extra["artifact"]
    assert np.array_equal(on, ds.labels == 1)          # corr 1: artifact iff class 1
    for i in np.flatnonzero(on)[:30]:
        ys, xs = np.nonzero(am[i])
        cy, cx = ds.extra["evidence_center"][i]
        dist = np.sqrt((ys + 0.5 - cy) ** 2 + (xs + 0.5 - cx) ** 2).min()
        assert dist > ds.extra["evidence_radius"][i] + 2
    # the artifact changes the pixels: without it the same seed gives different pixels there
    plain = make_planted(n=120, size=64, kind=kind, artifact=None, seed=0)
    i = int(np.flatnonzero(on)[0])
    assert np.abs(ds.images[i][am[i]].astype(int) - plain.images[i][am[i]].astype(int)).mean() > 30


def test_no_artifacts_when_corr_zero_by_default_and_no_decoy_option():
    ds = make_planted(n=50, size=32, seed=0)
    assert not ds.extra["artifact"].any() and ds.extra["artifact_kind"] is None
    nd = make_planted(n=50, size=32, seed=0, decoy=False)
    assert not nd.masks[nd.labels == 0].any() and nd.masks[nd.labels == 1].any(axis=(1, 2)).all()


def test_subset_keeps_extras_aligned(planted):
    idx = np.array([5, 1, 7])
    sub = planted.subset(idx)
    assert len(sub) == 3 and np.array_equal(sub.images, planted.images[idx])
    assert np.array_equal(sub.extra["artifact_masks"], planted.extra["artifact_masks"][idx])
    assert np.array_equal(sub.masks, planted.masks[idx]) and sub.class_names == planted.class_names


@pytest.mark.parametrize("kw,msg", [({"kind": "xray"}, "kind"), ({"n_classes": 5}, "n_classes"),
                                    ({"spurious_corr": 1.5}, "spurious_corr"), ({"size": 8}, "size"),
                                    ({"kind": "chest", "artifact": "ink"}, "artifact")])
def test_bad_arguments_say_what_is_wrong(kw, msg):
    with pytest.raises(ValueError, match=msg):
        make_planted(n=20, **kw)
