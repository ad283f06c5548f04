"""The LRP rules of the one-backward implementation (:func:`~xai_helpers.explain.lrp.lrp_gradient_trick`).

The gradient trick keeps one invariant: at every neuron, relevance = value x gradient (R = a * g).
A layer whose rule is not its gradient returns its ordinary output but routes the gradient through the
rule's modified output z (:func:`grad_trick`); everything else is left to autograd, and is then a rule
of its own:

=========================  =======================================================================
operation                  rule (and what it conserves)
=========================  =======================================================================
conv / depthwise conv      z+ (epsilon_plus*), BatchNorm right after it folded in (canonization);
                           "same"-padding convs (EfficientNet) use their own padding
first conv / linear        flat (epsilon_plus_flat): relevance spread evenly over the receptive field
linear                     epsilon
ReLU                       its gradient: passes relevance where it is positive, zero elsewhere
ReLU6, SiLU, GELU, ...     pass (zennit's Pass rule): R_in = R_out, exactly (:func:`pass_through`)
zero padding               the padded zeros carry no relevance (a = 0), nothing is lost
sum (residual), mean pool  gradient = proportional split R_j = a_j / sum(a) * R (zennit's Norm rule)
bilinear resize            flat mode: R_x = A^T R (its weights, rows sum to 1: conserved exactly);
                           z+ mode: proportional (the resize is linear without bias: conserved)
std pooling                proportional to each position's contribution to the std (below)
standardise + linear head  folded into one linear layer, epsilon rule (:func:`standardised_head`)
=========================  =======================================================================

Std pooling. s = sqrt(mean_j (x_j - mu)^2) is not linear, but it is positively homogeneous of degree 1,
so it is exactly linear with weights that depend on the input: s = sum_j x_j w_j with
w_j = (x_j - mu) / (N s) (the centring drops out because sum_j (x_j - mu) = 0). Holding those weights
fixed (as LRP holds a ReLU's on/off pattern fixed) the proportional rule gives

    R_j = x_j (x_j - mu) / sum_k x_k (x_k - mu) * R_s,    sum_j R_j = R_s   (exactly),

which is also what gradient x input gives, so autograd does it without a hook. Positions far from the
channel's mean carry the relevance; a position that is 0 (switched off by a ReLU6) carries none, and
one between 0 and the mean gets a small negative share (raising it would lower the spread). The
alternative R_j ~ (x_j - mu)^2 (all positive) would have to send relevance through zero activations,
which no value-times-gradient rule can. The model's small epsilon (sqrt(var + 1e-6)) costs the share
1e-6 / (var + 1e-6) of a channel's relevance: all of it for a channel that is constant over space.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._cache import ModuleCache, param_stamp

# element-wise activations with f(0) = 0 and bounded f(x) / x: relevance passes through them unchanged
PASS_ACTIVATIONS = (torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.ELU, torch.nn.SiLU, torch.nn.GELU,
                    torch.nn.Hardswish, torch.nn.Hardtanh, torch.nn.Tanh)


def stab(z, eps):
    """zennit's stabiliser: z + eps * sign(z), with sign(0) = +1 (never divides by zero)."""
    return torch.where(z >= 0, z + eps, z - eps)


class _Route(torch.autograd.Function):
    """Value of the ordinary forward ``out``; gradient sent to the rule's modified output ``z``."""

    @staticmethod
    def forward(ctx, out, z, eps):
        k = out / stab(z, eps)
        ctx.save_for_backward(k)
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        (k,) = ctx.saved_tensors
        return None, grad * k, None


def grad_trick(out, z, eps):
    """Value ``out`` (the ordinary forward), gradient routed through the rule's modified output ``z``.

    With relevance = value x gradient at every neuron (true at the logit we start from), the
    gradient that reaches the layer's input a is W'^T (R_out / stab(z)), and a * gradient is
    the rule's input relevance: the whole LRP pass becomes ONE backward pass. (Written without a
    custom Function it reads ``out.detach() + z * k - (z * k).detach()`` with ``k = out / stab(z)``.)
    """
    return _Route.apply(out.detach(), z, eps)


class _Pass(torch.autograd.Function):
    """Value f(x); gradient g * f(x) / x, so that x * g_x = f(x) * g: relevance passes unchanged."""

    @staticmethod
    def forward(ctx, out, inp):
        ctx.save_for_backward(out / torch.where(inp == 0, torch.ones_like(inp), inp))   # f(0) = 0: k = 0 there
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        (k,) = ctx.saved_tensors
        return None, grad * k


def pass_through(module, inputs, out):
    """Forward hook of an element-wise activation: zennit's Pass rule (ReLU6 would otherwise drop the
    relevance of every activation above 6, where its gradient is 0)."""
    return _Pass.apply(out.detach(), inputs[0])


@functools.lru_cache(maxsize=1)
def efficientnet_classes() -> dict:
    """The EfficientNet package's block and "same"-padding conv classes ({} if it is not installed)."""
    try:
        from efficientnet_lite_pytorch.model import MBConvBlock
        from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding
    except ImportError:      # pragma: no cover - optional dependency
        return {}
    return {"block": MBConvBlock, "static_conv": Conv2dStaticSamePadding}


def layer_fn(module, inp, weight, bias=None):
    """The layer's own operation (padding, stride, groups) with other weights."""
    if isinstance(module, torch.nn.Conv2d):
        static = efficientnet_classes().get("static_conv")
        if static is not None and isinstance(module, static):
            inp = module.static_padding(inp)       # TensorFlow's "same" padding, then an unpadded conv
        return module._conv_forward(inp, weight, bias)
    return F.linear(inp, weight, bias)


def folded(layer, bn):
    """Weight and bias of ``layer`` with the BatchNorm that follows it folded in (the canonizer's
    merge, computed aside: the model itself is never modified)."""
    w = layer.weight.detach()
    b = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    if bn is None:
        return w, b
    scale = bn.weight.detach() / (bn.running_var + bn.eps).sqrt()
    w = w * scale.view(-1, *([1] * (w.ndim - 1)))
    return w, (b - bn.running_mean) * scale + bn.bias.detach()


def plus_part(module, a, w, b):
    """z+ of the z+ rule: positive weights on positive inputs (+ negative weights on negative inputs).
    ``w`` is the pair (positive part, negative part) of the weight, ``b`` the positive part of the bias."""
    w_pos, w_neg = w
    if float(a.detach().min()) >= 0:              # after a ReLU: the negative branch is exactly zero
        return layer_fn(module, a, w_pos, b)
    return layer_fn(module, a.clamp(min=0), w_pos, b) + layer_fn(module, a.clamp(max=0), w_neg)


_RULE_WEIGHTS = ModuleCache()       # layer -> its rule's weights: see rule_weights


def rule_weights(layer, bn, zero_bias: bool):
    """The weights ``layer``'s rule uses: BatchNorm folded in; for a conv (z+ rule) split into positive
    and negative parts, with the positive part of the bias.

    They depend only on the parameters, so they are computed once and reused while the parameters
    stay the same (same storage, same version counter: an optimiser step, ``load_state_dict`` or
    ``.to()`` changes one of them). For a ResNet-18 this is 11 million weights to fold and clamp,
    which at 64 px cost as much as the forward pass itself.
    """
    def compute():
        w, b = folded(layer, bn)
        if zero_bias:
            b = None
        if isinstance(layer, torch.nn.Linear):    # epsilon rule: the folded layer itself
            return w, b
        return (w.clamp(min=0), w.clamp(max=0)), None if b is None else b.clamp(min=0)   # z+ rule

    key = (id(bn), zero_bias, param_stamp(layer, bn, recurse=False))
    return _RULE_WEIGHTS.get(layer, key, compute)


class _FlatFirst(torch.autograd.Function):
    """The flat rule of the first layer: value ``out``; the "gradient" sent to the layer's input is
    already its relevance, R_in = sum_k 1 / (number of inputs of k) * R_k, independent of the input's
    values. Below it (model input, or a parameter-free resize in front of the first conv) autograd
    applies the transposed linear map, which conserves relevance when its rows sum to 1."""

    @staticmethod
    def forward(ctx, a, out, layer, eps):
        ctx.layer, ctx.eps, ctx.shape = layer, eps, a.shape
        ctx.save_for_backward(out)
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        with torch.enable_grad():
            ones = torch.ones(ctx.shape, dtype=out.dtype, device=out.device).requires_grad_(True)
            zf = layer_fn(ctx.layer, ones, torch.ones_like(ctx.layer.weight))
            (rel,) = torch.autograd.grad(zf, ones, out * grad / stab(zf.detach(), ctx.eps))
        return rel, None, None, None


def flat_first(layer, a, out, eps):
    """Output of ``layer`` (input ``a``, ordinary output ``out``) under the flat rule."""
    return _FlatFirst.apply(a, out.detach(), layer, eps)


_ROUTES = (_Route, _Pass, _FlatFirst)


def is_first(a) -> bool:
    """Whether tensor ``a`` depends on the model input only through parameter-free operations (no rule
    of ours on the way): then the layer that reads it is a first layer (each member's stem in a
    multi-scale model, behind its resize)."""
    if a.grad_fn is None:
        return True
    todo, seen = [a.grad_fn], set()
    while todo:
        node = todo.pop()
        if getattr(node, "_forward_cls", None) in _ROUTES:
            return False
        for nxt, _ in node.next_functions:
            if nxt is not None and id(nxt) not in seen:
                seen.add(id(nxt))
                todo.append(nxt)
    return True


def standardised_head(layer, f, out, mean, std, epsilon: float, zero_bias: bool):
    """Epsilon rule for ``layer(f)`` with ``f = (p - mean) / std``: one linear layer on the pooled
    features p, weight W / std and bias b - (W / std) . mean (the standardisation is folded in, like
    BatchNorm into a conv: its shift is a bias, left out with ``zero_bias``)."""
    w = layer.weight.detach() / std
    b = None if zero_bias else layer.bias.detach() - w @ mean
    p = f * std + mean                  # d p / d f = std cancels d f / d p = 1 / std: the gradient reaches p
    return grad_trick(out, F.linear(p, w, b), epsilon)


def architecture_rules(model, epsilon: float, zero_bias: bool) -> dict:
    """module -> forward hook for layers whose rule depends on the architecture around them: the
    linear heads of :class:`~xai_helpers.models.Lite0MultiScale` read standardised features."""
    from ..models import Lite0MultiScale

    if not isinstance(model, Lite0MultiScale):
        return {}
    rules = {}
    for i, head in enumerate(model.heads):
        def hook(module, inputs, out, i=i):
            return standardised_head(module, inputs[0], out, model.feat_mean[i], model.feat_std[i], epsilon, zero_bias)
        rules[head] = hook
    return rules


__all__ = ["PASS_ACTIVATIONS", "grad_trick", "pass_through", "flat_first", "is_first", "standardised_head",
           "architecture_rules", "rule_weights", "plus_part", "layer_fn", "folded", "stab", "efficientnet_classes"]
