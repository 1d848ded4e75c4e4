"""A class-conditional DCGAN for 28x28 digits: the generator is served, the discriminator trains it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GANConfig:
    latent: int = 64
    num_classes: int = 10
    width: int = 64  # channels of the 14x14 stage; the 7x7 stage has twice as many


class Generator(nn.Module):
    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        wide = 2 * config.width
        self.label_embedding = nn.Embedding(config.num_classes, config.latent)
        self.project = nn.Sequential(nn.Linear(2 * config.latent, wide * 49, bias=False), nn.BatchNorm1d(wide * 49),
                                     nn.ReLU(inplace=True))
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(wide, config.width, 4, stride=2, padding=1, bias=False),  # [N, w, 14, 14]
            nn.BatchNorm2d(config.width), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(config.width, 1, 4, stride=2, padding=1),  # [N, 1, 28, 28]
            nn.Sigmoid(),
        )

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # noise: [N, latent]; labels: [N] class ids -> images [N, 1, 28, 28] in [0, 1]
        x = self.project(torch.cat([noise, self.label_embedding(labels)], dim=1))
        return self.upsample(x.view(-1, 2 * self.config.width, 7, 7))  # -1, not len(noise): traceable


class Discriminator(nn.Module):
    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.label_maps = nn.Embedding(config.num_classes, 28 * 28)  # the label as an extra input channel
        self.features = nn.Sequential(
            nn.Conv2d(2, config.width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),  # 14x14
            nn.Conv2d(config.width, 2 * config.width, 4, stride=2, padding=1), nn.BatchNorm2d(2 * config.width),
            nn.LeakyReLU(0.2, inplace=True), nn.Flatten(), nn.Dropout(0.3),  # [N, 2w*7*7]
            nn.Linear(2 * config.width * 49, 1),
        )

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # images: [N, 1, 28, 28] in [0, 1]; labels: [N] -> real/fake logits [N]
        label_channel = self.label_maps(labels).view(-1, 1, 28, 28)
        return self.features(torch.cat([images * 2 - 1, label_channel], dim=1)).squeeze(1)
