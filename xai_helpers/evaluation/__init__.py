"""Scores of explanations (not of the classifier: its AUC and accuracy live in ``xai_helpers.metrics``).

* :mod:`.localization`: does a map point where the evidence is? (pointing game, relevance mass,
  rank accuracy, against ground-truth masks, with the area fraction as chance level).
* :mod:`.statistics`: how sure are we? (bootstrap intervals, paired tests, Holm, Friedman).

    >>> from xai_helpers.evaluation import per_image_scores, bootstrap_ci
    >>> hits = per_image_scores({"gradcam": maps}, masks)["gradcam"]
    >>> bootstrap_ci(hits)            # Interval(mean=..., low=..., high=...)
"""
from .localization import (area_fraction, per_image_scores, pointing_game, pointing_hits, relevance_mass,
                           relevance_rank_accuracy, score_maps)
from .statistics import FriedmanResult, Interval, PairedResult, bootstrap_ci, friedman, holm, paired_test

__all__ = ["area_fraction", "per_image_scores", "pointing_game", "pointing_hits", "relevance_mass",
           "relevance_rank_accuracy", "score_maps",
           "Interval", "PairedResult", "FriedmanResult", "bootstrap_ci", "paired_test", "holm", "friedman"]
