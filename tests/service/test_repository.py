"""The model repository API (Triton's repository extension): an index of every version under the weights
directory with its state, load and unload on request (SERVE_MODEL_CONTROL=explicit), polling of the
directory (poll), version policies, admin keys, and new versions swapped in under traffic with no failed
request."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_artifact
from tests.service.test_processes import Server

ADMIN = {"authorization": "Bearer admin-key"}
PNG = {"content-type": "image/png"}


def corrupt(version_dir: Path) -> None:
    """Weights that no longer match their manifest's hash: the version cannot load."""
    for weights in version_dir.glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)


def states(client) -> dict[str, tuple[str, str]]:  # type: ignore[no-untyped-def]
    response = client.post("/v2/repository/index", headers=ADMIN)
    assert response.status_code == 200, response.text
    return {f"{entry['name']}/{entry['version']}": (entry["state"], entry["reason"]) for entry in response.json()}


def test_the_routes_take_admin_keys_and_are_off_without_them(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(models=["tiny-cnn"], api_keys=["user-key"])
    for path in ("/v2/repository/index", "/v2/repository/models/tiny-cnn/load", "/v2/repository/models/x/unload"):
        response = client.post(path, headers={"authorization": "Bearer user-key"})
        assert response.status_code == 403 and response.json()["type"] == "forbidden"
    client = make_client(models=["tiny-cnn"], api_keys=["user-key"], admin_keys=["admin-key"])
    assert client.post("/v2/repository/index").status_code == 401
    assert client.post("/v2/repository/index", headers={"authorization": "Bearer user-key"}).status_code == 401
    assert client.post("/v2/repository/index", headers={"x-api-key": "admin-key"}).status_code == 200
    refused = client.post("/v2/repository/models/tiny-cnn/unload", headers=ADMIN)
    assert refused.status_code == 400 and refused.json()["type"] == "model_control_disabled"  # mode none


def test_explicit_control_loads_and_unloads_on_request(make_client, digit_png: bytes) -> None:  # type: ignore[no-untyped-def]
    client = make_client(model_control="explicit", models=["tiny-cnn"], admin_keys=["admin-key"])
    index = states(client)
    assert index["tiny-cnn/1"] == ("READY", "") and index["tiny-cnn/2"] == ("READY", "")
    assert index["tiny-resnet/1"] == ("UNAVAILABLE", "not loaded")
    ready_only = client.post("/v2/repository/index", headers=ADMIN, json={"ready": True}).json()
    assert {entry["name"] for entry in ready_only} == {"tiny-cnn"}
    assert [model["id"] for model in client.get("/v1/models").json()["data"]] == ["tiny-cnn"]
    assert client.post("/v1/models/tiny-resnet/predict", content=digit_png, headers=PNG).status_code == 404

    assert client.post("/v2/repository/models/tiny-resnet/load", headers=ADMIN).status_code == 200
    assert states(client)["tiny-resnet/1"] == ("READY", "")
    assert client.post("/v1/models/tiny-resnet/predict", content=digit_png, headers=PNG).status_code == 200
    assert client.get("/v2/health/ready").status_code == 200

    unloaded = client.post("/v2/repository/models/tiny-cnn/unload", headers=ADMIN, json={"parameters": {"version": 2}})
    assert unloaded.status_code == 200
    assert states(client)["tiny-cnn/2"] == ("UNAVAILABLE", "unloaded on request")
    answer = client.post("/v1/models/tiny-cnn/predict", content=digit_png, headers=PNG)
    assert answer.status_code == 200 and answer.json()["version"] == 1  # the latest left
    assert client.post("/v1/models/tiny-cnn/versions/2/predict", content=digit_png, headers=PNG).status_code == 404
    assert client.get("/v1/models/tiny-cnn").json()["versions"] == [1]
    assert client.post("/v2/repository/models/tiny-resnet/unload", headers=ADMIN).status_code == 200
    assert client.get("/v2/health/ready").status_code == 200  # unloaded models are not waited for
    missing = client.post("/v2/repository/models/no-such-model/load", headers=ADMIN)
    assert missing.status_code == 404 and missing.json()["type"] == "model_not_found"


def test_a_load_does_not_hold_up_the_models_that_serve(make_client, digit_png: bytes,  # type: ignore[no-untyped-def]
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The load of tiny-gpt is held in the middle (its runtime waits to be built) while tiny-cnn serves: every
    prediction is answered at once, because loading runs on a thread of its own, not the inference thread."""
    from service.engine import registry

    release, loading_threads = threading.Event(), []
    build = registry.build_runtime

    def held_build(manifest, *args, **kwargs):  # type: ignore[no-untyped-def]
        if manifest["name"] == "tiny-gpt":
            loading_threads.append(threading.current_thread().name)
            assert release.wait(30), "the test never released the load"
        return build(manifest, *args, **kwargs)

    monkeypatch.setattr(registry, "build_runtime", held_build)
    client = make_client(model_control="explicit", models=["tiny-cnn"], admin_keys=["admin-key"])
    loaded: list[int] = []
    loader = threading.Thread(target=lambda: loaded.append(
        client.post("/v2/repository/models/tiny-gpt/load", headers=ADMIN).status_code))
    loader.start()
    try:
        deadline = time.monotonic() + 10
        while not loading_threads:
            assert time.monotonic() < deadline, "the load did not start"
            time.sleep(0.01)
        while states(client)["tiny-gpt/1"][0] != "LOADING":  # the front-end hears of it within a moment
            assert time.monotonic() < deadline, states(client)
            time.sleep(0.01)
        for _ in range(5):  # while the load is held
            started = time.monotonic()
            answer = client.post("/v1/models/tiny-cnn/predict", content=digit_png, headers=PNG)
            assert answer.status_code == 200 and time.monotonic() - started < 2.0
        assert loader.is_alive() and not loaded  # still loading
    finally:
        release.set()
        loader.join(30)
    assert loaded == [200] and loading_threads[0].startswith("load-")
    generated = client.post("/v1/models/tiny-gpt/generate", json={"prompt": "ab", "max_tokens": 3})
    assert generated.status_code == 200 and generated.json()["tokens"] == 3


def test_a_version_that_fails_to_load_leaves_the_serving_one(make_client, weights_dir: Path,  # type: ignore[no-untyped-def]
                                                             digit_png: bytes) -> None:
    client = make_client(model_control="explicit", models=["tiny-cnn"], admin_keys=["admin-key"],
                         model_overrides={"tiny-cnn": {"version_policy": {"latest": 1}}})
    assert states(client)["tiny-cnn/1"] == ("UNAVAILABLE", "not loaded")  # the policy serves the latest only
    shutil.copytree(weights_dir / "tiny-cnn" / "2", weights_dir / "tiny-cnn" / "3")
    corrupt(weights_dir / "tiny-cnn" / "3")
    failed = client.post("/v2/repository/models/tiny-cnn/load", headers=ADMIN)
    assert failed.status_code == 400 and failed.json()["type"] == "load_failed"
    assert "v3" in failed.json()["error"]
    index = states(client)
    assert index["tiny-cnn/3"][0] == "UNAVAILABLE" and index["tiny-cnn/3"][1].startswith("failed to load")
    assert index["tiny-cnn/2"] == ("READY", "")
    answer = client.post("/v1/models/tiny-cnn/predict", content=digit_png, headers=PNG)
    assert answer.status_code == 200 and answer.json()["version"] == 2
    assert client.get("/v2/health/ready").status_code == 200


class Traffic:
    """Four clients predicting without pause; every answer's status and version, in order."""

    def __init__(self, base: str, png: bytes) -> None:
        self.base, self.png = base, png
        self.answers: list[tuple[int, int | None]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop) for _ in range(4)]

    def _loop(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                response = client.post(f"{self.base}/v1/models/tiny-cnn/predict", content=self.png, headers=PNG)
                self.answers.append((response.status_code, response.json().get("version")))

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def versions_since(self, start: int) -> Counter[int | None]:
        return Counter(version for _, version in self.answers[start:])


@pytest.mark.system  # real processes: make test-system
def test_a_new_version_is_swapped_in_under_traffic_without_a_failed_request(tmp_path: Path, digit_png: bytes) -> None:
    make_artifact(tmp_path, "tiny-cnn", 1, "cnn", seed=0)
    server = Server(tmp_path, "--workers", "2", "--model-control", "explicit", "--models", "tiny-cnn",
                    "--admin-keys", "admin-key", "--model-overrides",
                    json.dumps({"tiny-cnn": {"version_policy": {"latest": 1}}}))
    try:
        server.wait_ready()
        with Traffic(server.base, digit_png) as traffic:
            time.sleep(0.5)
            make_artifact(tmp_path, "tiny-cnn", 2, "cnn", seed=1)  # a new version folder, while traffic flows
            switch_started = len(traffic.answers)
            loaded = httpx.post(f"{server.base}/v2/repository/models/tiny-cnn/load", headers=ADMIN, timeout=60)
            time.sleep(1.0)
            after_switch = len(traffic.answers)
            shutil.copytree(tmp_path / "tiny-cnn" / "2", tmp_path / "tiny-cnn" / "3")
            corrupt(tmp_path / "tiny-cnn" / "3")
            failed = httpx.post(f"{server.base}/v2/repository/models/tiny-cnn/load", headers=ADMIN, timeout=60)
            time.sleep(0.5)
        index = {(e["name"], e["version"]): e for e in
                 httpx.post(f"{server.base}/v2/repository/index", headers=ADMIN).json()}
    finally:
        server.stop()
    statuses = Counter(status for status, _ in traffic.answers)
    assert loaded.status_code == 200 and failed.status_code == 400
    assert statuses == {200: len(traffic.answers)}  # not one failed request, across both
    during = traffic.versions_since(switch_started)
    assert traffic.versions_since(after_switch) == {2: len(traffic.answers) - after_switch}
    assert during[1] > 0 and during[2] > 0  # v1 answered until v2 was ready, then v2
    assert index[("tiny-cnn", "1")]["state"] == "UNAVAILABLE"  # the policy serves the latest only
    assert index[("tiny-cnn", "2")]["state"] == "READY"
    assert index[("tiny-cnn", "3")]["reason"].startswith("failed to load")
    print(f"\nswap: {len(traffic.answers)} requests, {after_switch - switch_started} during the switch, "
          f"{sum(n for s, n in statuses.items() if s != 200)} failed")


@pytest.mark.system  # real processes: make test-system
def test_polling_serves_new_versions_and_drops_removed_ones(tmp_path: Path, digit_png: bytes) -> None:
    make_artifact(tmp_path, "tiny-cnn", 1, "cnn", seed=0)
    server = Server(tmp_path, "--workers", "2", "--model-control", "poll", "--poll-s", "0.3",
                    "--admin-keys", "admin-key")
    try:
        server.wait_ready()
        with Traffic(server.base, digit_png) as traffic:
            make_artifact(tmp_path, "tiny-cnn", 2, "cnn", seed=1)
            deadline = time.monotonic() + 30
            while not traffic.answers or traffic.answers[-1][1] != 2:
                assert time.monotonic() < deadline, "version 2 never served"
                time.sleep(0.1)
            shutil.rmtree(tmp_path / "tiny-cnn" / "2")
            while traffic.answers[-1][1] != 1:
                assert time.monotonic() < deadline, "version 2 never dropped"
                time.sleep(0.1)
            while len(index := httpx.post(f"{server.base}/v2/repository/index", headers=ADMIN).json()) > 1:
                assert time.monotonic() < deadline, f"version 2 still listed: {index}"
                time.sleep(0.1)
        refused = httpx.post(f"{server.base}/v2/repository/models/tiny-cnn/unload", headers=ADMIN)
    finally:
        server.stop()
    assert Counter(status for status, _ in traffic.answers) == {200: len(traffic.answers)}
    assert [(entry["version"], entry["state"]) for entry in index] == [("1", "READY")]
    assert refused.status_code == 400  # in poll mode the directory decides
