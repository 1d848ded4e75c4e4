"""A small denoising diffusion model for 28x28 digits: a U-Net that predicts the noise, its noise schedule,
and the deterministic DDIM update that samples with any number of steps up to the schedule's length.

The schedule lives in the module (as non-persistent buffers rebuilt from the config), so training and
serving can never disagree on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class DiffusionConfig:
    channels: tuple[int, ...] = (32, 64, 64)  # per resolution: 28x28, 14x14, 7x7
    time_dim: int = 128
    groups: int = 8
    timesteps: int = 1000  # the training schedule's length T
    beta_start: float = 1e-4
    beta_end: float = 0.02  # linear betas (Ho et al., 2020)


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    # t: [N] integer timesteps -> [N, dim]
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, time_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, inputs)
        self.conv1 = nn.Conv2d(inputs, outputs, 3, padding=1)
        self.time = nn.Linear(time_dim, outputs)
        self.norm2 = nn.GroupNorm(groups, outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1)
        self.skip = nn.Conv2d(inputs, outputs, 1) if inputs != outputs else nn.Identity()

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        # x: [N, C_in, H, W]; time: [N, time_dim] -> [N, C_out, H, W]
        h = self.conv1(F.silu(self.norm1(x))) + self.time(time)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Attention over the positions of the coarsest feature map (7x7: 49 tokens)."""

    def __init__(self, channels: int, groups: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        # q, k, v: [N, heads, C/heads, HW] -> attention over HW
        attended = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(attended.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    alpha_bar: torch.Tensor  # [T] the cumulative product of (1 - beta): the signal kept at each timestep

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.config = config
        widths, groups, time_dim = config.channels, config.groups, config.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(widths[0], time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.stem = nn.Conv2d(1, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        previous = widths[0]
        for level, width in enumerate(widths):
            self.down.append(ResBlock(previous, width, time_dim, groups))
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
            previous = width
        self.middle = ResBlock(previous, previous, time_dim, groups)
        self.attention = SelfAttention(previous, groups)
        self.up = nn.ModuleList()
        for width in reversed(widths):
            self.up.append(ResBlock(previous + width, width, time_dim, groups))
            previous = width
        self.head = nn.Sequential(nn.GroupNorm(groups, widths[0]), nn.SiLU(), nn.Conv2d(widths[0], 1, 3, padding=1))
        betas = torch.linspace(config.beta_start, config.beta_end, config.timesteps, dtype=torch.float64)
        self.register_buffer("alpha_bar", torch.cumprod(1 - betas, 0).float(), persistent=False)  # [T]

    def forward(self, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # noisy: [N, 1, 28, 28] in the model's [-1, 1] scale; t: [N] timesteps in [0, T) -> predicted noise
        time = self.time_mlp(sinusoidal(t, self.config.channels[0]))
        x = self.stem(noisy)
        skips = []
        for level, block in enumerate(self.down):
            x = block(x, time)
            skips.append(x)
            if level < len(self.downsample):
                x = self.downsample[level](x)
        x = self.attention(self.middle(x, time))
        for block in self.up:
            skip = skips.pop()
            if x.shape[-1] != skip.shape[-1]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1), time)
        return self.head(x)

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The forward process q(x_t | x_0): clean and noise [N, 1, H, W], t [N]."""
        alpha_bar = self.alpha_bar[t][:, None, None, None]
        return alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise


def ddim_timesteps(total: int, steps: int) -> list[int]:
    """``steps`` (1 to ``total``) timesteps evenly spaced from total - 1 down to 0; one step starts at total - 1."""
    if steps == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (steps - 1)) for i in range(steps)}, reverse=True)


def ddim_step(model: UNet, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
              denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """One deterministic DDIM update (eta = 0) per row from timestep t to t_next (-1: to the clean image).

    x: [N, 1, H, W]; t, t_next: [N]; rows may be at different timesteps. ``denoise`` (default: the
    model itself) predicts the noise: a server passes the model's prepared forward.
    """
    noise = (denoise or model)(x, t)
    alpha = model.alpha_bar[t][:, None, None, None]
    alpha_next = torch.where(t_next >= 0, model.alpha_bar[t_next.clamp(min=0)], torch.ones_like(t_next, dtype=x.dtype))
    alpha_next = alpha_next[:, None, None, None]
    clean = ((x - (1 - alpha).sqrt() * noise) / alpha.sqrt()).clamp(-1, 1)
    noise = (x - alpha.sqrt() * clean) / (1 - alpha).sqrt()  # consistent with the clamped estimate
    return alpha_next.sqrt() * clean + (1 - alpha_next).sqrt() * noise


@torch.no_grad()
def sample(model: UNet, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Pure noise [N, 1, H, W] -> images [N, 1, H, W] in [0, 1] after ``steps`` DDIM updates."""
    x = noise
    schedule = ddim_timesteps(model.config.timesteps, steps)
    for t, t_next in zip(schedule, [*schedule[1:], -1], strict=True):
        rows = len(x)
        x = ddim_step(model, x, torch.full((rows,), t, device=x.device), torch.full((rows,), t_next, device=x.device))
    return (x.clamp(-1, 1) + 1) / 2
