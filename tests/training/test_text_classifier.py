"""The SST-2 recipes on small slices: artifact with tokenizer, best-dev selection, resume, torchrun/DDP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from tests.conftest import requires_data
from training.__main__ import main
from training.data import load_sst2
from training.text_classifier import accuracy, encode, length_bucketed_batches

SST2 = requires_data("sst2")
REPO = Path(__file__).resolve().parents[2]
SMALL = ["--epochs", "1", "--limit", "400", "--test-limit", "100", "--batch-size", "32", "--threads", "1"]


@pytest.mark.parametrize("name", ["sst2-gru", "sst2-transformer"])
@SST2
def test_cli_writes_a_text_artifact(tmp_path: Path, name: str) -> None:
    main([name, "--out", str(tmp_path), *SMALL])
    path = tmp_path / name / "1"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["task"] == "text-classification" and manifest["labels"] == ["negative", "positive"]
    assert set(manifest["metrics"]) == {"dev_accuracy", "test_accuracy"}
    assert manifest["dataset"]["dev_size"] == 100 and manifest["tokenizer"]["sha256"]
    module, loaded = models.load(path)
    tokenizer = models.load_tokenizer(path, loaded)
    assert tokenizer.get_vocab_size() == module.config.vocab_size  # type: ignore[union-attr]


@SST2
def test_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sst2-lstm", "--out", str(tmp_path / "w"), "--checkpoint-dir", str(tmp_path / "ck"),
            "--limit", "200", "--test-limit", "50", "--batch-size", "32", "--threads", "1"]
    main([*args, "--epochs", "1"])
    main([*args, "--epochs", "2"])
    assert "resumed sst2-lstm at step 7" in capsys.readouterr().out
    assert json.loads((tmp_path / "w" / "sst2-lstm" / "2" / "manifest.json").read_text())["trained"]["steps"] == 14


@SST2
def test_the_best_dev_epoch_is_kept_not_the_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["sst2-lstm", "--out", str(tmp_path), "--epochs", "4", "--limit", "200", "--test-limit", "50",
          "--batch-size", "32", "--threads", "1"])
    dev = [float(found) for found in re.findall(r"dev accuracy (\d\.\d+) \(best", capsys.readouterr().out)]
    assert len(dev) == 4 and dev[-1] < max(dev)  # this seeded run overfits after its second epoch
    path = tmp_path / "sst2-lstm" / "1"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["metrics"]["dev_accuracy"] == max(dev)
    module, loaded = models.load(path)  # and the weights written are the best epoch's: measured again here
    split = load_sst2("dev")
    ids = encode(models.load_tokenizer(path, loaded), split.texts[:50], loaded["preprocessing"]["max_tokens"])
    assert round(accuracy(module, ids, split.labels[:50], torch.device("cpu")), 4) == max(dev)


@SST2
def test_batches_cover_every_example_once() -> None:
    lengths = [len(text.split()) for text in load_sst2("dev").texts]
    batches = length_bucketed_batches(lengths, 32, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))


@SST2
def test_torchrun_ddp(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "training", "sst2-lstm", "--out",
         str(tmp_path), "--device", "cpu", *SMALL],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "sst2-lstm" / "1" / "manifest.json").read_text())["trained"]["world_size"] == 2



def test_checkpoints_of_tied_weights_round_trip(tmp_path: Path) -> None:
    import torch

    from training.common import Checkpoint

    torch.manual_seed(0)
    model = models.build("gpt", {"vocab_size": 20, "block_size": 16, "dim": 8, "heads": 2, "layers": 1})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 20, (2, 8)))[0].sum().backward()
    optimizer.step()
    Checkpoint(tmp_path).save(model, optimizer, {"step": 3})
    restored = models.build("gpt", {"vocab_size": 20, "block_size": 16, "dim": 8, "heads": 2, "layers": 1})
    fresh_optimizer = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    assert Checkpoint(tmp_path).load(restored, fresh_optimizer)["step"] == 3
    assert restored.lm_head.weight is restored.token_embedding.weight
    assert torch.equal(restored.token_embedding.weight, model.token_embedding.weight)
