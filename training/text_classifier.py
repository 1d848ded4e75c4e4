"""Recipe: SST-2 sentiment classifiers (BiLSTM, GRU, own Transformer, fine-tuned MiniLM).

Trains on the train split, keeps the checkpoint with the best dev accuracy (these models overfit
after a few epochs), and reports dev and test accuracy in the manifest.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

import models
from models.text import build_word_tokenizer, plain
from training import common
from training.data import TextSplit, load_sst2

LABELS = ["negative", "positive"]


@dataclass(frozen=True)
class TextRecipe:
    name: str
    architecture: str
    config: dict[str, Any]
    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.0
    warmup_fraction: float = 0.0
    max_len: int = 64
    eval_every: int = 0  # steps between dev evaluations; 0 = once per epoch
    base: str | None = None  # an artifact to start from (fine-tuning)
    store_dtype: str | None = None  # e.g. float16 to halve the committed file
    extra: dict[str, Any] = field(default_factory=dict)


RECIPES = {
    "sst2-lstm": TextRecipe("sst2-lstm", "rnn", {"cell": "lstm", "embed_dim": 128, "hidden": 128,
                                                 "bidirectional": True, "dropout": 0.4}, epochs=4, lr=2e-3),
    "sst2-gru": TextRecipe("sst2-gru", "rnn", {"cell": "gru", "embed_dim": 128, "hidden": 128,
                                               "bidirectional": True, "dropout": 0.4}, epochs=4, lr=2e-3),
    "sst2-transformer": TextRecipe("sst2-transformer", "transformer",
                                   {"dim": 128, "heads": 4, "layers": 2, "ff_dim": 256, "dropout": 0.2,
                                    "positions": "sinusoidal", "norm_first": True},
                                   epochs=4, lr=5e-4, weight_decay=0.01, warmup_fraction=0.1),
    "sst2-minilm": TextRecipe("sst2-minilm", "transformer", {}, epochs=1, lr=4e-5, batch_size=32,
                              weight_decay=0.01, warmup_fraction=0.06, eval_every=150, base="minilm",
                              store_dtype="float16"),
}


def encode(tokenizer: Any, texts: list[str], max_len: int) -> list[list[int]]:
    """Token ids, truncated by the tokenizer itself (so special tokens such as [SEP] survive)."""
    tokenizer.enable_truncation(max_len)
    ids = [encoding.ids or [1] for encoding in tokenizer.encode_batch(texts)]
    tokenizer.no_truncation()
    return ids


def pad(batch: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(ids) for ids in batch])
    ids = torch.full((len(batch), int(lengths.max())), pad_id, dtype=torch.long)
    for row, sequence in enumerate(batch):
        ids[row, : len(sequence)] = torch.tensor(sequence)
    return ids, lengths


def length_bucketed_batches(lengths: list[int], batch_size: int, rng: np.random.Generator,
                            indices: np.ndarray | None = None) -> list[np.ndarray]:
    """Shuffle, sort by length inside chunks of 50 batches, cut into batches, shuffle the batches."""
    order = rng.permutation(len(lengths)) if indices is None else rng.permutation(indices)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort([lengths[i] for i in part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)  # type: ignore[arg-type]
    return batches


@torch.no_grad()
def accuracy(module: nn.Module, encoded: list[list[int]], labels: np.ndarray, device: torch.device) -> float:
    module.eval()
    order = np.argsort([len(ids) for ids in encoded])
    predicted = np.zeros(len(encoded), dtype=np.int64)
    for start in range(0, len(order), 256):
        chunk = order[start:start + 256]
        ids, lengths = pad([encoded[i] for i in chunk])
        predicted[chunk] = module(ids.to(device), lengths.to(device)).argmax(-1).cpu().numpy()
    return float((predicted == labels).mean())


def build_model(recipe: TextRecipe, train: TextSplit, weights_root: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """A fresh model with a vocabulary from the training texts, or the base artifact with a new head."""
    if recipe.base is None:
        tokenizer = build_word_tokenizer(train.texts)
        config = {**recipe.config, "vocab_size": tokenizer.get_vocab_size(), "max_len": recipe.max_len,
                  "num_classes": len(LABELS)}
        return models.build(recipe.architecture, config), tokenizer, {"kind": "word-level", "max_len": recipe.max_len}
    base_dir = common.latest_version_dir(weights_root, recipe.base)
    base_module, base_manifest = models.load(base_dir)
    tokenizer = models.load_tokenizer(base_dir, base_manifest)
    config = {**base_manifest["config"], "num_classes": len(LABELS), "normalize": False,
              "max_len": base_manifest["config"]["max_len"]}
    module = models.build(recipe.architecture, config)
    missing, _ = module.load_state_dict(base_module.state_dict(), strict=False)
    assert set(missing) == {"head.weight", "head.bias"}, missing
    tokenizer_info = {**base_manifest["tokenizer"], "base": f"{recipe.base}/{base_manifest['version']}"}
    tokenizer_info.pop("sha256", None)
    return module, tokenizer, tokenizer_info


def train(recipe_name: str, args: Any) -> Path | None:
    recipe = RECIPES[recipe_name]
    device, ctx, commit = common.start_run(args)
    epochs = args.epochs or recipe.epochs
    batch_size = args.batch_size or recipe.batch_size

    train_split, dev, test = load_sst2("train"), load_sst2("dev"), load_sst2("test")
    if args.limit:
        train_split = TextSplit(train_split.texts[: args.limit], train_split.labels[: args.limit])
    if args.test_limit:
        dev = TextSplit(dev.texts[: args.test_limit], dev.labels[: args.test_limit])
        test = TextSplit(test.texts[: args.test_limit], test.labels[: args.test_limit])
    module, tokenizer, tokenizer_info = build_model(recipe, train_split, Path(args.out))
    max_len = module.config.max_len if recipe.base else recipe.max_len  # type: ignore[union-attr]
    max_len = min(max_len, recipe.max_len) if recipe.base else max_len
    train_ids = encode(tokenizer, train_split.texts, max_len)
    dev_ids, test_ids = encode(tokenizer, dev.texts, max_len), encode(tokenizer, test.texts, max_len)
    module = module.to(device)
    model = common.wrap_ddp(module, device, ctx)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    lengths = [len(ids) for ids in train_ids]
    shard = np.arange(ctx.rank, len(train_ids), ctx.world_size) if ctx.enabled else None
    steps_per_epoch = len(length_bucketed_batches(lengths, batch_size, np.random.default_rng(0), shard))
    total_steps = epochs * steps_per_epoch
    warmup = int(recipe.warmup_fraction * total_steps)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup)) if recipe.warmup_fraction else 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    checkpoint = common.Checkpoint(Path(args.checkpoint_dir) / recipe.name) if args.checkpoint_dir else None
    step, start_epoch, elapsed, best_dev, best_state = 0, 0, 0.0, -1.0, None
    if checkpoint and checkpoint.exists():
        meta = checkpoint.load(module, optimizer)
        step, start_epoch, elapsed, best_dev = meta["step"], meta["epoch"], meta["seconds"], meta["best_dev"]
        best_state = copy.deepcopy(module.state_dict()) if meta.get("best_is_current") else None
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor, last_epoch=step - 1)
        print(f"resumed {recipe.name} at step {step} (best dev {best_dev:.4f})")
    started = time.time() - elapsed

    def evaluate_and_keep() -> None:
        nonlocal best_dev, best_state
        dev_accuracy = accuracy(module, dev_ids, dev.labels, device)
        if dev_accuracy > best_dev:
            best_dev, best_state = dev_accuracy, copy.deepcopy(module.state_dict())
        print(f"{recipe.name} step {step}: dev accuracy {dev_accuracy:.4f} (best {best_dev:.4f})", flush=True)
        if checkpoint:
            best_is_current = best_state is not None and dev_accuracy == best_dev
            checkpoint.save(module, optimizer, {"step": step, "epoch": step // steps_per_epoch,
                                                "seconds": time.time() - started, "best_dev": best_dev,
                                                "best_is_current": best_is_current})
        module.train()

    for epoch in range(start_epoch, epochs):
        epoch_rng = np.random.default_rng(args.seed + epoch)
        batches = length_bucketed_batches(lengths, batch_size, epoch_rng, shard)
        skip = step - epoch * steps_per_epoch  # resumed mid-epoch: the same batches, the done ones skipped
        model.train()
        bar = tqdm(batches[skip:], desc=f"{recipe.name} epoch {epoch + 1}/{epochs}", disable=not ctx.is_main)
        for batch in bar:
            ids, lengths_t = pad([train_ids[i] for i in batch])
            logits = model(ids.to(device), lengths_t.to(device))
            loss = F.cross_entropy(logits, torch.from_numpy(train_split.labels[batch]).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if ctx.is_main and recipe.eval_every and step % recipe.eval_every == 0:
                evaluate_and_keep()
        if ctx.is_main and (not recipe.eval_every or step % recipe.eval_every):
            evaluate_and_keep()

    out_dir = None
    if ctx.is_main:
        if best_state is not None:
            module.load_state_dict(best_state)
        store_dtype = getattr(torch, recipe.store_dtype) if recipe.store_dtype else None
        if store_dtype is not None:  # measure what will be served: the weights after the fp16 round trip
            module.load_state_dict({k: v.to(store_dtype).to(v.dtype) if v.is_floating_point() else v
                                    for k, v in module.state_dict().items()})
        dev_accuracy = accuracy(module, dev_ids, dev.labels, device)
        test_accuracy = accuracy(module, test_ids, test.labels, device)
        version, out_dir = common.next_version_dir(Path(args.out), recipe.name)
        manifest = {
            "name": recipe.name, "version": version, "task": "text-classification",
            "architecture": recipe.architecture, "config": models.config_to_dict(module.config),  # type: ignore[arg-type]
            "labels": LABELS,
            "tokenizer": tokenizer_info,
            "preprocessing": {"input": "text", "max_tokens": max_len, "truncation": "right"},
            "dataset": {"name": "sst2", "train_size": len(train_split.texts), "dev_size": len(dev.texts),
                        "test_size": len(test.texts), "selection": "best dev accuracy"},
            "metrics": {"dev_accuracy": round(dev_accuracy, 4), "test_accuracy": round(test_accuracy, 4)},
            "trained": {"epochs": epochs, "steps": step, "seconds": round(time.time() - started, 1),
                        "device": str(device), "world_size": ctx.world_size, "git_commit": commit,
                        "seed": args.seed, "batch_size": batch_size, "torch": torch.__version__,
                        "stored_dtype": recipe.store_dtype or "float32"},
        }
        models.save_artifact(module, manifest, out_dir, tokenizer_json=plain(tokenizer).to_str(), dtype=store_dtype)
        print(f"wrote {out_dir} (dev {dev_accuracy:.4f}, test {test_accuracy:.4f})")
    common.shutdown_distributed(ctx)
    return out_dir


__all__ = ["RECIPES", "train"]
