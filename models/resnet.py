"""A small ResNet (residual basic blocks with batch norm) for 28x28 images, for Fashion-MNIST."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ResNetConfig:
    in_channels: int = 1
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)  # one stage per width; stages after the first halve H, W
    blocks_per_stage: int = 1
    dropout: float = 0.2
    mean: float = 0.2860
    std: float = 0.3530


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:  # project the identity when the shape changes
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, in_ch, H, W] -> [N, out_ch, H/stride, W/stride]
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        stem = config.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        in_ch = stem
        for stage, width in enumerate(config.widths):
            for index in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(in_ch, width, stride))
                in_ch = width
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(in_ch, config.num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # pixels: [N, C, H, W] floats in [0, 1] -> logits [N, num_classes]
        x = (pixels - self.config.mean) / self.config.std
        x = self.blocks(self.stem(x))  # [N, widths[-1], H/2^(stages-1), W/2^(stages-1)]
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # [N, widths[-1]]
        return self.head(self.dropout(x))
