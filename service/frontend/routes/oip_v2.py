"""Open Inference Protocol V2 (Triton / KServe V2) REST: metadata, readiness and ``infer``, with
both the JSON tensor encoding and the binary tensor data extension that ``tritonclient`` uses."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field, ValidationError

from service import __version__
from service.errors import ServeError
from service.frontend.catalog import Catalog, ServedModel
from service.frontend.predict import admit, decode_and_infer
from service.frontend.routes.deps import CatalogDep, SettingsDep
from service.responses import JSONResponse
from service.schemas import ERROR_RESPONSES

router = APIRouter(tags=["oip-v2"])

NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}
HEADER_LENGTH = "inference-header-content-length"


class TensorInput(BaseModel):
    name: str
    shape: list[int] = Field(min_length=1)
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[TensorInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


# -- tensors in and out -----------------------------------------------------------------------
def _element_count(shape: list[int]) -> int:
    if any(dim < 0 for dim in shape):
        raise ServeError(400, f"shape {shape} has a negative dimension", "invalid_input")
    return int(np.prod(shape, dtype=np.int64))


def _decode_bytes_tensor(raw: bytes, count: int, name: str) -> np.ndarray:
    """BYTES in the binary extension: each element is a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ServeError(400, f"input {name}: truncated BYTES element length", "invalid_input")
        length = int.from_bytes(raw[offset:offset + 4], "little")
        items.append(raw[offset + 4:offset + 4 + length])
        offset += 4 + length
    if offset != len(raw) or len(items) != count:
        raise ServeError(400, f"input {name}: BYTES data holds {len(items)} elements, the shape wants {count}",
                         "invalid_input")
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array


def tensor_from_binary(spec: TensorInput, raw: bytes) -> np.ndarray:
    count = _element_count(spec.shape)
    if spec.datatype == "BYTES":
        return _decode_bytes_tensor(raw, count, spec.name).reshape(spec.shape)
    dtype = np.dtype(NUMPY_TYPES[spec.datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise ServeError(400, f"input {spec.name}: {len(raw)} bytes of binary data, shape {spec.shape} of "
                         f"{spec.datatype} needs {count * dtype.itemsize}", "invalid_input")
    return np.frombuffer(raw, dtype=dtype).reshape(spec.shape)


def tensor_from_json(spec: TensorInput) -> np.ndarray:
    if spec.data is None:
        raise ServeError(400, f"input {spec.name}: no data and no binary_data_size", "invalid_input")
    count = _element_count(spec.shape)
    try:
        if spec.datatype == "BYTES":
            flat = np.asarray(spec.data, dtype=np.object_).reshape(-1)
            array = np.array([item.encode() if isinstance(item, str) else item for item in flat], dtype=np.object_)
        else:
            array = np.asarray(spec.data, dtype=NUMPY_TYPES[spec.datatype]).reshape(-1)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ServeError(400, f"input {spec.name}: data does not fit {spec.datatype}: {exc}", "invalid_input") from None
    if array.size != count:
        raise ServeError(400, f"input {spec.name}: {array.size} elements of data for shape {spec.shape}",
                         "invalid_input")
    return array.reshape(spec.shape)


def tensor_to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(len(data).to_bytes(4, "little") + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=np.dtype(NUMPY_TYPES[datatype]).newbyteorder("<")).tobytes()


def tensor_to_json(array: np.ndarray, datatype: str) -> list[Any]:
    if datatype == "BYTES":
        return [item.decode() if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]
    return array.reshape(-1).tolist()


async def parse_infer_request(request: Request) -> tuple[InferRequest, dict[str, np.ndarray]]:
    body = await request.body()
    header_length = request.headers.get(HEADER_LENGTH)
    json_part, binary = body, b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ServeError(400, f"Inference-Header-Content-Length {header_length!r} does not fit a body of "
                             f"{len(body)} bytes", "invalid_input")
        json_part, binary = body[:int(header_length)], body[int(header_length):]
    try:
        parsed = InferRequest.model_validate(orjson.loads(json_part))
    except orjson.JSONDecodeError as exc:
        raise ServeError(400, f"the inference header is not valid JSON: {exc}", "invalid_json") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ServeError(422, f"{'.'.join(map(str, first['loc']))}: {first['msg']}", "validation_error") from None
    tensors, offset = {}, 0
    for spec in parsed.inputs:
        if spec.datatype not in NUMPY_TYPES:
            raise ServeError(400, f"input {spec.name}: unknown datatype {spec.datatype}", "invalid_input")
        size = spec.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ServeError(400, f"input {spec.name}: binary_data_size {size} overruns the body", "invalid_input")
            tensors[spec.name] = tensor_from_binary(spec, binary[offset:offset + size])
            offset += size
        else:
            tensors[spec.name] = tensor_from_json(spec)
    if offset != len(binary):
        raise ServeError(400, f"{len(binary) - offset} bytes of binary data belong to no input", "invalid_input")
    return parsed, tensors


# -- metadata ---------------------------------------------------------------------------------
def model_metadata(served: ServedModel, catalog: Catalog) -> dict[str, Any]:
    runtime = served.runtime
    if runtime is None:
        raise ServeError(503, f"model {served.name} v{served.version} is not loaded ({served.status})",
                         headers={"Retry-After": "5"})
    return {"name": served.name, "versions": [str(v) for v in catalog.versions(served.name)],
            "platform": "pytorch", "inputs": [spec.as_dict() for spec in runtime.inputs],
            "outputs": [spec.as_dict() for spec in runtime.outputs]}


@router.get("/v2", summary="Server metadata")
async def server_metadata() -> JSONResponse:
    return JSONResponse({"name": "serve", "version": __version__,
                           "extensions": ["binary_tensor_data", "model_configuration"]})


@router.get("/v2/models/{name}", summary="Model metadata", responses=ERROR_RESPONSES)
async def metadata(name: str, catalog: CatalogDep) -> JSONResponse:
    return JSONResponse(model_metadata(catalog.get(name), catalog))


@router.get("/v2/models/{name}/versions/{version}", summary="Model version metadata", responses=ERROR_RESPONSES)
async def version_metadata(name: str, version: str, catalog: CatalogDep) -> JSONResponse:
    return JSONResponse(model_metadata(catalog.get(name, version), catalog))


def _readiness(served: ServedModel) -> JSONResponse:
    body = {"name": served.name, "version": str(served.version), "ready": served.ready}
    if served.ready:
        return JSONResponse(body)
    return JSONResponse({**body, "error": f"not ready ({served.status})", "type": "unavailable"},
                          status_code=503, headers={"Retry-After": "5"})


@router.get("/v2/models/{name}/ready", summary="Model readiness", responses=ERROR_RESPONSES)
async def model_ready(name: str, catalog: CatalogDep) -> JSONResponse:
    return _readiness(catalog.get(name))


@router.get("/v2/models/{name}/versions/{version}/ready", summary="Model version readiness",
            responses=ERROR_RESPONSES)
async def model_version_ready(name: str, version: str, catalog: CatalogDep) -> JSONResponse:
    return _readiness(catalog.get(name, version))


def _config(served: ServedModel, catalog: Catalog) -> dict[str, Any]:
    meta = model_metadata(served, catalog)
    batching = catalog.batch_config(served)
    return {"name": served.name, "platform": "pytorch", "max_batch_size": batching.max_batch_size,
            "input": [{"name": s["name"], "data_type": "TYPE_" + s["datatype"].replace("BYTES", "STRING"),
                       "dims": s["shape"][1:]} for s in meta["inputs"]],
            "output": [{"name": s["name"], "data_type": "TYPE_" + s["datatype"].replace("BYTES", "STRING"),
                        "dims": s["shape"][1:]} for s in meta["outputs"]],
            "dynamic_batching": {"max_queue_delay_microseconds": int(batching.max_delay_s * 1e6),
                                 "default_queue_policy": {"max_queue_size": batching.max_queue}}}


@router.get("/v2/models/{name}/config", summary="Model configuration (Triton extension)", responses=ERROR_RESPONSES)
async def model_config(name: str, catalog: CatalogDep) -> JSONResponse:
    return JSONResponse(_config(catalog.get(name), catalog))


# -- infer ------------------------------------------------------------------------------------
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": InferRequest.model_json_schema()},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                            "description": "JSON header + binary tensors; see the "
                                                           "Inference-Header-Content-Length header"}}}}}


def _requested_outputs(parsed: InferRequest, served: ServedModel) -> list[tuple[str, str, bool]]:
    """(name, datatype, binary?) per output to return; all outputs when none are named."""
    available = {spec.name: spec.datatype for spec in served.runtime.outputs}
    binary_default = bool(parsed.parameters.get("binary_data_output", False))
    if not parsed.outputs:
        return [(name, datatype, binary_default) for name, datatype in available.items()]
    chosen = []
    for output in parsed.outputs:
        if output.name not in available:
            raise ServeError(400, f"model {served.name} has no output {output.name!r}; it has {sorted(available)}",
                             "invalid_input")
        if "classification" in output.parameters:
            raise ServeError(400, "the classification extension is not supported; read the label output",
                             "invalid_input")
        binary = bool(output.parameters.get("binary_data", binary_default))
        chosen.append((output.name, available[output.name], binary))
    return chosen


async def _run(request: Request, served: ServedModel, catalog: Catalog, parsed: InferRequest,
               tensors: dict[str, np.ndarray], max_inputs: int) -> dict[str, np.ndarray]:
    """The input tensors as the runtime's raw inputs, run on the engine, the results as output tensors."""
    runtime = served.runtime
    priority, timeout_s = _scheduling(parsed.parameters, catalog.timeout_s(served))
    raw, params = runtime.v2_items(tensors, parsed.parameters, max_inputs)
    results = await decode_and_infer(request, served, functools.partial(runtime.v2_decode, params=params), raw,
                                     timeout_s, priority)
    return dict(runtime.v2_outputs(results))


def _scheduling(parameters: dict[str, Any], model_timeout_s: float) -> tuple[int, float]:
    """Triton's request parameters, taken out of ``parameters``: ``priority`` (1 the highest, 0 the model's
    default) and ``timeout`` (microseconds; the model's own deadline still bounds it)."""
    priority = parameters.pop("priority", 0)
    timeout_us = parameters.pop("timeout", None)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise ServeError(400, f"parameters.priority must be a whole number >= 0, got {priority!r}", "invalid_input")
    if timeout_us is None:
        return priority, model_timeout_s
    if isinstance(timeout_us, bool) or not isinstance(timeout_us, int) or timeout_us <= 0:
        raise ServeError(400, f"parameters.timeout must be a whole number of microseconds > 0, got {timeout_us!r}",
                         "invalid_input")
    return priority, min(model_timeout_s, timeout_us / 1_000_000)


async def infer_response(request: Request, served: ServedModel, catalog: Catalog, max_inputs: int) -> Response:
    """A V2 infer request's answer (the routes' and service/frontend/direct.py's)."""
    if served.runtime is None:
        raise ServeError(503, f"model {served.name} cannot run V2 infer ({served.status})",
                         headers={"Retry-After": "5"})
    admit(served)  # a full or unready model refuses before its body is read
    parsed, tensors = await parse_infer_request(request)
    outputs = _requested_outputs(parsed, served)
    values = await _run(request, served, catalog, parsed, tensors, max_inputs)
    header_outputs, chunks = [], []
    for name, datatype, binary in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(values[name].shape)}
        if binary:
            raw = tensor_to_binary(values[name], datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensor_to_json(values[name], datatype)
        header_outputs.append(entry)
    header = {"model_name": served.name, "model_version": str(served.version), "outputs": header_outputs}
    if parsed.id is not None:
        header["id"] = parsed.id
    if not chunks:
        return JSONResponse(header)
    header_bytes = orjson.dumps(header)
    return Response(header_bytes + b"".join(chunks), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header_bytes))})


@router.post("/v2/models/{name}/infer", summary="Inference (JSON or binary tensors)", responses=ERROR_RESPONSES,
             openapi_extra=INFER_BODY)
async def infer_latest(name: str, request: Request, catalog: CatalogDep, settings: SettingsDep) -> Response:
    return await infer_response(request, catalog.get(name), catalog, settings.max_inputs_per_request)


@router.post("/v2/models/{name}/versions/{version}/infer", summary="Inference on one version",
             responses=ERROR_RESPONSES, openapi_extra=INFER_BODY)
async def infer_version(name: str, version: str, request: Request, catalog: CatalogDep,
                        settings: SettingsDep) -> Response:
    return await infer_response(request, catalog.get(name, version), catalog, settings.max_inputs_per_request)

