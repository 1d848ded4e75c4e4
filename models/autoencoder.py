"""A convolutional autoencoder for 28x28 images; its reconstruction error is the anomaly score."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AutoencoderConfig:
    channels: tuple[int, int] = (32, 64)
    latent: int = 32


class ConvAutoencoder(nn.Module):
    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        first, second = config.channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, first, 3, stride=2, padding=1), nn.ReLU(inplace=True),  # [N, c1, 14, 14]
            nn.Conv2d(first, second, 3, stride=2, padding=1), nn.ReLU(inplace=True),  # [N, c2, 7, 7]
            nn.Flatten(), nn.Linear(second * 49, config.latent),
        )
        self.decoder = nn.Sequential(
            nn.Linear(config.latent, second * 49), nn.ReLU(inplace=True), nn.Unflatten(1, (second, 7, 7)),
            nn.ConvTranspose2d(second, first, 4, stride=2, padding=1), nn.ReLU(inplace=True),  # [N, c1, 14, 14]
            nn.ConvTranspose2d(first, 1, 4, stride=2, padding=1), nn.Sigmoid(),  # [N, 1, 28, 28]
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # pixels: [N, 1, 28, 28] in [0, 1] -> reconstruction, same shape and range
        return self.decoder(self.encoder(pixels))

    @staticmethod
    def score(pixels: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Anomaly score per image: the mean squared reconstruction error -> [N]."""
        return ((pixels - reconstruction) ** 2).flatten(1).mean(1)
