"""Layer-wise Relevance Propagation: zennit's composites, and our one-backward gradient trick.

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

The workbook's full-mode EfficientNet-Lite0 models (``efficientnet_lite0``, ``efficientnet_lite0_ms``)
are explained by our one-backward implementation (:func:`lrp_gradient_trick`, ``backend="ours"``,
which ``"auto"`` picks); zennit has no canonizer for their MBConv blocks. The rules for ReLU6, "same"
padding, depthwise convs, residual sums, the input resize, mean and std pooling and the standardised
heads are listed in :mod:`.lrp_rules`. Conservation there, measured at 128 px (zero_bias=True): with
the BatchNorm shifts set to zero every rule conserves (the map sums to 0.97-1.00 of the logit); with
the ImageNet shifts most relevance stops at the biases (Lite0: 0.01-0.02 of the logit; the probe,
whose middle-depth taps skip the deepest blocks, 0.16-0.88): deep depthwise convs switch on channels
whose inputs are all zero, so only their bias explains them (zennit issue #193 sees the same leak on
ResNet-18). Read such a map as "where the positive evidence is", not as a decomposition of the logit.

Architectures whose forward pass zennit cannot see (functional ReLU, ``torch.cat`` as in DenseNet,
unknown layer types) raise :class:`LRPUnsupportedError` instead of returning a silently wrong map.
"""
from __future__ import annotations

import operator

import torch

from . import check_backend, register
from ..imaging import grey
from ._cache import ModuleCache
from .lrp_rules import _RULE_WEIGHTS  # noqa: F401  (the rule-weight cache, cleared by the tests)
from .lrp_rules import (PASS_ACTIVATIONS, architecture_rules, efficientnet_classes, flat_first,
                        grad_trick, is_first, layer_fn, pass_through, plus_part, rule_weights)

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_plus", "epsilon_alpha2_beta1")
RULES = ("epsilon", "gamma", "alpha_beta", "zplus", "flat")


class LRPUnsupportedError(ValueError):
    """The model contains an operation the LRP rules cannot handle (and no canonizer fixes it)."""


# --- which models are safe -------------------------------------------------------------------------
_LEAF_OK = (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.AvgPool2d,
            torch.nn.AdaptiveAvgPool2d, torch.nn.Flatten, torch.nn.Dropout, torch.nn.Identity,
            torch.nn.ZeroPad2d) + PASS_ACTIVATIONS
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
_TODO = ("Use gradcam / integrated_gradients for this model, or give the layer an LRP rule: an element-wise "
         "activation with f(0) = 0 can be added to PASS_ACTIVATIONS in xai_helpers/explain/lrp_rules.py.")


def _resnet_blocks():
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return (BasicBlock, Bottleneck)


def _is_resnet(model) -> bool:
    return any(isinstance(m, _resnet_blocks()) for m in model.modules())


def _units(model) -> list:
    """The modules the rules see, in registration order: conv / linear layers (a "same"-padding conv
    with its padding child counts as one) and every other leaf."""
    units = []

    def walk(module):
        for child in module.children():
            if isinstance(child, (torch.nn.Conv2d, torch.nn.Linear)) or not list(child.children()):
                units.append(child)
            else:
                walk(child)

    walk(model)
    return units


def _ours_only(model) -> str | None:
    """Why zennit cannot explain this (supported) model, or None: EfficientNet's MBConv residual sums
    and BatchNorm behind "same"-padding convs have no zennit canonizer, nor the multi-scale probe's std pooling."""
    from ..models import Lite0MultiScale

    block = efficientnet_classes().get("block")
    if isinstance(model, Lite0MultiScale) or (block is not None and any(isinstance(m, block) for m in model.modules())):
        return ("zennit has no canonizer for EfficientNet's MBConv blocks (residual sums, BatchNorm behind "
                "'same'-padding convs) nor rules for the multi-scale probe's std pooling")
    return None


def _name(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_layers(model) -> None:
    """Every unit must have a rule: conv (plain or EfficientNet's "same"-padding one), linear, or a leaf in _LEAF_OK."""
    ok_convs = (torch.nn.Conv2d, torch.nn.Linear, efficientnet_classes().get("static_conv"))
    where = {}
    units = set(map(id, _units(model)))
    for path, m in model.named_modules():
        if id(m) not in units:
            continue
        lin = isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
        if (lin and type(m) not in ok_convs) or (not lin and not isinstance(m, _LEAF_OK)):
            where.setdefault(type(m), path)
    block = efficientnet_classes().get("block")
    for path, m in model.named_modules():
        if block is not None and isinstance(m, block) and m.has_se:
            raise LRPUnsupportedError(f"LRP is not available for {type(model).__name__}: {path} "
                                      f"({_name(type(m))}) has squeeze-and-excitation gating (a multiplication "
                                      f"of tensors) that has no LRP rule here. {_TODO}")
    if where:
        listed = "; ".join(f"{_name(cls)} (e.g. at '{path}')" for cls, path in where.items())
        raise LRPUnsupportedError(
            f"LRP is not available for {type(model).__name__}: these layer classes have no LRP rule here: {listed}. "
            "Supported: Conv2d (also depthwise and EfficientNet's 'same'-padding Conv2dStaticSamePadding), Linear, "
            "BatchNorm, ReLU and element-wise activations (ReLU6, SiLU, GELU, ...), ZeroPad2d, pooling, Flatten, "
            f"Dropout, Identity. {_TODO}")


_SUPPORT_CACHE = ModuleCache()   # model -> canonizers, keyed on the module types: traced once


def check_lrp_support(model: torch.nn.Module) -> list:
    """Return the zennit canonizers this model needs, or raise :class:`LRPUnsupportedError` saying why
    (remembered per model and module structure: the trace is done once). An empty list for the
    EfficientNet models, which only ``backend="ours"`` explains."""
    key = tuple(type(m) for m in model.modules())
    canonizers = _SUPPORT_CACHE.get(model, key, lambda: _check_lrp_support(model))
    return [type(c)() for c in canonizers]


def _check_lrp_support(model: torch.nn.Module) -> list:
    """Return the zennit canonizers this model needs, or raise :class:`LRPUnsupportedError` saying why.

    Every layer must have a rule (:func:`_check_layers`). The model is traced with ``torch.fx``: every
    function must be a shape-only one; torchvision ResNet blocks (``ResNetCanonizer`` rewrites their
    additions) and EfficientNet MBConv blocks without squeeze-and-excitation (the gradient trick splits
    their residual sums proportionally) are accepted whole. :class:`~xai_helpers.models.Lite0MultiScale`
    is our own code, with rules for each of its operations (see :mod:`.lrp_rules`): not traced.
    """
    import torch.fx as fx
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    from ..models import Lite0MultiScale

    _check_layers(model)
    if isinstance(model, Lite0MultiScale):
        return []
    blocks = _resnet_blocks() + tuple(v for k, v in efficientnet_classes().items() if k == "block")

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, blocks + (torch.nn.Conv2d,)) or super().is_leaf_module(m, qualname)

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
    if _ours_only(model):
        return []
    return [ResNetCanonizer()] if _is_resnet(model) else [SequentialMergeBatchNorm()]


# --- composites ------------------------------------------------------------------------------------
def input_bounds(model, x):
    """Lowest / highest possible input values (pixel 0 and 1 after the model's normalisation), for z-box."""
    return grey(model, x, 0.0), grey(model, x, 1.0)


def make_composite(model, x, composite: str = "epsilon_plus_flat", rule: str | None = None,
                   epsilon: float = 1e-6, gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0,
                   zero_bias: bool = False, canonize: bool = True):
    """Build the zennit composite: a named composite, or one ``rule`` for every conv / linear layer."""
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit.types import Convolution

    canonizers = check_lrp_support(model)      # always checked; canonize=False only to show why it matters
    why = _ours_only(model)
    if why:
        raise LRPUnsupportedError(f"zennit (backend='library') cannot explain {type(model).__name__}: {why}. Use "
                                  f"backend='ours' or 'auto' with composite= one of {GRADIENT_TRICK_COMPOSITES} "
                                  "(no rule=, canonize=True): the gradient trick has rules for all of it.")
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


GRADIENT_TRICK_COMPOSITES = ("epsilon_plus_flat", "epsilon_plus")


def lrp_gradient_trick(model, x, targets, composite: str = "epsilon_plus_flat", epsilon: float = 1e-6,
                       zero_bias: bool = False, stabilizer: float = 1e-6):
    """LRP by the *gradient trick* (Montavon et al., 2019, sec. 10.2): one forward pass in which every
    conv / linear layer also computes its rule's modified output, then ONE ordinary backward pass.
    Same rules as zennit's composites (checked against them in the tests): flat (first layers,
    EpsilonPlusFlat) or z+ (EpsilonPlus), z+ for the other conv layers (depthwise too), epsilon for
    linear layers; pooling, residual sums and ReLUs pass the gradient, other element-wise activations
    pass relevance (:data:`~.lrp_rules.PASS_ACTIVATIONS`); a BatchNorm right after a conv / linear
    layer is folded into it (what zennit's canonizers do), any other BatchNorm passes relevance
    unchanged (zennit's Pass rule). Also explains the EfficientNet-Lite0 models, with the rules for
    their resize, std pooling and standardised heads listed in :mod:`.lrp_rules`.
    Returns input relevance (N, C, H, W) and the explained logits (N,).
    """
    if composite not in GRADIENT_TRICK_COMPOSITES:
        raise ValueError(f"lrp_gradient_trick handles {GRADIENT_TRICK_COMPOSITES}; use backend='library' "
                         f"(zennit) for {composite!r}")
    check_lrp_support(model)
    units = _units(model)
    lin_types, bn_types = (torch.nn.Conv2d, torch.nn.Linear), torch.nn.modules.batchnorm._BatchNorm
    follow = {prev: unit for prev, unit in zip(units, units[1:])          # layer -> the BatchNorm folded into it
              if isinstance(prev, lin_types) and isinstance(unit, bn_types)}
    owner = {bn: layer for layer, bn in follow.items()}
    special = architecture_rules(model, epsilon, zero_bias)
    flat, store = composite == "epsilon_plus_flat", {}

    def modified(layer, a, out):
        """The value/gradient pair for ``layer`` (+ its folded BatchNorm) with input a and output out."""
        if flat and is_first(a):
            return flat_first(layer, a, out, stabilizer)
        w, b = rule_weights(layer, follow.get(layer), zero_bias)
        if isinstance(layer, torch.nn.Linear):                  # epsilon rule
            return grad_trick(out, layer_fn(layer, a, w, b), epsilon)
        return grad_trick(out, plus_part(layer, a, w, b), stabilizer)

    def layer_hook(module, inputs, out):
        if module in follow:                      # finish at the BatchNorm's output
            store[module] = (inputs[0], out)
            return None
        return modified(module, inputs[0], out)

    def bn_hook(module, inputs, out):
        layer = owner.get(module)
        if layer is None:                         # a lone BatchNorm: pass relevance through
            return grad_trick(out, inputs[0], stabilizer)
        a, layer_out = store.pop(layer, (None, None))
        if layer_out is not inputs[0]:
            raise LRPUnsupportedError(f"the BatchNorm {type(module).__name__} registered after {type(layer).__name__} "
                                      "does not read that layer's output: it cannot be folded into it")
        return modified(layer, a, out)

    hooks = [(m, special.get(m, layer_hook)) for m in units if isinstance(m, lin_types)]
    hooks += [(m, bn_hook) for m in units if isinstance(m, bn_types)]
    hooks += [(m, pass_through) for m in units if isinstance(m, PASS_ACTIVATIONS)]
    handles = [m.register_forward_hook(hook) for m, hook in hooks]
    try:
        with torch.enable_grad():
            xin = x.detach().requires_grad_(True)
            out = model(xin)
            logits = out.detach().gather(1, targets.view(-1, 1))[:, 0]
            sel = torch.zeros_like(out).scatter_(1, targets.view(-1, 1), 1.0)
            (g,) = torch.autograd.grad((out * sel).sum(), xin)
    finally:
        for h in handles:
            h.remove()
    rel = g if flat else xin.detach() * g         # the flat rule hands down relevance itself
    return rel.detach(), logits


def lrp_relevance(model, x, targets, backend: str = "auto", **options):
    """Input relevance (N, C, H, W) and the explained logits (N,).

    backend  "ours" (:func:`lrp_gradient_trick`, one backward pass), "library" (zennit's hooks, every rule
             and composite), "auto" (ours where it applies: composites epsilon_plus_flat / epsilon_plus,
             canonized, no ``rule=``; zennit otherwise).
    """
    from zennit.attribution import Gradient

    backend = check_backend(backend, ("auto", "ours", "library"))
    trick_ok = (options.get("rule") is None and options.get("canonize", True)
                and options.get("composite", "epsilon_plus_flat") in GRADIENT_TRICK_COMPOSITES)
    if backend == "ours" and not trick_ok:
        raise ValueError(f"backend='ours' (the gradient trick) handles the composites {GRADIENT_TRICK_COMPOSITES} "
                         "with canonize=True and no rule=; use backend='library' (zennit) for other rules")
    if backend in ("auto", "ours") and trick_ok:
        kw = {k: options[k] for k in ("composite", "epsilon", "zero_bias") if k in options}
        return lrp_gradient_trick(model, x, targets, **kw)
    comp = make_composite(model, x, **options)
    with Gradient(model=model, composite=comp) as attributor:
        # start from the logit itself: the output gradient is the one-hot mask times the output
        out, rel = attributor(x.detach(), lambda o: o * torch.zeros_like(o).scatter_(1, targets.view(-1, 1), 1.0))
    return rel.detach(), out.detach().gather(1, targets.view(-1, 1))[:, 0]


def conservation(model, x, targets, **options) -> torch.Tensor:
    """Per image: (sum of input relevance) / (explained logit). 1.0 means relevance was conserved."""
    targets = torch.as_tensor(targets, device=x.device).long().view(-1)
    if len(targets) == 1 and len(x) > 1:
        targets = targets.expand(len(x))
    rel, logit = lrp_relevance(model.eval(), x, targets, **options)
    return rel.sum(dim=(1, 2, 3)) / logit


@register("lrp", "LRP: composite= epsilon_plus_flat|epsilon_gamma_box|..., or rule=, zero_bias=, canonize=, "
                 "backend= auto|ours|library")
def lrp(model, x, targets, composite: str = "epsilon_plus_flat", rule: str | None = None, epsilon: float = 1e-6,
        gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0, zero_bias: bool = False, canonize: bool = True,
        backend: str = "auto"):
    rel, _ = lrp_relevance(model, x, targets, backend=backend, composite=composite, rule=rule, epsilon=epsilon,
                           gamma=gamma, alpha=alpha, beta=beta, zero_bias=zero_bias, canonize=canonize)
    return rel.sum(1)


__all__ = ["lrp", "conservation", "lrp_relevance", "make_composite", "check_lrp_support", "LRPUnsupportedError",
           "COMPOSITES", "RULES", "input_bounds", "lrp_gradient_trick", "GRADIENT_TRICK_COMPOSITES"]
