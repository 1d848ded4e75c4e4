"""Recurrent text classifiers: embedding + (bi)LSTM or GRU over packed sequences, max+mean pooling."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


@dataclass(frozen=True)
class RNNConfig:
    vocab_size: int = 20_000
    embed_dim: int = 128
    hidden: int = 128
    layers: int = 1
    cell: str = "lstm"  # lstm | gru
    bidirectional: bool = True
    dropout: float = 0.3
    num_classes: int = 2
    max_len: int = 128
    pad_id: int = 0


class RNNClassifier(nn.Module):
    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=config.pad_id)
        rnn_class = {"lstm": nn.LSTM, "gru": nn.GRU}[config.cell]
        self.rnn = rnn_class(config.embed_dim, config.hidden, num_layers=config.layers, batch_first=True,
                             bidirectional=config.bidirectional,
                             dropout=config.dropout if config.layers > 1 else 0.0)
        features = config.hidden * (2 if config.bidirectional else 1)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(2 * features, config.num_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # ids: [N, T] padded token ids; lengths: [N] -> logits [N, num_classes]
        t = ids.shape[1]
        x = self.dropout(self.embedding(ids))  # [N, T, E]
        # Packing makes padding invisible to the recurrence: a padded batch equals one-by-one runs.
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)  # [N, T, F]
        keep = (torch.arange(t, device=ids.device)[None, :] < lengths[:, None])[:, :, None]  # [N, T, 1]
        mean = (out * keep).sum(1) / keep.sum(1).clamp(min=1)
        top = out.masked_fill(~keep, float("-inf")).amax(1)
        return self.head(self.dropout(torch.cat([mean, top], dim=-1)))  # [N, C]
