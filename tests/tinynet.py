"""The suite's small network, for the tests of plumbing (checkpoints, resume, the CLI's
errors, serving, fuzzing, tuning): a few thousand parameters instead of AlexNet's 57
million, so a run takes a fraction of a second and its checkpoints a few kB.

It is not an ``--arch`` users see: only a process that imports this module knows it. The
suite's conftest imports it; a test that needs it in a child process runs this file in place
of ``python -m fmnist_alexnet`` (``TINY_CLI``).
"""

import sys

import torch
from torch import nn

from fmnist_alexnet.model import Architecture, register_architecture

NAME = "tiny"


class TinyNet(nn.Module):
    """One convolution and a two-layer classifier, with AlexNet's layout of names
    (``features``, ``avgpool``, ``classifier``) and its smallest input (63 px)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=5, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(8 * 4 * 4, 32),
            nn.ReLU(inplace=True),
            nn.Linear(32, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


register_architecture(NAME, Architecture(TinyNet, 63))

if __name__ == "__main__":
    from fmnist_alexnet.cli import main

    sys.exit(main())
