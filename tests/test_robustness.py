"""Robustness scores: max-sensitivity and infidelity (= captum.metrics on the same seeded
perturbations), the local Lipschitz estimate (by hand), properties on planted evidence, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xai_helpers.evaluation.robustness import (infidelity, linf_noise, local_lipschitz, max_sensitivity,
                                               pixel_noise, sensitivity_scores)
from xai_helpers.explain import explain


@pytest.fixture(scope="session")
def planted_robust(planted_positives):
    """The planted-skin model (fast recipe, trained once per session) and 6 unseen class-1 images."""
    model, x, _, _ = planted_positives(6)
    return model, x


def signed_gradient(model, x, targets):
    """d logit / d x summed over channels: the first-order map for per-pixel perturbations."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        out = model(x).gather(1, torch.as_tensor(targets)[:, None]).sum()
        return torch.autograd.grad(out, x)[0].sum(1)


def test_max_sensitivity_equals_captum(planted_robust):
    captum_metrics = pytest.importorskip("captum.metrics")
    model, x = planted_robust
    n, r = 5, 0.05
    noise = linf_noise(x, n, r, seed=7)

    def expl(inputs, target):                      # captum passes and expects tuples for the clean inputs
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs
        return (torch.as_tensor(explain(model, inputs, target.tolist(), "gradcam").maps),)

    theirs = captum_metrics.sensitivity_max(expl, x, perturb_func=lambda inp, radius: inp + noise,
                                            perturb_radius=r, n_perturb_samples=n, target=torch.ones(len(x), dtype=torch.long))
    ours = max_sensitivity(model, x, 1, "gradcam", radius=r, n_samples=n, seed=7)
    assert ours.min() > 0
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-6)


def test_infidelity_equals_captum(planted_robust):
    """captum's attributions must have the inputs' shape: our per-pixel map becomes C equal channels
    of map / C and the per-pixel noise C equal channels, so sum_chw I Phi / C = sum_hw I Phi."""
    captum_metrics = pytest.importorskip("captum.metrics")
    model, x = planted_robust
    n, c = 8, x.shape[1]
    maps = explain(model, x, 1, "gradcam").maps
    for normalize in (True, False):
        noise = pixel_noise(x, n, 0.05, seed=3).expand(-1, c, -1, -1)
        theirs = captum_metrics.infidelity(model, lambda inp: (noise, inp - noise), x,
                                           torch.as_tensor(maps)[:, None].expand(-1, c, -1, -1) / c,
                                           target=torch.ones(len(x), dtype=torch.long), n_perturb_samples=n,
                                           normalize=normalize)
        ours = infidelity(model, x, maps, 1, n_samples=n, noise_std=0.05, seed=3, normalize=normalize)
        np.testing.assert_allclose(ours, theirs.double().numpy(), rtol=2e-4, atol=1e-9)


def test_local_lipschitz_by_hand(planted_robust):
    model, x = planted_robust
    x = x[:2]

    def first_channel(model, inp, targets):          # Phi(x) = 2 x_0: L = max 2 ||delta_0|| / ||delta||
        return 2 * inp[:, 0]

    delta = linf_noise(x, 4, 0.1, seed=1).view(2, 4, *x.shape[1:])
    want = (2 * delta[:, :, 0].flatten(2).norm(dim=2) / delta.flatten(2).norm(dim=2)).max(1).values
    np.testing.assert_allclose(local_lipschitz(model, x, 1, first_channel, radius=0.1, n_samples=4, seed=1),
                               want.numpy(), rtol=1e-5)
    lin = local_lipschitz(model, x, 1, lambda m, inp, t: 3 * inp.sum(1), radius=0.1, n_samples=4)
    assert (lin <= 3 * np.sqrt(3) + 1e-6).all()       # ||3 sum_c d|| <= 3 sqrt(C) ||d||


def test_sensitivity_scores_equal_the_separate_scores(planted_robust):
    model, x = planted_robust
    both = sensitivity_scores(model, x[:3], 1, "saliency", radius=0.05, n_samples=3, seed=2)
    np.testing.assert_allclose(both["max_sensitivity"],
                               max_sensitivity(model, x[:3], 1, "saliency", radius=0.05, n_samples=3, seed=2))
    np.testing.assert_allclose(both["local_lipschitz"],
                               local_lipschitz(model, x[:3], 1, "saliency", radius=0.05, n_samples=3, seed=2))


def test_properties_on_planted_evidence(planted_robust):
    """The edge detector (no model) barely moves; a random map moves completely; the signed
    gradient predicts small output changes far better than a random map does (infidelity)."""
    model, x = planted_robust
    edges = max_sensitivity(model, x, 1, "edges", radius=0.02, n_samples=4)
    rnd = max_sensitivity(model, x, 1, "random", radius=0.02, n_samples=4)
    assert edges.max() < 0.1 and rnd.min() > 0.5
    grad = signed_gradient(model, x, torch.ones(len(x), dtype=torch.long))
    i_grad = infidelity(model, x, grad, 1).mean()
    i_rnd = infidelity(model, x, np.random.default_rng(0).random(grad.shape), 1).mean()
    assert i_grad < i_rnd / 2, (i_grad, i_rnd)


def test_bad_input_and_no_side_effects(planted_robust):
    model, x = planted_robust
    maps = explain(model, x[:2], 1, "gradcam").maps
    with pytest.raises(ValueError, match="shape"):
        infidelity(model, x[:2], maps[:1])
    with pytest.raises(ValueError, match="NaN"):
        infidelity(model, x[:2], maps * np.nan)
    with pytest.raises(ValueError, match="out of range"):
        max_sensitivity(model, x[:2], 3, "gradcam")
    with pytest.raises(ValueError, match="radius"):
        local_lipschitz(model, x[:2], 1, "gradcam", radius=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch_rng, np_rng = torch.get_rng_state(), np.random.get_state()
    max_sensitivity(model, x[:2], 1, "random", n_samples=2)            # a seeded method: no global state may move
    infidelity(model, x[:2], maps, 1, n_samples=2)
    assert torch.equal(torch_rng, torch.get_rng_state())
    assert all(np.array_equal(u, v) for u, v in zip(np_rng[1:3], np.random.get_state()[1:3]))
    assert not model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            max_sensitivity(model, x[:2], 1, "gradcam")
        with pytest.raises(ValueError, match="training mode"):
            infidelity(model, x[:2], maps, 1)
        assert model.training
    finally:
        model.eval()
