"""Scores of explanations (not of the classifier: its AUC and accuracy live in ``xai_helpers.metrics``).

* :mod:`.localization`: does a map point where the evidence is? (pointing game, relevance mass,
  rank accuracy, against ground-truth masks, with the area fraction as chance level).
* :mod:`.statistics`: how sure are we? (bootstrap intervals, paired tests, Holm, Friedman, Nemenyi's
  critical difference).
* :mod:`.faithfulness`: does the output follow the map? (deletion / insertion, pixel flipping and
  AOPC, AIC / SIC).
* :mod:`.sanity`: does the map depend on the model? (parameter and data randomisation).
* :mod:`.robustness`: is the map stable and predictive? (max-sensitivity, local Lipschitz, infidelity).
* :mod:`.boxes`: expert boxes per finding (pointing, relevance mass, Otsu IoU; Alam et al., 2023).
* :mod:`.scorecard`: many methods x many metrics in one table, with intervals and ranks.

    >>> from xai_helpers.evaluation import per_image_scores, bootstrap_ci
    >>> hits = per_image_scores({"gradcam": maps}, masks)["gradcam"]
    >>> bootstrap_ci(hits)            # Interval(mean=..., low=..., high=...)
"""
from .localization import (area_fraction, per_image_scores, pointing_game, pointing_hits, relevance_mass,
                           relevance_rank_accuracy, score_maps)
from .statistics import (FriedmanResult, Interval, PairedResult, bootstrap_ci, critical_difference, friedman, holm,
                         paired_test, rank_groups)
from .faithfulness import Curves, PicCurves, aopc, deletion, insertion, pic_curves, pixel_flipping
from .sanity import RandomisationResult, data_randomisation, model_randomisation, train_on_permuted_labels
from .robustness import infidelity, local_lipschitz, max_sensitivity
from .boxes import box_mask, box_scores, box_summary, otsu_iou
from .scorecard import Scorecard, rank_figure, scorecard, scorecard_figure

__all__ = ["area_fraction", "per_image_scores", "pointing_game", "pointing_hits", "relevance_mass",
           "relevance_rank_accuracy", "score_maps",
           "Interval", "PairedResult", "FriedmanResult", "bootstrap_ci", "paired_test", "holm", "friedman",
           "critical_difference", "rank_groups",
           "Curves", "PicCurves", "deletion", "insertion", "pixel_flipping", "aopc", "pic_curves",
           "RandomisationResult", "model_randomisation", "data_randomisation", "train_on_permuted_labels",
           "max_sensitivity", "local_lipschitz", "infidelity",
           "box_mask", "box_scores", "box_summary", "otsu_iou", "Scorecard", "scorecard", "scorecard_figure",
           "rank_figure"]
