"""Moving code must not move a map: every explain() method against maps recorded before the refactor.

The reference (``tests/reference/explain_maps.npz``) was recorded by ``tests/reference/record_maps.py``
on a fixed small model, images and seed, in float64 (LIME and SHAP in float32 precision), before the
explain package was split into one module per method. Each map must match it to 1e-6 of its scale.
A method added later has no reference yet: record it with ``python tests/reference/record_maps.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "reference"))
import record_maps  # noqa: E402

REFERENCE = dict(np.load(record_maps.REFERENCE))


@pytest.fixture(scope="module")
def maps():
    return record_maps.compute_maps(sorted(REFERENCE))


@pytest.mark.parametrize("method", sorted(REFERENCE))
def test_map_unchanged(maps, method):
    ref, now = REFERENCE[method], maps[method]
    assert now.shape == ref.shape
    scale = float(np.abs(ref).max())
    assert scale > 0, f"the reference map of {method} is blank: it proves nothing"
    np.testing.assert_allclose(now, ref, rtol=0, atol=1e-6 * scale,
                               err_msg=f"{method}'s map moved (scale {scale:.3g})")


def test_every_method_has_a_reference():
    from xai_helpers.explain import available_methods

    missing = set(available_methods()) - set(REFERENCE)
    assert not missing, f"no reference map for {sorted(missing)}: run python tests/reference/record_maps.py"
