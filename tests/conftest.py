"""Shared fixtures: tiny random-init artifacts in tmp_path, apps on them, a real uvicorn server."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

import models
from service.frontend.main import create_app
from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIGS = {
    "cnn": {"widths": [4, 8], "hidden": 16},
    "resnet": {"widths": [4, 8], "blocks_per_stage": 1},
}


def make_artifact(root: Path, name: str = "tiny-cnn", version: int = 1, architecture: str = "cnn",
                  seed: int = 0) -> Path:
    """A random-init image classifier saved exactly as training saves one."""
    torch.manual_seed(seed)
    module = models.build(architecture, TINY_CONFIGS[architecture])
    manifest = {
        "name": name, "version": version, "task": "image-classification", "architecture": architecture,
        "config": models.config_to_dict(module.config), "labels": [f"class-{i}" for i in range(10)],
        "preprocessing": {"input": "pixels", "shape": [1, 28, 28], "range": [0.0, 1.0]},
        "dataset": {"name": "random"}, "metrics": {"test_accuracy": 0.1},
        "trained": {"epochs": 0, "seconds": 0, "device": "cpu", "git_commit": None, "seed": seed},
    }
    return models.save_artifact(module.eval(), manifest, root / name / str(version))


SENTENCES = ["a gripping , funny and moving film", "the plot is dull and the acting is worse",
             "not bad at all", "i loved every minute of it", "a waste of time"]
TEXT_CONFIGS = {
    "tiny-lstm": ("rnn", {"cell": "lstm", "embed_dim": 8, "hidden": 8}, "text-classification"),
    "tiny-gru": ("rnn", {"cell": "gru", "embed_dim": 8, "hidden": 8}, "text-classification"),
    "tiny-transformer": ("transformer", {"dim": 16, "heads": 2, "layers": 1, "ff_dim": 32}, "text-classification"),
    "tiny-embedder": ("transformer", {"dim": 16, "heads": 2, "layers": 1, "ff_dim": 32, "num_classes": 0,
                                      "normalize": True, "positions": "learned", "norm_first": False,
                                      "activation": "gelu"}, "text-embedding"),
}
TINY_MAX_TOKENS = 12


def make_text_artifact(root: Path, name: str, seed: int = 0) -> Path:
    """A random-init text model with a word tokenizer built from SENTENCES, saved as training saves one."""
    from models.text import build_word_tokenizer

    architecture, config, task = TEXT_CONFIGS[name]
    tokenizer = build_word_tokenizer(SENTENCES)
    torch.manual_seed(seed)
    module = models.build(architecture, {**config, "vocab_size": tokenizer.get_vocab_size(), "max_len": 16})
    manifest = {
        "name": name, "version": 1, "task": task, "architecture": architecture,
        "config": models.config_to_dict(module.config),
        "labels": ["negative", "positive"] if task == "text-classification" else None,
        "tokenizer": {"kind": "word-level"},
        "preprocessing": {"input": "text", "max_tokens": TINY_MAX_TOKENS, "truncation": "right"},
        "dataset": {"name": "random"}, "metrics": {"dev_accuracy": 0.5} if task == "text-classification" else {},
        "trained": {"epochs": 0, "seconds": 0, "device": "cpu", "git_commit": None, "seed": seed},
    }
    return models.save_artifact(module.eval(), manifest, root / name / "1", tokenizer_json=tokenizer.to_str())


def make_forecaster_artifact(root: Path, name: str = "tiny-forecaster", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    module = models.build("lstm-forecaster", {"hidden": 8, "layers": 1, "horizon": 4, "window": 16,
                                              "min_history": 6, "mean": 50.0, "std": 20.0})
    manifest = {
        "name": name, "version": 1, "task": "forecasting", "architecture": "lstm-forecaster",
        "config": models.config_to_dict(module.config), "labels": None,
        "preprocessing": {"input": "series", "max_horizon": 10}, "dataset": {"name": "random", "holdout_start": 0},
        "metrics": {"mae": 1.0, "naive_mae": 2.0},
        "trained": {"epochs": 0, "seconds": 0, "device": "cpu", "git_commit": None, "seed": seed},
    }
    return models.save_artifact(module.eval(), manifest, root / name / "1")


LM_VOCAB = sorted(set("\n abcdefghijklmnopqrstuvwxyz,.!?'ABCDEFGHIJKLMNOPQRSTUVWXYZ:;"))
LM_CONFIGS = {"tiny-gpt": ("gpt", {"block_size": 24, "dim": 16, "heads": 2, "layers": 2, "dropout": 0.0}),
              "tiny-char-lstm": ("char-lstm", {"embed_dim": 8, "hidden": 16, "layers": 2, "dropout": 0.0})}


def make_lm_artifact(root: Path, name: str, seed: int = 0) -> Path:
    architecture, config = LM_CONFIGS[name]
    torch.manual_seed(seed)
    module = models.build(architecture, {**config, "vocab_size": len(LM_VOCAB)})
    manifest = {
        "name": name, "version": 1, "task": "text-generation", "architecture": architecture,
        "config": models.config_to_dict(module.config), "labels": None, "vocab": LM_VOCAB,
        "preprocessing": {"input": "text"}, "dataset": {"name": "random"}, "metrics": {"val_loss": 4.0},
        "trained": {"steps": 0, "seconds": 0, "device": "cpu", "git_commit": None, "seed": seed},
    }
    return models.save_artifact(module.eval(), manifest, root / name / "1")


def make_autoencoder_artifact(root: Path, name: str = "tiny-autoencoder", threshold: float = 0.05) -> Path:
    torch.manual_seed(0)
    module = models.build("conv-autoencoder", {"channels": [4, 8], "latent": 8})
    manifest = {
        "name": name, "version": 1, "task": "anomaly-detection", "architecture": "conv-autoencoder",
        "config": models.config_to_dict(module.config), "labels": None, "threshold": threshold,
        "preprocessing": {"input": "pixels", "shape": [1, 28, 28], "range": [0.0, 1.0]},
        "dataset": {"name": "random"}, "metrics": {"auroc": 0.5},
        "trained": {"epochs": 0, "seconds": 0, "device": "cpu", "git_commit": None, "seed": 0},
    }
    return models.save_artifact(module.eval(), manifest, root / name / "1")


def make_generator_artifact(root: Path, name: str = "tiny-cgan") -> Path:
    torch.manual_seed(0)
    module = models.build("dcgan-generator", {"latent": 8, "width": 4})
    manifest = {
        "name": name, "version": 1, "task": "image-generation", "architecture": "dcgan-generator",
        "config": models.config_to_dict(module.config), "labels": [str(d) for d in range(10)], "conditional": True,
        "preprocessing": {"output": "pixels"}, "dataset": {"name": "random"}, "metrics": {"label_agreement": 0.1},
        "trained": {"epochs": 0, "seconds": 0, "device": "cpu", "git_commit": None, "seed": 0},
    }
    return models.save_artifact(module.eval(), manifest, root / name / "1")


def make_diffusion_artifact(root: Path, name: str = "tiny-ddpm", serving: dict[str, Any] | None = None) -> Path:
    torch.manual_seed(0)
    module = models.build("ddpm-unet", {"channels": [8, 8, 8], "time_dim": 16, "groups": 4})
    manifest = {
        "name": name, "version": 1, "task": "image-generation", "architecture": "ddpm-unet",
        "config": models.config_to_dict(module.config), "labels": None, "conditional": False,
        "sampling": {"sampler": "ddim", "default_steps": 6, "max_steps": 1000},
        "serving": serving if serving is not None else {"max_batch_size": 4, "timeout_ms": 20_000},
        "preprocessing": {"output": "pixels"}, "dataset": {"name": "random"}, "metrics": {"confident_share": 0.1},
        "trained": {"steps": 0, "seconds": 0, "device": "cpu", "git_commit": None, "seed": 0},
    }
    return models.save_artifact(module.eval(), manifest, root / name / "1")


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    root = tmp_path / "weights"
    make_artifact(root, "tiny-cnn", 1, "cnn", seed=0)
    make_artifact(root, "tiny-cnn", 2, "cnn", seed=1)
    make_artifact(root, "tiny-resnet", 1, "resnet", seed=2)
    for seed, name in enumerate(TEXT_CONFIGS):
        make_text_artifact(root, name, seed)
    make_forecaster_artifact(root)
    for seed, name in enumerate(LM_CONFIGS):
        make_lm_artifact(root, name, seed)
    make_autoencoder_artifact(root)
    make_generator_artifact(root)
    make_diffusion_artifact(root)
    return root


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready after {timeout} s: {client.get('/v2/health/ready').json()}")


@pytest.fixture
def make_client(weights_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """Build a TestClient (lifespan running, models ready) with settings overrides."""
    clients: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        overrides.setdefault("prepare", False)  # tracing and timing every tiny model costs ~3 s a client;
        # tests/service/test_prepare.py covers it, and the committed weights' smoke tests run prepared
        settings = Settings(weights_dir=overrides.pop("weights_dir", weights_dir), device="cpu",
                            torch_threads=1, **overrides)
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def png_bytes(array: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def digit_png() -> bytes:
    rng = np.random.default_rng(0)
    image = np.zeros((28, 28), dtype=np.uint8)
    image[6:22, 12:16] = 255  # a "1"
    image += rng.integers(0, 20, size=image.shape, dtype=np.uint8)
    return png_bytes(image)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """The app under a real uvicorn in a thread: for real clients (tritonclient, raw sockets)."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.port = settings.port
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("live server did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture
def live_server(weights_dir: Path) -> Iterator[LiveServer]:
    settings = Settings(weights_dir=weights_dir, device="cpu", torch_threads=1, port=free_port(), prepare=False)
    with LiveServer(settings) as server:
        yield server


# -- skips: fine on a developer's machine, a failure in CI ------------------------------------------------------
# With CI=true, a test that skips because a tool or a data set is missing fails instead: CI installs everything
# the suites need. Only what cannot exist on the CI machine may skip there, and says so with UNAVAILABLE_IN_CI.
UNAVAILABLE_IN_CI = "cannot exist on this machine: "  # the prefix of a skip reason that CI accepts (a GPU, Docker)
SKIP_REPORT_ENV = "CI_SKIP_REPORT"  # a file each run appends its skips to (.ci/run prints it at the end)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def requires_data(*datasets: str) -> pytest.MarkDecorator:
    """Skip where a shared data set is missing (a failure in CI, see above)."""
    from training.data import data_root

    missing = [name for name in datasets if not (data_root() / name).is_dir()]
    return pytest.mark.skipif(bool(missing), reason=f"shared data set(s) {', '.join(missing)} not under "
                                                    f"{data_root()} (set SERVE_DATA_DIR)")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2] if isinstance(longrepr, tuple) else longrepr).removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if in_ci() and not reason.startswith(UNAVAILABLE_IN_CI):
        report.outcome = "failed"
        report.longrepr = f"CI=true: this test skipped where CI must run it: {reason}"
    path = os.environ.get(SKIP_REPORT_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(f"{report.nodeid}: {'FAILED (skip in CI): ' if report.failed else ''}{reason}\n")
