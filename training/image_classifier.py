"""Recipe: CNN image classifiers on MNIST / Fashion-MNIST, evaluated on the full official test split."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

import models
from training import common
from training.data import load_image_split


@dataclass(frozen=True)
class ImageRecipe:
    name: str
    dataset: str
    architecture: str
    config: dict[str, Any]
    labels: list[str]
    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    max_shift: int = 2  # random translation, in pixels
    max_rotation_deg: float = 0.0
    hflip: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


RECIPES = {
    "mnist-cnn": ImageRecipe(
        name="mnist-cnn", dataset="mnist", architecture="cnn", config={},
        labels=[str(d) for d in range(10)], epochs=8, lr=0.05, max_rotation_deg=10.0,
    ),
    "fashion-cnn": ImageRecipe(
        name="fashion-cnn", dataset="fashion-mnist", architecture="resnet", config={},
        labels=["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
        epochs=20, lr=0.1, label_smoothing=0.1, hflip=True,
    ),
}


def augment(pixels: torch.Tensor, recipe: ImageRecipe, generator: torch.Generator) -> torch.Tensor:
    """Random translation (+ rotation, + horizontal flip) of a batch [N, 1, H, W], on its device."""
    n, _, height, _ = pixels.shape
    rand = lambda *shape: torch.rand(*shape, generator=generator).to(pixels.device)  # noqa: E731
    angle = (rand(n) * 2 - 1) * math.radians(recipe.max_rotation_deg)
    shift = (rand(n, 2) * 2 - 1) * (2 * recipe.max_shift / height)  # grid units: 2 = full width
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    if recipe.hflip:
        flip = torch.where(rand(n) < 0.5, -1.0, 1.0)
        theta[:, :, 0] = theta[:, :, 0] * flip[:, None]
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, align_corners=False, padding_mode="zeros")


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28] in [0, 1], the contract of every image model."""
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


@torch.no_grad()
def evaluate(module: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    module.eval()
    correct = 0
    for start in range(0, len(pixels), 1000):
        logits = module(pixels[start:start + 1000].to(device))
        correct += int((logits.argmax(1).cpu() == labels[start:start + 1000]).sum())
    return correct / len(pixels)


def train(recipe_name: str, args: Any) -> Path | None:
    recipe = RECIPES[recipe_name]
    device, ctx, commit = common.start_run(args)
    epochs = args.epochs or recipe.epochs
    batch_size = args.batch_size or recipe.batch_size

    train_split = load_image_split(recipe.dataset, "train")
    test_split = load_image_split(recipe.dataset, "test")
    if args.limit:
        train_split = type(train_split)(train_split.images[: args.limit], train_split.labels[: args.limit])
    if args.test_limit:
        test_split = type(test_split)(test_split.images[: args.test_limit], test_split.labels[: args.test_limit])
    train_set = TensorDataset(to_pixels(train_split.images), torch.from_numpy(train_split.labels))
    sampler = DistributedSampler(train_set, seed=args.seed) if ctx.enabled else None
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                        drop_last=True, generator=torch.Generator().manual_seed(args.seed))

    module = models.build(recipe.architecture, recipe.config).to(device)
    model = common.wrap_ddp(module, device, ctx)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True,
                                weight_decay=recipe.weight_decay)
    augment_rng = torch.Generator().manual_seed(args.seed + 1 + ctx.rank)
    checkpoint = common.Checkpoint(Path(args.checkpoint_dir) / recipe.name) if args.checkpoint_dir else None
    start_epoch, elapsed = 0, 0.0
    if checkpoint and checkpoint.exists():
        meta = checkpoint.load(module, optimizer)
        start_epoch, elapsed = meta["epoch"], meta["seconds"]
        augment_rng.manual_seed(args.seed + 1 + ctx.rank + 1000 * start_epoch)
        print(f"resumed {recipe.name} after epoch {start_epoch}")
    # Rebuilt from the step count (not restored), so a resumed run may also change --epochs.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.lr, total_steps=max(epochs, start_epoch + 1) * len(loader), pct_start=0.2,
        last_epoch=start_epoch * len(loader) - 1)

    test_pixels, test_labels = to_pixels(test_split.images), torch.from_numpy(test_split.labels)
    started = time.time() - elapsed
    for epoch in range(start_epoch, epochs):
        model.train()
        if sampler is not None:
            sampler.set_epoch(epoch)
        bar = tqdm(loader, desc=f"{recipe.name} epoch {epoch + 1}/{epochs}", disable=not ctx.is_main)
        for pixels, labels in bar:
            pixels, labels = augment(pixels.to(device), recipe, augment_rng), labels.to(device)
            loss = F.cross_entropy(model(pixels), labels, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if ctx.is_main:
            accuracy = evaluate(module, test_pixels, test_labels, device)
            print(f"{recipe.name} epoch {epoch + 1}: test accuracy {accuracy:.4f}", flush=True)
            if checkpoint:
                checkpoint.save(module, optimizer, {"epoch": epoch + 1, "seconds": time.time() - started})

    out_dir = None
    if ctx.is_main:
        accuracy = evaluate(module, test_pixels, test_labels, device)
        version, out_dir = common.next_version_dir(Path(args.out), recipe.name)
        manifest = {
            "name": recipe.name,
            "version": version,
            "task": "image-classification",
            "architecture": recipe.architecture,
            "config": models.config_to_dict(module.config),  # type: ignore[arg-type]
            "labels": recipe.labels,
            "preprocessing": {"input": "pixels", "shape": [1, 28, 28], "range": [0.0, 1.0],
                              "grayscale": True, "invert": False},
            "dataset": {"name": recipe.dataset, "train_size": len(train_set),
                        "test_split": "official t10k", "test_size": len(test_pixels)},
            "metrics": {"test_accuracy": round(accuracy, 4)},
            "trained": {"epochs": epochs, "seconds": round(time.time() - started, 1),
                        "device": str(device), "world_size": ctx.world_size,
                        "git_commit": commit, "seed": args.seed,
                        "batch_size": batch_size, "torch": torch.__version__},
        }
        models.save_artifact(module, manifest, out_dir)
        print(f"wrote {out_dir} (test accuracy {accuracy:.4f})")
    common.shutdown_distributed(ctx)
    return out_dir
