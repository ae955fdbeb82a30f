"""An exponential moving average of the weights, used for validation, test and the saved
``model`` weights when ``--ema DECAY`` is on (as timm's ModelEma and torchvision's
reference scripts do).

The effective decay warms up as ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates, so
short runs are not dominated by the random initial weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightEma:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.names = [name for name, _ in _tensors(model)]
        self.shadow = [t.detach().clone().float() for _, t in _tensors(model)]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.shadow, [t.detach().float() for _, t in _tensors(model)], weight)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights under the model's own keys: a plain model state_dict."""
        return {name: t.clone() for name, t in zip(self.names, self.shadow, strict=True)}

    def load_state_dict(self, weights: dict[str, torch.Tensor], updates: int) -> None:
        for name, t in zip(self.names, self.shadow, strict=True):
            t.copy_(weights[name])
        self.updates = updates

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """The model holds the averaged weights inside the block, its own ones after."""
        tensors = [t for _, t in _tensors(model)]
        saved = [t.detach().clone() for t in tensors]
        with torch.no_grad():
            for t, avg in zip(tensors, self.shadow, strict=True):
                t.copy_(avg)
        try:
            yield model
        finally:
            with torch.no_grad():
                for t, own in zip(tensors, saved, strict=True):
                    t.copy_(own)


def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and floating-point buffers, in state_dict order."""
    for name, t in model.state_dict(keep_vars=True).items():
        if t.is_floating_point():
            yield name, t
