"""Class activation maps: Grad-CAM, Grad-CAM++ and LayerCAM written here (checked against pytorch-grad-cam
in the tests; ``backend="library"`` calls the library), Score-CAM via pytorch-grad-cam.

Grad-CAM (Selvaraju et al., 2017) for class c at a convolutional layer with feature maps A^k:

    alpha_k^c = mean_{i,j} d y^c / d A^k_{ij}          (global-average-pooled gradient)
    L^c       = ReLU( sum_k alpha_k^c A^k )             (at the layer's resolution, e.g. 7x7)

and the map is upsampled (bilinear) to the input size. The choice of layer matters: the last
convolutional block (``layer4`` in a ResNet) is the most class-specific but also the coarsest.
"""
from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F

from . import check_backend, register
from ..model_info import model_info


def _find_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][-5:]
        raise ValueError(f"model has no module named {name!r}; e.g. the last conv layers are {convs} "
                         "(see [n for n, _ in model.named_modules()])")
    return modules[name]


def default_target_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The layer Grad-CAM explains by default: the last convolutional block.

    The model's declared ``cam_layer`` (:class:`~xai_helpers.model_info.ModelInfo`, a dotted module
    name) if it names one. Otherwise: ``layer4`` for ResNets, ``features`` for DenseNet / VGG /
    EfficientNet-style models (their feature extractor's last block), else the last ``Conv2d``.
    """
    name = model_info(model).cam_layer
    if name:
        return _find_module(model, name)
    named = dict(model.named_modules())
    for suffix in ("layer4", "features"):
        cands = [n for n in named if n == suffix or n.endswith("." + suffix)]
        if cands:
            return named[cands[-1]]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ValueError("cannot pick a target layer: the model has no Conv2d; pass layer=<module or name>")
    return convs[-1]


def _layer(model, layer):
    if layer is None:
        return default_target_layer(model)
    if isinstance(layer, str):
        return _find_module(model, layer)
    return layer


def activations_and_gradients(model, x, targets, layer):
    """One forward and one backward pass: the layer's activations A and d y_target / d A."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.enable_grad():
            out = model(x.detach().requires_grad_(True))
            a = store["a"]
            score = out.gather(1, targets.view(-1, 1)).sum()   # images are independent: one backward
            (g,) = torch.autograd.grad(score, a)
    finally:
        handle.remove()
    return a.detach(), g


def gradcam_lowres(model, x, targets, layer=None, relu: bool = True) -> torch.Tensor:
    """Grad-CAM at the target layer's own resolution, shape (N, h, w)."""
    a, g = activations_and_gradients(model, x, targets, _layer(model, layer))
    if a.ndim != 4:
        raise ValueError(f"Grad-CAM needs a layer with (N, K, h, w) output; got shape {tuple(a.shape)}")
    weights = g.mean(dim=(2, 3), keepdim=True)              # alpha_k^c
    cam = (weights * a).sum(dim=1)                           # sum_k alpha_k^c A^k
    return cam.clamp(min=0) if relu else cam


@register("gradcam", "Grad-CAM: gradient-weighted activations of a conv layer (option layer=, default last block)")
def gradcam(model, x, targets, layer=None, relu: bool = True):
    cam = gradcam_lowres(model, x, targets, layer=layer, relu=relu)
    return F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


@contextlib.contextmanager
def _quiet_score_cam():
    """Score-CAM without its progress bar per image, for the duration of the call only."""
    import pytorch_grad_cam.score_cam as sc

    original = sc.tqdm                      # the tqdm module: score_cam calls tqdm.tqdm(...)
    sc.tqdm = types.SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)
    try:
        yield
    finally:
        sc.tqdm = original


def _pgc(cls_name, model, x, targets, layer=None, **kw):
    """A pytorch-grad-cam CAM class on (x, targets); the model's training flag is restored."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pgc, cls_name)
    batch_size = kw.pop("batch_size", None)
    was_training = model.training
    quiet = _quiet_score_cam() if cls_name == "ScoreCAM" else contextlib.nullcontext()
    with quiet, cls(model=model, target_layers=[_layer(model, layer)], **kw) as cam:
        if batch_size is not None:
            cam.batch_size = int(batch_size)
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets.tolist()])
    model.train(was_training)
    return torch.from_numpy(maps)


def gradcam_pp_weights(a: torch.Tensor, g: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Grad-CAM++ channel weights (Chattopadhay et al., 2018, eq. 19, as in pytorch-grad-cam):

        a_ij^k = g^2 / (2 g^2 + sum_ab A^k_ab * g^3),   w_k = sum_ij a_ij^k * ReLU(g_ij^k)

    (the higher powers of the gradient come from assuming an exponential output; a_ij^k lets
    several small objects of one class each get weight instead of the largest one only)."""
    g2 = g.pow(2)
    aij = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g + eps)
    aij = torch.where(g != 0, aij, torch.zeros_like(aij))
    return (g.clamp(min=0) * aij).sum(dim=(2, 3), keepdim=True)


def _cam_ours(kind, model, x, targets, layer):
    a, g = activations_and_gradients(model, x, targets, _layer(model, layer))
    if kind == "gradcam++":
        cam = (gradcam_pp_weights(a, g) * a).sum(dim=1)
    else:                                               # LayerCAM: element-wise positive gradients
        cam = (g.clamp(min=0) * a).sum(dim=1)
    cam = cam.clamp(min=0)
    return F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


@register("gradcam++", "Grad-CAM++: higher-order gradient weights; options layer=, backend= ours|library")
def gradcam_pp(model, x, targets, layer=None, backend: str = "ours"):
    """``backend``: 'ours' (one backward pass to the layer) or 'library' (pytorch-grad-cam: the same map
    up to scaling, slower: it back-propagates into every weight)."""
    if check_backend(backend) == "library":
        return _pgc("GradCAMPlusPlus", model, x, targets, layer=layer)
    return _cam_ours("gradcam++", model, x, targets, layer)


@register("scorecam", "Score-CAM (pytorch-grad-cam): weights from masked forward passes; options layer=, batch_size=")
def scorecam(model, x, targets, layer=None, batch_size: int | None = None):
    with torch.no_grad():
        from ..config import images_per_pass

        return _pgc("ScoreCAM", model, x, targets, layer=layer, batch_size=images_per_pass(x, batch_size))


@register("layercam", "LayerCAM: element-wise positive-gradient weights; options layer=, backend= ours|library")
def layercam(model, x, targets, layer=None, backend: str = "ours"):
    """``backend`` as for Grad-CAM++."""
    if check_backend(backend) == "library":
        return _pgc("LayerCAM", model, x, targets, layer=layer)
    return _cam_ours("layercam", model, x, targets, layer)


__all__ = ["default_target_layer", "gradcam_lowres", "activations_and_gradients", "gradcam", "gradcam_pp_weights"]
