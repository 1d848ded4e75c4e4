"""Recipe: character language models on tiny shakespeare (``shakespeare-lstm``, ``shakespeare-gpt``).

The first 90% of the text trains, the last 10% is held out; ``val_loss`` is the mean cross-entropy
in nats per character over the whole held-out span (non-overlapping windows). Runs are bounded by
steps and by wall-clock minutes, evaluate every ``eval_every`` steps, keep the best checkpoint, and
resume from ``--checkpoint-dir``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

import models
from training import common
from training.data import load_shakespeare


@dataclass(frozen=True)
class LMRecipe:
    name: str
    architecture: str
    config: dict[str, Any]
    steps: int
    context: int  # training window
    batch_size: int
    lr: float
    eval_every: int
    minutes: float  # wall-clock budget for a run (resumed runs continue the budget)


RECIPES = {
    "shakespeare-gpt": LMRecipe("shakespeare-gpt", "gpt", {"block_size": 128, "dim": 192, "heads": 6, "layers": 4,
                                                           "dropout": 0.1},
                                steps=2500, context=128, batch_size=32, lr=1.5e-3, eval_every=250, minutes=45),
    "shakespeare-lstm": LMRecipe("shakespeare-lstm", "char-lstm", {"embed_dim": 64, "hidden": 384, "layers": 2,
                                                                   "dropout": 0.2},
                                 steps=2400, context=128, batch_size=32, lr=3e-3, eval_every=200, minutes=45),
}


def logits_of(module: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return module(ids)[0]  # both families return (logits, cache/state)


@torch.no_grad()
def held_out_loss(module: nn.Module, data: torch.Tensor, context: int, device: torch.device) -> float:
    """Mean nats per character over all of ``data``, in non-overlapping windows of ``context``."""
    module.eval()
    usable = (len(data) - 1) // context * context
    inputs = data[:usable].view(-1, context)
    targets = data[1:usable + 1].view(-1, context)
    total = 0.0
    for start in range(0, len(inputs), 64):
        logits = logits_of(module, inputs[start:start + 64].to(device))
        total += F.cross_entropy(logits.flatten(0, 1), targets[start:start + 64].flatten().to(device),
                                 reduction="sum").item()
    module.train()
    return total / targets.numel()


def train(recipe_name: str, args: Any) -> Path | None:
    recipe = RECIPES[recipe_name]
    device, ctx, commit = common.start_run(args)
    if ctx.enabled:
        raise SystemExit("the language-model recipes run in one process")
    text = load_shakespeare()
    vocab = sorted(set(text))
    index = {char: i for i, char in enumerate(vocab)}
    encoded = torch.tensor([index[char] for char in text], dtype=torch.long)
    split = int(len(encoded) * 0.9)
    train_data, held_out = encoded[:split], encoded[split:]
    if args.limit:
        train_data, held_out = train_data[: args.limit], held_out[: max(args.limit // 9, recipe.context + 2)]
    module = models.build(recipe.architecture, {**recipe.config, "vocab_size": len(vocab)}).to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=recipe.lr, weight_decay=0.1 if recipe.architecture == "gpt"
                                  else 0.0, betas=(0.9, 0.99))
    steps = args.epochs or recipe.steps  # --epochs means steps for these recipes
    warmup = min(200, steps // 10)

    def lr_factor(step: int) -> float:
        """Warm-up, then a cosine to 10% that follows whichever runs out first, the steps or the minutes,
        so a run cut short by its time budget still ends with a small learning rate."""
        if step < warmup:
            return (step + 1) / warmup
        by_steps = (step - warmup) / max(1, steps - warmup)
        by_time = (time.time() - started) / budget if step > warmup else 0.0
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(by_steps, by_time))))

    checkpoint = common.Checkpoint(Path(args.checkpoint_dir) / recipe.name) if args.checkpoint_dir else None
    step, elapsed, best_loss, best_state = 0, 0.0, float("inf"), None
    started, budget = time.time(), (args.max_minutes or recipe.minutes) * 60
    if checkpoint and checkpoint.exists():
        meta = checkpoint.load(module, optimizer)
        step, elapsed, best_loss = meta["step"], meta["seconds"], meta["best_loss"]
        print(f"resumed {recipe.name} at step {step} (best held-out loss {best_loss:.4f})")
    started = time.time() - elapsed
    budget = (args.max_minutes or recipe.minutes) * 60
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor, last_epoch=step - 1)
    generator = torch.Generator().manual_seed(args.seed + step)
    bar = tqdm(total=steps, initial=step, desc=recipe.name)
    module.train()
    while step < steps and time.time() - started < budget:
        starts = torch.randint(0, len(train_data) - recipe.context - 1, (recipe.batch_size,), generator=generator)
        x = torch.stack([train_data[s:s + recipe.context] for s in starts]).to(device)
        y = torch.stack([train_data[s + 1:s + recipe.context + 1] for s in starts]).to(device)
        loss = F.cross_entropy(logits_of(module, x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % recipe.eval_every == 0 or step == steps:
            val = held_out_loss(module, held_out, recipe.context, device)
            if val < best_loss:
                best_loss, best_state = val, copy.deepcopy(module.state_dict())
            print(f"\n{recipe.name} step {step}: held-out loss {val:.4f} (best {best_loss:.4f})", flush=True)
            if checkpoint:
                checkpoint.save(module, optimizer, {"step": step, "seconds": time.time() - started,
                                                    "best_loss": best_loss})
    bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    val_loss = held_out_loss(module, held_out, recipe.context, device)
    version, out_dir = common.next_version_dir(Path(args.out), recipe.name)
    manifest = {
        "name": recipe.name, "version": version, "task": "text-generation", "architecture": recipe.architecture,
        "config": models.config_to_dict(module.config), "labels": None,  # type: ignore[arg-type]
        "vocab": vocab,
        "preprocessing": {"input": "text", "unit": "character", "unknown": "characters outside the vocabulary "
                          "are rejected with a 400"},
        "dataset": {"name": "tinyshakespeare", "characters": len(encoded), "holdout_start": split,
                    "held_out_characters": len(held_out)},
        "metrics": {"val_loss": round(val_loss, 4)},
        "trained": {"steps": step, "seconds": round(time.time() - started, 1), "device": str(device),
                    "git_commit": commit, "seed": args.seed, "batch_size": recipe.batch_size,
                    "context": recipe.context, "torch": torch.__version__},
    }
    models.save_artifact(module, manifest, out_dir)
    print(f"wrote {out_dir} (held-out loss {val_loss:.4f} nats/char)")
    return out_dir
