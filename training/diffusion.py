"""Recipe: ``mnist-ddpm``, a denoising diffusion model (a U-Net trained to predict the noise) on MNIST.

Trains for ``--epochs`` optimizer steps (default 6000) or ``--max-minutes`` (default 75), whichever runs
out first, with a cosine learning rate that follows the same budget, and serves an exponential moving
average of the weights. Every ``EVAL_EVERY`` steps it reports the held-out noise-prediction loss on MNIST
test digits, saves a grid of 100 samples for a person to look at, has the committed ``mnist-cnn`` judge
them, and checkpoints (``--checkpoint-dir``) so a stopped run resumes where it was.

The manifest records the held-out loss and, for 1000 samples (seed 12345) at the default number of DDIM
steps (and, in ``by_steps``, at fewer), the share the classifier labels with a confidence of at least 0.9,
and how many of the ten digits appear among the first 100. Its ``serving`` block holds the model's own
serving defaults: 16 rows per forward (on a CPU more rows barely raise the rate, and every forward is
padded to that size) and a 60 s deadline (64 images at 50 steps take about 15 s on one CPU thread).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

import models
from models.diffusion import DiffusionConfig, UNet, sample
from models.imaging import grid
from training import common
from training.data import load_image_split
from training.evaluation import judge
from training.image_classifier import to_pixels

NAME = "mnist-ddpm"
DEFAULT_STEPS = 50  # DDIM steps when a request names none
FEWER_STEPS = (10, 25)  # also judged, so users can trade quality for time knowingly
SERVING = {"max_batch_size": 16, "timeout_ms": 60_000}
CONFIDENT = 0.9
EVAL_EVERY = 500


def samples(model: UNet, count: int, seed: int, steps: int, device: torch.device, chunk: int = 250) -> torch.Tensor:
    """``count`` images [N, 1, 28, 28] in [0, 1] from noise drawn with ``seed``."""
    noise = torch.randn(count, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    return torch.cat([sample(model, part.to(device), steps).cpu() for part in noise.split(chunk)])


def judged(images: torch.Tensor, weights_root: Path) -> dict[str, Any]:
    """What the committed mnist-cnn makes of generated digits."""
    predicted, confidence = judge(images, weights_root)
    first_hundred = predicted[:100]
    return {"confident_share": round(float((confidence >= CONFIDENT).mean()), 4),
            "mean_confidence": round(float(confidence.mean()), 4),
            "digits_in_first_100": len(np.unique(first_hundred)),
            "digit_counts": np.bincount(predicted, minlength=10).tolist()}


@torch.no_grad()
def held_out_loss(model: UNet, clean: torch.Tensor, device: torch.device) -> float:
    """Noise-prediction MSE on held-out digits at fixed timesteps and noise (comparable across runs)."""
    rng = torch.Generator().manual_seed(0)
    t = torch.randint(0, model.config.timesteps, (len(clean),), generator=rng)
    noise = torch.randn(clean.shape, generator=rng)
    total = 0.0
    for index in torch.arange(len(clean)).split(500):
        x, e, steps = clean[index].to(device), noise[index].to(device), t[index].to(device)
        total += F.mse_loss(model(model.add_noise(x, e, steps), steps), e, reduction="sum").item()
    return total / clean.numel()


def update_ema(ema: nn.Module, model: nn.Module, step: int) -> None:
    decay = min(0.999, (1 + step) / (10 + step))  # a short average early on, so early samples are not noise
    with torch.no_grad():
        for averaged, current in zip(ema.parameters(), model.parameters(), strict=True):
            averaged.lerp_(current, 1 - decay)


def train(_name: str, args: Any) -> Path | None:
    device, _ctx, commit = common.start_run(args)
    train_split, test_split = load_image_split("mnist", "train"), load_image_split("mnist", "test")
    clean = to_pixels(train_split.images) * 2 - 1  # [N, 1, 28, 28] in [-1, 1]
    held_out = to_pixels(test_split.images)[: args.test_limit or 2000] * 2 - 1
    if args.limit:
        clean = clean[: args.limit]
    model = UNet(DiffusionConfig()).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    both = nn.ModuleDict({"model": model, "ema": ema})  # checkpointed together
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    total_steps, batch_size = args.epochs or 6000, args.batch_size or 128
    warmup = min(200, total_steps // 10)
    started, budget = time.time(), (args.max_minutes or 75) * 60

    def lr_factor(step: int) -> float:
        """Warm-up, then a cosine to 10% over whichever runs out first, the steps or the minutes."""
        if step < warmup:
            return (step + 1) / warmup
        progress = max((step - warmup) / max(1, total_steps - warmup), (time.time() - started) / budget)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    checkpoint = common.Checkpoint(Path(args.checkpoint_dir) / NAME) if args.checkpoint_dir else None
    step, elapsed = 0, 0.0
    if checkpoint and checkpoint.exists():
        meta = checkpoint.load(both, optimizer)
        step, elapsed = meta["step"], meta["seconds"]
        print(f"resumed {NAME} at step {step}")
    started = time.time() - elapsed
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor, last_epoch=step - 1)
    rng = torch.Generator().manual_seed(args.seed + step)
    samples_dir = Path(args.checkpoint_dir or ".checkpoints") / "samples" / NAME
    samples_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=total_steps, initial=step, desc=NAME)
    model.train()
    while step < total_steps and time.time() - started < budget:
        x = clean[torch.randint(0, len(clean), (batch_size,), generator=rng)].to(device)
        noise = torch.randn(x.shape, generator=rng).to(device)
        t = torch.randint(0, model.config.timesteps, (batch_size,), generator=rng).to(device)
        loss = F.mse_loss(model(model.add_noise(x, noise, t), t), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        update_ema(ema, model, step)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % EVAL_EVERY == 0:
            report(ema, held_out, step, samples_dir, Path(args.out), device)
            if checkpoint:
                checkpoint.save(both, optimizer, {"step": step, "seconds": time.time() - started})
    bar.close()
    if checkpoint and step % EVAL_EVERY:
        checkpoint.save(both, optimizer, {"step": step, "seconds": time.time() - started})
    ema = ema.eval()
    val_loss = held_out_loss(ema, held_out, device)
    count = args.test_limit or 1000
    images = samples(ema, count, seed=12345, steps=DEFAULT_STEPS, device=device)
    grid(images[:100].squeeze(1).numpy(), columns=10).save(samples_dir / "final.png")
    quality = judged(images, Path(args.out))
    by_steps = {str(steps): {key: value for key, value in judged(samples(ema, count, 12345, steps, device),
                                                                 Path(args.out)).items() if key != "digit_counts"}
                for steps in FEWER_STEPS}
    print(f"{NAME}: held-out loss {val_loss:.4f}; {quality}; fewer steps: {by_steps}")
    version, out_dir = common.next_version_dir(Path(args.out), NAME)
    manifest = {
        "name": NAME, "version": version, "task": "image-generation", "architecture": "ddpm-unet",
        "config": models.config_to_dict(ema.config), "labels": None, "conditional": False,
        "sampling": {"sampler": "ddim", "default_steps": DEFAULT_STEPS, "max_steps": ema.config.timesteps},
        "serving": SERVING,
        "preprocessing": {"output": "pixels", "shape": [1, 28, 28], "range": [0.0, 1.0]},
        "dataset": {"name": "mnist", "train_size": len(clean), "held_out": f"first {len(held_out)} test digits",
                    "evaluation": f"{count} samples (seed 12345, {DEFAULT_STEPS} DDIM steps) judged by the "
                                  f"committed mnist-cnn; confident means a top probability of {CONFIDENT} or more"},
        "metrics": {"val_loss": round(val_loss, 5), **quality, "by_steps": by_steps},
        "trained": {"steps": step, "batch_size": batch_size, "seconds": round(time.time() - started, 1),
                    "device": str(device), "git_commit": commit, "seed": args.seed, "ema_decay": 0.999,
                    "torch": torch.__version__},
    }
    models.save_artifact(ema, manifest, out_dir)
    print(f"wrote {out_dir}")
    return out_dir


def report(ema: UNet, held_out: torch.Tensor, step: int, samples_dir: Path, weights_root: Path,
           device: torch.device) -> None:
    ema.eval()
    val_loss = held_out_loss(ema, held_out, device)
    images = samples(ema, 100, seed=1, steps=25, device=device)
    grid(images.squeeze(1).numpy(), columns=10).save(samples_dir / f"step-{step}.png")
    quality = judged(images, weights_root)
    print(f"\n{NAME} step {step}: held-out loss {val_loss:.5f}; confident {quality['confident_share']:.2f}, "
          f"{quality['digits_in_first_100']} digits", flush=True)
