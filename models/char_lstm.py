"""A character-level LSTM language model; its recurrent state is the cache (one step per token)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CharLSTMConfig:
    vocab_size: int = 65
    embed_dim: int = 64
    hidden: int = 512
    layers: int = 2
    dropout: float = 0.2


State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [layers, N, hidden]


class CharLSTM(nn.Module):
    def __init__(self, config: CharLSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden, num_layers=config.layers, batch_first=True,
                            dropout=config.dropout if config.layers > 1 else 0.0)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.vocab_size)

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        # ids: [N, T] -> logits [N, T, vocab], state after the last token
        out, new_state = self.lstm(self.embedding(ids), state)
        return self.head(self.dropout(out)), new_state
