"""Recipe: ``mnist-autoencoder``, a convolutional autoencoder whose reconstruction error flags anomalies.

Trains on MNIST train digits except the last 6,000, which are held out as normal validation data:
the threshold is a high percentile of their scores. Reports, on the official test splits, the
AUROC of MNIST digits (normal) against Fashion-MNIST images (anomalies) and both flag rates.
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
from models.imaging import grid
from training import common
from training.data import load_image_split
from training.evaluation import auroc
from training.image_classifier import to_pixels

NAME = "mnist-autoencoder"
VALIDATION = 6000
PERCENTILE = 99.0


@torch.no_grad()
def scores(module: torch.nn.Module, pixels: torch.Tensor, device: torch.device) -> np.ndarray:
    module.eval()
    out = [module.score(batch.to(device), module(batch.to(device))).cpu() for batch in pixels.split(1000)]
    return torch.cat(out).numpy()


def train(_name: str, args: Any) -> Path | None:
    device, _ctx, commit = common.start_run(args)
    train_split = load_image_split("mnist", "train")
    pixels = to_pixels(train_split.images)
    fit, validation = pixels[:-VALIDATION], pixels[-VALIDATION:]
    if args.limit:
        fit = fit[: args.limit]
    module = models.build("conv-autoencoder", {}).to(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=2e-3)
    epochs = args.epochs or 8
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * ((len(fit) + 127) // 128))
    generator = torch.Generator().manual_seed(args.seed)
    samples_dir = Path(args.checkpoint_dir or ".checkpoints") / "samples" / NAME
    samples_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    for epoch in range(epochs):
        module.train()
        for index in tqdm(torch.randperm(len(fit), generator=generator).split(128), desc=f"{NAME} epoch {epoch + 1}"):
            batch = fit[index].to(device)
            loss = F.mse_loss(module(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        with torch.no_grad():
            module.eval()
            shown = validation[:32].to(device)
            pair = torch.cat([shown, module(shown)]).squeeze(1).cpu().numpy()  # originals, then reconstructions
            grid(pair, columns=16).save(samples_dir / f"epoch-{epoch + 1}.png")
        print(f"{NAME} epoch {epoch + 1}: train loss {loss.item():.5f}", flush=True)
    threshold = float(np.percentile(scores(module, validation, device), PERCENTILE))
    limit = args.test_limit or None
    normal = scores(module, to_pixels(load_image_split("mnist", "test").images[:limit]), device)
    anomalies = scores(module, to_pixels(load_image_split("fashion-mnist", "test").images[:limit]), device)
    metrics = {"auroc": round(auroc(normal, anomalies), 4),
               "normal_flagged": round(float((normal > threshold).mean()), 4),
               "anomalies_flagged": round(float((anomalies > threshold).mean()), 4)}
    print(f"{NAME}: {metrics} at threshold {threshold:.5f}")
    version, out_dir = common.next_version_dir(Path(args.out), NAME)
    manifest = {
        "name": NAME, "version": version, "task": "anomaly-detection", "architecture": "conv-autoencoder",
        "config": models.config_to_dict(module.config), "labels": None,  # type: ignore[arg-type]
        "threshold": threshold,
        "preprocessing": {"input": "pixels", "shape": [1, 28, 28], "range": [0.0, 1.0], "grayscale": True},
        "dataset": {"name": "mnist", "train_size": len(fit), "holdout_start": len(pixels) - VALIDATION,
                    "threshold": f"{PERCENTILE:g}th percentile of the scores of the {VALIDATION} held-out train digits",
                    "test": "official MNIST t10k (normal) vs Fashion-MNIST t10k (anomalies)"},
        "metrics": metrics,
        "trained": {"epochs": epochs, "seconds": round(time.time() - started, 1), "device": str(device),
                    "git_commit": commit, "seed": args.seed, "torch": torch.__version__},
    }
    models.save_artifact(module.cpu(), manifest, out_dir)
    print(f"wrote {out_dir}")
    return out_dir
