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

from . import check_backend, register
from ..imaging import grey
from ._cache import ModuleCache, param_stamp

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


_SUPPORT_CACHE = ModuleCache()   # model -> canonizers, keyed on the module types: traced once


def check_lrp_support(model: torch.nn.Module) -> list:
    """Return the zennit canonizers this model needs, or raise :class:`LRPUnsupportedError` saying why
    (remembered per model and module structure: the trace is done once)."""
    key = tuple(type(m) for m in model.modules())
    canonizers = _SUPPORT_CACHE.get(model, key, lambda: _check_lrp_support(model))
    return [type(c)() for c in canonizers]


def _check_lrp_support(model: torch.nn.Module) -> list:
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
    return grey(model, x, 0.0), grey(model, x, 1.0)


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


def _stab(z, eps):
    """zennit's stabiliser: z + eps * sign(z), with sign(0) = +1 (never divides by zero)."""
    return torch.where(z >= 0, z + eps, z - eps)


class _Route(torch.autograd.Function):
    """Value of the ordinary forward ``out``; gradient sent to the rule's modified output ``z``."""

    @staticmethod
    def forward(ctx, out, z, eps):
        k = out / _stab(z, eps)
        ctx.save_for_backward(k)
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        (k,) = ctx.saved_tensors
        return None, grad * k, None


def _grad_trick(out, z, eps):
    """Value ``out`` (the ordinary forward), gradient routed through the rule's modified output ``z``.

    With relevance = value x gradient at every neuron (true at the logit we start from), the
    gradient that reaches the layer's input a is W'^T (R_out / stab(z)), and a * gradient is
    the rule's input relevance: the whole LRP pass becomes ONE backward pass. (Written without a
    custom Function it reads ``out.detach() + z * k - (z * k).detach()`` with ``k = out / stab(z)``.)
    """
    return _Route.apply(out.detach(), z, eps)


def _layer_fn(module, inp, weight, bias=None):
    """The layer's own operation (stride, padding, groups) with other weights."""
    if isinstance(module, torch.nn.Conv2d):
        return module._conv_forward(inp, weight, bias)
    return torch.nn.functional.linear(inp, weight, bias)


def _folded(layer, bn):
    """Weight and bias of ``layer`` with the BatchNorm that follows it folded in (the canonizer's
    merge, computed aside: the model itself is never modified)."""
    w = layer.weight.detach()
    b = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    if bn is None:
        return w, b
    scale = bn.weight.detach() / (bn.running_var + bn.eps).sqrt()
    w = w * scale.view(-1, *([1] * (w.ndim - 1)))
    return w, (b - bn.running_mean) * scale + bn.bias.detach()


def _plus_part(module, a, w, b):
    """z+ of the z+ rule: positive weights on positive inputs (+ negative weights on negative inputs).
    ``w`` is the pair (positive part, negative part) of the weight, ``b`` the positive part of the bias."""
    w_pos, w_neg = w
    if float(a.detach().min()) >= 0:              # after a ReLU: the negative branch is exactly zero
        return _layer_fn(module, a, w_pos, b)
    return _layer_fn(module, a.clamp(min=0), w_pos, b) + _layer_fn(module, a.clamp(max=0), w_neg)


_RULE_WEIGHTS = ModuleCache()       # layer -> its rule's weights: see _rule_weights


def _rule_weights(layer, bn, zero_bias: bool):
    """The weights ``layer``'s rule uses: BatchNorm folded in; for a conv (z+ rule) split into positive
    and negative parts, with the positive part of the bias.

    They depend only on the parameters, so they are computed once and reused while the parameters
    stay the same (same storage, same version counter: an optimiser step, ``load_state_dict`` or
    ``.to()`` changes one of them). For a ResNet-18 this is 11 million weights to fold and clamp,
    which at 64 px cost as much as the forward pass itself.
    """
    def compute():
        w, b = _folded(layer, bn)
        if zero_bias:
            b = None
        if isinstance(layer, torch.nn.Linear):    # epsilon rule: the folded layer itself
            return w, b
        return (w.clamp(min=0), w.clamp(max=0)), None if b is None else b.clamp(min=0)   # z+ rule

    key = (id(bn), zero_bias, param_stamp(layer, bn, recurse=False))
    return _RULE_WEIGHTS.get(layer, key, compute)


GRADIENT_TRICK_COMPOSITES = ("epsilon_plus_flat", "epsilon_plus")


def lrp_gradient_trick(model, x, targets, composite: str = "epsilon_plus_flat", epsilon: float = 1e-6,
             zero_bias: bool = False, stabilizer: float = 1e-6):
    """LRP for ReLU networks by the *gradient trick* (Montavon et al., 2019, sec. 10.2): one forward
    pass in which every conv / linear layer also computes its rule's modified output, then ONE
    ordinary backward pass. Same rules as zennit's composites (checked against them in the tests):
    flat (first layer, EpsilonPlusFlat) or z+ (first layer, EpsilonPlus), z+ for the other conv
    layers, epsilon for linear layers; pooling, residual sums and ReLUs pass the gradient; a
    BatchNorm right after a conv / linear layer is folded into it (what zennit's canonizers do),
    any other BatchNorm passes relevance unchanged (zennit's Pass rule).
    Returns input relevance (N, C, H, W) and the explained logits (N,).
    """
    if composite not in GRADIENT_TRICK_COMPOSITES:
        raise ValueError(f"lrp_gradient_trick handles {GRADIENT_TRICK_COMPOSITES}; use backend='library' "
                         f"(zennit) for {composite!r}")
    check_lrp_support(model)
    leaves = [m for m in model.modules() if not list(m.children())]
    bn_types = torch.nn.modules.batchnorm._BatchNorm
    lin_types = (torch.nn.Conv2d, torch.nn.Linear)
    first = next((m for m in leaves if isinstance(m, lin_types)), None)
    flat = composite == "epsilon_plus_flat"
    follow = {}                                   # layer -> the BatchNorm folded into it
    for prev, leaf in zip(leaves, leaves[1:]):
        if isinstance(prev, lin_types) and isinstance(leaf, bn_types):
            follow[prev] = leaf
    owner = {bn: layer for layer, bn in follow.items()}
    store = {}

    def modified(layer, a, out):
        """The value/gradient pair for ``layer`` (+ its folded BatchNorm) with input a and output out."""
        if layer is first and flat:
            leaf = out.detach().requires_grad_(True)           # relevance of the first layer's output
            store["first_in"], store["first_out"] = a.detach(), leaf
            return leaf.clone()                                # (a later in-place ReLU must not touch the leaf)
        w, b = _rule_weights(layer, follow.get(layer), zero_bias)
        if isinstance(layer, torch.nn.Linear):                  # epsilon rule
            return _grad_trick(out, _layer_fn(layer, a, w, b), epsilon)
        return _grad_trick(out, _plus_part(layer, a, w, b), stabilizer)

    def layer_hook(module, inputs, out):
        if module in follow:                      # finish at the BatchNorm's output
            store[module] = inputs[0]
            return None
        return modified(module, inputs[0], out)

    def bn_hook(module, inputs, out):
        layer = owner.get(module)
        if layer is None:                         # a lone BatchNorm: pass relevance through
            return _grad_trick(out, inputs[0], stabilizer)
        return modified(layer, store.pop(layer), out)

    handles = [m.register_forward_hook(layer_hook) for m in leaves if isinstance(m, lin_types)]
    handles += [m.register_forward_hook(bn_hook) for m in leaves if isinstance(m, bn_types)]
    try:
        with torch.enable_grad():
            xin = x.detach().requires_grad_(not flat)
            out = model(xin)
            logits = out.detach().gather(1, targets.view(-1, 1))[:, 0]
            sel = torch.zeros_like(out).scatter_(1, targets.view(-1, 1), 1.0)
            if flat:
                (c1,) = torch.autograd.grad((out * sel).sum(), store["first_out"])
                r1 = store["first_out"].detach() * c1                    # relevance at the first layer's output
                ones = torch.ones_like(store["first_in"]).requires_grad_(True)
                zf = _layer_fn(first, ones, torch.ones_like(first.weight))
                (rel,) = torch.autograd.grad(zf, ones, r1 / _stab(zf.detach(), stabilizer))
            else:
                (g,) = torch.autograd.grad((out * sel).sum(), xin)
                rel = xin.detach() * g
    finally:
        for h in handles:
            h.remove()
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
