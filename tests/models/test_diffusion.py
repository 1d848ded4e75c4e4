"""The diffusion model's pieces: shapes, the noise schedule, and DDIM's arithmetic checked against an oracle."""

from __future__ import annotations

import pytest
import torch

from models.diffusion import DiffusionConfig, UNet, ddim_step, ddim_timesteps, sample

TINY = DiffusionConfig(channels=(8, 8, 8), time_dim=16, groups=4)


def test_the_unet_predicts_noise_of_its_input_shape() -> None:
    model = UNet(TINY).eval()
    x = torch.randn(3, 1, 28, 28)
    assert model(x, torch.tensor([0, 500, 999])).shape == x.shape


def test_the_schedule_loses_signal_monotonically() -> None:
    alpha_bar = UNet(TINY).alpha_bar
    assert alpha_bar.shape == (1000,) and bool((alpha_bar.diff() < 0).all())
    assert 0.99 < alpha_bar[0] < 1 and alpha_bar[-1] < 1e-3  # almost clean at 0, almost pure noise at T-1


@pytest.mark.parametrize("steps", [1, 2, 10, 50, 999, 1000])
def test_ddim_timesteps_are_distinct_descending_and_span_the_schedule(steps: int) -> None:
    timesteps = ddim_timesteps(1000, steps)
    assert len(timesteps) == steps and timesteps == sorted(set(timesteps), reverse=True)
    assert timesteps[0] == 999 and (steps == 1 or timesteps[-1] == 0)


class Oracle(UNet):
    """Predicts the exact noise that separates x from one known clean image."""

    def __init__(self, clean: torch.Tensor) -> None:
        super().__init__(TINY)
        self.clean = clean

    def forward(self, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = self.alpha_bar[t][:, None, None, None]
        return (noisy - alpha_bar.sqrt() * self.clean) / (1 - alpha_bar).sqrt()


@pytest.mark.parametrize("steps", [1, 5, 50])
def test_ddim_with_a_perfect_noise_predictor_lands_on_the_clean_image(steps: int) -> None:
    clean = torch.rand(2, 1, 28, 28) * 2 - 1
    oracle = Oracle(clean)
    noise = torch.randn(2, 1, 28, 28)
    start = oracle.add_noise(clean, noise, torch.full((2,), 999))
    images = sample(oracle, start, steps)
    assert torch.allclose(images, (clean + 1) / 2, atol=1e-4)


def test_a_step_keeps_the_noise_direction_and_rows_can_be_at_different_timesteps() -> None:
    clean, noise = torch.rand(2, 1, 28, 28) * 2 - 1, torch.randn(2, 1, 28, 28)
    oracle = Oracle(clean)
    t, t_next = torch.tensor([900, 300]), torch.tensor([600, -1])
    stepped = ddim_step(oracle, oracle.add_noise(clean, noise, t), t, t_next)
    assert torch.allclose(stepped[0], oracle.add_noise(clean, noise, torch.tensor([600]))[0], atol=1e-4)
    assert torch.allclose(stepped[1], clean[1], atol=1e-4)
