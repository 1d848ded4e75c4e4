"""A Transformer encoder written here: token embedding, positions (sinusoidal or learned), multi-head
self-attention with padding masks, feed-forward blocks, pre- or post-norm residuals, pooling.

Two variants from one code path: the small pre-norm classifier trained from scratch on SST-2, and
the BERT variant (learned positions, token types, post-norm, GELU, mean pooling, L2 norm) that
loads all-MiniLM-L6-v2's weights, with or without a classification head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 20_000
    max_len: int = 128
    dim: int = 128
    heads: int = 4
    layers: int = 2
    ff_dim: int = 256
    dropout: float = 0.1
    positions: str = "sinusoidal"  # sinusoidal | learned
    type_vocab_size: int = 0  # BERT's token types; 0 = none
    norm_first: bool = True  # pre-norm; BERT is post-norm
    activation: str = "relu"  # relu | gelu
    layer_norm_eps: float = 1e-5
    pooling: str = "mean"  # mean over real tokens | cls (the first token)
    num_classes: int = 2  # 0 = an embedder: forward returns the pooled (optionally normalised) vector
    normalize: bool = False  # L2-normalise the pooled vector (sentence embeddings)
    pad_id: int = 0


def sinusoidal_positions(max_len: int, dim: int) -> torch.Tensor:
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table  # [max_len, dim]


class SelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.query = nn.Linear(config.dim, config.dim)
        self.key = nn.Linear(config.dim, config.dim)
        self.value = nn.Linear(config.dim, config.dim)
        self.out = nn.Linear(config.dim, config.dim)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # x: [N, T, D]; keep: [N, T] bool, False at padding -> [N, T, D]
        n, t, d = x.shape

        def split(proj: torch.Tensor) -> torch.Tensor:
            return proj.view(n, t, self.heads, d // self.heads).transpose(1, 2)  # [N, H, T, D/H]

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        mask = keep[:, None, None, :]  # [N, 1, 1, T]: no query attends to a padding key
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                  dropout_p=self.dropout if self.training else 0.0)
        return self.out(attended.transpose(1, 2).reshape(n, t, d))


class EncoderBlock(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.norm_first = config.norm_first
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.ff_in = nn.Linear(config.dim, config.ff_dim)
        self.ff_out = nn.Linear(config.ff_dim, config.dim)
        self.ff_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.activation = nn.GELU() if config.activation == "gelu" else nn.ReLU()
        self.dropout = nn.Dropout(config.dropout)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff_out(self.dropout(self.activation(self.ff_in(x))))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # x: [N, T, D] -> [N, T, D]
        if self.norm_first:
            x = x + self.dropout(self.attention(self.attention_norm(x), keep))
            return x + self.dropout(self.feed_forward(self.ff_norm(x)))
        x = self.attention_norm(x + self.dropout(self.attention(x, keep)))
        return self.ff_norm(x + self.dropout(self.feed_forward(x)))


class TransformerEncoder(nn.Module):
    position_table: torch.Tensor

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim, padding_idx=config.pad_id)
        self.position_embedding: nn.Embedding | None = None
        if config.positions == "learned":
            self.position_embedding = nn.Embedding(config.max_len, config.dim)
        else:
            self.register_buffer("position_table", sinusoidal_positions(config.max_len, config.dim), persistent=False)
        self.type_embedding = nn.Embedding(config.type_vocab_size, config.dim) if config.type_vocab_size else None
        # BERT normalises the summed embeddings; a pre-norm stack normalises at its end instead.
        self.embedding_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps) if not config.norm_first else None
        self.final_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps) if config.norm_first else None
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.layers))
        self.head = nn.Linear(config.dim, config.num_classes) if config.num_classes else None

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # ids: [N, T] token ids, padded with pad_id; lengths: [N] -> pooled [N, D]
        t = ids.shape[1]
        keep = torch.arange(t, device=ids.device)[None, :] < lengths[:, None]  # [N, T]
        x = self.token_embedding(ids)
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(t, device=ids.device))[None]
        else:
            x = x + self.position_table[:t][None].to(x.dtype)
        if self.type_embedding is not None:
            x = x + self.type_embedding(torch.zeros_like(ids))
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, keep)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if self.config.pooling == "cls":
            pooled = x[:, 0]
        else:
            weights = keep.to(x.dtype)[:, :, None]  # [N, T, 1]
            pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1) if self.config.normalize else pooled

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # -> logits [N, num_classes], or the pooled embedding [N, D] for an embedder
        pooled = self.encode(ids, lengths)
        return pooled if self.head is None else self.head(self.dropout(pooled))
