"""The Docker image as the README's "Docker" section builds and runs it: `make docker-build` (CPU variant), then
the container with a read-only root and a tmpfs /tmp, as the image's user 10001, to ready, healthy and one
prediction of a real MNIST test digit; the container is removed after. `make test-docker` (CI runs it).

It skips, saying what is missing, without a Docker daemon, a base image, a torch CPU wheel or an index the build
needs. Where Docker Hub or the PyTorch index cannot be reached (README "Docker", building offline):

    SERVE_TEST_BASE_IMAGE    a local base image (default python:3.11-slim, pulled if absent)
    SERVE_TEST_TORCH_WHEEL   the torch CPU wheel (default: one in docker/wheels/ or pip's find-links; else the
                             PyTorch CPU index)
    SERVE_TEST_CA_BUNDLE     a CA file for pip in the build (default: pip's own `cert` setting, if any)
    SERVE_TEST_OFFLINE=1     no index at all: every wheel from docker/wheels/ (make docker-wheels)

The image is tagged serve:test and kept, so that a second run builds from the cache.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import UNAVAILABLE_IN_CI, free_port
from training.data import data_root, load_image_split

REPO = Path(__file__).resolve().parents[2]
TAG = "serve:test"
DEFAULT_BASE = "python:3.11-slim"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu/torch/"
PYPI = "https://pypi.org/simple/pip/"
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def pip_setting(name: str) -> list[str]:
    """A pip setting as pip itself sees it here: PIP_<NAME>, else `pip config get global.<name>`."""
    value = os.environ.get(f"PIP_{name.upper().replace('-', '_')}")
    if value is None:
        result = subprocess.run([str(REPO / ".venv" / "bin" / "pip"), "config", "get", f"global.{name}"],
                                capture_output=True, text=True, timeout=30, check=False)
        value = result.stdout.strip() if result.returncode == 0 else ""
    return value.split()


def reachable(url: str, ca: str | None) -> bool:
    try:
        verify = ssl.create_default_context(cafile=ca) if ca else True
        return httpx.get(url, timeout=15, verify=verify).status_code < 500
    except httpx.HTTPError:
        return False


def torch_version() -> str:
    match = re.search(r"^torch==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    assert match, "constraints.txt pins no torch"
    return match.group(1)


def find_torch_wheel() -> Path | None:
    """The torch CPU wheel of the locked version: SERVE_TEST_TORCH_WHEEL, docker/wheels/ or pip's find-links."""
    given = os.environ.get("SERVE_TEST_TORCH_WHEEL")
    if given:
        if not Path(given).is_file():
            pytest.skip(f"SERVE_TEST_TORCH_WHEEL={given} is not a file")
        return Path(given)
    pattern = f"torch-{torch_version()}+cpu-cp311-*.whl"
    for folder in [REPO / "docker" / "wheels", *map(Path, pip_setting("find-links"))]:
        if folder.is_dir():
            found = sorted(folder.glob(pattern))
            if found:
                return found[0]
    return None


def daemon_or_skip() -> None:
    if shutil.which("docker") is None:
        pytest.skip(f"{UNAVAILABLE_IN_CI}no docker command: install Docker (e.g. apt-get install docker.io) and "
                    "start its daemon")
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("`docker info` did not answer within 30 s: the Docker daemon is not responding")
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        pytest.skip(f"{UNAVAILABLE_IN_CI}no Docker daemon answers `docker info` ({reason}): start dockerd to run "
                    "this test")


def base_image_or_skip() -> str:
    image = os.environ.get("SERVE_TEST_BASE_IMAGE") or DEFAULT_BASE
    if docker("image", "inspect", image, check=False).returncode == 0:
        return image
    if os.environ.get("SERVE_TEST_BASE_IMAGE"):
        pytest.skip(f"SERVE_TEST_BASE_IMAGE={image} is not an image here (docker images)")
    try:
        pulled = docker("pull", image, timeout=300, check=False)
        reason = (pulled.stderr.strip().splitlines() or ["?"])[-1] if pulled.returncode else ""
    except subprocess.TimeoutExpired:
        reason = "no answer within 300 s"
    if reason:
        pytest.skip(f"no base image: {image} is not here and could not be pulled ({reason}); set "
                    "SERVE_TEST_BASE_IMAGE to a local image with python3 and python3-venv (README \"Docker\")")
    return image


def build_options_or_skip(base: str) -> list[str]:
    """`make docker-build` options for a CPU build that can succeed here, or a skip naming what is missing."""
    options = ["VARIANT=cpu", f"TAG={TAG}", f"BASE_IMAGE={base}", "NETWORK=host"]
    if os.environ.get("SERVE_TEST_OFFLINE") == "1":
        if not list((REPO / "docker" / "wheels").glob("*.whl")):
            pytest.skip("SERVE_TEST_OFFLINE=1 but docker/wheels/ holds no wheel: run make docker-wheels first")
        return [*options, "OFFLINE=1"]
    ca = os.environ.get("SERVE_TEST_CA_BUNDLE") or next(iter(pip_setting("cert")), None)
    if ca:
        if not Path(ca).is_file():
            pytest.skip(f"the CA bundle {ca} is not a file (SERVE_TEST_CA_BUNDLE or pip's cert setting)")
        options.append(f"CA_BUNDLE={ca}")
    if not reachable(PYPI, ca):
        pytest.skip("PyPI cannot be reached for the build's dependencies: fill docker/wheels/ with "
                    "`make docker-wheels` where it can, then set SERVE_TEST_OFFLINE=1")
    wheel = find_torch_wheel()
    if wheel is not None:
        options.append(f"TORCH_WHEEL={wheel}")
    elif not reachable(TORCH_CPU_INDEX, ca):
        pytest.skip(f"no torch {torch_version()} CPU wheel (not in docker/wheels/ or pip's find-links, "
                    "SERVE_TEST_TORCH_WHEEL unset) and the PyTorch CPU index cannot be reached")
    return options


def mnist_digit() -> tuple[bytes, int]:
    """The first MNIST test image (a 7) as a PNG, and its label."""
    split = load_image_split("mnist", "test")
    buffer = io.BytesIO()
    Image.fromarray(split.images[0], "L").save(buffer, format="PNG")
    return buffer.getvalue(), int(split.labels[0])


def wait_until(what: str, check: Callable[[], bool], timeout: float, name: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        state = docker("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
        if state not in ("created", "running"):
            logs = docker("logs", "--tail", "40", name, check=False)
            raise AssertionError(f"the container is {state} before {what}:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.25)
    logs = docker("logs", "--tail", "40", name, check=False)
    raise AssertionError(f"not {what} within {timeout:.0f} s:\n{logs.stdout}{logs.stderr}")


def test_the_image_builds_runs_read_only_and_predicts(tmp_path: Path) -> None:
    daemon_or_skip()
    if not (data_root() / "mnist").is_dir():
        pytest.skip(f"no MNIST test set under {data_root()} (the shared datasets)")
    png, label = mnist_digit()
    base = base_image_or_skip()
    options = build_options_or_skip(base)
    added = [path for path in (REPO / "docker" / "host-ca.crt",) if not path.exists()]
    wheel = next((option.split("=", 1)[1] for option in options if option.startswith("TORCH_WHEEL=")), None)
    if wheel and not (REPO / "docker" / "wheels" / Path(wheel).name).exists():
        added.append(REPO / "docker" / "wheels" / Path(wheel).name)

    log = tmp_path / "build.log"
    started = time.monotonic()
    try:
        with log.open("w") as out:
            build = subprocess.run(["make", "--no-print-directory", "docker-build", *options], cwd=REPO,
                                   stdout=out, stderr=subprocess.STDOUT, timeout=1500, check=False)
    finally:
        for path in added:  # what the build copied into the working tree for itself
            path.unlink(missing_ok=True)
    build_s = time.monotonic() - started
    tail = "\n".join(log.read_text().splitlines()[-40:])
    assert build.returncode == 0, f"make docker-build {' '.join(options)} failed:\n{tail}"

    image = docker("image", "inspect", "--format", "{{.Size}} {{.Config.User}} {{json .Config.Healthcheck.Test}}",
                   TAG).stdout.split(" ", 2)
    size_mb, user, healthcheck = int(image[0]) / 1e6, image[1], image[2]
    assert user == "10001:10001", f"the image runs as {user!r}, not 10001"
    assert "healthcheck.py" in healthcheck

    # Publish the port on the loopback where the daemon has its bridge; else share the host's network.
    port = free_port()
    if docker("network", "inspect", "bridge", check=False).returncode == 0:
        network = ["-p", f"127.0.0.1:{port}:8000"]
    else:
        network = ["--network", "host", "-e", f"SERVE_PORT={port}", "-e", "SERVE_HOST=127.0.0.1"]
    name = f"serve-test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    docker("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", *network, TAG)
    base_url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"{base_url}/v2/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until("ready", ready, 300, name)
        ready_s = time.monotonic() - started
        uid = docker("exec", name, "id", "-u").stdout.strip()
        assert uid == "10001", f"the server runs as uid {uid}"
        # The user's own home is writable but for the read-only root; /tmp (the tmpfs) is writable.
        refused = docker("exec", name, "touch", "/home/serve/written", check=False)
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused.stderr
        docker("exec", name, "touch", "/tmp/written")

        response = httpx.post(f"{base_url}/v1/models/mnist-cnn/predict", content=png,
                              headers={"content-type": "image/png"}, timeout=30)
        assert response.status_code == 200, response.text
        prediction = response.json()["predictions"][0]
        assert prediction["label"] == str(label), prediction

        def healthy() -> bool:
            status = docker("inspect", "--format", "{{.State.Health.Status}}", name, check=False).stdout.strip()
            return status == "healthy"

        wait_until("healthy (the image's HEALTHCHECK)", healthy, 90, name)
    finally:
        docker("rm", "-f", name, check=False)
    print(f"\ntest-docker: make docker-build {' '.join(options)}: {build_s:.0f} s, {TAG} {size_mb:.0f} MB; "
          f"ready {ready_s:.1f} s after docker run (read-only root, uid {uid}); MNIST test digit 0 "
          f"(label {label}) -> {prediction['label']} ({prediction['score']:.4f}); healthy")
