"""An LSTM forecaster: a history of any length -> the next ``horizon`` values, in the data's own units.

The scaling learned from the training span (mean and standard deviation) lives inside the module,
so the service feeds raw values and gets raw values back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


@dataclass(frozen=True)
class ForecasterConfig:
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.1
    horizon: int = 12  # values predicted per forward
    window: int = 132  # the longest history used (older values are dropped)
    min_history: int = 24
    mean: float = 0.0
    std: float = 1.0


class LSTMForecaster(nn.Module):
    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        self.config = config
        self.lstm = nn.LSTM(1, config.hidden, num_layers=config.layers, batch_first=True,
                            dropout=config.dropout if config.layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Linear(config.hidden, config.hidden), nn.ReLU(),
                                  nn.Linear(config.hidden, config.horizon))

    def forward(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # history: [N, T] raw values, left-aligned and right-padded; lengths: [N] -> forecast [N, horizon] raw
        scaled = ((history - self.config.mean) / self.config.std).unsqueeze(-1)  # [N, T, 1]
        packed = pack_padded_sequence(scaled, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.lstm(packed)  # hidden: [layers, N, H]; padding never enters the state
        return self.head(hidden[-1]) * self.config.std + self.config.mean
