"""Scores of explanations: intervals that cover, tests that reject at their nominal rate, hand-checked numbers."""
import numpy as np
import pytest

from xai_helpers import evaluation
from xai_helpers.evaluation import bootstrap_ci, friedman, holm, paired_test, per_image_scores


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = []
    for k in range(200):
        hits = rng.binomial(1, 0.7, size=60).astype(float)   # pointing hits of a method that hits 70%
        ci = bootstrap_ci(hits, n_resamples=1000, seed=k)
        assert ci.low <= ci.mean <= ci.high
        covered.append(ci.low <= 0.7 <= ci.high)
    assert 0.90 <= np.mean(covered) <= 0.99


def test_bootstrap_is_the_notebook_08_formula_seeded_locally_and_skips_nan():
    values = np.random.default_rng(3).integers(0, 2, 12).astype(float)
    rng = np.random.default_rng(0)                      # what notebook 08 computed in its own cell
    means = rng.choice(values, size=(200, 12), replace=True).mean(1)
    expected = (values.mean(), *np.percentile(means, [2.5, 97.5]))
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    assert bootstrap_ci(values, n_resamples=200) == pytest.approx(expected, abs=0)
    assert np.array_equal(np.random.get_state()[1], state), "the global NumPy generator was used"
    with_nan = np.concatenate([values, [np.nan]])
    assert bootstrap_ci(with_nan, n_resamples=200) == bootstrap_ci(values, n_resamples=200)
    assert bootstrap_ci(values, level=0.5).high - bootstrap_ci(values, level=0.5).low < \
        bootstrap_ci(values, level=0.99).high - bootstrap_ci(values, level=0.99).low
    with pytest.raises(ValueError, match="every value is NaN"):
        bootstrap_ci([np.nan, np.nan])


@pytest.mark.parametrize("method", ["wilcoxon", "permutation"])
def test_paired_test_finds_a_planted_difference(method):
    rng = np.random.default_rng(1)
    a = rng.normal(size=40)
    b = a + 0.5 + rng.normal(scale=0.5, size=40)           # b is better on most images
    res = paired_test(a, b, method=method, n_resamples=2000)
    assert res.pvalue < 0.001 and res.n == 40
    if method == "permutation":
        assert res.statistic == pytest.approx(np.mean(a - b))


@pytest.mark.parametrize("method", ["wilcoxon", "permutation"])
def test_paired_test_rejects_at_about_the_nominal_rate_without_a_difference(method):
    rng = np.random.default_rng(2)
    p = [paired_test(rng.normal(size=25), rng.normal(size=25), method=method, n_resamples=500, seed=k).pvalue
         for k in range(200)]
    assert 0.01 <= np.mean(np.array(p) < 0.05) <= 0.10


def test_exact_permutation_p_value_for_few_images():
    # 3 images, all differences positive: of the 8 sign patterns only all-plus and all-minus are as extreme
    res = paired_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], method="permutation")
    assert res.pvalue == pytest.approx(2 / 8)
    assert paired_test([1.0, 1.0, np.nan], [1.0, 1.0, 0.0]).pvalue == 1.0     # no difference, NaN pair dropped
    with pytest.raises(ValueError, match="same images"):
        paired_test([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="unknown method 'ttest'"):
        paired_test([1, 2, 3], [3, 2, 1], method="ttest")


def test_holm_matches_a_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])                        # capped at 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.5])


def test_friedman_mean_ranks_match_a_hand_example():
    scores = {"x": [3, 2, 1, 4], "y": [1, 1, 1, 1], "z": [2, 3, 0, 0]}
    # per image, rank 1 = highest score, ties share: (1,3,2) (2,3,1) (1.5,1.5,3) (1,2,3)
    res = friedman(scores)
    assert res.mean_ranks == pytest.approx({"x": 5.5 / 4, "y": 9.5 / 4, "z": 9 / 4})
    assert res.n == 4 and 0 < res.pvalue < 1
    lower = friedman(scores, higher_is_better=False).mean_ranks
    assert lower["x"] == pytest.approx(4 - 5.5 / 4)                             # ranks mirror
    clear = np.column_stack([np.arange(10) + 20, np.arange(10) + 10, np.arange(10)])
    strong = friedman(clear)
    assert strong.mean_ranks == {"0": 1.0, "1": 2.0, "2": 3.0} and strong.pvalue < 0.001
    with pytest.raises(ValueError, match="at least 3 methods"):
        friedman({"a": [1, 2], "b": [2, 1]})


def test_critical_difference_equals_demsar_table_and_groups_join_close_ranks():
    from xai_helpers.evaluation import critical_difference, rank_groups

    # Demšar (2006), table 5(a): q_0.05 for k = 2..10 (CD = q * sqrt(k (k + 1) / (6 N)); N = k (k + 1) / 6 -> CD = q)
    table = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    for k, q in zip(range(2, 11), table):
        assert critical_difference(k, k * (k + 1) / 6) == pytest.approx(q, abs=2e-3)
    assert critical_difference(4, 14) == pytest.approx(2.569 * np.sqrt(20 / 84), abs=2e-3)
    assert critical_difference(4, 14, alpha=0.10) < critical_difference(4, 14)
    assert rank_groups({"a": 1.0, "b": 1.5, "c": 3.5, "d": 4.0}, cd=1.0) == [["a", "b"], ["c", "d"]]
    assert rank_groups({"a": 1.0, "b": 1.8, "c": 2.6}, cd=1.0) == [["a", "b"], ["b", "c"]]
    assert rank_groups({"a": 1.0, "b": 3.0}, cd=1.0) == []
    with pytest.raises(ValueError, match="at least 2 methods"):
        critical_difference(1, 10)


def test_nemenyi_rejects_no_more_than_about_alpha_without_a_difference():
    # four methods with exchangeable scores on 20 images: how often does ANY pair exceed the CD?
    from scipy.stats import rankdata

    from xai_helpers.evaluation import critical_difference

    rng = np.random.default_rng(1)
    cd = critical_difference(4, 20)
    hits = 0
    for _ in range(400):
        r = rankdata(-rng.normal(size=(20, 4)), axis=1).mean(0)
        hits += (r.max() - r.min()) > cd
    assert hits / 400 < 0.09           # nominal 0.05; measured 0.054-0.064 over 2,000 draws (slightly liberal)
    shifted = rng.normal(size=(20, 4)) + np.array([3.0, 0, 0, 0])
    r = rankdata(-shifted, axis=1).mean(0)
    assert r[1:].min() - r[0] > cd                 # a clearly better method is told apart


def test_per_image_scores_is_one_array_per_method():
    masks = np.zeros((3, 4, 4), bool)
    masks[:, :2, :2] = True
    masks[2] = False                                       # no evidence: NaN
    inside = np.zeros((3, 4, 4))
    inside[:, 0, 0] = 1.0
    hits = per_image_scores({"good": inside, "bad": 1.0 - inside}, masks)
    assert np.array_equal(hits["good"][:2], [1.0, 1.0]) and np.isnan(hits["good"][2])
    assert np.array_equal(hits["bad"][:2], [3 / 15, 3 / 15])   # a tie over 15 maxima, 3 of them in the mask
    mass = per_image_scores({"good": inside}, masks, score="relevance_mass")["good"]
    assert np.array_equal(mass[:2], [1.0, 1.0])
    with pytest.raises(ValueError, match="unknown score"):
        per_image_scores({"good": inside}, masks, score="auc")
    assert set(evaluation.__all__) >= {"pointing_game", "score_maps", "bootstrap_ci", "friedman"}


def test_score_maps_says_how_many_images_each_score_used_and_why():
    """Occlusion maps with no positive value have no relevance mass (0 / 0): they used to vanish
    from the mean through nanmean without a word (issue 17)."""
    import warnings

    from xai_helpers.evaluation.localization import (EMPTY_MASK, NO_POSITIVE, NOT_FINITE, ImagesLeftOutWarning,
                                                     LocalizationScores)

    masks = np.zeros((5, 4, 4), bool)
    masks[:4, :2, :2] = True                               # image 4: no evidence
    maps = np.zeros((5, 4, 4))
    maps[:, 0, 0] = 1.0                                    # peak inside the mask
    maps[1] = -1.0                                         # no positive value: no relevance mass
    maps[1, 0, 0] = -0.5
    maps[2, 3, 3] = np.nan                                 # broken map
    with pytest.warns(ImagesLeftOutWarning, match=r"(?s)occlusion: .*relevance_mass: 2 of 5 images") as rec:
        s = evaluation.score_maps(maps, masks, name="occlusion")
    assert "map has no positive value" in str(rec[0].message)
    assert isinstance(s, LocalizationScores) and s.n_images == 5
    assert s.n_used == {"pointing_game": 4, "relevance_mass": 2, "rank_accuracy": 3}
    assert s.left_out["pointing_game"] == {EMPTY_MASK: 1}
    assert s.left_out["relevance_mass"] == {EMPTY_MASK: 1, NO_POSITIVE: 1, NOT_FINITE: 1}
    assert s["relevance_mass"] == 1.0                      # the two scorable maps put all mass inside
    # image 1's unique peak (-0.5) is inside; image 2's NaN map is a miss
    assert s["pointing_game"] == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert s["chance (area fraction)"] == pytest.approx(0.25)   # over the images with evidence
    assert list(s) == ["pointing_game", "relevance_mass", "rank_accuracy", "chance (area fraction)"]
    assert "relevance_mass: 2 of 5 images" in s.report()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluation.score_maps(maps, masks, warn=False)
        clean = evaluation.score_maps(maps[[0, 3, 4]], masks[[0, 3, 4]])   # only an empty mask: no warning
    assert clean.n_used["relevance_mass"] == 2 and clean["relevance_mass"] == 1.0


def test_score_maps_of_all_blank_maps_is_nan_with_a_warning_not_an_error():
    from xai_helpers.evaluation.localization import ImagesLeftOutWarning

    masks = np.zeros((3, 4, 4), bool)
    masks[:, 1:3, 1:3] = True
    with pytest.warns(ImagesLeftOutWarning, match="relevance_mass: 0 of 3"):
        s = evaluation.score_maps(np.zeros((3, 4, 4)), masks)
    assert np.isnan(s["relevance_mass"]) and s["pointing_game"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="every mask is empty"):
        evaluation.score_maps(np.ones((2, 4, 4)), np.zeros((2, 4, 4), bool))
