"""Artifact generators (seeded, exact masks, inputs untouched), shortcut datasets and the dark-corner detector."""
from __future__ import annotations

import numpy as np
import pytest

from xai_helpers.artifacts import (ARTIFACTS, add_artifact, detect_dark_corners, load_shortcut_dataset,
                                   make_shortcut_dataset, save_shortcut_dataset)
from xai_helpers.synthetic import make_planted


@pytest.fixture(scope="module")
def clean():
    return make_planted(n=40, size=48, kind="skin", artifact=None, seed=3)


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_generator_is_seeded_and_its_mask_is_exactly_the_changed_pixels(clean, artifact):
    images = clean.images.copy()
    out1, m1 = add_artifact(images, artifact, seed=5)
    out2, m2 = add_artifact(images, artifact, seed=5)
    out3, _ = add_artifact(images, artifact, seed=6)
    assert np.array_equal(images, clean.images), "input modified in place"
    assert np.array_equal(out1, out2) and np.array_equal(m1, m2)
    assert (out1 != out3).any(axis=(1, 2, 3)).all(), "another seed must draw another artifact on every image"
    changed = (out1 != images).any(-1)
    assert np.array_equal(changed, m1)                     # both directions: no stray pixel, no idle mask pixel
    assert m1.any(axis=(1, 2)).all(), "every image gets a visible artifact"
    # image i's artifact does not depend on the images that come with it
    out_sub, m_sub = add_artifact(images[:5], artifact, seed=5)
    assert np.array_equal(out_sub, out1[:5]) and np.array_equal(m_sub, m1[:5])


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_generator_on_grey_and_extreme_images(artifact):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (3, 40, 40, 1), dtype=np.uint8)
    flat = np.stack([np.zeros((40, 40, 3), np.uint8), np.full((40, 40, 3), 255, np.uint8)])
    for imgs in (grey, flat):
        out, m = add_artifact(imgs, artifact, seed=1)
        assert out.shape == imgs.shape and np.array_equal((out != imgs).any(-1), m) and m.any()


def test_avoid_keeps_artifacts_off_the_lesion(clean):
    _, free = add_artifact(clean.images, "ink", seed=2)
    _, kept = add_artifact(clean.images, "ink", seed=2, avoid=clean.masks)
    assert (kept & clean.masks).sum() < 0.25 * max(1, (free & clean.masks).sum())


def test_bad_input_says_what_to_do(clean):
    with pytest.raises(ValueError, match="unknown artifact"):
        add_artifact(clean.images, "tattoo")
    with pytest.raises(TypeError, match="uint8"):
        add_artifact(clean.images.astype(np.float32), "ink")
    with pytest.raises(ValueError, match="at least 16 px"):
        add_artifact(np.zeros((1, 8, 8, 3), np.uint8), "ink")


def test_shortcut_dataset_rates_masks_and_input_untouched(clean):
    before = clean.images.copy()
    sds = make_shortcut_dataset(clean, "ruler", rate_by_class={1: 0.9, "benign (homogeneous)": 0.1}, seed=0)
    assert np.array_equal(clean.images, before) and not clean.extra["artifact_masks"].any()
    has, masks, y = sds.extra["artifact"], sds.extra["artifact_masks"], sds.labels
    for k, rate in ((1, 0.9), (0, 0.1)):
        assert has[y == k].sum() == round(rate * (y == k).sum())
    assert np.array_equal(masks.any(axis=(1, 2)), has)
    assert np.array_equal((sds.images != clean.images).any(-1), masks)
    assert sds.extra["clean_images"] is clean.images
    assert sds.extra["spurious_corr_measured"] > 0.7
    again = make_shortcut_dataset(clean, "ruler", rate_by_class={1: 0.9, 0: 0.1}, seed=0)
    assert np.array_equal(again.images, sds.images)
    assert not np.array_equal(make_shortcut_dataset(clean, "ruler", {1: 0.9, 0: 0.1}, seed=1).images, sds.images)
    with pytest.raises(ValueError, match="already carries artifacts"):
        make_shortcut_dataset(sds, "ink", {1: 0.5})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        make_shortcut_dataset(clean, "ink", {1: 1.5})
    with pytest.raises(ValueError, match="unknown class"):
        make_shortcut_dataset(clean, "ink", {"melanoma": 0.5})


def test_shortcut_dataset_round_trips_through_the_cache_dir(clean, tmp_path, monkeypatch):
    monkeypatch.setenv("XAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XAI_DATA_ROOT", str(tmp_path / "data"))
    sds = make_shortcut_dataset(clean, "bubbles", {1: 1.0}, seed=0)
    path = save_shortcut_dataset(sds, name="bubbles_test")
    assert (tmp_path / "cache") in path.parents and not (tmp_path / "data").exists()
    back = load_shortcut_dataset(path)
    assert np.array_equal(back.images, sds.images) and np.array_equal(back.extra["artifact_masks"],
                                                                       sds.extra["artifact_masks"])
    assert back.extra["artifact_rate_by_class"] == {1: 1.0} and back.class_names == sds.class_names
    with pytest.raises(ValueError, match="plain file name"):
        save_shortcut_dataset(sds, name="../escape")


def test_dark_corner_detector_finds_vignettes_and_nothing_else(clean):
    vign, masks = add_artifact(clean.images, "dark_corners", seed=0)
    found = detect_dark_corners(vign)
    precision = (found & masks).sum() / found.sum()
    recall = (found & masks).sum() / masks.sum()
    assert precision > 0.99 and recall > 0.6, (precision, recall)
    assert not detect_dark_corners(clean.images).any()
    blob = clean.images.copy()
    blob[:, 18:30, 18:30] = 5                                # a dark lesion that does not reach a corner
    assert not detect_dark_corners(blob).any()
    with pytest.raises(ValueError, match="luminance"):
        detect_dark_corners(clean.images, threshold=40)


@pytest.mark.realdata
def test_generators_and_detector_on_real_dermoscopy(real_dataset):
    from xai_helpers.data import load

    ph2 = load("ph2", size=128, root=real_dataset("ph2"))
    imgs = ph2.images[:12]
    for artifact in ARTIFACTS:
        out, m = add_artifact(imgs, artifact, seed=0, avoid=ph2.masks[:12])
        assert np.array_equal((out != imgs).any(-1), m) and np.array_equal(imgs, ph2.images[:12])
    # PH2 images come with the dermatoscope's dark rim in many corners; added vignettes are found
    vign, masks = add_artifact(imgs, "dark_corners", seed=0)
    found = detect_dark_corners(vign)
    assert (found & masks).sum() / masks.sum() > 0.5
    assert (found & ~masks).sum() <= (detect_dark_corners(imgs) & ~masks).sum() + 0.01 * found.size


def _film(h: int = 256) -> np.ndarray:
    """A smooth grey 'chest film': bright in the middle, darker at the sides, no sharp structure."""
    yy, xx = np.mgrid[:h, :h] / h
    return (60 + 80 * np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.08)).astype(np.uint8)


def test_marker_detector_finds_a_letter_near_the_border_and_nothing_else():
    from xai_helpers.artifacts import detect_burned_in_markers

    film = _film()
    film[20:34, 30:33] = 250                   # an "L" near the top-left corner: a marker
    film[31:34, 30:40] = 250
    film[120:134, 120:123] = 250               # the same bright stroke in the middle: not near the border
    film[0:2, :] = 255                         # the scanner's frame line on the outermost pixels
    film[200:240, 10:14] = 250                 # a long wire (taller than 12 % of the side)
    marks = detect_burned_in_markers(film[None])[0]
    letter = np.zeros_like(marks)
    letter[20:34, 30:33] = letter[31:34, 30:40] = True
    assert np.array_equal(marks, letter)
    assert not detect_burned_in_markers(_film()[None]).any()          # a clean film: nothing
    assert np.array_equal(detect_burned_in_markers(film[None, ..., None]), marks[None])   # (N, H, W, 1) too
    with pytest.raises(ValueError, match="uint8 grey films"):
        detect_burned_in_markers(film.astype(np.float32)[None])


def test_fill_with_surrounding_median_replaces_only_the_mask():
    from xai_helpers.artifacts import fill_with_surrounding_median

    rng = np.random.default_rng(0)
    imgs = np.full((2, 32, 32, 3), (100, 150, 200), np.uint8)
    imgs[0, 10:14, 10:14] = (255, 0, 255)       # a violet mark on a flat background
    imgs[1] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    masks = np.zeros((2, 32, 32), bool)
    masks[0, 10:14, 10:14] = True
    before = imgs.copy()
    out = fill_with_surrounding_median(imgs, masks)
    assert np.array_equal(imgs, before)                                 # input untouched
    assert (out[0] == (100, 150, 200)).all()                             # the mark is gone
    assert np.array_equal(out[1], imgs[1])                               # empty mask: unchanged
    assert np.array_equal(out[0][~masks[0]], imgs[0][~masks[0]])
    with pytest.raises(ValueError, match="masks must be"):
        fill_with_surrounding_median(imgs, masks[:1])
    with pytest.raises(ValueError, match="covers the whole image"):
        fill_with_surrounding_median(imgs[:1], np.ones((1, 32, 32), bool))
