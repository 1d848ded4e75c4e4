"""Recipe: ``mnist-cgan``, a class-conditional DCGAN trained adversarially on MNIST (the generator is served).

After training, 100 samples of each digit (fixed seeds) are classified by the committed ``mnist-cnn``:
the share classified as the requested digit is ``label_agreement`` in the manifest. A grid of samples
(one row per digit) is saved after each epoch for a person to look at.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

import models
from models.gan import Discriminator, GANConfig, Generator
from models.imaging import grid
from training import common
from training.data import load_image_split
from training.evaluation import judge
from training.image_classifier import to_pixels

NAME = "mnist-cgan"


@torch.no_grad()
def samples_per_digit(generator: Generator, per_digit: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator.eval()
    rng = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(per_digit)
    noise = torch.randn(len(labels), generator.config.latent, generator=rng)
    images = generator(noise, labels)
    generator.train()
    return images, labels


def train(_name: str, args: Any) -> Path | None:
    device, _ctx, commit = common.start_run(args)
    pixels = to_pixels(load_image_split("mnist", "train").images)
    labels = torch.from_numpy(load_image_split("mnist", "train").labels)
    if args.limit:
        pixels, labels = pixels[: args.limit], labels[: args.limit]
    config = GANConfig()
    generator, discriminator = Generator(config).to(device), Discriminator(config).to(device)
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    epochs = args.epochs or 15
    rng = torch.Generator().manual_seed(args.seed)
    samples_dir = Path(args.checkpoint_dir or ".checkpoints") / "samples" / NAME
    samples_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    for epoch in range(epochs):
        for index in tqdm(torch.randperm(len(pixels), generator=rng).split(128), desc=f"{NAME} epoch {epoch + 1}"):
            real, real_labels = pixels[index].to(device), labels[index].to(device)
            noise = torch.randn(len(index), config.latent, generator=rng).to(device)
            fake_labels = torch.randint(0, 10, (len(index),), generator=rng).to(device)
            fake = generator(noise, fake_labels)
            # discriminator: real -> 0.9 (one-sided label smoothing), fake -> 0
            d_loss = (F.binary_cross_entropy_with_logits(discriminator(real, real_labels),
                                                         torch.full((len(index),), 0.9, device=device))
                      + F.binary_cross_entropy_with_logits(discriminator(fake.detach(), fake_labels),
                                                           torch.zeros(len(index), device=device)))
            d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            d_optimizer.step()
            g_loss = F.binary_cross_entropy_with_logits(discriminator(fake, fake_labels),
                                                        torch.ones(len(index), device=device))
            g_optimizer.zero_grad(set_to_none=True)
            g_loss.backward()
            g_optimizer.step()
        images, _ = samples_per_digit(generator, 10, seed=1)
        grid(images.squeeze(1).cpu().numpy(), columns=10).save(samples_dir / f"epoch-{epoch + 1}.png")
        print(f"{NAME} epoch {epoch + 1}: d_loss {d_loss.item():.3f} g_loss {g_loss.item():.3f}", flush=True)
    generator = generator.cpu().eval()
    images, wanted = samples_per_digit(generator, 100, seed=12345)
    predicted, confidence = judge(images, Path(args.out))
    agreement = float((predicted == wanted.numpy()).mean())
    print(f"{NAME}: {agreement:.3f} of 1000 samples classified as the requested digit by mnist-cnn")
    version, out_dir = common.next_version_dir(Path(args.out), NAME)
    manifest = {
        "name": NAME, "version": version, "task": "image-generation", "architecture": "dcgan-generator",
        "config": models.config_to_dict(generator.config), "labels": [str(d) for d in range(10)],
        "conditional": True,
        "preprocessing": {"output": "pixels", "shape": [1, 28, 28], "range": [0.0, 1.0]},
        "dataset": {"name": "mnist", "train_size": len(pixels),
                    "evaluation": "100 samples per digit (seed 12345) judged by the committed mnist-cnn"},
        "metrics": {"label_agreement": round(agreement, 4),
                    "mean_confidence": round(float(np.mean(confidence)), 4)},
        "trained": {"epochs": epochs, "seconds": round(time.time() - started, 1), "device": str(device),
                    "git_commit": commit, "seed": args.seed, "torch": torch.__version__},
    }
    models.save_artifact(generator, manifest, out_dir)
    print(f"wrote {out_dir}")
    return out_dir
