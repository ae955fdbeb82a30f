"""The seed notebook's AlexNet and the paper-width variant, with torchvision's key layout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fmnist_alexnet.errors import FmnistError

# default: PyTorch's layer defaults; xavier: what d2l's train_ch6 applies before training.
INITS = ("default", "xavier")


class AlexNet(nn.Module):
    """The network exactly as the seed README defines it (torchvision's AlexNet, 1 channel).

    State-dict keys are ``features.{0,3,6,8,10}.*`` and ``classifier.{1,4,6}.*``;
    with 10 classes it has 57,029,322 parameters. AdaptiveAvgPool2d makes the classifier
    independent of the input size (>= 63 px).
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = _classifier(256 * 6 * 6, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        logits: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return logits


class AlexNetPaper(nn.Module):
    """The paper/d2l widths (96-256-384-384-256, conv 1 padding 1) from the seed notebook.

    The notebook flattens the 5x5x256 map it gets at 224 px (6400 features); an
    ``AdaptiveAvgPool2d((5, 5))`` keeps exactly that at 224 px and lets other sizes work too.
    Its classifier follows torchvision's order (dropout before each hidden linear layer);
    ``d2l=True`` (arch ``alexnet-d2l``) uses Dive into Deep Learning's order instead, dropout
    after each hidden layer's ReLU: the same weights (keys
    ``classifier.{0,3,6}``), a different network in training.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.5, d2l: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 96, kernel_size=11, stride=4, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((5, 5))
        make = _d2l_classifier if d2l else _classifier
        self.classifier = make(256 * 5 * 5, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        logits: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return logits


def _classifier(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(in_features, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )


def _d2l_classifier(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(4096, num_classes),
    )


@dataclass(frozen=True)
class Architecture:
    """How to build one ``--arch``: ``build(num_classes, dropout)``, and the smallest input
    it takes (below it the feature maps shrink to nothing before the last pool)."""

    build: Callable[[int, float], nn.Module]
    min_image_size: int


ARCHITECTURES: dict[str, Architecture] = {
    "alexnet": Architecture(AlexNet, 63),
    "alexnet-paper": Architecture(AlexNetPaper, 65),
    "alexnet-d2l": Architecture(lambda n, p: AlexNetPaper(n, p, d2l=True), 65),
}
ARCHS = ARCHITECTURES.keys()  # a live view: what --arch accepts


def register_architecture(name: str, architecture: Architecture) -> None:
    """Make ``name`` a valid ``--arch`` in this process (the test suite's small network)."""
    ARCHITECTURES[name] = architecture


def build_model(arch: str, num_classes: int = 10, dropout: float = 0.5) -> nn.Module:
    """``dropout`` is the seed's 0.5 unless changed; it has no weights, so checkpoints load
    into a model of any dropout."""
    if arch not in ARCHITECTURES:
        raise FmnistError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return ARCHITECTURES[arch].build(num_classes, dropout)


def initialize(model: nn.Module, scheme: str) -> nn.Module:
    """Re-draw the weights of every conv and linear layer; biases keep PyTorch's defaults.

    ``xavier`` is Dive into Deep Learning's ``init_weights`` in ``train_ch6`` (Glorot
    uniform on ``nn.Conv2d`` and ``nn.Linear`` weights), which its AlexNet chapter trains with.
    """
    if scheme == "default":
        return model
    if scheme != "xavier":
        raise FmnistError(f"unknown initialisation {scheme!r}; choose one of {', '.join(INITS)}")
    for layer in model.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
    return model


MAX_IMAGE_SIZE = 512


def check_image_size(arch: str, image_size: int, flag: str = "--image-size") -> None:
    minimum = ARCHITECTURES[arch].min_image_size
    if image_size < minimum:
        raise FmnistError(
            f"{flag} {image_size} is too small for {arch}: the minimum is {minimum} px "
            "(smaller inputs collapse to an empty feature map)"
        )
    if image_size > MAX_IMAGE_SIZE:
        raise FmnistError(
            f"{flag} {image_size} is larger than {MAX_IMAGE_SIZE} px, far past anything a "
            "28x28 image can fill"
        )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
