"""Schemathesis generates requests from /openapi.json: no input may cause a 5xx other than 503/504,
and every error keeps the one error shape."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from service.errors import OPENAI_PATHS
from service.settings import Settings
from tests.conftest import LiveServer, free_port, make_artifact


def check_response(case: schemathesis.Case, statuses: list[int]) -> None:
    response = case.call(timeout=30)
    statuses.append(response.status_code)
    assert response.status_code < 500 or response.status_code in (503, 504), (case.path, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        if case.path in OPENAI_PATHS:  # OpenAI's shape there: {"error": {"message", "type", ...}}
            error = error["message"]
        assert isinstance(error, str) and error, response.text


def test_no_generated_input_causes_a_server_error(tmp_path: Path) -> None:
    make_artifact(tmp_path, "tiny-cnn", 1, "cnn")
    server_settings = Settings(weights_dir=tmp_path, device="cpu", torch_threads=1, port=free_port(),
                               max_inputs_per_request=8)
    with LiveServer(server_settings) as server:
        schema = schemathesis.openapi.from_url(f"http://{server.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 15
        statuses: list[int] = []
        for operation in operations:
            strategy = operation.as_strategy()

            @given(case=strategy)
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                      database=None)
            def check(case: schemathesis.Case) -> None:
                if "name" in (case.path_parameters or {}):
                    case.path_parameters["name"] = "tiny-cnn"  # reach the handlers, not only the 404
                check_response(case, statuses)

            try:
                check()
            except Exception as exc:  # name the operation that failed
                pytest.fail(f"{operation.method.upper()} {operation.path}: {exc}")
        assert len(statuses) >= 5 * len(operations)  # the generator really exercised every operation
        print(f"{len(statuses)} generated requests:", dict(sorted(Counter(statuses).items())))
