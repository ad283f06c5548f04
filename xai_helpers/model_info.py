"""What the workbook needs to know about a classifier, declared in one place.

Every chapter asks the same questions of a model: what are its outputs called, is it binary,
multi-class or multi-label, what size and normalisation does it expect, which layer does Grad-CAM
read. :func:`xai_helpers.models.build_model` answers them by attaching one :class:`ModelInfo`;
everything else reads it back through :func:`model_info`, which raises a clear error for a model
that has none instead of guessing.

A model from elsewhere (a plain torchvision ResNet, say) gets the same interface with one call::

    >>> import torchvision
    >>> from xai_helpers.model_info import describe_model, model_info
    >>> net = torchvision.models.resnet18(num_classes=2)
    >>> net = describe_model(net, class_names=["benign", "melanoma"], task="binary",
    ...                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), cam_layer="layer4")
    >>> model_info(net).class_names
    ('benign', 'melanoma')
    >>> from xai_helpers.explain import explain
    >>> maps = explain(net, images, target="melanoma", method="gradcam")   # now works

(tests/test_models.py runs this example.) :func:`probabilities` turns logits into probabilities
the way the task says (sigmoid per output for multi-label, else softmax).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

TASKS = ("binary", "multiclass", "multilabel")
ATTRIBUTE = "info"          # the one attribute it lives in: ``model.info``


class ModelInfoError(AttributeError):
    """A model without the interface, or with one that does not fit it."""


@dataclass(frozen=True)
class ModelInfo:
    """The declared interface of a classifier (see the module docstring)."""

    class_names: tuple[str, ...]            # one name per output logit
    task: str                               # "binary" (2 softmax logits), "multiclass" or "multilabel"
    mean: tuple[float, ...]                 # per-channel normalisation, in [0, 1] pixel units
    std: tuple[float, ...]
    cam_layer: str | None = None            # dotted module name Grad-CAM reads (None: no CAM methods)
    arch: str = "custom"                    # a name from models.ARCHS, or anything for a foreign model
    input_size: int | None = None           # the side in pixels it was built / trained for
    pretrained: bool = False
    width: int | None = None                # small_cnn's first-block width (None elsewhere)

    def __post_init__(self):
        names = tuple(str(c) for c in self.class_names)
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.task not in TASKS:
            raise ModelInfoError(f"task must be one of {TASKS}, got {self.task!r}")
        if not names:
            raise ModelInfoError("class_names is empty: give one name per output logit")
        if self.task == "binary" and len(names) != 2:
            raise ModelInfoError("a binary task has 2 softmax logits [negative, positive]; "
                                 f"got {len(names)} class_names")
        if len(self.mean) not in (1, 3) or len(self.mean) != len(self.std):
            raise ModelInfoError(f"mean and std need one value per channel (1 or 3); got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            raise ModelInfoError(f"std values must be positive, got {self.std}")

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return len(self.mean)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["class_names"], d["mean"], d["std"] = list(d["class_names"]), list(d["mean"]), list(d["std"])
        return d

    def replace(self, **changes) -> "ModelInfo":
        return replace(self, **changes)


def describe_model(model: torch.nn.Module, info: ModelInfo | None = None, **fields) -> torch.nn.Module:
    """Attach a :class:`ModelInfo` to ``model`` (given whole, or as its fields) and return the model.

    The one place the interface is written; :func:`model_info` is the one place it is read.
    """
    if info is None:
        info = ModelInfo(**fields)
    elif fields:
        info = info.replace(**fields)
    if not isinstance(info, ModelInfo):
        raise TypeError(f"info must be a ModelInfo, not {type(info).__name__}")
    if info.cam_layer is not None:
        names = dict(model.named_modules())
        if info.cam_layer not in names:
            raise ModelInfoError(f"cam_layer {info.cam_layer!r} is not a module of this "
                                 f"{type(model).__name__}; valid names include {list(names)[-6:]}")
    setattr(model, ATTRIBUTE, info)
    return model


def has_info(model) -> bool:
    return isinstance(getattr(model, ATTRIBUTE, None), ModelInfo)


def model_info(model) -> ModelInfo:
    """The model's :class:`ModelInfo`; a clear error naming what to do if it has none."""
    info = getattr(model, ATTRIBUTE, None)
    if isinstance(info, ModelInfo):
        return info
    raise ModelInfoError(
        f"this {type(model).__name__} does not declare the workbook's model interface (class names, task, "
        "mean/std normalisation, Grad-CAM layer). Build it with xai_helpers.models.build_model, load it with "
        "load_checkpoint, or wrap it: xai_helpers.model_info.describe_model(model, class_names=[...], "
        "task='binary'|'multiclass'|'multilabel', mean=(...), std=(...), cam_layer='layer4')")


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Logits (N, K) -> probabilities: one sigmoid per output for a multi-label task (or a single
    logit), else a softmax over the K outputs (binary = 2 softmax logits [negative, positive])."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "multilabel" or logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


__all__ = ["ModelInfo", "ModelInfoError", "describe_model", "model_info", "has_info", "probabilities", "TASKS"]
