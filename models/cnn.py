"""A plain convolutional classifier (conv, batch norm, pooling, fully connected), for MNIST."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CNNConfig:
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    widths: tuple[int, int] = (32, 64)  # channels of the two conv stages
    hidden: int = 256
    dropout: float = 0.3
    mean: float = 0.1307  # input normalisation lives inside the module
    std: float = 0.3081


def _conv_stage(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class CNN(nn.Module):
    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        first, second = config.widths
        self.features = nn.Sequential(_conv_stage(config.in_channels, first), _conv_stage(first, second))
        side = config.image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(second * side * side, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # pixels: [N, C, H, W] floats in [0, 1] -> logits [N, num_classes]
        x = (pixels - self.config.mean) / self.config.std
        x = self.features(x)  # [N, widths[1], H/4, W/4]
        return self.classifier(x)
