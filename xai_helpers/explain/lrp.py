"""Layer-wise Relevance Propagation with zennit.

LRP (Bach et al., 2015; Montavon et al., 2019) sends the explained logit back layer by layer. For a
linear layer z_k = sum_j a_j w_jk + b_k the epsilon rule passes relevance

    R_j = sum_k  a_j w_jk / (z_k + eps * sign(z_k))  R_k

and the gamma / alpha-beta / flat / z-box rules change which contributions count. Without biases
(and with eps -> 0) every layer *conserves* relevance: sum_j R_j = sum_k R_k, so the input map sums
to the logit. Two things break that on a real ResNet:

* BatchNorm: the canonizer folds it into the preceding convolution (``ResNetCanonizer``), which
  gives that convolution a bias; the residual additions are made explicit so that rules apply.
* Biases absorb their share ``b_k / z_k * R_k``. Measured on a canonized ResNet-18 the map sums to
  only 0.4-0.9 of the logit; with ``zero_bias=True`` (zennit's ``zero_params='bias'``, biases left
  out of the relevance rules, the forward pass unchanged) it sums to 1.000.

Architectures whose forward pass zennit cannot see (functional ReLU, ``torch.cat`` as in DenseNet,
unknown layer types) raise :class:`LRPUnsupportedError` instead of returning a silently wrong map.
"""
from __future__ import annotations

import operator

import torch

from . import register

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_plus", "epsilon_alpha2_beta1")
RULES = ("epsilon", "gamma", "alpha_beta", "zplus", "flat")


class LRPUnsupportedError(ValueError):
    """The model contains an operation the LRP rules cannot handle (and no canonizer fixes it)."""


# --- which models are safe -------------------------------------------------------------------------
_LEAF_OK = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d, torch.nn.BatchNorm1d, torch.nn.ReLU,
            torch.nn.MaxPool2d, torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d, torch.nn.Flatten,
            torch.nn.Dropout, torch.nn.Identity)
# shape-only functions / methods that move values around without computing new ones
_SHAPE_OK = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, getattr, operator.getitem}
_METHOD_OK = {"view", "reshape", "flatten", "size", "squeeze", "unsqueeze", "contiguous", "dim"}
_WHY = {
    "cat": "torch.cat joins feature maps (DenseNet-style); zennit has no canonizer for it",
    "add": "a tensor addition (e.g. a residual connection) outside a canonizer-supported block",
    "iadd": "an in-place addition (e.g. a residual connection) outside a canonizer-supported block",
    "relu": "a functional ReLU (F.relu) that LRP hooks cannot see",
    "mul": "a multiplication of tensors (gating / attention)",
}


def _resnet_blocks():
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return (BasicBlock, Bottleneck)


def _is_resnet(model) -> bool:
    return any(isinstance(m, _resnet_blocks()) for m in model.modules())


def check_lrp_support(model: torch.nn.Module) -> list:
    """Return the zennit canonizers this model needs, or raise :class:`LRPUnsupportedError` saying why.

    The model is traced with ``torch.fx``; every module must be a layer the rules know (conv,
    linear, BatchNorm, ReLU, pooling, flatten, dropout), every function a shape-only one, and
    torchvision ResNet blocks are accepted because ``ResNetCanonizer`` rewrites their additions.
    """
    import torch.fx as fx
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    blocks = _resnet_blocks()
    bad_layers = sorted({type(m).__name__ for m in model.modules()
                         if not list(m.children()) and not isinstance(m, _LEAF_OK)})
    if bad_layers:
        raise LRPUnsupportedError(
            f"LRP is not available for this model: layer types {bad_layers} have no LRP rule here "
            "(supported: Conv2d, Linear, BatchNorm, ReLU, pooling, Flatten, Dropout). Use a gradient or CAM "
            "method instead, or add a zennit rule/canonizer for them.")

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, blocks) or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # data-dependent control flow etc.
        raise LRPUnsupportedError(f"LRP is not available: the model's forward pass could not be traced to check "
                                  f"that every operation has an LRP rule ({type(err).__name__}: {err})") from err
    for node in graph.nodes:
        if node.op == "call_function" and node.target not in _SHAPE_OK:
            name = getattr(node.target, "__name__", str(node.target))
            why = _WHY.get(name.strip("_"), f"the function {name!r} has no LRP rule")
            raise LRPUnsupportedError(f"LRP is not available for {type(model).__name__}: {why} "
                                      f"(in {node.name}). A silently wrong map is worse than none; use "
                                      "gradcam / integrated_gradients for this architecture.")
        if node.op == "call_method" and node.target not in _METHOD_OK:
            why = _WHY.get(str(node.target).strip("_"), f"the tensor method .{node.target}() has no LRP rule")
            raise LRPUnsupportedError(f"LRP is not available for {type(model).__name__}: {why} (in {node.name}).")
    return [ResNetCanonizer()] if _is_resnet(model) else [SequentialMergeBatchNorm()]


# --- composites ------------------------------------------------------------------------------------
def input_bounds(model, x):
    """Lowest / highest possible input values (pixel 0 and 1 after the model's normalisation), for z-box."""
    mean = getattr(model, "mean", None)
    std = getattr(model, "std", None)
    c = x.shape[1]
    mean = torch.as_tensor(mean if mean is not None else [0.0] * c, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std if std is not None else [1.0] * c, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    low = ((0 - mean) / std).expand_as(x).clone()
    high = ((1 - mean) / std).expand_as(x).clone()
    return low, high


def make_composite(model, x, composite: str = "epsilon_plus_flat", rule: str | None = None,
                   epsilon: float = 1e-6, gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0,
                   zero_bias: bool = False, canonize: bool = True):
    """Build the zennit composite: a named composite, or one ``rule`` for every conv / linear layer."""
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit.types import Convolution

    canonizers = check_lrp_support(model)      # always checked; canonize=False only to show why it matters
    if not canonize:
        canonizers = []
    zp = "bias" if zero_bias else None
    if rule is not None:
        makers = {
            "epsilon": lambda: zr.Epsilon(epsilon=epsilon, zero_params=zp),
            "gamma": lambda: zr.Gamma(gamma=gamma, zero_params=zp),
            "alpha_beta": lambda: zr.AlphaBeta(alpha=alpha, beta=beta, zero_params=zp),
            "zplus": lambda: zr.ZPlus(zero_params=zp),
            "flat": lambda: zr.Flat(zero_params=zp),
        }
        if rule not in makers:
            raise ValueError(f"unknown LRP rule {rule!r}; valid rules: {list(makers)}")
        if rule in ("alpha_beta",) and abs(alpha - beta - 1) > 1e-9:
            raise ValueError(f"alpha-beta needs alpha - beta = 1 to conserve relevance; got alpha={alpha}, beta={beta}")
        layer_map = zc.layer_map_base() + [(Convolution, makers[rule]()), (torch.nn.Linear, makers[rule]())]
        return zc.LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    if composite == "epsilon_plus_flat":
        return zc.EpsilonPlusFlat(epsilon=epsilon, zero_params=zp, canonizers=canonizers)
    if composite == "epsilon_gamma_box":
        low, high = input_bounds(model, x)
        return zc.EpsilonGammaBox(low=low, high=high, epsilon=epsilon, gamma=gamma, zero_params=zp,
                                  canonizers=canonizers)
    if composite == "epsilon_plus":
        return zc.EpsilonPlus(epsilon=epsilon, zero_params=zp, canonizers=canonizers)
    if composite == "epsilon_alpha2_beta1":
        return zc.EpsilonAlpha2Beta1(epsilon=epsilon, zero_params=zp, canonizers=canonizers)
    raise ValueError(f"unknown LRP composite {composite!r}; valid composites: {list(COMPOSITES)} "
                     f"(or pass rule= one of {list(RULES)})")


def lrp_relevance(model, x, targets, **options):
    """Input relevance (N, C, H, W) and the explained logits (N,)."""
    from zennit.attribution import Gradient

    comp = make_composite(model, x, **options)
    onehot = torch.zeros(len(x), _n_out(model, x), device=x.device, dtype=x.dtype)
    onehot[torch.arange(len(x)), targets] = 1.0
    with Gradient(model=model, composite=comp) as attributor:
        out, rel = attributor(x.detach(), lambda o: o * onehot)   # start from the logit itself
    return rel.detach(), out.detach().gather(1, targets.view(-1, 1))[:, 0]


def _n_out(model, x):
    n = getattr(model, "num_outputs", None)
    if n is not None:
        return int(n)
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def conservation(model, x, targets, **options) -> torch.Tensor:
    """Per image: (sum of input relevance) / (explained logit). 1.0 means relevance was conserved."""
    targets = torch.as_tensor(targets, device=x.device).long().view(-1)
    if len(targets) == 1 and len(x) > 1:
        targets = targets.expand(len(x))
    rel, logit = lrp_relevance(model.eval(), x, targets, **options)
    return rel.sum(dim=(1, 2, 3)) / logit


@register("lrp", "LRP (zennit): composite= epsilon_plus_flat|epsilon_gamma_box|..., or rule=, zero_bias=, canonize=")
def lrp(model, x, targets, composite: str = "epsilon_plus_flat", rule: str | None = None, epsilon: float = 1e-6,
        gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0, zero_bias: bool = False, canonize: bool = True):
    rel, _ = lrp_relevance(model, x, targets, composite=composite, rule=rule, epsilon=epsilon, gamma=gamma,
                           alpha=alpha, beta=beta, zero_bias=zero_bias, canonize=canonize)
    return rel.sum(1)


__all__ = ["lrp", "conservation", "lrp_relevance", "make_composite", "check_lrp_support", "LRPUnsupportedError",
           "COMPOSITES", "RULES", "input_bounds"]
