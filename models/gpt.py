"""A decoder-only Transformer (character GPT) with a key/value cache, so each new token costs one step.

Causal multi-head attention, learned positions, pre-norm blocks, weight tying between the token
embedding and the output layer. ``forward`` takes an optional cache per layer and returns the
extended one; rows of a batch may hold sequences of different lengths (``lengths``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256  # the longest context (positions are learned up to here)
    dim: int = 192
    heads: int = 6
    layers: int = 4
    dropout: float = 0.1


# A layer's cache: keys and values [N, heads, T_cached, head_dim].
LayerCache = tuple[torch.Tensor, torch.Tensor]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.out = nn.Linear(config.dim, config.dim)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cache: LayerCache | None, positions: torch.Tensor,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, LayerCache]:
        # x: [N, T, D] new tokens at ``positions`` [N, T]. Without a cache: plain causal attention, and the
        # keys/values come back as a new cache. With one (capacity C): the new keys/values are written
        # into their rows' slots and every query attends to the slots allowed by ``mask`` [N, 1, T, C].
        n, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(n, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))  # [N, H, T, hd]
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
            return self.out(y.transpose(1, 2).reshape(n, t, d)), (k, v)
        keys, values = cache
        rows = torch.arange(n, device=x.device)[:, None]  # [N, 1]
        keys.transpose(1, 2)[rows, positions] = k.transpose(1, 2)  # in place: [N, C, H, hd] view of the cache
        values.transpose(1, 2)[rows, positions] = v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=dropout)
        return self.out(y.transpose(1, 2).reshape(n, t, d)), cache


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.dim)
        self.attention = CausalSelfAttention(config)
        self.ff_norm = nn.LayerNorm(config.dim)
        self.ff = nn.Sequential(nn.Linear(config.dim, 4 * config.dim), nn.GELU(), nn.Linear(4 * config.dim, config.dim),
                                nn.Dropout(config.dropout))

    def forward(self, x: torch.Tensor, cache: LayerCache | None, positions: torch.Tensor,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, LayerCache]:
        attended, new_cache = self.attention(self.attention_norm(x), cache, positions, mask)
        x = x + attended
        return x + self.ff(self.ff_norm(x)), new_cache


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.position_embedding = nn.Embedding(config.block_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # weight tying
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor, cache: list[LayerCache] | None = None,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, list[LayerCache]]:
        """ids: [N, T] -> (logits [N, T, vocab], cache).

        Without a cache: the ordinary causal forward from position 0 (training, prompt prefill); the
        keys/values of the T positions come back ([N, H, T, hd] per layer). With a cache of capacity C
        (see ``empty_cache``), ``lengths`` [N] says how many positions each row already holds: the new
        tokens take positions ``lengths .. lengths + T - 1`` of their own row, are written into the
        cache in place, and attend to everything before them in that row. So rows at different lengths
        decode together in one batch, each token costing one step.
        """
        n, t = ids.shape
        if lengths is None:
            lengths = torch.zeros(n, dtype=torch.long, device=ids.device)
        positions = lengths[:, None] + torch.arange(t, device=ids.device)[None, :]  # [N, T]
        if int(positions.max()) >= self.config.block_size:
            raise ValueError(f"position {int(positions.max())} is past block_size {self.config.block_size}")
        x = self.dropout(self.token_embedding(ids) + self.position_embedding(positions))
        mask = None
        if cache is not None:
            slots = torch.arange(cache[0][0].shape[2], device=ids.device)  # [C]
            mask = (slots[None, None, :] <= positions[:, :, None])[:, None]  # [N, 1, T, C]
        layer_caches = []
        for index, block in enumerate(self.blocks):
            x, layer_cache = block(x, None if cache is None else cache[index], positions, mask)
            layer_caches.append(layer_cache)
        return self.lm_head(self.norm(x)), layer_caches

    def empty_cache(self, rows: int, capacity: int | None = None) -> list[LayerCache]:
        """Zeroed keys/values [rows, H, capacity, hd] per layer, on the module's device and dtype."""
        weight = self.token_embedding.weight
        shape = (rows, self.config.heads, capacity or self.config.block_size, self.config.dim // self.config.heads)
        return [(weight.new_zeros(shape), weight.new_zeros(shape)) for _ in self.blocks]


class CachedStep(nn.Module):
    """The decoding step of a GPT: one new token per row, written into the cache in place; only the logits
    come back, so the step can be traced (a traced function cannot return the cache's list of tuples)."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(self, ids: torch.Tensor, cache: list[LayerCache], lengths: torch.Tensor) -> torch.Tensor:
        # ids: [N, 1]; cache: per layer [N, H, C, hd], updated in place; lengths: [N] -> logits [N, 1, vocab]
        return self.gpt(ids, cache, lengths)[0]
