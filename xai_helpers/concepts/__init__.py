"""Concepts and shortcuts: does the model use a human concept, or an artifact, to decide?

* :mod:`.tcav`: TCAV (Kim et al., 2018) from scratch, with its test against random concepts.
* :mod:`.discovery`: concepts found without labels, by NMF of a layer's activations.
* :mod:`.shortcuts`: AUC with and without an artifact, per-image counterfactuals, relevance on it.

The artifacts themselves (rulers, ink, bubbles, dark corners) are drawn by :mod:`xai_helpers.artifacts`.
"""
from .discovery import DiscoveredConcepts, discover_concepts, nmf_concepts
from .shortcuts import (artifact_counterfactual, artifact_relevance, class_scores, counterfactual_effect,
                        relevance_scorecard, shortcut_auc)
from .tcav import CAV, TCAVResult, directional_derivatives, random_sets, tcav, tcav_score, train_cav

__all__ = ["tcav", "TCAVResult", "CAV", "train_cav", "tcav_score", "directional_derivatives", "random_sets",
           "discover_concepts", "DiscoveredConcepts", "nmf_concepts",
           "shortcut_auc", "counterfactual_effect", "artifact_counterfactual", "artifact_relevance",
           "relevance_scorecard", "class_scores"]
