"""The model zoo: a registry of fx-traceable CNNs (timm style).

``@register_model`` adds a builder ``fn(in_channels, num_classes, input_size) -> nn.Module``,
with the recipe its baseline is trained with (``recipe={"epochs": 20, "lr": 0.05}``, fields of
``prunetax.benchmarks.recipes.Recipe``); ``list_models("resnet*")`` filters names with a glob;
``create_model(name, ...)`` builds one.
Torchvision models are registered lazily: they are listed even when torchvision does not
import, marked unavailable with the reason (``model_info(name).available``).
Every registered name is also kept in ``prunetax.benchmarks.names`` (torch-free), where commands
check a name before they import torch; the zoo's names are listed there too (``ZOO_MODELS``).
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from torch import nn

from prunetax.benchmarks import names
from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["register_model", "unregister_model", "list_models", "create_model", "model_info", "ModelInfo"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    needs: str | None = None  # optional package the builder imports lazily
    # The baseline training recipe the model declared at registration: Recipe fields (read-only);
    # None: it declared none and trains with the default recipe (recipes.DEFAULT_RECIPE).
    recipe: Mapping[str, Any] | None = field(default=None, hash=False)

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def reason(self) -> str | None:
        """Why the model cannot be built here (None if it can)."""
        if self.needs is None:
            return None
        return _import_problem(self.needs)


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelInfo]] = {}
_IMPORT_PROBLEMS: dict[str, str | None] = {}


def _import_problem(package: str) -> str | None:
    if package not in _IMPORT_PROBLEMS:
        try:
            __import__(package)
            _IMPORT_PROBLEMS[package] = None
        except Exception as exc:  # ImportError, or a broken install raising anything else
            first = (str(exc).splitlines() or [""])[0]
            _IMPORT_PROBLEMS[package] = f"needs {package}, which does not import ({type(exc).__name__}: {first})"
    return _IMPORT_PROBLEMS[package]


def register_model(fn=None, *, name: str | None = None, needs: str | None = None,
                   recipe: Mapping[str, Any] | None = None):
    """Decorator: register ``fn(in_channels, num_classes, input_size) -> nn.Module`` under its name.

    ``recipe`` is how its baseline is trained: a dict of fields of
    :class:`prunetax.benchmarks.recipes.Recipe`, e.g. ``{"epochs": 20, "lr": 0.05}``; fields it
    leaves out keep the Recipe's defaults (epochs: ``recipes.FALLBACK_EPOCHS``), and crop/flip
    augmentation follows the data set unless it sets ``augment``. ``baseline.recipe_for`` reads it from
    here. Without ``recipe`` the model trains with the default recipe (``recipes.DEFAULT_RECIPE``),
    and training says so. Unknown fields or bad values are an error at registration.
    """

    def deco(f):
        key = name or f.__name__
        if key in _REGISTRY:
            raise PrunetaxError(f"model '{key}' is already registered")
        frozen = None
        if recipe is not None:
            from prunetax.benchmarks.recipes import check_recipe_fields
            frozen = MappingProxyType(check_recipe_fields(recipe, f"model '{key}'"))
        doc = (f.__doc__ or "").strip().splitlines()
        _REGISTRY[key] = (f, ModelInfo(key, doc[0] if doc else "", needs, frozen))
        names.add_model(key)
        return f

    return deco(fn) if fn is not None else deco


def unregister_model(name: str) -> None:
    """Remove a registered model (e.g. one a test or notebook added)."""
    if _REGISTRY.pop(name, None) is None:
        raise PrunetaxError(f"model '{name}' is not registered")
    names.remove_model(name)


def list_models(pattern: str | None = None, *, available_only: bool = False) -> list[str]:
    """Registered model names (sorted), filtered by an fnmatch glob such as ``"resnet*"``."""
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if available_only:
        names = [n for n in names if _REGISTRY[n][1].available]
    return names


def _lookup(name: str):
    if name not in _REGISTRY:
        raise names.unknown_model(name, _REGISTRY)
    return _REGISTRY[name]


def model_info(name: str) -> ModelInfo:
    """Description, availability and declared training recipe of a registered model."""
    return _lookup(name)[1]


def create_model(name: str, in_channels: int = 3, num_classes: int = 10, input_size: int = 32) -> nn.Module:
    """Build the registered model ``name`` (randomly initialised, train mode)."""
    fn, info = _lookup(name)
    if info.reason is not None:
        raise PrunetaxError(f"model '{name}' is unavailable: {info.reason}")
    if in_channels < 1 or num_classes < 1 or input_size < 1:
        raise PrunetaxError(
            f"model '{name}': in_channels, num_classes and input_size must be positive "
            f"(got {in_channels}, {num_classes}, {input_size})")
    return fn(in_channels=in_channels, num_classes=num_classes, input_size=input_size)


def _conv_out(size: int, k: int, s: int = 1, p: int = 0, ceil: bool = False) -> int:
    v = (size + 2 * p - k) / s
    return (math.ceil(v) if ceil else math.floor(v)) + 1


def _check_size(name: str, size: int, minimum: int) -> None:
    if size < minimum:
        raise PrunetaxError(f"model '{name}' needs input_size >= {minimum} (got {size})")


# ---------------------------------------------------------------------------------------------
# The authors' networks (docs/protocol.md, "The authors' networks and their baselines")

# The clipping bounds every step: at lr 0.05 without it, the first 40 steps can blow up to nan,
# depending on the CPU's rounding (docs/data.md).
@register_model(recipe={"epochs": 10, "lr": 0.05, "clip_grad_norm": 5.0})
def lenet5(in_channels=3, num_classes=10, input_size=32):
    """LeNet-5 (Caffe): conv20 5x5, maxpool 2/2, conv50 5x5, maxpool 2/2, fc500, relu, fc."""
    _check_size("lenet5", input_size, 16)
    s = (((input_size - 4) // 2) - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, 5), nn.MaxPool2d(2, 2),
        nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(50 * s * s, 500), nn.ReLU(inplace=True),
        nn.Linear(500, num_classes),
    )


def _conv_relu(cin, cout, k, p=0, groups=1):
    return [nn.Conv2d(cin, cout, k, padding=p, groups=groups), nn.ReLU(inplace=True)]


# Clipped like LeNet-5, for the same reason: at lr 0.05 a spike of the gradient (norm 19-33 near
# step 30) can kill every ReLU, and the network stays at chance (docs/data.md).
@register_model(recipe={"epochs": 20, "lr": 0.05, "clip_grad_norm": 5.0})
def cifar10_quick(in_channels=3, num_classes=10, input_size=32):
    """Caffe cifar10_quick: 3 x conv 5x5 p2 (32, 32, 64) with ceil-mode pooling, fc64, fc."""
    _check_size("cifar10_quick", input_size, 4)
    s = input_size
    for _ in range(3):
        s = _conv_out(s, 3, 2, ceil=True)
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(inplace=True),
        *_conv_relu(32, 32, 5, 2), nn.AvgPool2d(3, 2, ceil_mode=True),
        *_conv_relu(32, 64, 5, 2), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(64 * s * s, 64), nn.Linear(64, num_classes),
    )


def _he_init(model: nn.Module, mode: str) -> list[nn.Module]:
    """He et al. (2015) normal initialisation with the ReLU gain for every convolution and linear
    layer (``mode`` fan_in or fan_out), biases zero; returns those layers in order.

    For the deep networks without BatchNorm (NIN, AlexNet): under PyTorch's default
    (``kaiming_uniform(a=sqrt(5))``, variance 1/(3 fan_in)) every ReLU layer shrinks the signal,
    and after eight or nine layers the logits hardly depend on the image, so SGD stays at chance.
    docs/data.md gives the measurements.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers:
        nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
        nn.init.zeros_(m.bias)
    return layers


@register_model(recipe={"epochs": 40, "lr": 0.05})  # the rate: docs/data.md
def nin(in_channels=3, num_classes=10, input_size=32):
    """Network in Network (Caffe CIFAR): three mlpconv blocks, global average pooling."""
    _check_size("nin", input_size, 4)
    model = nn.Sequential(
        *_conv_relu(in_channels, 192, 5, 2), *_conv_relu(192, 160, 1), *_conv_relu(160, 96, 1),
        nn.MaxPool2d(3, 2, ceil_mode=True), nn.Dropout(0.5),
        *_conv_relu(96, 192, 5, 2), *_conv_relu(192, 192, 1), *_conv_relu(192, 192, 1),
        nn.AvgPool2d(3, 2, ceil_mode=True), nn.Dropout(0.5),
        *_conv_relu(192, 192, 3, 1), *_conv_relu(192, 192, 1), *_conv_relu(192, num_classes, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    # The class maps pass a ReLU before the global average (as in NIN's Caffe model): once
    # every class's ReLU is off, the logits are all 0, the loss is ln(classes) and no gradient
    # flows. Their bias starts at 1, so every class map starts on (softmax ignores the offset).
    nn.init.constant_(_he_init(model, "fan_out")[-1].bias, 1.0)
    return model


@register_model(recipe={"epochs": 40, "lr": 5e-4})  # the rate: docs/data.md
def alexnet_cifar(in_channels=3, num_classes=10, input_size=32):
    """AlexNet for CIFAR (authors' Caffe model): 5 convs, grouped as in Caffe, 3 fully connected."""
    _check_size("alexnet_cifar", input_size, 3)
    s = _conv_out(_conv_out(input_size - 2, 3, 2, ceil=True), 3, 2, ceil=True)
    model = nn.Sequential(
        *_conv_relu(in_channels, 96, 3),
        *_conv_relu(96, 256, 5, 2, groups=2), nn.MaxPool2d(3, 2, ceil_mode=True),
        *_conv_relu(256, 384, 3, 1),
        *_conv_relu(384, 384, 3, 1, groups=2),
        *_conv_relu(384, 256, 3, 1, groups=2), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(256 * s * s, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, num_classes),
    )
    # He init for the layers a ReLU follows; the classifier starts near zero (std 0.001), so the
    # first logits are about equal and the first SGD steps do not blow up (docs/data.md).
    nn.init.normal_(_he_init(model, "fan_in")[-1].weight, 0.0, 0.001)
    return model


# --- CIFAR ResNets (He et al. 2016, section 4.2): 3 stages x n basic blocks, 16/32/64 channels

class _PadShortcut(nn.Module):
    """Option A shortcut: subsample by 2 and zero-pad the new channels, half on each side."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            if shortcut == "B":
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            else:
                self.shortcut = _PadShortcut((cout - cin) // 2)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth, in_channels=3, num_classes=10, shortcut="B"):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        blocks, cin = [], 16
        for i, width in enumerate((16, 32, 64)):
            for b in range(n):
                blocks.append(BasicBlock(cin, width, 2 if (i > 0 and b == 0) else 1, shortcut))
                cin = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _resnet(name, depth, shortcut, recipe):
    def build(in_channels=3, num_classes=10, input_size=32):
        _check_size(name, input_size, 4)
        return CifarResNet(depth, in_channels, num_classes, shortcut)

    kind = "1x1 conv+BN projection" if shortcut == "B" else "zero-padding (option A)"
    build.__doc__ = f"ResNet-{depth} for CIFAR, {kind} shortcuts when the shape changes."
    register_model(build, name=name, recipe=recipe)


_resnet("resnet20", 20, "B", {"epochs": 60, "lr": 0.1})
_resnet("resnet56", 56, "B", {"epochs": 80, "lr": 0.1})
_resnet("resnet20_a", 20, "A", {"epochs": 60, "lr": 0.1})
_resnet("resnet56_a", 56, "A", {"epochs": 80, "lr": 0.1})


@register_model(recipe={"epochs": 60, "lr": 0.1})
def vgg16_bn(in_channels=3, num_classes=10, input_size=32):
    """VGG-16 with BatchNorm for CIFAR (as in network slimming / GFBS): 13 convs, one classifier."""
    _check_size("vgg16_bn", input_size, 32)
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, cin = [], in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
    s = input_size // 32
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * s * s, num_classes))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


@register_model(recipe={"epochs": 60, "lr": 0.1, "weight_decay": 4e-5})
def mobilenetv2(in_channels=3, num_classes=10, input_size=32):
    """MobileNetV2 for CIFAR: stride-1 stem and second stage (as in GFBS), width 1.0."""
    _check_size("mobilenetv2", input_size, 8)
    cfg = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers = [nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
    cin = 32
    for t, c, n, s in cfg:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, num_classes)]
    return nn.Sequential(*layers)


class _DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], 1)


class _Transition(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cin, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        return self.pool(self.conv(self.relu(self.bn(x))))


@register_model(recipe={"epochs": 60, "lr": 0.1, "weight_decay": 1e-4})
def densenet40(in_channels=3, num_classes=10, input_size=32):
    """DenseNet-40 for CIFAR (Huang et al.): growth 12, 3 dense blocks of 12 layers, no bottleneck."""
    _check_size("densenet40", input_size, 4)
    growth, n = 12, 12
    layers, c = [nn.Conv2d(in_channels, 2 * growth, 3, 1, 1, bias=False)], 2 * growth
    for block in range(3):
        for _ in range(n):
            layers.append(_DenseLayer(c, growth))
            c += growth
        if block < 2:
            layers.append(_Transition(c))
    layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


# --- torchvision ImageNet models, imported only when built ------------------------------------

def _torchvision(name, tv_name, doc):
    def build(in_channels=3, num_classes=1000, input_size=224):
        import torchvision

        model = getattr(torchvision.models, tv_name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            _replace_first_conv(model, in_channels)
        return model

    build.__doc__ = doc
    # A first setting (never trained here): the values of the default recipe, declared explicitly.
    register_model(build, name=name, needs="torchvision", recipe={"epochs": 30, "lr": 0.05})


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, child_name, nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                    child.dilation, child.groups, child.bias is not None))
                return


_torchvision("tv_resnet18", "resnet18", "torchvision ResNet-18 (ImageNet layout).")
_torchvision("tv_resnet50", "resnet50", "torchvision ResNet-50 (ImageNet layout).")
_torchvision("tv_mobilenet_v2", "mobilenet_v2", "torchvision MobileNetV2 (ImageNet layout).")
_torchvision("tv_densenet121", "densenet121", "torchvision DenseNet-121 (ImageNet layout).")
_torchvision("tv_vgg16_bn", "vgg16_bn", "torchvision VGG-16 with BatchNorm (ImageNet layout).")
